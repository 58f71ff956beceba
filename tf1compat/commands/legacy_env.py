"""legacy_env: makes the real legacy stack's environment, TensorFlow 1.15 on Python 3.7,
for check_parity --legacy_python.

Usage: legacy_env DIR [--python=PATH]

One line per phase; exit 2 with one line when no Python 3.7 is found.
"""

from absl import flags

from tf1compat.commands import cli
from tf1compat.commands import flag_kinds
from tf1compat.judge import legacy_env
from tf1compat.runs import errors


def main(argv):
  if len(argv) != 2 or not argv[1].strip():
    raise errors.UsageError('pass the folder to make the environment in: legacy_env DIR')
  legacy_env.create(argv[1], flags.FLAGS.python)


def define_flags():
  """Defines the legacy_env flags (also read by flag_reference)."""
  flag_kinds.define_path('python', None,
                         'The Python 3.7 to make the environment from. Default: python3.7 on '
                         "PATH, else pyenv's newest 3.7.")


def console_main():
  """The legacy_env command."""
  cli.run_main(main, define_flags)


if __name__ == '__main__':
  console_main()
