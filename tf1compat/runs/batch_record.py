"""The batches a recorded loop trained on: every step's digest, the first steps' arrays.

A team's TF1 job and its port read their data through pipelines of their own; two runs
are comparable step by step only if step k of both trained on the same batch. A
recording keeps, in its run directory's batches/ folder:

  digests.csv             one row a step: its number, the sha256 of its batch
                          (batch_digest) and whether its arrays are stored
  step-NNNNNN.npz         the arrays of a stored step, keys 'features' and 'labels' for a
                          lone array, 'features/NAME' and 'labels/NAME' for a dict

The arrays of the first `stored_steps` steps are stored, up to `max_bytes` in all (a
batch that would cross it is hashed, not stored), so that the port can train on exactly
those batches (stored_batches; recorded_batches in keras_callback.py wraps them in a
tf.data.Dataset). The digests of every step let compare_runs name the first step whose
input differs when two runs share a pipeline. TensorFlow-free: arrays in, arrays out.
"""

import csv
import hashlib
import os
import zipfile

import numpy as np

from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import user_files

BATCHES_DIR = run_files.BATCHES_DIR
DIGESTS_CSV = 'digests.csv'
_COLUMNS = ('step', 'digest', 'stored')
# What a recording keeps unless told otherwise: a few hundred steps cover the step tier's
# horizon and the first epochs of a small job; 256 MiB keeps a run directory copyable.
DEFAULT_STORED_STEPS = 200
DEFAULT_MAX_BYTES = 256 << 20
FEATURES = 'features'
LABELS = 'labels'


def flatten(features, labels=None):
  """{key: numpy array} of one batch: 'features' or 'features/NAME' for each entry of a
  dict, the same for labels (left out when None). Tensors convert themselves (.numpy())."""
  arrays = {}
  for part, value in ((FEATURES, features), (LABELS, labels)):
    if value is None:
      continue
    if isinstance(value, dict):
      if not value:
        raise errors.UsageError(f'a batch\'s {part} are an empty dict')
      for name, item in value.items():
        if '/' in str(name):
          raise errors.UsageError(f'a batch\'s {part} name {name!r} holds a "/"; name the '
                                  'entries of a features dict without one')
        arrays[f'{part}/{name}'] = _array(item)
    elif isinstance(value, (tuple, list)):
      raise errors.UsageError(f'a batch\'s {part} are a {type(value).__name__}; give one array '
                              'or a dict of named arrays')
    else:
      arrays[part] = _array(value)
  if FEATURES not in arrays and not any(k.startswith(FEATURES + '/') for k in arrays):
    raise errors.UsageError('a batch needs its features (an array or a dict of arrays)')
  return arrays


def unflatten(arrays):
  """(features, labels) from flatten()'s {key: array}: an array or a dict each, labels
  None where the batch had none."""
  parts = {}
  for part in (FEATURES, LABELS):
    if part in arrays:
      parts[part] = arrays[part]
    else:
      prefix = part + '/'
      named = {key[len(prefix):]: value for key, value in arrays.items()
               if key.startswith(prefix)}
      parts[part] = dict(sorted(named.items())) or None
  return parts[FEATURES], parts[LABELS]


def _array(value):
  return np.ascontiguousarray(value.numpy() if hasattr(value, 'numpy') else value)


def batch_digest(arrays):
  """sha256 of a batch's {key: array}: keys in order, each with its dtype, shape and bytes.

  Equal digests, equal batches: the same values in the same dtypes and shapes, whatever
  pipeline produced them.
  """
  digest = hashlib.sha256()
  for key in sorted(arrays):
    array = np.ascontiguousarray(arrays[key])
    digest.update(f'{key}:{array.dtype.str}{array.shape}:'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _folder(model_dir):
  return os.path.join(model_dir, BATCHES_DIR)


def batch_path(model_dir, step):
  """batches/step-NNNNNN.npz of `model_dir`."""
  return os.path.join(_folder(model_dir), f'step-{step:06d}.npz')


def _read_rows(model_dir):
  path = os.path.join(_folder(model_dir), DIGESTS_CSV)
  if not os.path.exists(path):
    return None
  with open(path, newline='') as f:
    rows = []
    for row in csv.DictReader(f):
      # A killed process cuts off at most the last row.
      if None in row.values() or not all(row.get(c) for c in _COLUMNS):
        continue
      try:
        rows.append((int(row['step']), row['digest'], row['stored'] == '1'))
      except ValueError as e:
        raise errors.UsageError(f'{path} is damaged ({e}); record the run again') from e
  return rows


def read_digests(model_dir):
  """{step: digest} of every step the run hashed, or None where it hashed none."""
  rows = _read_rows(model_dir)
  return {step: digest for step, digest, _ in rows} if rows else None


def stored_steps(model_dir):
  """The steps whose batches `model_dir` stores, in order."""
  return [step for step, _, stored in _read_rows(model_dir) or () if stored]


def _load_batch(model_dir, step, digest):
  """{key: array} of the stored batch of `step`, checked against its `digest`."""
  path = batch_path(model_dir, step)
  arrays = user_files.load_npz(path, '', 'record the run again')
  if batch_digest(arrays) != digest:
    raise errors.UsageError(f'{path}: the batch of step {step} does not match its digest in '
                            f'{DIGESTS_CSV}; the file changed since it was recorded: record '
                            'the run again')
  return arrays


def stored_batches(model_dir, steps=None):
  """(step, features, labels) of the batches `model_dir` stores, in step order, each
  checked against its digest; the first `steps` of them when given.

  Raises errors.UsageError where the run stores none, or a stored batch is missing or
  changed.
  """
  rows = _read_rows(model_dir)
  stored = [(step, digest) for step, digest, kept in rows or () if kept]
  if not stored:
    raise errors.UsageError(f'{model_dir} stores no batches: record the TF1 job with its '
                            'features (and labels) given to the recorder')
  if stored[0][0] != 1 or [s for s, _ in stored] != list(range(1, len(stored) + 1)):
    raise errors.UsageError(f'{model_dir}: the stored batches are not steps 1 to '
                            f'{len(stored)} in a row; record the run again')
  if steps is not None:
    if steps > len(stored):
      raise errors.UsageError(f'{model_dir} stores the batches of {len(stored)} steps, not '
                              f'{steps}: record with a larger stored_steps or train fewer steps')
    stored = stored[:steps]
  for step, digest in stored:
    features, labels = unflatten(_load_batch(model_dir, step, digest))
    yield step, features, labels


def _save(path, arrays):
  """Writes {key: array} as an .npz (np.load reads it) atomically: integer and boolean
  arrays deflated, floats stored as they are.

  Measured on a 32x224x224x3 float32 batch (18.4 MiB): deflate took 1.3 to 1.6 s and kept
  90 to 93% of the bytes, at level 1 as at 6; labels, ids and one-hot rows shrink to a
  fraction in milliseconds.
  """
  with atomic.atomic_path(path) as tmp, zipfile.ZipFile(tmp, 'w') as archive:
    for key, array in arrays.items():
      member = zipfile.ZipInfo(f'{key}.npy')
      member.compress_type = (zipfile.ZIP_STORED if array.dtype.kind in 'fc'
                              else zipfile.ZIP_DEFLATED)
      with archive.open(member, 'w', force_zip64=True) as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


class BatchWriter:
  """Appends each step's digest to batches/digests.csv and stores the first steps' arrays.

  `start_step`: a resumed run's rows and files after it are dropped, as RunLog drops its
  rows. `stored_steps` 0 hashes without storing.
  """

  def __init__(self, model_dir, stored_steps=DEFAULT_STORED_STEPS,
               max_bytes=DEFAULT_MAX_BYTES, start_step=0):
    if stored_steps < 0 or max_bytes < 0:
      raise errors.UsageError(f'stored_steps={stored_steps}, max_bytes={max_bytes}: give 0 or '
                              'more')
    self.model_dir = model_dir
    self.stored_steps = stored_steps
    self.max_bytes = max_bytes
    self._path = os.path.join(_folder(model_dir), DIGESTS_CSV)
    rows = [row for row in _read_rows(model_dir) or () if row[0] <= start_step]
    for step in run_files.steps_in(_folder(model_dir)):
      if step > start_step:
        os.remove(batch_path(model_dir, step))
    if os.path.exists(self._path):
      self._write_rows(rows)
    self.stored_bytes = sum(os.path.getsize(batch_path(model_dir, s)) for s, _, k in rows if k)
    self.full = False

  def _write_rows(self, rows):
    lines = [','.join(_COLUMNS)] + [f'{s},{d},{int(k)}' for s, d, k in rows]
    atomic.atomic_write_text(self._path, '\n'.join(lines) + '\n')

  def add(self, step, features, labels=None):
    """Hashes the batch of `step` (and stores it while within the limits); returns its
    digest."""
    arrays = flatten(features, labels)
    digest = batch_digest(arrays)
    size = sum(array.nbytes for array in arrays.values())
    store = (step <= self.stored_steps and not self.full and
             self.stored_bytes + size <= self.max_bytes)
    if step <= self.stored_steps and not store:
      # Stored batches run from step 1 without a gap: past the cap, none after.
      self.full = True
    if not os.path.exists(self._path):
      # The first batch of a run that records them.
      os.makedirs(_folder(self.model_dir), exist_ok=True)
      self._write_rows([])
    if store:
      path = batch_path(self.model_dir, step)
      _save(path, arrays)
      self.stored_bytes += os.path.getsize(path)
    with open(self._path, 'a') as f:
      f.write(f'{step},{digest},{int(store)}\n')
    return digest
