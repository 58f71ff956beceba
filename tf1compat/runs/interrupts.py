"""SIGINT and SIGTERM turned into errors.Interrupted where the code can end cleanly.

Standard library only, like the rest of runs/: a team's own loop may catch signals with it.
"""

import contextlib
import signal

from tf1compat.runs import errors


@contextlib.contextmanager
def signals_interrupt(message):
  """In the block, SIGINT and SIGTERM raise errors.Interrupted(signum, `message`) where the code
  is, so that its `finally` blocks and context managers remove what it had half-written
  and the command ends in one line with exit 130 or 143 (Python's own SIGINT is a
  KeyboardInterrupt traceback, its SIGTERM a silent death that leaves temporaries).

  For a command without checkpoints to write between steps (make_records); what must not
  be cut in the middle blocks the signals meanwhile (record_folder.install).
  """
  def interrupt(signum, frame):
    del frame
    raise errors.Interrupted(signum, f'interrupted by {signal.Signals(signum).name}; {message}')

  previous = {signum: signal.signal(signum, interrupt)
              for signum in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


class SignalCatcher:
  """Turns SIGINT/SIGTERM into a flag the training loop polls between steps.

  A step in flight finishes, the loop writes a checkpoint, then raises Interrupted.
  A second signal while that is happening is ignored, so the checkpoint completes.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def reclaim(self):
    """Installs the handlers again, over any a library has set since __enter__ (TensorFlow's
    multi-worker runtime sets its own SIGTERM handler, which swallows the signal)."""
    for signum in self._previous:
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.signum is None:
      self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False

  @property
  def caught(self):
    return self.signum is not None
