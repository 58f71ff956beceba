"""Where tf1compat may write, and which process writes a folder.

`check_placement` keeps run directories and reports out of the user's data, the dataset
cache and the package (a run's --overwrite empties its folder); `lock_folder` gives one
process at a time a folder (a run directory, check_parity's output). TensorFlow-free.
"""

import fcntl
import os
import time

import tf1compat
from tf1compat.runs import errors

# The lock of the process writing a folder (lock_folder): no content either, and kept.
LOCK_FILE = '.lock'
# Seconds lock_folder waits for a lock held for an instant (`held`, which parity_matrix
# --merge asks of every case), before it names the process that holds it.
LOCK_PATIENCE = 1.0
# Not content: a folder holding only these is empty, and --overwrite keeps them.

# The tf1compat package, and the folder holding it (a checkout, or site-packages).
_PACKAGE_DIR = os.path.dirname(os.path.abspath(tf1compat.__file__))
_PACKAGE_PARENT = os.path.dirname(_PACKAGE_DIR)
# Folders this process holds the lock of (lock_folder), open until it ends.
_LOCKS = {}


def cache_dir():
  """Where the embedded dataset is cached: $TF1COMPAT_CACHE, else ~/.cache/tf1compat.

  TensorFlow-free, so that check_parity can keep runs out of it without importing
  TensorFlow; records writes the cache there.
  """
  return os.environ.get('TF1COMPAT_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'tf1compat')


def _real(path):
  return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _within(inner, outer):
  return os.path.commonpath([inner, outer]) == outer


def check_placement(path, flag, data_dirs=()):
  """Raises errors.UsageError when `path`, a folder or file a command is about to write, is,
  contains or lies inside a data folder of `data_dirs`, the dataset cache or the tf1compat
  package, or is or contains the folder holding the package.

  A run's --overwrite empties its folder, so a run directory there could delete the
  user's data or the code. Inside a checkout is fine: runs/ is where runs go by default.
  """
  target = _real(path)
  guarded = [(f'the data folder {folder}', folder, True) for folder in data_dirs if folder]
  guarded += [(f'the dataset cache {cache_dir()}', cache_dir(), True),
              (f'the tf1compat package {_PACKAGE_DIR}', _PACKAGE_DIR, True),
              (f'the folder holding the tf1compat package, {_PACKAGE_PARENT}', _PACKAGE_PARENT,
               False)]
  for what, folder, inside_too in guarded:
    folder = _real(folder)
    if target == folder:
      relation = 'is'
    elif _within(folder, target):
      relation = 'contains'
    elif inside_too and _within(target, folder):
      relation = 'lies inside'
    else:
      continue
    raise errors.UsageError(f'{flag}={path} {relation} {what}: tf1compat never writes there '
                            f'(--overwrite would delete what it holds); choose a {flag} outside it')


def check_output(path, flag, *, folder, data_dirs=(), read_runs=(), overwrite=None,
                 replaceable=None):
  """The one rule for every path a command writes (a folder when `folder`, else a file):
  raises errors.UsageError naming `flag` and the fix, before anything is written, when
  `path`
  - is not UTF-8 (TensorFlow and run.json take UTF-8 paths only),
  - lies under a file, or is a file where a folder goes or a folder where a file goes,
  - is in a folder this process cannot write into (a read-only file system),
  - is among the data of `data_dirs`, the cache or the package (check_placement),
  - is or lies inside a run directory of `read_runs`, which the command reads,
  - is an existing file, unless `overwrite` (the command's --overwrite; None where it has
    none) is set or `replaceable(path)` says tf1compat wrote it for this flag.
  """
  try:
    path.encode('utf-8')
  except UnicodeEncodeError:
    shown = os.fsencode(path).decode('utf-8', 'backslashreplace')
    raise errors.UsageError(f'{flag}={shown} is not UTF-8 (TensorFlow writes UTF-8 paths only); '
                            f'choose a {flag} whose name is UTF-8') from None
  above = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(above):
    above = os.path.dirname(above)
  if not os.path.isdir(above):
    raise errors.UsageError(f'{flag}={path} lies under {above}, which is a file; choose a '
                            f'{flag} in a folder')
  writes_into = path if folder and os.path.isdir(path) else above
  # access() answers EROFS for a read-only file system even to root, who ignores modes.
  if not os.access(writes_into, os.W_OK | os.X_OK):
    raise errors.UsageError(f'{flag}={path}: cannot write into {writes_into} (read-only or no '
                            f'permission); choose a {flag} in a folder you can write to')
  check_placement(path, flag, data_dirs)
  target = _real(path)
  for run in read_runs:
    if run and _within(target, _real(run)):
      relation = 'is' if target == _real(run) else 'lies inside'
      raise errors.UsageError(f'{flag}={path} {relation} {run}, a run directory this command '
                              f'reads; choose a {flag} outside it')
  if not os.path.lexists(path):
    return
  if folder and not os.path.isdir(path):
    raise errors.UsageError(f'{flag}={path} is a file, not a folder; choose another {flag}')
  if not folder and not os.path.isfile(path):
    raise errors.UsageError(f'{flag}={path} is not a file; name the file to write')
  if not folder and not overwrite and not (replaceable and replaceable(path)):
    fix = 'move it away' if overwrite is None else 'pass --overwrite to replace it'
    raise errors.UsageError(f'{flag}={path} already exists; {fix}, or choose another {flag}')


def lock_folder(folder, flag):
  """Takes the exclusive lock of `folder` (created when missing) until this process ends.

  flock on folder/.lock, which holds the holder's pid: the kernel releases the lock when
  its process dies, SIGKILL included, so a lock is never stale. Raises errors.UsageError
  naming the holder's pid when another process holds it longer than LOCK_PATIENCE; a
  second call from this process keeps the lock it has.
  """
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise errors.UsageError(f'{flag}={folder} is a file, not a folder; choose another {flag}')
  os.makedirs(folder, exist_ok=True)
  key = _real(folder)
  if key in _LOCKS:
    return
  # 'a+' opens without truncating: the holder's pid stays readable until we hold the lock.
  lock = open(os.path.join(folder, LOCK_FILE), 'a+')  # pylint: disable=consider-using-with
  deadline = time.monotonic() + LOCK_PATIENCE
  while True:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      break
    except BlockingIOError:
      if time.monotonic() < deadline:
        time.sleep(0.05)
        continue
      lock.seek(0)
      holder = lock.read().strip() or 'unknown'
      lock.close()
      raise errors.UsageError(f'{flag}={folder} is in use by another process (pid {holder}); '
                              f'wait for it to end, or choose another {flag}') from None
  lock.truncate(0)
  lock.write(f'{os.getpid()}\n')
  lock.flush()
  _LOCKS[key] = lock


def held(folder):
  """Whether a process holds the lock of `folder` (lock_folder's), tried for an instant:
  how parity_matrix --merge tells a running case from a stopped one."""
  path = os.path.join(folder, LOCK_FILE)
  if not os.path.exists(path):
    return False
  with open(path, 'a+') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    fcntl.flock(lock, fcntl.LOCK_UN)
  return False
