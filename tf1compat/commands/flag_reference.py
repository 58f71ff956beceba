"""The flag reference (docs/flags.md), generated from the commands' own flag definitions.

`python -m tf1compat.commands.flag_reference` prints it (one table per command); docs/flags.md
holds it between the BEGIN and END markers, and a test checks that the two are the same text,
so the reference cannot drift from the program. Each command's flags are read in a
subprocess of their own: the commands define some flags alike (e.g. --output_dir), which
one absl registry cannot hold twice.
"""

import json
import subprocess
import sys

from tf1compat.commands import cli
from tf1compat.runtime import process

COMMANDS = ('make_records', 'train_graph', 'train_eager', 'compare_runs', 'check_parity',
            'parity_matrix', 'benchmark', 'legacy_env')
BEGIN = '<!-- flag reference: python -m tf1compat.commands.flag_reference -->'
END = '<!-- end of flag reference -->'


def defined_flags(name):
  """[{name, default, boolean, help}] of the flags command `name` defines, defined and read
  in this process, which must be a fresh one (see the module docstring)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  importlib.import_module(f'{process.COMMANDS_PACKAGE}.{name}').define_flags()
  return [{'name': flag.name,
           'default': list(flag.default) if isinstance(flag.default, tuple) else flag.default,
           'boolean': flag.boolean, 'help': flag.help} for flag in cli.own_flags(flags.FLAGS)]


def command_flags(name):
  """[{name, default, boolean, help}] of every flag the command `name` defines."""
  # By its module name: run as `python -m`, this module's __name__ is '__main__'.
  result = subprocess.run(
      [sys.executable, '-m', 'tf1compat.commands.flag_reference', '--flags_of', name],
      capture_output=True, text=True, env=process.child_env(), check=True)
  return json.loads(result.stdout)


def markdown(flags_of=command_flags):
  """The reference: a table of flag, default and meaning for every command. `flags_of(name)`
  gives a command's flags as command_flags does (a caller that read them already passes its
  own)."""
  out = []
  for name in COMMANDS:
    out += ['', f'## {name}', '', '| flag | default | meaning |', '|---|---|---|']
    for flag in flags_of(name):
      meaning = ' '.join(flag['help'].split()).replace('|', '\\|')
      default = cli.default_text(flag['default'], flag['boolean'])
      out.append(f'| `--{flag["name"]}` | `{default}` | {meaning} |')
  return '\n'.join([BEGIN, *out, '', END])


if __name__ == '__main__':
  if sys.argv[1:2] == ['--flags_of']:
    sys.stdout.write(json.dumps(defined_flags(sys.argv[2])) + '\n')
  else:
    sys.stdout.write(markdown() + '\n')
