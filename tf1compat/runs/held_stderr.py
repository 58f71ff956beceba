"""stderr held back until a run starts, so that a usage error before then is its only line.

cli.run_main holds it (`hold`); the run directory's opening (runlog) and make_records'
first write release it (`release`). Standard library only: runlog, which releases it,
also serves the recorder in a team's process without absl (Python 3.7 and up).
"""

import os
import sys
import tempfile


class _HeldStderr:
  """Holds back everything written to file descriptor 2 (TensorFlow's C++ start-up lines,
  its deprecation warnings, our own log lines) until the run has started.

  A usage error found before then (bad data, a bad --init_weights, a run directory in
  the way) is then the only line on stderr; once the run starts, or when the process
  ends otherwise, what was held is written out in order, so nothing is lost. The held
  text lives in a temporary file without a name (unlinked at once where the platform can),
  so that a process killed meanwhile leaves nothing behind in $TMPDIR.
  """

  def __init__(self):
    sys.stderr.flush()
    self._file = tempfile.TemporaryFile(prefix='tf1compat-stderr-')
    self._saved = os.dup(2)
    os.dup2(self._file.fileno(), 2)

  def release(self, replay):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    self._file.seek(0)
    held = self._file.read()
    self._file.close()
    if replay and held:
      os.write(2, held)


_held = None


def hold():
  """Starts holding back stderr (a no-op when it is held already)."""
  global _held
  if _held is None:
    _held = _HeldStderr()


def release(replay=True):
  """Ends the hold on stderr: what was held is written out, or with `replay` False
  dropped. A no-op when nothing is held."""
  global _held
  if _held is not None:
    held, _held = _held, None
    held.release(replay)
