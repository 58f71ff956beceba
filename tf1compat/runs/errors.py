"""The exit-code contract of every command, and the errors library code raises for it.

0 success; 1 parity FAIL; 2 usage or input-data error, one clear line on stderr and no
traceback; 3 numeric fault; 4 internal or device fault (a bug, a crash, CUDA, out of
memory: never a verdict); 130/143 interrupted by SIGINT/SIGTERM after a checkpoint.
Library code raises the exceptions below; the commands' `cli.run_main` turns them into
exit codes. This module imports nothing but the standard library: the recorder's modules
raise them in a team's own process, which may have no absl (Python 3.7 and up).
"""

import errno
import os
import re

EXIT_OK = 0
EXIT_PARITY_FAIL = 1
EXIT_USAGE = 2
EXIT_NUMERIC = 3
EXIT_FAULT = 4

# What a disk or a folder answers a write it refuses: a read-only file system, no space, a
# quota, a file-size limit, no permission. The user's to fix, wherever the write was.
WRITE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM)
# An absolute path in an error's text.
_PATH = re.compile(r"/[^\s;:'\"(){}\[\],]+")


class UsageError(Exception):
  """A mistake the user can fix (a flag, a file, the data): exit 2 with the message."""


class NumericFault(Exception):
  """A NaN or Inf loss: exit 3; the message names the step and the last good checkpoint."""


class Fault(Exception):
  """An internal or device fault (a runner that crashed): exit 4, never read as a verdict."""


class Interrupted(Exception):
  """SIGINT or SIGTERM arrived and a checkpoint was written: exit 128 + signal number."""

  def __init__(self, signum, message):
    super().__init__(message)
    self.exit_code = 128 + signum


def write_refused(error):
  """The UsageError for `error` when it is a write the disk or folder refused (WRITE_ERRNOS),
  naming the folder and the fix; None for any other error.

  An OSError carries its errno and file. TensorFlow's own file system (checkpoints, event
  files, SavedModels) and HDF5 (model.fit's backup) put the system's message and the file
  into their error's text, where they are read: this module imports no TensorFlow.
  """
  if not isinstance(error, OSError) and not type(error).__module__.startswith('tensorflow'):
    return None
  text = str(error)
  if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
    why = os.strerror(error.errno)
  else:
    why = next((os.strerror(code) for code in WRITE_ERRNOS if os.strerror(code) in text), None)
    if why is None:
      return None
  if isinstance(error, OSError) and isinstance(error.filename, (str, bytes)):
    path = os.fsdecode(error.filename)
  else:
    # The file is the last path the text names before the system's message.
    paths = _PATH.findall(text.split(why)[0])
    path = paths[-1] if paths else None
  where = (f'cannot write into {os.path.dirname(os.path.abspath(path))}' if path
           else 'a write failed')
  return UsageError(f'{where}: {why}; free some space or choose a folder you can write to, '
                    'then rerun')
