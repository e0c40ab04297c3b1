"""Data and state: MNIST, uploaded datasets, feedback, the job table, retention, renderings of real-world digits."""
