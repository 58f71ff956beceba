"""One training step of the seed's ConvNet on one given batch, layer by layer, in this stack.

    python docs/legacy-stack/train_step.py INIT.npz BATCH.npz OUT.npz [--batch_norm]

INIT.npz: initial weights (check_parity's init_weights-*.npz); BATCH.npz: `images`
[B, S, S, 3] and one-hot `labels` [B, C], the same for both stacks (first_batch.py writes
the pipeline's first batch). OUT.npz: every layer's output, the loss, every gradient and
every weight after one AdamOptimizer step.
"""

import sys

import numpy as np

from tf1compat.runtime import process

tf = process.use_legacy_keras()

from tf1compat.runs import run_files
from tf1compat.train.models import convnet  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.train.models import keras_facts  # pylint: disable=g-import-not-at-top,wrong-import-position

init, batch, out_path = sys.argv[1:4]
with np.load(batch) as given:
  images, labels = given['images'], given['labels']
tf.compat.v1.set_random_seed(0)
net = convnet.build_model(tf.keras, num_classes=labels.shape[1], image_size=images.shape[1],
                          batch_norm='--batch_norm' in sys.argv,
                          input_tensor=tf.constant(images))
loss = tf.reduce_mean(tf.compat.v1.nn.softmax_cross_entropy_with_logits_v2(
    labels=tf.constant(labels), logits=net.output))
items = keras_facts.weight_items(net)
trainable = [(key, v) for key, v in items if any(v is w for w in net.trainable_weights)]
fetches = {'loss': loss, **{f'out/{layer.name}': layer.output for layer in net.layers[1:]}}
fetches.update(zip([f'grad/{key}' for key, _ in trainable],
                   tf.gradients(loss, [v for _, v in trainable])))
with tf.control_dependencies(net.updates):
  train = tf.compat.v1.train.AdamOptimizer(1e-3, epsilon=1e-8).minimize(loss)
feed = {tf.compat.v1.keras.backend.learning_phase(): True}
with tf.compat.v1.Session() as sess:
  sess.run(tf.compat.v1.global_variables_initializer())
  weights = run_files.load_weights(init)
  for key, variable in items:
    variable.load(weights[key], sess)
  out = sess.run(fetches, feed)
  sess.run(train, feed)
  out.update({f'after/{key}': value for key, value in sess.run(dict(items)).items()})
np.savez(out_path, **out)
