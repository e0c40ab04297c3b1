"""Digit Lab backend: preprocessing stem, data, model, training, model store, serving API."""
