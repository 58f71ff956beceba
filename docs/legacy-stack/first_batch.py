"""The first training batch the pipeline makes (check_parity's defaults: seed 0, batch 32).

    python docs/legacy-stack/first_batch.py DATA_DIR|- IMAGE_SIZE OUT.npz    (-: the embedded data)
"""

import sys

import numpy as np

from tf1compat.runtime import process

tf = process.use_legacy_keras()

from tf1compat.data import data_check  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.data import records  # pylint: disable=g-import-not-at-top,wrong-import-position

data_dir = records.embedded_data_dir() if sys.argv[1] == '-' else sys.argv[1]
spec = data_check.check_data_dir(data_dir, None, 'fail', False)
tf.compat.v1.set_random_seed(0)
dataset = pipeline.make_dataset(spec.train_files, image_size=int(sys.argv[2]),
                                num_classes=spec.num_classes, batch_size=32, seed=0)
images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
with tf.compat.v1.Session() as sess:
  got = sess.run({'images': images, 'labels': labels})
np.savez(sys.argv[3], **got)
