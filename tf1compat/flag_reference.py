"""The README's flag reference, generated from the commands' own flag definitions.

`python -m tf1compat.flag_reference` prints it (one table per command); the README holds
it between the BEGIN and END markers, and a test checks that the two are the same text,
so the reference cannot drift from the program. Each command's flags are read in a
subprocess of their own: the commands define some flags alike (e.g. --output_dir), which
one absl registry cannot hold twice.
"""

import json
import subprocess
import sys

from tf1compat import process

COMMANDS = ('make_records', 'train_graph', 'train_eager', 'compare_runs', 'check_parity',
            'parity_matrix', 'benchmark')
BEGIN = '<!-- flag reference: python -m tf1compat.flag_reference -->'
END = '<!-- end of flag reference -->'
# absl's own flags every command has (--helpfull, --flagfile, --verbosity, ...) are left
# out; the README names them once.
_DUMP = r'''
import importlib, json, sys
from absl import flags
module = importlib.import_module('tf1compat.commands.' + sys.argv[1])
module.define_flags()
out = []
for owner, defined in flags.FLAGS.flags_by_module_dict().items():
  if owner.startswith('absl'):
    continue
  for flag in defined:
    default = flag.default
    out.append({'name': flag.name, 'default': default if not isinstance(default, tuple)
                else list(default), 'boolean': flag.boolean, 'help': flag.help})
print(json.dumps(sorted(out, key=lambda f: f['name'])))
'''


def command_flags(name):
  """[{name, default, boolean, help}] of every flag the command `name` defines."""
  result = subprocess.run([sys.executable, '-c', _DUMP, name], capture_output=True, text=True,
                          env=process.child_env(), check=True)
  return json.loads(result.stdout)


def _default(flag):
  value = flag['default']
  if value is None:
    return 'unset'
  if flag['boolean']:
    return 'on' if value else 'off'
  if isinstance(value, list):
    return ','.join(map(str, value)) or 'empty'
  return str(value)


def markdown():
  """The reference: a table of flag, default and meaning for every command."""
  out = []
  for name in COMMANDS:
    out += ['', f'#### {name}', '', '| flag | default | meaning |', '|---|---|---|']
    for flag in command_flags(name):
      meaning = ' '.join(flag['help'].split()).replace('|', '\\|')
      out.append(f'| `--{flag["name"]}` | `{_default(flag)}` | {meaning} |')
  return '\n'.join([BEGIN, *out, '', END])


if __name__ == '__main__':
  sys.stdout.write(markdown() + '\n')
