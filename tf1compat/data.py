"""The seed's TFRecord schema and input pipeline, one `tf.data` graph for both modes.

`make_dataset` builds the same pipeline whether it is called under
`tf.compat.v1.disable_v2_behavior()` (the graph runner's one-shot iterator) or eagerly
(the TF2 runner's `for` loop). Every random op takes an explicit seed derived from
the run's `--seed`, so both runners see identical batches as long as both set the same
global seed (or neither does).

Also here: finding a data directory's files and `dataset.json`, and turning an input
pipeline failure at run time into its one-line DataError (`input_errors`). The check
of the records before a run is `data_check`'s.
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import struct

import tensorflow as tf

from tf1compat import cli
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
# Lies in a data folder while bin/make_records replaces the records in it (records.py):
# a folder holding it is a conversion that did not finish.
INCOMPLETE_MARKER = 'dataset.json.incomplete'

# Offsets that turn the run's --seed into distinct op-level seeds, so that the
# file-order shuffle and the record shuffle do not draw the same stream.
FILE_SHUFFLE_SEED_OFFSET = 1
RECORD_SHUFFLE_SEED_OFFSET = 2
_LENGTH_AND_CRC = struct.Struct('<QI')


# The shard names bin/make_records writes. A folder holding them without dataset.json is
# a conversion that did not finish (data_check), unless another program wrote them.
_SHARD_NAME = re.compile(r'(train|val)-\d{5}-of-\d{5}\.tfrecord')


def is_shard_name(name):
  """Whether `name` is a shard name that bin/make_records writes."""
  return _SHARD_NAME.fullmatch(name) is not None


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
  """sha256 over the names of `files` and, record by record, each record's length and the
  data CRC-32C its writer stored: equal only for the same records in the same files.

  A content hash, not one of the bytes on disk: a copy whose data bytes were damaged
  keeps the stored CRCs, so a damaged file copied again (or rewritten by make_records,
  which writes the same bytes from the same input) has the fingerprint it had before,
  and a run started before the damage resumes. The pre-flight check verifies every
  record against these CRCs, so the data a run reads is the data they describe.
  Reads only the framing (16 bytes a record).
  """
  digest = hashlib.sha256()
  for path in sorted(files):
    digest.update(os.path.basename(path).encode() + b'\0')
    for record in tfrecord.walk(path, read_data=False):
      if record.damage:
        digest.update(f'damaged at {record.offset}'.encode())
        break
      digest.update(_LENGTH_AND_CRC.pack(record.length, record.crc))
  return digest.hexdigest()


def preprocess_image(image_bytes, image_size):
  """Decodes image bytes to 3 channels, pads-and-resizes to a square, standardizes.

  JPEG (grey and CMYK included), PNG, GIF (first frame), BMP and WebP all decode; for
  JPEG the pixels are those of the seed's `decode_jpeg`.
  """
  image = _decode(image_bytes)
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

  `skip` is None (`--on_bad_record=fail`) or, for `--on_bad_record=skip`, the
  pre-flight check's exclusions ({file: (records to read or -1, indices to leave out)},
  `data_check.Validation.exclusions`). Nothing is dropped at run time: under skip the
  check has decoded every image already (decode_failures), so a record that still
  fails (a file changed since the check) fails the pipeline as under fail, rather than
  vanish from run.json's counts. With nothing to exclude the records and their order
  are those of the default pipeline.

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
  dataset = dataset.batch(batch_size, drop_remainder=training)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def decode_failures(records):
  """{(file, index): why}: the records among `records` ({file: record indices}) whose
  image the pipeline's decode (tf.io.decode_image, 3 channels) rejects.

  One parallel tf.data pass in a graph and Session of its own, so graph and eager
  processes run it alike; then each failure is decoded alone for its message. Measured:
  see data_check (the pre-flight check runs it under --on_bad_record=skip).
  """
  files = sorted(path for path, indices in records.items() if indices)
  if not files:
    return {}
  graph = tf.Graph()
  with graph.as_default():
    # A one-shot iterator asks for a seed under op determinism; nothing here is random.
    tf.compat.v1.set_random_seed(0)
    # Every record up to the last one asked about is decoded (the others cost little
    # and are not reported): a per-record filter would cost a search a record.
    limits = tf.constant([max(records[path]) + 1 for path in files], tf.int64)

    def read(number, path):
      dataset = tf.data.TFRecordDataset(path).take(limits[number]).enumerate()
      return dataset.map(lambda index, record: (number * (1 << 32) + index, record))

    def decode(key, record):
      image = tf.io.parse_single_example(record, {'image': FEATURES['image']})['image']
      return key, tf.shape(_decode(image))[0]

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(files), dtype=tf.int64), files)).flat_map(read)
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    decoded = tf.compat.v1.data.make_one_shot_iterator(
        dataset.ignore_errors().map(lambda key, _: key).batch(4096)).get_next()
    blob = tf.compat.v1.placeholder(tf.string, [])
    alone = _decode(blob)
  survivors = set()
  with tf.compat.v1.Session(graph=graph) as session:
    while True:
      try:
        survivors.update(session.run(decoded).tolist())
      except tf.errors.OutOfRangeError:
        break
    failures = {}
    for number, path in enumerate(files):
      lost = {index for index in records[path] if (number << 32) | index not in survivors}
      for record in tfrecord.walk(path) if lost else ():
        if record.index in lost:
          image = tf.train.Example.FromString(record.data).features.feature['image']
          try:
            session.run(alone, {blob: image.bytes_list.value[0]})
            failures[(path, record.index)] = 'it fails in the input pipeline'
          except tf.errors.InvalidArgumentError as e:
            failures[(path, record.index)] = error_line(e.message)
  return failures


def _decode(image_bytes):
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def read_dataset_json(data_dir):
  """The `dataset.json` of `data_dir` as a dict, or None when the folder has none.

  Raises DataError for a file that is not a JSON object with an integer num_classes of
  at least 2 (and, when present, a list of file names under 'files').
  """
  path = os.path.join(data_dir, DATASET_JSON)
  if not os.path.exists(path):
    return None
  fix = 'rewrite it with bin/make_records, or remove it and pass --num_classes'
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: unreadable ({e}); {fix}') from e
  if not isinstance(info, dict):
    raise DataError(f'{path}: holds a JSON {type(info).__name__}, not an object with '
                    f'num_classes; {fix}')
  classes = info.get('num_classes')
  if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
    raise DataError(f'{path}: num_classes is {classes!r}, not an integer of at least 2; {fix}')
  files = info.get('files', [])
  if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
    raise DataError(f"{path}: 'files' is not a list of file names; {fix}")
  return info


# Lines of a TensorFlow runtime error that give context, not the failure.
_ERROR_CONTEXT = ('Graph execution error', 'Detected at node', '<stack traces', '[[', 'Node:',
                  'Traceback', 'File "')
_RECORD_AT = re.compile(r'(?:corrupted|truncated) record at (\d+)')


def error_line(message):
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

  `spec`: the run's data_check.DataSpec (its data_dir, files and checked records).

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

  The pre-flight check (data_check) catches bad data before training; what is left for
  run time is a file changed since (a record whose data checksum fails, named here by
  file and record from the offset TensorFlow reports) or, under --on_bad_record=fail,
  an image damaged inside its compressed data, which only decoding finds: every image
  is then decoded once more (decode_failures) to name it.
  """
  files = spec.train_files + spec.val_files
  located = None
  match = _RECORD_AT.search(error.message or '')
  if match:
    located = _damaged_record_at(files, int(match.group(1)))
  if located:
    return DataError(f'--data_dir={spec.data_dir}: {located}; copy the file again or rewrite '
                     'it with bin/make_records')
  failures = {}
  if files and isinstance(error, tf.errors.InvalidArgumentError):
    failures = decode_failures(spec.checked_records())
  if failures:
    (path, index), why = min(failures.items())
    return DataError(f"--data_dir={spec.data_dir}: {os.path.basename(path)} record {index}: "
                     f"'image' does not decode ({why}); rewrite it with bin/make_records, or "
                     'pass --on_bad_record=skip to train without it (the check then decodes '
                     'every image first)')
  return DataError(f'--data_dir={spec.data_dir}: the input pipeline failed '
                   f'({type(error).__name__}: {error_line(error.message)}); rewrite the bad '
                   'records with bin/make_records or check --num_classes')
