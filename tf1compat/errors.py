"""The errors library code raises, one per exit code of cli's contract.

cli.run_main turns them into exit codes (2, 3, 4, 128 + signal); cli re-exports them,
so `cli.UsageError` and `errors.UsageError` are one class. This module imports nothing
but the standard library: the recorder's modules raise them in a team's own process,
which may have no absl (Python 3.7 and up).
"""


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
