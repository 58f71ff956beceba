"""The seed's TFRecord schema and input pipeline, one `tf.data` graph for both modes.

`make_dataset` builds the same pipeline whether it is called under
`tf.compat.v1.disable_v2_behavior()` (the graph runner's one-shot iterator) or eagerly
(the TF2 runner's `for` loop). Every random op takes an explicit seed derived from
the run's `--seed`, so both runners see identical batches as long as both set the same
global seed (or neither does).
"""

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import re

from absl import logging
from google.protobuf import message as protobuf_message
import tensorflow as tf

from tf1compat import cli
from tf1compat import image_bytes
from tf1compat import tfrecord

# The seed's schema: what `bin/make_records` writes and what a Caltech256 TFRecord
# export from the seed's era holds. The pipeline never reads `filename`, so records
# written without one are accepted.
FEATURES = {
    'image': tf.io.FixedLenFeature([], tf.string),
    'filename': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'label': tf.io.FixedLenFeature([], tf.int64),
}

TRAIN_PATTERN = 'train-*.tfrecord'
VAL_PATTERN = 'val-*.tfrecord'
ALL_PATTERN = '*.tfrecord'
DATASET_JSON = 'dataset.json'
CALTECH256_CLASSES = 257

# Offsets that turn the run's --seed into distinct op-level seeds, so that the
# file-order shuffle and the record shuffle do not draw the same stream.
FILE_SHUFFLE_SEED_OFFSET = 1
RECORD_SHUFFLE_SEED_OFFSET = 2


# How many skipped records run.json lists by name (all are counted).
_SKIPPED_LISTED = 20


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


def preprocess_image(image_bytes, image_size):
  """Decodes image bytes to 3 channels, pads-and-resizes to a square, standardizes.

  JPEG (grey and CMYK included), PNG, GIF (first frame), BMP and WebP all decode; for
  JPEG the pixels are those of the seed's `decode_jpeg`.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
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


def _record_reader(files, exclusions):
  """The flat_map function from a file name to its records, less `exclusions`.

  `exclusions` maps a file to (records to read, or -1 for all; indices to leave out).
  Both are constants of the graph, so graph and eager runs leave out the same records
  and the pipeline stays checkpointable.
  """
  if not exclusions:
    return tf.data.TFRecordDataset
  paths = tf.constant(files)
  limits = tf.constant([exclusions.get(f, (-1, ()))[0] for f in files], tf.int64)
  # One int64 key per excluded record: file number in the high half, index in the low.
  keys = sorted((k << 32) | i for k, f in enumerate(files) for i in exclusions.get(f, (-1, ()))[1])
  excluded = tf.constant(keys, tf.int64, shape=[len(keys)])

  def read(path):
    number = tf.argmax(tf.cast(tf.equal(paths, path), tf.int64), output_type=tf.int64)
    records = tf.data.TFRecordDataset(path).take(tf.gather(limits, number)).enumerate()
    records = records.filter(lambda index, _: tf.logical_not(
        tf.reduce_any(tf.equal(excluded, number * (1 << 32) + index))))
    return records.map(lambda _, record: record)

  return read


def make_dataset(files, *, image_size, num_classes, batch_size, seed=0, training=True,
                 shuffle_buffer=10000, num_parallel_calls=tf.data.AUTOTUNE, skip=None):
  """Builds the seed's input pipeline over `files`, for graph or eager mode alike.

  Training: file-name shuffle, records, shuffle of the serialized records (about a
  hundred times cheaper than the seed's shuffle of decoded float images), repeat,
  parallel parse/decode with a deterministic order, batch, prefetch. Evaluation
  (`training=False`): the files in order, once, no shuffle.

  `skip` is None (`--on_bad_record=fail`: a bad record fails the pipeline) or, for
  `--on_bad_record=skip`, the pre-flight check's exclusions ({file: (records to read
  or -1, indices to leave out)}, `Validation.exclusions`); then records that still
  fail at run time are dropped as well, with a logged warning (`ignore_errors`): an
  image damaged inside, or a data checksum mismatch, after which TensorFlow's reader
  gives up on the rest of that file. With nothing to exclude the records and their
  order are those of the default pipeline.

  Returns a `tf.data.Dataset` of (images [B, S, S, 3] float32, labels [B, C] float32).
  """
  files = sorted(files)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if training:
    dataset = dataset.shuffle(len(files), seed=seed + FILE_SHUFFLE_SEED_OFFSET)
  dataset = dataset.flat_map(_record_reader(files, skip))
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed + RECORD_SHUFFLE_SEED_OFFSET)
    dataset = dataset.repeat()
  dataset = dataset.map(
      lambda record: parse_example(record, image_size, num_classes),
      num_parallel_calls=num_parallel_calls, deterministic=True)
  if skip is not None:
    dataset = dataset.ignore_errors(log_warning=True)
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


# The pre-flight check. It verifies each record header's CRC (8 bytes a record) but not
# the data's: CRC-32C in Python runs at about 18 MB/s, a minute for Caltech256;
# TensorFlow's reader verifies it at run time (see pipeline_error).
_FIX_DATA = ('rewrite the records with bin/make_records, or pass --on_bad_record=skip to '
             'train without the bad ones')
_FIX_TRUNCATED = ('copy the file again or rewrite it with bin/make_records; '
                  '--on_bad_record=skip trains on the records before the damage')
_FIX_NOT_A_TFRECORD = 'remove it from --data_dir or rewrite it with bin/make_records'


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """A record the pre-flight check rejects, and what to do about it.

  `tail`: the file cannot be read from this record on (truncated or damaged framing,
  or not a TFRecord file at all when `index` is 0).
  """
  path: str
  index: int
  reason: str
  fix: str = _FIX_DATA
  tail: bool = False

  def __str__(self):
    return f'{os.path.basename(self.path)} record {self.index}: {self.reason}'


def _values(feature):
  """(kind, values) of a tf.train.Feature; kind None when it holds no list at all."""
  kind = feature.WhichOneof('kind')
  return kind, (getattr(feature, kind).value if kind else ())


def _single(feature, kind):
  """(the one value of a Feature of `kind`, None), or (None, what is wrong with it)."""
  found, values = _values(feature)
  if found != kind or len(values) != 1:
    return None, f'holds {len(values)} {found or "empty"} value(s), the schema needs one {kind}'
  return values[0], None


def _record_problem(path, index, record, num_classes):
  """The BadRecord of one serialized record that the pipeline would choke on, else None."""
  try:
    features = tf.train.Example.FromString(record).features.feature
  except protobuf_message.DecodeError:
    return BadRecord(path, index, 'not a tf.train.Example (it does not parse)')
  for name in ('image', 'label'):
    if name not in features:
      return BadRecord(path, index, f"no '{name}' feature (the schema needs 'image' bytes "
                       "and an int64 'label')")
  image, problem = _single(features['image'], 'bytes_list')
  if problem:
    return BadRecord(path, index, f"'image' {problem}")
  label, problem = _single(features['label'], 'int64_list')
  if problem:
    return BadRecord(path, index, f"'label' {problem}")
  if 'filename' in features:
    # Optional, but when present parse_single_example wants at most one bytes value.
    kind, values = _values(features['filename'])
    if kind not in (None, 'bytes_list') or len(values) > 1:
      return BadRecord(path, index, f"'filename' holds {len(values)} {kind} value(s), the "
                       'schema needs at most one bytes_list value')
  if not 0 <= label < num_classes:
    # A one-hot of such a label is all zeros: it would train silently wrong.
    return BadRecord(path, index, f'label out of range [0, {num_classes}) (label {label})',
                     'check --num_classes or the converter that wrote the records')
  problem = image_bytes.problem(image)
  if problem:
    return BadRecord(path, index, f"'image' is {problem}")
  return None


def _check_file(path, num_classes):
  """(number of good records, [BadRecord]) of one TFRecord file."""
  good, bad = 0, []
  for record in tfrecord.walk(path):
    if record.damage:
      fix = _FIX_NOT_A_TFRECORD if record.damage == tfrecord.NOT_A_TFRECORD else _FIX_TRUNCATED
      bad.append(BadRecord(path, record.index, record.damage, fix, tail=True))
      continue
    problem = _record_problem(path, record.index, record.data, num_classes)
    if problem:
      bad.append(problem)
    else:
      good += 1
  return good, bad


@dataclasses.dataclass(frozen=True)
class Validation:
  """What the pre-flight check found in the files of one split."""
  good_records: int
  bad: tuple  # of BadRecord, in file order

  def exclusions(self):
    """{file: (records to read or -1 for all, indices to leave out)} for make_dataset."""
    plan = {}
    for bad in self.bad:
      limit, indices = plan.get(bad.path, (-1, ()))
      if bad.tail:
        limit = bad.index
      else:
        indices += (bad.index,)
      plan[bad.path] = (limit, indices)
    return plan


def check_records(files, num_classes, *, data_dir, skip=False):
  """The pre-flight check: every record of `files` framed, parsed and checked.

  Pure Python (no TensorFlow session), so graph and eager processes run it alike
  before they build anything. A record fails when its framing is truncated or
  damaged, it is not a tf.train.Example, `image` or `label` is missing or of the
  wrong type, the label is outside [0, num_classes), or the image bytes are not a
  (complete) JPEG, PNG, GIF, BMP or WebP. Without `skip` the first bad record raises
  DataError naming the file, the record and the fix; with it, the bad records are
  returned (and logged) for make_dataset to leave out. A damaged tail of a file is one
  entry: how many records it held cannot be known.
  """
  good, bad = 0, []
  for path in files:
    file_good, file_bad = _check_file(path, num_classes)
    if file_bad and not skip:
      raise DataError(f'--data_dir={data_dir}: {file_bad[0]}; {file_bad[0].fix}')
    good += file_good
    bad.extend(file_bad)
  if bad:
    logging.warning('--on_bad_record=skip: leaving out %d bad record(s) of %s, e.g. %s',
                    len(bad), data_dir, bad[0])
  return Validation(good, tuple(bad))


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a run trains and evaluates on, as recorded in its manifest."""
  data_dir: str
  train_files: tuple
  val_files: tuple
  num_classes: int
  fingerprint: str
  on_bad_record: str
  train_check: Validation
  val_check: Validation

  def skip(self, split):
    """make_dataset's `skip` for 'train' or 'val': None unless --on_bad_record=skip."""
    if self.on_bad_record != 'skip':
      return None
    return (self.train_check if split == 'train' else self.val_check).exclusions()

  def manifest(self):
    """The `data` block of run.json."""
    bad = self.train_check.bad + self.val_check.bad
    return {'data_dir': os.path.abspath(self.data_dir), 'train_files': len(self.train_files),
            'val_files': len(self.val_files), 'num_classes': self.num_classes,
            'fingerprint': self.fingerprint, 'on_bad_record': self.on_bad_record,
            'records': {'train': self.train_check.good_records,
                        'val': self.val_check.good_records},
            'skipped_records': len(bad),
            'skipped': [str(b) for b in bad[:_SKIPPED_LISTED]]}


def describe(data_dir, num_classes=None, on_bad_record='fail'):
  """Finds the files of `data_dir`, settles the class count and checks every record.

  `num_classes` wins when given; otherwise `dataset.json`'s, else Caltech256's 257.
  The fingerprint is computed over the files themselves, so edited data never passes
  for the data a manifest names. The pre-flight check (`check_records`) raises
  DataError for bad data unless `on_bad_record` is 'skip', and for training files
  without a single good record; validation files without one count as none.
  """
  train_files = find_files(data_dir, 'train')
  val_files = find_files(data_dir, 'val')
  info = read_dataset_json(data_dir) or {}
  if num_classes is None:
    num_classes = int(info.get('num_classes', CALTECH256_CLASSES))
  skip = on_bad_record == 'skip'
  train_check = check_records(train_files, num_classes, data_dir=data_dir, skip=skip)
  val_check = check_records(val_files, num_classes, data_dir=data_dir, skip=skip)
  if not train_check.good_records:
    skipped = f' ({len(train_check.bad)} bad ones left out)' if train_check.bad else ''
    raise DataError(f'--data_dir={data_dir}: the training files hold no usable records'
                    f'{skipped}; write some with bin/make_records')
  digest = fingerprint(train_files + val_files)
  if not val_check.good_records:
    # Evaluating nothing would report a loss of 0: without records, no validation.
    val_files = []
  return DataSpec(data_dir, tuple(train_files), tuple(val_files), num_classes, digest,
                  on_bad_record, train_check, val_check)


# Lines of a TensorFlow runtime error that give context, not the failure.
_ERROR_CONTEXT = ('Graph execution error', 'Detected at node', '<stack traces', '[[', 'Node:',
                  'Traceback', 'File "')
_RECORD_AT = re.compile(r'(?:corrupted|truncated) record at (\d+)')


def _error_line(message):
  """The line of a TensorFlow runtime error that says what failed, without node names."""
  for line in re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\].*', '', message or '').splitlines():
    line = line.strip()
    if (line and not line.startswith(_ERROR_CONTEXT)
        and not line.endswith('(most recent call last):')):
      return line
  return 'no message'


def _damaged_record_at(files, offset):
  """'<file> record N: ...' for the record of `files` that TensorFlow's reader rejected at
  byte `offset`, or None. TF reports the start of a cut-off record, or the start of the
  data whose checksum fails; one record per file is checked."""
  for path in files:
    for record in tfrecord.walk(path, read_data=False):
      if record.offset > offset:
        break
      if offset in (record.offset, record.offset + tfrecord.HEADER.size):
        reason = record.damage
        if not reason and not tfrecord.data_intact(path, record):
          reason = ('its bytes are damaged (data checksum mismatch in the record at byte '
                    f'{record.offset})')
        if reason:
          return f'{os.path.basename(path)} record {record.index}: {reason}'
        break
  return None


# The op through which every input-pipeline failure surfaces, in a Session, a
# tf.function and eager iteration alike ("Detected at node IteratorGetNext",
# "[Op:IteratorGetNext]"); an error at any other node is the model's or a device's.
_PIPELINE_OP = 'IteratorGetNext'


def from_input_pipeline(error):
  """Whether a TensorFlow runtime error came out of the input pipeline."""
  return (isinstance(error, tf.errors.DataLossError) or
          _PIPELINE_OP in (getattr(error, 'message', None) or ''))


@contextlib.contextmanager
def input_errors(spec):
  """Turns an input-pipeline failure in the block into its one-line DataError.

  Runtime errors of the model or a device (also InvalidArgumentError) pass through
  unchanged: they are faults (exit 4), not data to rewrite.
  """
  try:
    yield
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    if not from_input_pipeline(e):
      raise
    raise pipeline_error(spec, e) from e


def pipeline_error(spec, error):
  """The one-line DataError of an input-pipeline failure at run time.

  The pre-flight check catches bad data before training; what is left for run time is
  a record whose data checksum fails (named here by file and record, from the offset
  TensorFlow reports) or an image damaged inside, which only decoding finds.
  """
  located = None
  match = _RECORD_AT.search(error.message or '')
  if match:
    located = _damaged_record_at(spec.train_files + spec.val_files, int(match.group(1)))
  if located:
    return DataError(f'--data_dir={spec.data_dir}: {located}; copy the file again or rewrite '
                     'it with bin/make_records')
  return DataError(f'--data_dir={spec.data_dir}: the input pipeline failed '
                   f'({type(error).__name__}: {_error_line(error.message)}); rewrite the bad '
                   'records with bin/make_records or check --num_classes; '
                   '--on_bad_record=skip drops records that fail to decode')
