"""The ops of the seed's training step on fixed random float32 inputs, in this stack.

Run it with each stack's Python and compare the outputs (docs/legacy-stack.md, findings):
    PYTHONPATH=OUT/.tf115_source TF115/bin/python docs/legacy-stack/opcheck.py o115.npz
    python docs/legacy-stack/opcheck.py o221.npz
    TF_ENABLE_ONEDNN_OPTS=0 python docs/legacy-stack/opcheck.py o221_nodnn.npz
    python docs/legacy-stack/compare_npz.py o115.npz o221.npz
"""

import sys

import numpy as np

from tf1compat.runtime import process

tf = process.use_legacy_keras()

rng = np.random.RandomState(0)


def normal(*shape):
  return rng.standard_normal(shape).astype(np.float32)


x, kernel, dy = normal(32, 31, 31, 64), normal(3, 3, 64, 64), normal(32, 15, 15, 64)
rows, features = normal(8192, 64), normal(32, 256)
logits = normal(32, 10)
labels = np.eye(10, dtype=np.float32)[rng.randint(0, 10, 32)]
OPS = {
    'reduce_sum over axis 0': lambda: tf.reduce_sum(rows, axis=0),
    'reduce_sum of all': lambda: tf.reduce_sum(rows),
    'reduce_mean of all': lambda: tf.reduce_mean(rows),
    'reduce_mean over an image': lambda: tf.reduce_mean(
        rows.reshape(64, 64, 128)[:, :, :3], axis=[-1, -2, -3]),
    'global average pooling': lambda: tf.reduce_mean(x, axis=[1, 2]),
    'BiasAddGrad': lambda: tf.raw_ops.BiasAddGrad(out_backprop=dy),
    'MatMul': lambda: tf.matmul(features, normal(256, 10)),
    'Conv2D': lambda: tf.nn.conv2d(x, kernel, strides=[1, 2, 2, 1], padding='VALID'),
    'Conv2DBackpropFilter': lambda: tf.compat.v1.nn.conv2d_backprop_filter(
        x, [3, 3, 64, 64], dy, [1, 2, 2, 1], 'VALID'),
    'Conv2DBackpropInput': lambda: tf.compat.v1.nn.conv2d_backprop_input(
        [32, 31, 31, 64], kernel, dy, [1, 2, 2, 1], 'VALID'),
    'SoftmaxCrossEntropyWithLogits': lambda: tf.raw_ops.SoftmaxCrossEntropyWithLogits(
        features=logits, labels=labels),
    'ReluGrad': lambda: tf.raw_ops.ReluGrad(gradients=dy, features=dy[::-1]),
}

out = {}
with tf.compat.v1.Session() as sess:
  for name, make in OPS.items():
    value = sess.run(make())
    out[name] = (np.concatenate([np.ravel(v) for v in value])
                 if isinstance(value, (tuple, list)) else value)
  variable = tf.compat.v1.Variable(normal(64, 64))
  step = tf.compat.v1.train.AdamOptimizer(1e-3, epsilon=1e-8).apply_gradients(
      [(tf.constant(normal(64, 64) * 1e-3), variable)])
  sess.run(tf.compat.v1.global_variables_initializer())
  sess.run(step)
  out['ApplyAdam (one step)'] = sess.run(variable)
np.savez(sys.argv[1], **out)
