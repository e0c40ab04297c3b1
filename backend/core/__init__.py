"""The core: settings, the preprocessing stem, request budgets, the model store and LiteRT inference.

No Flask, no TensorFlow.
"""
