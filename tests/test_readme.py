"""The README tells the truth about flags: its generated flag reference is what the
commands define, and every flag it mentions exists."""

import os
import re

from conftest import REPO
from tf1compat import flag_reference

# absl's own flags every command has, and TensorBoard's --logdir in its command line.
OTHER_FLAGS = {'help', 'helpshort', 'helpfull', 'flagfile', 'verbosity', 'version', 'logdir'}


def _readme():
  with open(os.path.join(REPO, 'README.md')) as f:
    return f.read()


def test_flag_reference_is_current():
  readme = _readme()
  assert flag_reference.markdown() in readme, (
      'the README\'s flag reference is stale: replace it with the output of '
      '`python -m tf1compat.flag_reference`')


def test_every_flag_the_readme_mentions_exists():
  known, booleans = set(OTHER_FLAGS), set()
  for command in flag_reference.COMMANDS:
    for flag in flag_reference.command_flags(command):
      known.add(flag['name'])
      if flag['boolean']:
        booleans.add(flag['name'])
  mentioned = set(re.findall(r'(?<![\w-])--([a-z][a-z0-9_]*)(?![\w-])', _readme()))
  unknown = {name for name in mentioned
             if name not in known and not (name.startswith('no') and name[2:] in booleans)}
  assert not unknown, f'the README mentions flags no command defines: {sorted(unknown)}'
