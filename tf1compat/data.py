"""The seed's TFRecord schema and input pipeline, one `tf.data` graph for both modes.

`make_dataset` builds the same pipeline whether it is called under
`tf.compat.v1.disable_v2_behavior()` (the graph runner's one-shot iterator) or eagerly
(the TF2 runner's `for` loop). Every random op takes an explicit seed derived from
the run's `--seed`, so both runners see identical batches as long as both set the same
global seed (or neither does).
"""

import dataclasses
import glob
import hashlib
import json
import os

import tensorflow as tf

from tf1compat import cli

# The seed's schema, unchanged: what `bin/make_records` writes and what a
# Caltech256 TFRecord export from the seed's era holds.
FEATURES = {
    'image': tf.io.FixedLenFeature([], tf.string),
    'filename': tf.io.FixedLenFeature([], tf.string),
    'label': tf.io.FixedLenFeature([], tf.int64),
}

TRAIN_PATTERN = 'train-*.tfrecord'
VAL_PATTERN = 'val-*.tfrecord'
ALL_PATTERN = '*.tfrecord'
DATASET_JSON = 'dataset.json'
CALTECH256_CLASSES = 257

# Offsets that turn the run's --seed into distinct op-level seeds, so that the
# file-order shuffle and the record shuffle do not draw the same stream.
_FILE_SHUFFLE_SEED_OFFSET = 1
_RECORD_SHUFFLE_SEED_OFFSET = 2


class DataError(cli.UsageError):
  """Input data a user supplied is missing or unusable; the message says which and why."""


def find_files(data_dir, split):
  """Returns the sorted TFRecord files of `split` ('train' or 'val') in `data_dir`.

  Training data is `train-*.tfrecord`, or every `*.tfrecord` when there is no
  `train-*` file (the seed's layout); validation data is `val-*.tfrecord`, which may
  be absent (an empty list is returned). Raises DataError when training data is
  missing.
  """
  if split not in ('train', 'val'):
    raise ValueError(f'split must be train or val, got {split!r}')
  if not os.path.isdir(data_dir):
    raise DataError(f'--data_dir={data_dir}: no such directory; point it at a folder of '
                    f'{TRAIN_PATTERN} files (bin/make_records writes one)')
  if split == 'val':
    return sorted(glob.glob(os.path.join(data_dir, VAL_PATTERN)))
  files = sorted(glob.glob(os.path.join(data_dir, TRAIN_PATTERN)))
  if not files:
    files = [f for f in sorted(glob.glob(os.path.join(data_dir, ALL_PATTERN)))
             if not os.path.basename(f).startswith('val-')]
  if not files:
    raise DataError(f'--data_dir={data_dir}: no {TRAIN_PATTERN} or {ALL_PATTERN} files; '
                    'write some with bin/make_records')
  return files


def fingerprint(files):
  """sha256 over the names, sizes and bytes of `files`: equal only for the same data."""
  digest = hashlib.sha256()
  for path in sorted(files):
    digest.update(os.path.basename(path).encode())
    digest.update(str(os.path.getsize(path)).encode())
    with open(path, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 20), b''):
        digest.update(chunk)
  return digest.hexdigest()


def preprocess_image(jpeg_bytes, image_size):
  """Decodes JPEG bytes to 3 channels, pads-and-resizes to a square, standardizes."""
  image = tf.io.decode_jpeg(jpeg_bytes, channels=3)
  image = tf.image.resize_with_pad(image, image_size, image_size)
  return tf.image.per_image_standardization(image)


def parse_example(serialized, image_size, num_classes):
  """Turns one serialized tf.Example into (standardized image, one-hot label).

  A label outside [0, num_classes) fails the pipeline: its one-hot would be all
  zeros and would train silently wrong.
  """
  example = tf.io.parse_single_example(serialized, FEATURES)
  label = example['label']
  check = tf.debugging.assert_less(
      label, tf.constant(num_classes, tf.int64),
      message=f'label out of range [0, {num_classes}): check --num_classes')
  check_nonneg = tf.debugging.assert_non_negative(
      label, message=f'label out of range [0, {num_classes}): negative label')
  with tf.control_dependencies([check, check_nonneg]):
    label = tf.identity(label)
  image = preprocess_image(example['image'], image_size)
  return image, tf.one_hot(label, num_classes)


def make_dataset(files, *, image_size, num_classes, batch_size, seed=0, training=True,
                 shuffle_buffer=10000, num_parallel_calls=tf.data.AUTOTUNE):
  """Builds the seed's input pipeline over `files`, for graph or eager mode alike.

  Training: file-name shuffle, records, shuffle of the serialized records (about a
  hundred times cheaper than the seed's shuffle of decoded float images), repeat,
  parallel parse/decode with a deterministic order, batch, prefetch. Evaluation
  (`training=False`): the files in order, once, no shuffle.

  Returns a `tf.data.Dataset` of (images [B, S, S, 3] float32, labels [B, C] float32).
  """
  files = sorted(files)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if training:
    dataset = dataset.shuffle(len(files), seed=seed + _FILE_SHUFFLE_SEED_OFFSET)
  dataset = dataset.flat_map(tf.data.TFRecordDataset)
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed + _RECORD_SHUFFLE_SEED_OFFSET)
    dataset = dataset.repeat()
  dataset = dataset.map(
      lambda record: parse_example(record, image_size, num_classes),
      num_parallel_calls=num_parallel_calls, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=training)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def read_dataset_json(data_dir):
  """The `dataset.json` of `data_dir` as a dict, or None when the folder has none."""
  path = os.path.join(data_dir, DATASET_JSON)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: unreadable ({e}); rewrite it with bin/make_records') from e


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a run trains and evaluates on, as recorded in its manifest."""
  data_dir: str
  train_files: tuple
  val_files: tuple
  num_classes: int
  fingerprint: str

  def manifest(self):
    """The `data` block of run.json."""
    return {'data_dir': os.path.abspath(self.data_dir), 'train_files': len(self.train_files),
            'val_files': len(self.val_files), 'num_classes': self.num_classes,
            'fingerprint': self.fingerprint}


def describe(data_dir, num_classes=None):
  """Finds the files of `data_dir` and settles the class count.

  `num_classes` wins when given; otherwise `dataset.json`'s, else Caltech256's 257.
  The fingerprint is computed over the files themselves, so edited data never passes
  for the data a manifest names.
  """
  train_files = find_files(data_dir, 'train')
  val_files = find_files(data_dir, 'val')
  info = read_dataset_json(data_dir) or {}
  if num_classes is None:
    num_classes = int(info.get('num_classes', CALTECH256_CLASSES))
  return DataSpec(data_dir, tuple(train_files), tuple(val_files), num_classes,
                  fingerprint(train_files + val_files))
