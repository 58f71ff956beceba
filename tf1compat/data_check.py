"""The pre-flight check of a data directory: every record framed, parsed and checked.

Runs before a runner builds anything, in pure Python (no TensorFlow session), so graph
and eager processes check alike, and bad data stops a run with one line naming the
file, the record and the fix. `check_data_dir` also settles the class count and the
data's fingerprint: its DataSpec is what a run trains on and records in run.json.

The check verifies each record header's CRC (8 bytes a record) but not the data's:
CRC-32C in Python runs at about 18 MB/s, a minute for Caltech256; TensorFlow's reader
verifies it at run time (see data.pipeline_error).
"""

import dataclasses
import os

from absl import logging
from google.protobuf import message as protobuf_message
import tensorflow as tf

from tf1compat import config
from tf1compat import data
from tf1compat import image_bytes
from tf1compat import tfrecord

_FIX_DATA = ('rewrite the records with bin/make_records, or pass --on_bad_record=skip to '
             'train without the bad ones')
_FIX_TRUNCATED = ('copy the file again or rewrite it with bin/make_records; '
                  '--on_bad_record=skip trains on the records before the damage')
_FIX_NOT_A_TFRECORD = 'remove it from --data_dir or rewrite it with bin/make_records'
# How many skipped records run.json lists by name (all are counted).
_SKIPPED_LISTED = 20


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

  A record fails when its framing is truncated or damaged, it is not a
  tf.train.Example, `image` or `label` is missing or of the wrong type, the label is
  outside [0, num_classes), or the image bytes are not a (complete) JPEG, PNG, GIF, BMP
  or WebP. Without `skip` the first bad record raises DataError naming the file, the
  record and the fix; with it, the bad records are returned (and logged) for
  make_dataset to leave out. A damaged tail of a file is one entry: how many records it
  held cannot be known.
  """
  good, bad = 0, []
  for path in files:
    file_good, file_bad = _check_file(path, num_classes)
    if file_bad and not skip:
      raise data.DataError(f'--data_dir={data_dir}: {file_bad[0]}; {file_bad[0].fix}')
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


def check_data_dir(data_dir, num_classes=None, on_bad_record='fail'):
  """Finds the files of `data_dir`, settles the class count and checks every record.

  `num_classes` wins when given; otherwise `dataset.json`'s, else Caltech256's 257.
  The fingerprint is computed over the files themselves, so edited data never passes
  for the data a manifest names. The pre-flight check (`check_records`) raises
  DataError for bad data unless `on_bad_record` is 'skip', and for training files
  without a single good record; validation files without one count as none. Returns
  the DataSpec.
  """
  train_files = data.find_files(data_dir, 'train')
  val_files = data.find_files(data_dir, 'val')
  info = data.read_dataset_json(data_dir) or {}
  if num_classes is None:
    num_classes = int(info.get('num_classes', config.CALTECH256_CLASSES))
  skip = on_bad_record == 'skip'
  train_check = check_records(train_files, num_classes, data_dir=data_dir, skip=skip)
  val_check = check_records(val_files, num_classes, data_dir=data_dir, skip=skip)
  if not train_check.good_records:
    skipped = f' ({len(train_check.bad)} bad ones left out)' if train_check.bad else ''
    raise data.DataError(f'--data_dir={data_dir}: the training files hold no usable records'
                         f'{skipped}; write some with bin/make_records')
  digest = data.fingerprint(train_files + val_files)
  if not val_check.good_records:
    # Evaluating nothing would report a loss of 0: without records, no validation.
    val_files = []
  return DataSpec(data_dir, tuple(train_files), tuple(val_files), num_classes, digest,
                  on_bad_record, train_check, val_check)
