"""The first BATCHES training batches the pipeline makes in this stack, and their hashes.

    python docs/legacy-stack/batches.py DATA_DIR|- IMAGE_SIZE BATCHES OUT.npz \
        [--batch_size=32] [--seed=0] [--shuffle_buffer=10000] [--fusion]

-: the embedded data. Seed, batch size and buffer as given (check_parity's defaults: 0, 32
and 10000), the buffer capped as the runners cap it (DataSpec.shuffle_buffer).
--fusion (TensorFlow 1.15 only): with tf.data's shuffle-and-repeat fusion, which 1.15 applies
by default and stacks.deterministic_options turns off.
OUT.npz: records_NNN (farmhash fingerprints of the batch's serialized records, which both
stacks compute alike), labels_NNN and images_NNN of each batch, for compare_npz.py. Printed:
one line per pass through the records, the sha256 of its batches' records and labels (equal
lines in two stacks: the same records in the same order with the same labels).
"""

import hashlib
import sys

import numpy as np

from tf1compat.runtime import process

tf = process.use_legacy_keras()

from tf1compat.data import data_check  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.data import records  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.runs import config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.runtime import stacks  # pylint: disable=g-import-not-at-top,wrong-import-position

flags = dict(arg[2:].split('=', 1) for arg in sys.argv[5:] if '=' in arg)
batch_size, seed = int(flags.get('batch_size', 32)), int(flags.get('seed', 0))
shuffle_buffer = int(flags.get('shuffle_buffer', config.DataConfig.shuffle_buffer))
if '--fusion' in sys.argv:
  options = tf.data.Options()
  options.experimental_deterministic = True
  stacks.deterministic_options = lambda: options
parse_example = pipeline.parse_example


def with_fingerprint(record, *args, **kwargs):
  """parse_example's (image, label) and the record's fingerprint."""
  image, label = parse_example(record, *args, **kwargs)
  return image, label, tf.strings.to_hash_bucket_fast(record, 2**62)


pipeline.parse_example = with_fingerprint
data_dir = records.embedded_data_dir() if sys.argv[1] == '-' else sys.argv[1]
spec = data_check.check_data_dir(data_dir, None, 'fail', False)
tf.compat.v1.set_random_seed(seed)
dataset = pipeline.make_dataset(
    spec.train_files, image_size=int(sys.argv[2]), num_classes=spec.num_classes,
    batch_size=batch_size, seed=seed,
    shuffle_buffer=spec.shuffle_buffer(shuffle_buffer))
images, labels, fingerprints = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
out = {}
with tf.compat.v1.Session() as sess:
  for number in range(1, int(sys.argv[3]) + 1):
    (out[f'labels_{number:03d}'], out[f'images_{number:03d}'],
     out[f'records_{number:03d}']) = sess.run([labels, images, fingerprints])
np.savez(sys.argv[4], **out)
per_pass = spec.train_check.good_records // batch_size
for first in range(1, int(sys.argv[3]) + 1, per_pass):
  numbers = range(first, min(first + per_pass, int(sys.argv[3]) + 1))
  digest = hashlib.sha256()
  for number in numbers:
    digest.update(out[f'records_{number:03d}'].tobytes())
    digest.update(out[f'labels_{number:03d}'].tobytes())
  print(f'batches {numbers[0]:3d}-{numbers[-1]:3d}: {digest.hexdigest()[:16]}')
