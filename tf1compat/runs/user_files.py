"""Reading the files a user names: text, JSON and .npz arrays, through one loader each.

A file a user gives (--init_weights, a weight map, dataset.json, a replay's .npz, a run's
snapshot) may be anything: empty, cut off, a folder, another format, bytes that are not
UTF-8. Each loader here turns every way such a file fails to decode into
errors.UsageError naming the file, what is wrong and the fix (exit 2), never a traceback.
TensorFlow-free, numpy its one dependency (the recorder's distribution ships it).
"""

import json
import struct
import zipfile
import zlib

import numpy as np

from tf1compat.runs import errors

# What numpy's .npz and .npy readers raise for bytes that are not what they expect:
# a cut-off or foreign zip, a damaged deflate stream, a header that does not parse
# (numpy reads it with ast.literal_eval), a pickled array (allow_pickle=False).
_NPZ_DECODING_ERRORS = (OSError, ValueError, EOFError, KeyError, SyntaxError,
                        zipfile.BadZipFile, zlib.error, struct.error)
_NPY_MAGIC = b'\x93NUMPY'
_ZIP_MAGIC = b'PK'


def read_text(path, what, fix):
  """The UTF-8 text of the file at `path`. `what` names it in the message (e.g.
  'weight map '), `fix` says what to do; errors.UsageError when it cannot be read."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise errors.UsageError(f'{what}{path}: unreadable ({e.strerror or e}); {fix}') from e
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise errors.UsageError(f'{what}{path}: not UTF-8 text ({e.reason} at byte {e.start}); '
                            f'{fix}') from e


def read_json(path, what, fix):
  """The JSON value of the file at `path` (read_text's errors, and JSON that does not parse,
  as errors.UsageError)."""
  text = read_text(path, what, fix)
  try:
    return json.loads(text)
  except ValueError as e:
    raise errors.UsageError(f'{what}{path}: not JSON ({e}); {fix}') from e


def read_json_object(path):
  """The JSON object in the file at `path`; None where it is missing, unreadable or not
  one: a record another process writes, whose absence or damage is an answer, not an error."""
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def load_npz(path, what, fix):
  """{key: array} of the .npz file at `path`, every member read.

  errors.UsageError for a file that is empty, cut off, not a zip, a zip whose members are
  not .npy arrays, a single .npy array (np.save's, not np.savez's), or pickled objects.
  """
  def refuse(why):
    return errors.UsageError(f'{what}{path}: {why}; {fix}')

  try:
    with open(path, 'rb') as f:
      magic = f.read(len(_NPY_MAGIC))
      f.seek(0)
      if not magic:
        raise refuse('empty (0 bytes)')
      if magic == _NPY_MAGIC:
        raise refuse('a single .npy array, not an .npz of named arrays (np.savez writes one)')
      if not magic.startswith(_ZIP_MAGIC):
        raise refuse('not an .npz file (a zip of .npy arrays, as np.savez writes)')
      with np.load(f, allow_pickle=False) as loaded:
        arrays = {key: loaded[key] for key in loaded.files}
  except IsADirectoryError as e:
    raise refuse('a folder, not an .npz file') from e
  except FileNotFoundError as e:
    raise refuse('no such file') from e
  except _NPZ_DECODING_ERRORS as e:
    raise refuse(f'cut off or damaged ({type(e).__name__}: {e})') from e
  for key, value in arrays.items():
    if not isinstance(value, np.ndarray):
      raise refuse(f'its member {key!r} is not a .npy array')
  return arrays
