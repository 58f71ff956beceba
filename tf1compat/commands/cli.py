"""The absl wrapper that keeps every command's exit-code contract (runs/errors.py).

`run_main` parses the flags, runs the command's main and turns the library's exceptions
into exit codes and one line on stderr.
"""

import functools
import os
import platform
import sys
import textwrap
import traceback

try:
  from importlib import metadata
except ImportError:  # Python 3.7, where the legacy runner runs TensorFlow 1.15
  import importlib_metadata as metadata

from absl import app
from absl import flags

import tf1compat
from tf1compat.runs import errors
from tf1compat.runs import held_stderr
from tf1compat.runs import interrupts

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
  """The program's, TensorFlow's, both Kerases' and JAX's versions (read without importing
  them)."""
  return (f'{_program()} (tf1compat {tf1compat.__version__}): TensorFlow '
          f'{_installed_version("tensorflow")}, Keras {_installed_version("keras")}, tf-keras '
          f'{_installed_version("tf-keras")}, JAX {_installed_version("jax")}, Python '
          f'{platform.python_version()}')


_HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')
# What asks for the command's own manual; --helpfull and --helpxml keep absl's, every flag.
_SHORT_HELP_FLAGS = ('-h', '-?', '--help', '--helpshort')
_HELP_WIDTH = 100
# A flag's lines in --help: its name, default and the start of its text (docs/flags.md and
# --helpfull hold the whole), so that the longest command's manual fits a screen or two.
_HELP_LINES_PER_FLAG = 2


def own_flags(flag_values=flags.FLAGS):
  """The flags the command defined (absl's own left out: --helpfull, --flagfile,
  --verbosity, ...), sorted by name."""
  return sorted((flag for owner, defined in flag_values.flags_by_module_dict().items()
                 if not owner.startswith('absl') for flag in defined),
                key=lambda flag: flag.name)


def default_text(default, boolean):
  """A flag's default as --help and docs/flags.md show it."""
  if default is None:
    return 'unset'
  if boolean:
    return 'on' if default else 'off'
  if isinstance(default, (list, tuple)):
    return ','.join(map(str, default)) or 'empty'
  return str(default)


def command_help(description):
  """What --help prints: the command's `description` and its own flags, each with its
  default and the start of its text, in docs/flags.md's order."""
  lines = [*textwrap.wrap(' '.join(description.split()), _HELP_WIDTH), '',
           'Flags, default in brackets (the whole text: docs/flags.md; absl\'s flags too: '
           '--helpfull):']
  for flag in own_flags():
    name = f'--[no]{flag.name}' if flag.boolean else f'--{flag.name}'
    text = ' '.join(flag.help.split())
    default = default_text(flag.default, flag.boolean)
    wrapped = textwrap.wrap(f'{name} [{default}]  {text}', _HELP_WIDTH,
                            initial_indent='  ', subsequent_indent='      ')
    if len(wrapped) > _HELP_LINES_PER_FLAG:
      wrapped = wrapped[:_HELP_LINES_PER_FLAG]
      wrapped[-1] = wrapped[-1][:_HELP_WIDTH - len(' ...')].rsplit(' ', 1)[0] + ' ...'
    lines += wrapped
  return '\n'.join(lines) + '\n'


def _parse_flags(argv, description=''):
  if '--version' in argv[1:]:
    sys.stdout.write(version_line() + '\n')
    sys.exit(errors.EXIT_OK)
  if any(arg in _SHORT_HELP_FLAGS for arg in argv[1:]):
    sys.stdout.write(command_help(description))
    sys.exit(errors.EXIT_OK)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(errors.EXIT_USAGE, f'{e} (see --helpfull)')
  except UnicodeDecodeError as e:
    # absl reads flag files as UTF-8 and lets the decoding error through.
    fail(errors.EXIT_USAGE, f'--flagfile={_undecodable_flagfile(argv)}: not UTF-8 text '
         f'({e.reason} at byte {e.start}); save it as UTF-8')
  empty = _empty_flag()
  if empty:
    # absl takes --data_dir= (often `--data_dir=$DIR` with DIR unset) as the flag unset: the
    # run trained on the embedded dataset, --save_init_weights= trained instead of saving.
    fail(errors.EXIT_USAGE, f'--{empty}= is empty (an unset shell variable?); give it a value, or '
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
  """Raises errors.UsageError when the command line holds arguments that are not flags.

  For the commands that take none: absl leaves them in `argv`, where they were silently
  ignored (`--overwrite false` is --overwrite and a stray 'false').
  """
  extra = argv[1:]
  if not extra:
    return
  hint = ''
  if any(arg.lower() in ('true', 'false', '0', '1', 'yes', 'no') for arg in extra):
    hint = ' (a switch is --NAME or --noNAME, or --NAME=false)'
  raise errors.UsageError(f'unexpected arguments {extra}; {_program()} takes flags only{hint}')


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

  `main` returns an exit code (or None for 0); errors.UsageError, NumericFault, Fault and
  Interrupted become one line on stderr and exit codes 2, 3, 4 and 128 + signal; so does
  a write the disk or folder refused (errors.write_refused: exit 2). Any
  other exception is a bug or a device fault: its traceback, then one line, exit 4
  (Python's own 1 would read as a parity FAIL).
  `--version` prints version_line(); help flags exit 0.
  """
  # Until a runner's SignalCatcher takes them over, SIGINT and SIGTERM end the command in
  # one line: while TensorFlow started, a SIGINT was a KeyboardInterrupt traceback and a
  # SIGTERM a silent death (exit -15).
  with interrupts.signals_interrupt('rerun the same command (an interrupted run resumes)'):
    try:
      _run(main, define_flags, quiet_tensorflow, hold_stderr)
    except errors.Interrupted as e:
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
      return main(argv) or errors.EXIT_OK
    except errors.UsageError as e:
      # What was held back before the run started (TensorFlow's start-up lines) would
      # bury the one line that matters.
      held_stderr.release(replay=False)
      fail(errors.EXIT_USAGE, e)
    except errors.NumericFault as e:
      fail(errors.EXIT_NUMERIC, e)
    except errors.Fault as e:
      fail(errors.EXIT_FAULT, e)
    except errors.Interrupted as e:
      held_stderr.release(replay=False)
      fail(e.exit_code, e)
    except Exception as e:  # pylint: disable=broad-except
      refused = errors.write_refused(e)
      if refused:
        # A full disk or a read-only folder is the user's to fix, wherever the write was.
        held_stderr.release(replay=False)
        fail(errors.EXIT_USAGE, refused)
      held_stderr.release()
      traceback.print_exc()
      fail(errors.EXIT_FAULT, f'internal or device fault ({type(e).__name__}: {e}); the traceback '
           'is above')
    finally:
      held_stderr.release()

  # The command's summary: the first paragraph of its module's docstring.
  description = (sys.modules[main.__module__].__doc__ or '').split('\n\n')[0]
  try:
    app.run(guarded, flags_parser=functools.partial(_parse_flags, description=description))
  except SystemExit as e:
    # absl exits 1 after printing help; help asked for is a success, and 1 means FAIL.
    if e.code == 1 and any(arg.split('=')[0] in _HELP_FLAGS for arg in sys.argv[1:]):
      sys.exit(errors.EXIT_OK)
    raise
