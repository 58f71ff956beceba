"""TensorFlow 1.15 only: its own tf.image.resize_image_with_pad against TF 2's
resize_with_pad (which both stacks' pipelines run) on the embedded data's first image.

    TF115/bin/python docs/legacy-stack/resize_v1_v2.py
"""

import glob
import os

import numpy as np
import tensorflow as tf

folder = os.path.join(os.environ.get('TF1COMPAT_CACHE') or os.path.expanduser('~/.cache/tf1compat'),
                      'synthetic-v1-seed0')
record = next(iter(tf.compat.v1.io.tf_record_iterator(
    sorted(glob.glob(os.path.join(folder, 'train-*.tfrecord')))[0])))
encoded = tf.compat.v1.parse_single_example(
    record, {'image': tf.compat.v1.FixedLenFeature([], tf.string)})['image']
image = tf.cast(tf.image.decode_image(encoded, channels=3, expand_animations=False), tf.float32)
image.set_shape([None, None, 3])
with tf.compat.v1.Session() as sess:
  v1, v2, shape = sess.run([tf.image.resize_image_with_pad(image, 64, 64),
                            tf.compat.v2.image.resize_with_pad(image, 64, 64), tf.shape(image)])
print(f'{shape[0]}x{shape[1]} to 64x64: {int((v1 != v2).sum())} of {v1.size} values differ, '
      f'by up to {np.abs(v1 - v2).max():.2f} (of 255)')
