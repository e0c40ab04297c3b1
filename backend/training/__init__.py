"""Training: the CNN, fitting and export, evaluation, the retraining pipeline and the job runner.

The only package that imports TensorFlow.
"""
