"""Atomic writes: a file or a folder is whole or as it was, never half-written.

Everything tf1compat writes for others to read (run.json, CSV truncation, snapshots,
exports, reports, records) goes through `atomic_path`: written beside its target under a
temporary name and renamed over it. A process killed mid-write leaves only a temporary,
which the next run of the same directory removes (`TEMPORARY_NAME`). TensorFlow-free.
"""

import contextlib
import json
import os
import re
import shutil

import numpy as np

# What atomic writes leave behind when a process dies before its rename: 'NAME.tmpPID'
# or '.NAME.tmpPID.npz' files and 'export.tmpPID' folders.
TEMPORARY_NAME = re.compile(r'.+\.tmp\d+(\.\w+)?')


def temporary_name(path):
  """Where `atomic_path` writes `path` first: beside it, named by this process, the
  suffix kept (Keras and numpy insist on theirs); a crash leaves it for RunLog to remove."""
  folder, name = os.path.split(path)
  stem, suffix = os.path.splitext(name)
  if not suffix or os.path.isdir(path):
    return os.path.join(folder, f'{name}.tmp{os.getpid()}')
  return os.path.join(folder, f'.{stem}.tmp{os.getpid()}{suffix}')


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path to write a file or a folder into, which then replaces `path`.

  `path` is whole or as it was: the write goes beside it and is renamed over it only
  when the block ends without an error (a folder replaces an old folder); on an error
  the temporary file or folder is removed.
  """
  tmp = temporary_name(path)
  remove(tmp)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  try:
    yield tmp
    if os.path.isdir(tmp):
      remove(path)
    os.replace(tmp, path)
  except OSError as e:
    remove(tmp)
    if e.filename is None:
      # A write through an open file names no file: the error must name where it failed.
      raise OSError(e.errno, e.strerror, path) from e
    raise
  except BaseException:
    remove(tmp)
    raise


def remove(path):
  """Removes a file, link or folder tree at `path`, if there is one."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def atomic_write_text(path, text):
  """Writes `text` to `path` atomically (`atomic_path`), flushed to disk."""
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_json(path, obj):
  """`atomic_write_text` of `obj` as indented, key-sorted JSON."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + '\n')


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f'not JSON serializable: {type(value).__name__}')
