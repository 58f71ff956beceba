"""A data directory's files and its dataset.json, read without TensorFlow.

The names of the files a data folder holds, the content fingerprint of its records (their
framing only), and what dataset.json says and whether it agrees with the folder. TensorFlow-
free, so that a runner refuses a missing folder, a folder without records or a dataset.json
that is wrong before it imports TensorFlow (preflight); the check of every record is
data_check's, the input pipeline data's.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import struct

from tf1compat.data import tfrecord
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import user_files

TRAIN_PATTERN = 'train-*.tfrecord'
VAL_PATTERN = 'val-*.tfrecord'
ALL_PATTERN = '*.tfrecord'
DATASET_JSON = 'dataset.json'
# Lies in a data folder while bin/make_records replaces the records in it (records.py):
# a folder holding it is a conversion that did not finish.
INCOMPLETE_MARKER = 'dataset.json.incomplete'
# What fingerprint hashes of each record: its length and its data's stored CRC-32C.
_LENGTH_AND_CRC = struct.Struct('<QI')

# The shard names bin/make_records writes. A folder holding them without dataset.json is
# a conversion that did not finish (data_check), unless another program wrote them.
_SHARD_NAME = re.compile(r'(train|val)-\d{5}-of-\d{5}\.tfrecord')


def is_shard_name(name):
  """Whether `name` is a shard name that bin/make_records writes."""
  return _SHARD_NAME.fullmatch(name) is not None


class DataError(errors.UsageError):
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
    return _readable(sorted(glob.glob(os.path.join(data_dir, VAL_PATTERN))))
  files = sorted(glob.glob(os.path.join(data_dir, TRAIN_PATTERN)))
  if not files:
    files = [f for f in sorted(glob.glob(os.path.join(data_dir, ALL_PATTERN)))
             if not os.path.basename(f).startswith('val-')]
  if not files:
    raise DataError(f'--data_dir={data_dir}: no {TRAIN_PATTERN} or {ALL_PATTERN} files; '
                    'write some with bin/make_records')
  return _readable(files)


def _readable(files):
  """`files`, or DataError naming the first that is not a file this process can read: a
  folder or a dangling link named like a shard ended a run with exit 4 and a traceback."""
  for path in files:
    if os.path.isdir(path):
      why = 'a folder, not a TFRecord file'
    elif not os.path.isfile(path):
      why = ('a link to nothing' if os.path.islink(path) else 'not a regular file')
    elif not os.access(path, os.R_OK):
      why = 'not readable (no permission)'
    else:
      continue
    raise DataError(f'{path}: {why}; remove it from the data folder, or rename it so that '
                    'it does not end in .tfrecord')
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
    info = user_files.read_json(path, '', fix)
  except errors.UsageError as e:
    raise DataError(str(e)) from e
  if not isinstance(info, dict):
    raise DataError(f'{path}: holds a JSON {type(info).__name__}, not an object with '
                    f'num_classes; {fix}')
  classes = info.get('num_classes')
  if (isinstance(classes, bool) or not isinstance(classes, int)
      or not 2 <= classes <= config.INT_MAX):
    raise DataError(f'{path}: num_classes is {classes!r}, not an integer in [2, '
                    f'{config.INT_MAX}]; {fix}')
  files = info.get('files', [])
  if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
    raise DataError(f"{path}: 'files' is not a list of file names; {fix}")
  return info


def dataset_info(data_dir, num_classes, allow_num_classes_mismatch):
  """dataset.json of `data_dir` ({} without one), refused when the folder is a conversion
  that did not finish or the file disagrees with the folder or with --num_classes."""
  info = read_dataset_json(data_dir)
  where = f'--data_dir={data_dir}'
  if os.path.exists(os.path.join(data_dir, INCOMPLETE_MARKER)):
    raise DataError(f'{where}: a bin/make_records conversion into it did not finish '
                    f'({INCOMPLETE_MARKER} is there); rerun it with --overwrite')
  if info is None:
    # Shards named as make_records names them, without dataset.json: a conversion that
    # did not finish (this version's leave INCOMPLETE_MARKER; older ones left nothing).
    shards = sorted(name for name in os.listdir(data_dir) if is_shard_name(name))
    if shards and num_classes is None:
      raise DataError(
          f'{where}: it holds bin/make_records shards ({shards[0]}...) but no '
          f'{DATASET_JSON}: the conversion did not finish; rerun bin/make_records with '
          '--overwrite (or pass --num_classes if another program wrote these shards)')
    return {}
  missing = [name for name in info.get('files', ())
             if not os.path.exists(os.path.join(data_dir, name))]
  if missing:
    raise DataError(f'{where}: {missing[0]} is listed in {DATASET_JSON} but missing '
                    f'({len(missing)} file(s) missing); copy the folder again or rerun '
                    'bin/make_records')
  # make_records writes no shard without records: one emptied to 0 bytes lost them all,
  # as a missing one did (a TFRecord file of 0 bytes reads as no records, no damage).
  emptied = [name for name in info.get('files', ())
             if os.path.isfile(os.path.join(data_dir, name))
             and os.path.getsize(os.path.join(data_dir, name)) == 0]
  if emptied:
    raise DataError(f'{where}: {emptied[0]} is listed in {DATASET_JSON} but empty (0 bytes: '
                    f'{len(emptied)} file(s) emptied, their records missing); copy the folder '
                    'again or rerun bin/make_records')
  if (num_classes is not None and num_classes != info['num_classes']
      and not allow_num_classes_mismatch):
    raise DataError(
        f'--num_classes={num_classes} disagrees with {os.path.join(data_dir, DATASET_JSON)}'
        f' ({info["num_classes"]} classes); drop --num_classes, or pass '
        f'--allow_num_classes_mismatch to train {num_classes} classes on it')
  return info
