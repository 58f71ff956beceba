"""Which runner module trains the port on a Keras 3 backend, without importing TensorFlow:
the commands set the process up (process.use_keras3) before they import it."""

import importlib


def port_backend(keras_backend):
  """The port's runner module on Keras 3's `keras_backend`: train/eager/backend.py, or its
  twin train/jax/backend.py (imported here, once Keras' backend is set)."""
  package = 'jax' if keras_backend == 'jax' else 'eager'
  return importlib.import_module(f'tf1compat.train.{package}.backend')
