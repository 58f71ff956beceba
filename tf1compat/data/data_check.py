"""The pre-flight check of a data directory: every record framed, verified, parsed and checked.

Runs before a runner builds anything, without the runner's graph or eager machinery (Python,
TensorFlow's record reader, and under skip a Session of its own), so graph and eager
processes check alike, and bad data stops a run with one line naming the
file, the record and the fix. `check_data_dir` also settles the class count and the
data's fingerprint: its DataSpec is what a run trains on and records in run.json.

Every record's framing and data checksums are verified: the headers here, the data by
TensorFlow's own record reader (C++; CRC-32C in Python runs at about 18 MB/s, a minute
for Caltech256). Images are checked by their structure (image_bytes); under
--on_bad_record=skip every image is also decoded once by TensorFlow (pipeline.decode_failures)
so that the pipeline has nothing left to drop at run time. Records of a team's own
schema (--features, record_schema.py) are verified by framing and checksum only; under skip
they go through the team's parser and the decode once. Measured on this project's
2-core machine, 30,000 records of 19 kB JPEGs (560 MB, page cache warm): 1.65 s (0.85 s
before the data checksums and the full JPEG walk), and 10 to 11.5 s under skip.
"""

import dataclasses
import hashlib
import os

from absl import logging
from google.protobuf import message as protobuf_message
import tensorflow as tf

from tf1compat.data import data_folder
from tf1compat.data import image_bytes
from tf1compat.data import pipeline
from tf1compat.data import record_schema
from tf1compat.data import tfrecord
from tf1compat.runs import config

_FIX_DATA = ('rewrite the records with bin/make_records, or pass --on_bad_record=skip to '
             'train without the bad ones')
_FIX_TRUNCATED = ('copy the file again or rewrite it with bin/make_records; '
                  '--on_bad_record=skip trains on the records before the damage')
_FIX_NOT_A_TFRECORD = 'remove it from --data_dir or rewrite it with bin/make_records'
# How many skipped records run.json lists by name (all are counted), and the log names
# per file.
_SKIPPED_LISTED = 20
_LOGGED_PER_FILE = 5


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """A record the pre-flight check rejects, and what to do about it.

  `tail`: the file cannot be read from this record on (truncated or damaged framing,
  a data checksum mismatch, or not a TFRecord file at all when `index` is 0).
  `lost`: the records a run leaves out for it: 1, or for a tail whose framing goes on,
  this record and every one after it (TensorFlow's reader gives up on the rest of the
  file); a tail whose framing is broken counts 1, what followed it cannot be known.
  """
  path: str
  index: int
  reason: str
  fix: str = _FIX_DATA
  tail: bool = False
  lost: int = 1

  def describe(self):
    """'record N: reason', and the records left out with it (--on_bad_record=skip)."""
    text = f'record {self.index}: {self.reason}'
    if self.lost > 1:
      text += f' (it and the {self.lost - 1} record(s) after it are left out)'
    return text

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


def _verified_records(path):
  """TensorFlow's reader over the file at `path`: each record's data, its CRC-32C verified
  (a DataLossError at the first that fails). tf_record_iterator is the public reader that
  needs neither eager mode nor a Session; its deprecation notice, printed once per
  process, is kept out of the runners' output."""
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel('ERROR')
  try:
    return tf.compat.v1.io.tf_record_iterator(path)
  finally:
    logger.setLevel(level)


def _check_file(path, num_classes, parse=None):
  """([indices of the good records], [BadRecord]) of one TFRecord file; with a --features
  parser `parse`, whose schema this check cannot read, by framing and checksum only."""
  good, bad = [], []
  framing = list(tfrecord.walk(path, read_data=False))
  verified = _verified_records(path)
  for record in framing:
    if record.damage:
      fix = _FIX_NOT_A_TFRECORD if record.damage == tfrecord.NOT_A_TFRECORD else _FIX_TRUNCATED
      bad.append(BadRecord(path, record.index, record.damage, fix, tail=True))
      break
    try:
      serialized = next(verified)
    except tf.errors.DataLossError:
      # The framing is whole up to here, so it is this record's data checksum.
      reason = ('its bytes are damaged (data checksum mismatch in the record at byte '
                f'{record.offset})')
      bad.append(BadRecord(path, record.index, reason, _FIX_TRUNCATED, tail=True,
                           lost=len(framing) - record.index))
      break
    problem = None if parse else _record_problem(path, record.index, serialized, num_classes)
    if problem:
      bad.append(problem)
    else:
      good.append(record.index)
  return good, bad


@dataclasses.dataclass(frozen=True)
class Validation:
  """What the pre-flight check found in the files of one split.

  `good`: ((file, (indices of its good records)), ...) in file order.
  """
  good: tuple
  bad: tuple  # of BadRecord, in file order

  @property
  def good_records(self):
    """How many records a run reads of this split: the records it trains or evaluates on."""
    return sum(len(indices) for _, indices in self.good)

  @property
  def lost_records(self):
    """How many records a run leaves out of this split (BadRecord.lost)."""
    return sum(bad.lost for bad in self.bad)

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

  def lost_by_file(self):
    """{file name: records left out} of the files that lose any."""
    lost = {}
    for bad in self.bad:
      name = os.path.basename(bad.path)
      lost[name] = lost.get(name, 0) + bad.lost
    return lost


def _leave_out(validation, failures, parse=None):
  """`validation` with the records of `failures` ({(file, index): reason}) moved to bad
  (`parse`: the --features parser they went through, if any)."""
  if not failures:
    return validation
  good = tuple((path, tuple(i for i in indices if (path, i) not in failures))
               for path, indices in validation.good)
  order = {path: number for number, (path, _) in enumerate(validation.good)}
  bad = validation.bad + tuple(BadRecord(path, index, pipeline.undecodable(reason, parse))
                               for (path, index), reason in failures.items())
  return Validation(good, tuple(sorted(bad, key=lambda b: (order.get(b.path, -1), b.index))))


def check_records(files, num_classes, *, data_dir, skip=False, parse=None):
  """The pre-flight check: every record of `files` framed, verified, parsed and checked.

  A record fails when its framing is truncated or damaged, its data fails its
  checksum, it is not a tf.train.Example, `image` or `label` is missing or of the
  wrong type, the label is outside [0, num_classes), or the image bytes are not a
  whole JPEG, PNG, GIF, BMP or WebP (image_bytes.problem). Without `skip` the first bad
  record raises DataError naming the file, the record and the fix; with it, every
  image is also decoded once (pipeline.decode_failures: what only decoding finds), and the
  bad records are returned for make_dataset to leave out and logged, file by file.

  With a --features parser `parse` (record_schema.Parser) the records are of a schema this
  check cannot read: only their framing and data checksums are verified, and under
  `skip` every record goes through the parser, the decode and the label's range check
  once (decode_failures) instead of the checks of the seed's schema.
  """
  good, bad = [], []
  for path in files:
    file_good, file_bad = _check_file(path, num_classes, parse)
    if file_bad and not skip:
      raise data_folder.DataError(f'--data_dir={data_dir}: {file_bad[0]}; {file_bad[0].fix}')
    good.append((path, tuple(file_good)))
    bad.extend(file_bad)
  validation = Validation(tuple(good), tuple(bad))
  if skip:
    validation = _leave_out(
        validation, pipeline.decode_failures(dict(validation.good), num_classes, parse), parse)
  if validation.bad:
    logging.warning('--on_bad_record=skip: leaving out %d bad record(s) of %s',
                    validation.lost_records, data_dir)
    for name, lost in validation.lost_by_file().items():
      entries = [b for b in validation.bad if os.path.basename(b.path) == name]
      more = len(entries) - _LOGGED_PER_FILE
      logging.warning('--on_bad_record=skip: %s: %d record(s) left out: %s%s', name, lost,
                      '; '.join(b.describe() for b in entries[:_LOGGED_PER_FILE]),
                      f'; and {more} more' if more > 0 else '')
  return validation


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
  # The --features parser (record_schema.Parser) the pipeline reads records with; None: the
  # seed's schema.
  parse: object = None

  def skip(self, split):
    """make_dataset's `skip` for 'train' or 'val': None unless --on_bad_record=skip."""
    if self.on_bad_record != 'skip':
      return None
    return (self.train_check if split == 'train' else self.val_check).exclusions()

  def shuffle_buffer(self, requested):
    """The record shuffle's buffer for --shuffle_buffer=`requested`: at most the training
    records a run reads.

    Capped, not refused: tf.data fills a shuffle buffer only with the records there are,
    so a buffer at least as big as the data is a full shuffle, and a TF user writes
    shuffle(10000) on a small dataset expecting exactly that (measured: the same order for
    a buffer of the record count and of 10**6). TensorFlow however reserves the whole
    buffer up front: 2e9 slots segfaulted (issue 41), the cap keeps the same batches.
    """
    return min(requested, max(1, self.train_check.good_records))

  def checked_records(self):
    """{file: (indices of the records a run reads)} of both splits."""
    return dict(self.train_check.good + self.val_check.good)

  def manifest(self):
    """The `data` block of run.json: the records counted are those a run reads."""
    bad = self.train_check.bad + self.val_check.bad
    return {'data_dir': os.path.abspath(self.data_dir), 'train_files': len(self.train_files),
            'val_files': len(self.val_files), 'num_classes': self.num_classes,
            'fingerprint': self.fingerprint, 'on_bad_record': self.on_bad_record,
            'records': {'train': self.train_check.good_records,
                        'val': self.val_check.good_records},
            'skipped_records': self.train_check.lost_records + self.val_check.lost_records,
            'skipped_by_file': {**self.train_check.lost_by_file(),
                                **self.val_check.lost_by_file()},
            'skipped': [f'{os.path.basename(b.path)} {b.describe()}'
                        for b in bad[:_SKIPPED_LISTED]]}


def _fingerprint(files, bad):
  """The data's content fingerprint (data_folder.fingerprint), and with --on_bad_record=skip the
  records left out: a run resumes only on the very records it trains on."""
  digest = data_folder.fingerprint(files)
  if not bad:
    return digest
  left_out = ''.join(f'\n{os.path.basename(b.path)} {b.index} {b.tail}' for b in bad)
  return hashlib.sha256((digest + left_out).encode()).hexdigest()


def check_data_dir(data_dir, num_classes=None, on_bad_record='fail',
                   allow_num_classes_mismatch=False, features=None):
  """Finds the files of `data_dir`, settles the class count and checks every record.

  `num_classes` wins when given; otherwise `dataset.json`'s, else Caltech256's 257. A
  folder that a make_records conversion left unfinished is refused, and so is a
  `num_classes` that disagrees with dataset.json unless `allow_num_classes_mismatch`.
  The fingerprint is a content hash of the records (data_folder.fingerprint), so edited data
  never passes for the data a manifest names, while a damaged file restored does. The
  pre-flight check (`check_records`) raises DataError for bad data unless
  `on_bad_record` is 'skip', and for training files without a single good record;
  validation files without one count as none. `features`: the --features parser's
  'package.module:function' (plugins), for records of another schema (check_records).
  Returns the DataSpec.
  """
  train_files = data_folder.find_files(data_dir, 'train')
  val_files = data_folder.find_files(data_dir, 'val')
  info = data_folder.dataset_info(data_dir, num_classes, allow_num_classes_mismatch)
  if num_classes is None:
    num_classes = info.get('num_classes', config.CALTECH256_CLASSES)
  skip = on_bad_record == 'skip'
  parse = record_schema.load_parser(features)
  if parse:
    pipeline.check_parser(parse, num_classes)
  train_check = check_records(train_files, num_classes, data_dir=data_dir, skip=skip,
                              parse=parse)
  val_check = check_records(val_files, num_classes, data_dir=data_dir, skip=skip, parse=parse)
  if not train_check.good_records:
    skipped = f' ({len(train_check.bad)} bad ones left out)' if train_check.bad else ''
    raise data_folder.DataError(f'--data_dir={data_dir}: the training files hold no usable records'
                                f'{skipped}; write some with bin/make_records')
  digest = _fingerprint(train_files + val_files, train_check.bad + val_check.bad)
  if not val_check.good_records:
    # Evaluating nothing would report a loss of 0: without records, no validation.
    val_files = []
  return DataSpec(data_dir, tuple(train_files), tuple(val_files), num_classes, digest,
                  on_bad_record, train_check, val_check, parse)
