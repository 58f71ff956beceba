"""The first BATCHES training batches the pipeline makes in this stack (seed 0, batch 32).

    python docs/legacy-stack/batches.py DATA_DIR|- IMAGE_SIZE BATCHES OUT.npz [--fusion]

-: the embedded data. --fusion (TensorFlow 1.15 only): with tf.data's shuffle-and-repeat
fusion, which 1.15 applies by default and stacks.deterministic_options turns off.
OUT.npz: labels_NNN and images_NNN of each batch, for compare_npz.py.
"""

import sys

import numpy as np

from tf1compat import process

tf = process.use_legacy_keras()

from tf1compat import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat import data_check  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat import records  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat import stacks  # pylint: disable=g-import-not-at-top,wrong-import-position

if '--fusion' in sys.argv:
  options = tf.data.Options()
  options.experimental_deterministic = True
  stacks.deterministic_options = lambda: options
data_dir = records.embedded_data_dir() if sys.argv[1] == '-' else sys.argv[1]
spec = data_check.check_data_dir(data_dir, None, 'fail', False)
tf.compat.v1.set_random_seed(0)
dataset = data.make_dataset(spec.train_files, image_size=int(sys.argv[2]),
                            num_classes=spec.num_classes, batch_size=32, seed=0)
images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
out = {}
with tf.compat.v1.Session() as sess:
  for number in range(1, int(sys.argv[3]) + 1):
    out[f'labels_{number:03d}'], out[f'images_{number:03d}'] = sess.run([labels, images])
np.savez(sys.argv[4], **out)
