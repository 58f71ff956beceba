"""Three steps of each of tf1_kernels' optimizers and of TF1BatchNormalization on fixed
inputs, written to an .npz: on Keras 3's TensorFlow backend they run TF1's own kernels,
on JAX the formulas of train/tf1_kernels.py, so that tests/test_jax.py can compare the
two (KERAS_BACKEND picks; the script sets nothing else up).

python tests/kernel_steps.py OUT.npz
"""

import sys

import keras
import numpy as np

from tf1compat.train import tf1_kernels

OPTIMIZERS = {
    'adam': lambda: tf1_kernels.TF1Adam(learning_rate=0.01, epsilon=1e-8),
    'momentum': lambda: tf1_kernels.TF1Momentum(learning_rate=0.1, momentum=0.9),
    'nesterov': lambda: tf1_kernels.TF1Momentum(learning_rate=0.1, momentum=0.9, nesterov=True),
    'rmsprop': lambda: tf1_kernels.TF1RMSprop(learning_rate=0.01, rho=0.9, momentum=0.5,
                                              epsilon=1e-10, fused=True),
    'rmsprop_centered': lambda: tf1_kernels.TF1RMSprop(learning_rate=0.01, rho=0.9,
                                                       epsilon=1e-10, centered=True, fused=True),
    'sgd': lambda: tf1_kernels.TF1SGD(learning_rate=0.1),
    'adagrad': lambda: tf1_kernels.TF1Adagrad(learning_rate=0.1, epsilon=0.0),
    'adagrad_epsilon': lambda: tf1_kernels.TF1Adagrad(learning_rate=0.1, epsilon=1e-7),
    'adadelta': lambda: tf1_kernels.TF1Adadelta(learning_rate=1.0, rho=0.95, epsilon=1e-8),
}


def main(out):
  rng = np.random.default_rng(0)
  start = rng.standard_normal((4, 5)).astype(np.float32)
  gradients = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(3)]
  results = {}
  for name, make in OPTIMIZERS.items():
    variable = keras.Variable(start, name='w')
    optimizer = make()
    for gradient in gradients:
      optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
    results[f'optimizer/{name}'] = keras.ops.convert_to_numpy(variable)
  layer = tf1_kernels.TF1BatchNormalization(momentum=0.9)
  images = rng.standard_normal((4, 6, 6, 3)).astype(np.float32) * 3 + 1
  layer.build(images.shape)
  for step in range(2):
    outputs = layer(images + step, training=True)
  results['batch_norm/outputs'] = keras.ops.convert_to_numpy(outputs)
  results['batch_norm/moving_mean'] = keras.ops.convert_to_numpy(layer.moving_mean)
  results['batch_norm/moving_variance'] = keras.ops.convert_to_numpy(layer.moving_variance)
  results['batch_norm/inference'] = keras.ops.convert_to_numpy(layer(images, training=False))
  np.savez(out, **results)


if __name__ == '__main__':
  main(sys.argv[1])
