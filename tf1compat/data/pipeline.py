"""The seed's TFRecord schema and input pipeline, one `tf.data` graph for both modes.

`make_dataset` builds the same pipeline whether it is called under
`tf.compat.v1.disable_v2_behavior()` (the graph runner's one-shot iterator) or eagerly
(the TF2 runner's `for` loop). Every random op takes an explicit seed derived from
the run's `--seed`, so both runners see identical batches as long as both set the same
global seed (or neither does).

Also here: turning an input pipeline failure at run time into its one-line DataError
(`input_errors`). A data directory's files and `dataset.json` are `data_folder`'s; the
check of the records before a run is `data_check`'s.
"""

import contextlib
import os
import re

import tensorflow as tf

from tf1compat.data import data_folder
from tf1compat.data import record_schema
from tf1compat.data import tfrecord
from tf1compat.runtime import stacks

# The seed's schema: what `bin/make_records` writes and what a Caltech256 TFRecord
# export from the seed's era holds. The pipeline never reads `filename`, so records
# written without one are accepted.
FEATURES = {
    'image': tf.io.FixedLenFeature([], tf.string),
    'filename': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'label': tf.io.FixedLenFeature([], tf.int64),
}

# Offsets that turn the run's --seed into distinct op-level seeds, so that the
# file-order shuffle and the record shuffle do not draw the same stream.
FILE_SHUFFLE_SEED_OFFSET = 1
RECORD_SHUFFLE_SEED_OFFSET = 2


def _checked_label(label, num_classes):
  """`label` as int64, failing the pipeline when it lies outside [0, num_classes): its
  one-hot would be all zeros and would train silently wrong."""
  label = tf.cast(label, tf.int64)
  check = tf.debugging.assert_less(
      label, tf.constant(num_classes, tf.int64),
      message=f'label out of range [0, {num_classes}): check --num_classes')
  check_nonneg = tf.debugging.assert_non_negative(
      label, message=f'label out of range [0, {num_classes}): negative label')
  with tf.control_dependencies([check, check_nonneg]):
    return tf.identity(label)


def _team_example(serialized, parse):
  """(image bytes or a float32 image [H, W, 3], label) of a --features parser, its output
  checked as record_schema's contract says (PluginError while the pipeline is traced)."""
  where = f'--features={parse.spec}'
  result = parse(serialized)
  if not isinstance(result, (tuple, list)) or len(result) != 2:
    raise record_schema.PluginError(f'{where}: the parser returned a {type(result).__name__}; '
                                    'return a pair (image, label)')
  image, label = (tf.convert_to_tensor(value) for value in result)
  if image.dtype == tf.string:
    if image.shape.rank not in (None, 0):
      raise record_schema.PluginError(f'{where}: its image is {image.shape} strings; return the '
                                      'bytes of one encoded image (a scalar) or a decoded image')
    image = tf.ensure_shape(image, [])
  elif image.dtype.is_floating or image.dtype.is_integer:
    if not image.shape.is_compatible_with([None, None, 3]):
      raise record_schema.PluginError(f'{where}: its image has shape {image.shape}; return a '
                                      'decoded image [height, width, 3] or encoded image bytes')
    image = tf.cast(tf.ensure_shape(image, [None, None, 3]), tf.float32)
  else:
    raise record_schema.PluginError(f'{where}: its image is {image.dtype.name}; return encoded '
                                    'image bytes (tf.string) or a decoded image of numbers')
  if not label.dtype.is_integer or not label.shape.is_compatible_with([]):
    raise record_schema.PluginError(f'{where}: its label is {label.dtype.name} {label.shape}; '
                                    'return one integer class index')
  return image, tf.ensure_shape(label, [])


def labeled_image(serialized, num_classes, parse=None):
  """(decoded image [H, W, 3], int64 label in [0, num_classes)) of one record: the seed's
  schema, or the --features parser `parse` (record_schema's contract) when given."""
  if parse is None:
    example = tf.io.parse_single_example(serialized, FEATURES)
    image, label = example['image'], example['label']
  else:
    image, label = _team_example(serialized, parse)
  label = _checked_label(label, num_classes)
  return (_decode(image) if image.dtype == tf.string else image), label


def check_parser(parse, num_classes):
  """Traces the --features parser `parse` as the pipeline does (tf.data's map, in a
  graph of its own, nothing run), so that a parser breaking record_schema's contract stops a
  run with its PluginError before anything is built or written."""
  with tf.Graph().as_default():
    tf.data.Dataset.from_tensors(tf.constant(b'')).map(
        lambda record: labeled_image(record, num_classes, parse))


def parse_example(serialized, image_size, num_classes, parse=None):
  """Turns one serialized record into (standardized image, one-hot label): a
  tf.train.Example of the seed's schema, or what the --features parser `parse` reads.

  A label outside [0, num_classes) fails the pipeline.
  """
  image, label = labeled_image(serialized, num_classes, parse)
  image = stacks.resize_with_pad(image, image_size, image_size)
  return tf.image.per_image_standardization(image), tf.one_hot(label, num_classes)


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
                 shuffle_buffer=10000, num_parallel_calls=stacks.AUTOTUNE, skip=None,
                 parse=None):
  """Builds the seed's input pipeline over `files`, for graph or eager mode alike.

  Training: file-name shuffle (once: the same file order on every pass), records,
  shuffle of the serialized records (about a hundred times cheaper than the seed's
  shuffle of decoded float images; another order on every pass), repeat,
  parallel parse/decode with a deterministic order, batch, prefetch. Evaluation
  (`training=False`): the files in order, once, no shuffle.

  `skip` is None (`--on_bad_record=fail`) or, for `--on_bad_record=skip`, the
  pre-flight check's exclusions ({file: (records to read or -1, indices to leave out)},
  `data_check.Validation.exclusions`). Nothing is dropped at run time: under skip the
  check has decoded every image already (decode_failures), so a record that still
  fails (a file changed since the check) fails the pipeline as under fail, rather than
  vanish from run.json's counts. With nothing to exclude the records and their order
  are those of the default pipeline. `parse`: None for the seed's schema, or the
  --features parser (record_schema.Parser) that reads each record before the shared steps.

  Returns a `tf.data.Dataset` of (images [B, S, S, 3] float32, labels [B, C] float32).
  """
  files = sorted(files)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if training:
    # One file order for every pass: a reshuffling shuffle nested inside the reshuffling
    # record shuffle is reseeded otherwise by TensorFlow 1.15 than by 2.21 on each pass
    # after the first (measured on the embedded data: the first pass's batches identical,
    # the second to fourth passes' not). The record shuffle alone, reseeded on each pass
    # by its own generator, draws the same orders in both (measured: 20 passes bit for
    # bit, docs/legacy-stack.md), and each pass stays a shuffle of every record once. One
    # shuffle over the repeated stream of records instead (no reseeding at all) also
    # agrees, but mixes the passes: 72 to 77% of a pass's records distinct, some twice in
    # one batch, and a buffer that reaches into the next passes.
    dataset = dataset.shuffle(len(files), seed=seed + FILE_SHUFFLE_SEED_OFFSET,
                              reshuffle_each_iteration=False)
  dataset = dataset.flat_map(_record_reader(files, skip))
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed + RECORD_SHUFFLE_SEED_OFFSET).repeat()
  dataset = stacks.parallel_map(
      dataset, lambda record: parse_example(record, image_size, num_classes, parse),
      num_parallel_calls)
  dataset = dataset.batch(batch_size, drop_remainder=training)
  dataset = dataset.prefetch(stacks.AUTOTUNE)
  return dataset.with_options(stacks.deterministic_options())


def run_dataset(spec, cfg, training):
  """The pipeline every runner reads: the training (`training`) or validation records of
  `spec` (data_check's DataSpec), batched, shuffled and seeded as the runner's config
  `cfg` says."""
  split = 'train' if training else 'val'
  return make_dataset(
      spec.train_files if training else spec.val_files, training=training,
      skip=spec.skip(split), image_size=cfg.image_size, num_classes=spec.num_classes,
      batch_size=cfg.batch_size, seed=cfg.seed,
      shuffle_buffer=spec.shuffle_buffer(cfg.shuffle_buffer), parse=spec.parse)


def fresh_each_iteration(build):
  """`build()`, a dataset, built anew for every iterator made from it.

  A shuffled tf.data pipeline draws a new order for each iterator of the same dataset
  object. Keras 3.15's fit makes one iterator to peek at a batch (under a strategy, to
  build its metrics; on JAX, to build the model's state) and another to train on, which
  would then train on the second order: measured on JAX, the first batch loss 10% from
  the custom loop's on the same weights. Here every iterator starts with the run's first
  batch. The object stays of the pipeline's own class (a subclass of it), which is what
  fit accepts.
  """
  dataset = build()

  class FreshDataset(type(dataset)):

    def __iter__(self):
      return iter(build())

  dataset.__class__ = FreshDataset
  return dataset


def decode_failures(records, num_classes, parse=None):
  """{(file, index): why}: the records among `records` ({file: record indices}) that
  the pipeline's parse and decode (`labeled_image`: the seed's schema or the --features
  parser `parse`, tf.io.decode_image to 3 channels, the label's range) reject.

  One parallel tf.data pass in a graph and Session of its own, so graph and eager
  processes run it alike; then each failure is parsed and decoded alone for its message.
  Measured: see data_check (the pre-flight check runs it under --on_bad_record=skip).
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
      return key, tf.shape(labeled_image(record, num_classes, parse)[0])[0]

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(files), dtype=tf.int64), files)).flat_map(read)
    dataset = dataset.map(decode, num_parallel_calls=stacks.AUTOTUNE)
    decoded = tf.compat.v1.data.make_one_shot_iterator(
        stacks.ignore_errors(dataset).map(lambda key, _: key).batch(4096)).get_next()
    blob = tf.compat.v1.placeholder(tf.string, [])
    alone = labeled_image(blob, num_classes, parse)
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
          try:
            session.run(alone, {blob: record.data})
            failures[(path, record.index)] = 'it fails in the input pipeline'
          except tf.errors.InvalidArgumentError as e:
            failures[(path, record.index)] = error_line(e.message)
  return failures


def _decode(image_bytes):
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  # channels=3 fixes the depth, which TensorFlow 1.15's shape inference leaves unknown
  # (the convolutions need it).
  image.set_shape([None, None, 3])
  return image


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


def undecodable(why, parse=None):
  """What a record that decode_failures reports (`why`) fails at, for a message."""
  if parse is None:
    return f"'image' does not decode ({why})"
  return f'--features={parse.spec} or the decode of its image fails ({why})'


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
    return data_folder.DataError(f'--data_dir={spec.data_dir}: {located}; copy the file again '
                                 'or rewrite it with bin/make_records')
  failures = {}
  if files and isinstance(error, tf.errors.InvalidArgumentError):
    failures = decode_failures(spec.checked_records(), spec.num_classes, spec.parse)
  if failures:
    (path, index), why = min(failures.items())
    return data_folder.DataError(
        f'--data_dir={spec.data_dir}: {os.path.basename(path)} record {index}: '
        f'{undecodable(why, spec.parse)}; rewrite it with bin/make_records, or pass '
        '--on_bad_record=skip to train without it (the check then decodes every image first)')
  return data_folder.DataError(f'--data_dir={spec.data_dir}: the input pipeline failed '
                               f'({type(error).__name__}: {error_line(error.message)}); rewrite '
                               'the bad records with bin/make_records or check --num_classes')
