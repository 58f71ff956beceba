"""The exit-code contract of every entry point and the absl wrapper that keeps it.

0 success; 1 parity FAIL; 2 usage or input-data error, one clear line on stderr and no
traceback; 3 numeric fault; 4 internal or device fault (a bug, a crash, CUDA, out of
memory: never a verdict); 130/143 interrupted by SIGINT/SIGTERM after a checkpoint.
Library code raises the exceptions below; `run_main` turns them into exit codes.
"""

import contextlib
import os
import platform
import signal
import sys
import traceback

try:
  from importlib import metadata
except ImportError:  # Python 3.7, where the legacy runner runs TensorFlow 1.15
  import importlib_metadata as metadata

from absl import app
from absl import flags

import tf1compat
from tf1compat import errors
from tf1compat import held_stderr

EXIT_OK = 0
EXIT_PARITY_FAIL = 1
EXIT_USAGE = 2
EXIT_NUMERIC = 3
EXIT_FAULT = 4


# The library's errors (errors.py), under the names every command and test uses.
UsageError = errors.UsageError
NumericFault = errors.NumericFault
Fault = errors.Fault
Interrupted = errors.Interrupted


def quiet_tensorflow_logs():
  """Silences TensorFlow's C++ INFO/WARNING lines unless the user asked for them."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _program():
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'tf1compat'


def fail(exit_code, message):
  """Writes `message` as one line on stderr, prefixed by the program, and exits."""
  line = ' '.join(str(message).split())
  sys.stderr.write(f'{_program()}: {line}\n')
  sys.stderr.flush()
  sys.exit(exit_code)


def _installed_version(distribution):
  try:
    return metadata.version(distribution)
  except metadata.PackageNotFoundError:
    return 'not installed'


def version_line():
  """The program's, TensorFlow's and both Kerases' versions (read without importing them)."""
  return (f'{_program()} (tf1compat {tf1compat.__version__}): TensorFlow '
          f'{_installed_version("tensorflow")}, Keras {_installed_version("keras")}, tf-keras '
          f'{_installed_version("tf-keras")}, Python {platform.python_version()}')


_HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')


def _parse_flags(argv):
  if '--version' in argv[1:]:
    sys.stdout.write(version_line() + '\n')
    sys.exit(EXIT_OK)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(EXIT_USAGE, f'{e} (see --helpfull)')
  except UnicodeDecodeError as e:
    # absl reads flag files as UTF-8 and lets the decoding error through.
    fail(EXIT_USAGE, f'--flagfile={_undecodable_flagfile(argv)}: not UTF-8 text ({e.reason} at '
                     f'byte {e.start}); save it as UTF-8')
  empty = _empty_flag()
  if empty:
    # absl takes --data_dir= (often `--data_dir=$DIR` with DIR unset) as the flag unset: the
    # run trained on the embedded dataset, --save_init_weights= trained instead of saving.
    fail(EXIT_USAGE, f'--{empty}= is empty (an unset shell variable?); give it a value, or '
                     'leave the flag out for its default')
  return remaining


def _empty_flag():
  """The name of the first of the commands' own text flags given an empty value, or None."""
  for owner, defined in flags.FLAGS.flags_by_module_dict().items():
    if owner.startswith('absl'):
      continue
    for flag in defined:
      values = flag.value if isinstance(flag, flags.MultiFlag) else [flag.value]
      if flag.present and any(isinstance(v, str) and not v.strip() for v in values or ()):
        return flag.name
  return None


def flags_only(argv):
  """Raises UsageError when the command line holds arguments that are not flags.

  For the commands that take none: absl leaves them in `argv`, where they were silently
  ignored (`--overwrite false` is --overwrite and a stray 'false').
  """
  extra = argv[1:]
  if not extra:
    return
  hint = ''
  if any(arg.lower() in ('true', 'false', '0', '1', 'yes', 'no') for arg in extra):
    hint = ' (a switch is --NAME or --noNAME, or --NAME=false)'
  raise UsageError(f'unexpected arguments {extra}; {_program()} takes flags only{hint}')


def _undecodable_flagfile(argv):
  """The first --flagfile named in `argv` that is not UTF-8 ('?' when a nested one is)."""
  for arg in argv[1:]:
    name, _, path = arg.lstrip('-').partition('=')
    if name != 'flagfile':
      continue
    try:
      with open(path, 'rb') as f:
        f.read().decode('utf-8')
    except UnicodeDecodeError:
      return path
    except OSError:
      continue
  return '?'


def run_main(main, define_flags=None, quiet_tensorflow=False, hold_stderr=False):
  """Defines the flags (`define_flags()`), then runs `main(argv)` under absl with the
  exit-code contract. `quiet_tensorflow`: the process imports TensorFlow, whose C++
  INFO/WARNING lines are silenced unless the user asked for them. `hold_stderr`: stderr
  is held back until the work starts (held_stderr.release, called when a runner opens
  its run directory or make_records starts converting), so that a usage error before
  then is the only line.

  `main` returns an exit code (or None for 0); UsageError, NumericFault, Fault and
  Interrupted become one line on stderr and exit codes 2, 3, 4 and 128 + signal; so does a
  write the disk or folder refused (errors.write_refused: exit 2). Any
  other exception is a bug or a device fault: its traceback, then one line, exit 4
  (Python's own 1 would read as a parity FAIL).
  `--version` prints version_line(); help flags exit 0.
  """
  # Until a runner's SignalCatcher takes them over, SIGINT and SIGTERM end the command in
  # one line: while TensorFlow started, a SIGINT was a KeyboardInterrupt traceback and a
  # SIGTERM a silent death (exit -15).
  with signals_interrupt('rerun the same command (an interrupted run resumes)'):
    try:
      _run(main, define_flags, quiet_tensorflow, hold_stderr)
    except Interrupted as e:
      fail(e.exit_code, e)


def _run(main, define_flags, quiet_tensorflow, hold_stderr):
  """run_main's work, under its signal handlers."""
  if quiet_tensorflow:
    quiet_tensorflow_logs()
  if define_flags is not None:
    define_flags()

  def guarded(argv):
    if hold_stderr:
      held_stderr.hold()
    try:
      return main(argv) or EXIT_OK
    except UsageError as e:
      # What was held back before the run started (TensorFlow's start-up lines) would
      # bury the one line that matters.
      held_stderr.release(replay=False)
      fail(EXIT_USAGE, e)
    except NumericFault as e:
      fail(EXIT_NUMERIC, e)
    except Fault as e:
      fail(EXIT_FAULT, e)
    except Interrupted as e:
      held_stderr.release(replay=False)
      fail(e.exit_code, e)
    except Exception as e:  # pylint: disable=broad-except
      refused = errors.write_refused(e)
      if refused:
        # A full disk or a read-only folder is the user's to fix, wherever the write was.
        held_stderr.release(replay=False)
        fail(EXIT_USAGE, refused)
      held_stderr.release()
      traceback.print_exc()
      fail(EXIT_FAULT, f'internal or device fault ({type(e).__name__}: {e}); the traceback '
           'is above')
    finally:
      held_stderr.release()

  try:
    app.run(guarded, flags_parser=_parse_flags)
  except SystemExit as e:
    # absl exits 1 after printing help; help asked for is a success, and 1 means FAIL.
    if e.code == 1 and any(arg.split('=')[0] in _HELP_FLAGS for arg in sys.argv[1:]):
      sys.exit(EXIT_OK)
    raise


@contextlib.contextmanager
def signals_interrupt(message):
  """In the block, SIGINT and SIGTERM raise Interrupted(signum, `message`) where the code
  is, so that its `finally` blocks and context managers remove what it had half-written
  and the command ends in one line with exit 130 or 143 (Python's own SIGINT is a
  KeyboardInterrupt traceback, its SIGTERM a silent death that leaves temporaries).

  For a command without checkpoints to write between steps (make_records); what must not
  be cut in the middle blocks the signals meanwhile (record_folder.install).
  """
  def interrupt(signum, frame):
    del frame
    raise Interrupted(signum, f'interrupted by {signal.Signals(signum).name}; {message}')

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
