"""The README and the manual in docs/ tell the truth: the flag reference in docs/flags.md
is what the commands define, every flag they mention exists, every command the README
shows parses as its program parses it, every relative link resolves, and the pitfall
table holds the catalogue's fixes."""

import glob
import importlib.util
import itertools
import json
import os
import re
import shlex

import pytest

from conftest import REPO, at_once, run_python
from tf1compat.commands import flag_reference
from tf1compat.commands import tool_flags
from tf1compat.judge import pitfalls

# absl's own flags every command has, TensorBoard's --logdir in its command line, XLA's
# --xla_dump_to (set through XLA_FLAGS) and sbatch's --array.
OTHER_FLAGS = {'help', 'helpshort', 'helpfull', 'flagfile', 'verbosity', 'version', 'logdir',
               'xla_dump_to', 'array'}
# Programs the README's commands run that are not ours: their arguments are not checked.
NOT_OURS = {'python3', 'pip', 'pytest', '.', 'apt-get', 'tensorboard'}
# Fenced blocks of the README: commands (checked), program output, code.
FENCE_LANGUAGES = {'sh', 'text', 'python'}
README_MAX_LINES, DOC_MAX_LINES = 200, 400
_FENCE = re.compile(r'^ *```(\w*)\n(.*?)^ *```$', re.M | re.S)

# In a fresh process: command NAME's flags as flag_reference reads them, then each argv of
# ARGVS parsed by absl as the command parses it (validators included), without running.
_READ_AND_PARSE = r'''
import json, sys
from absl import flags
from tf1compat.commands import flag_reference
from tf1compat.commands import tool_flags
name, argvs = sys.argv[1], json.loads(sys.argv[2])
out = {'flags': flag_reference.defined_flags(name), 'errors': []}
for argv in argvs:
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS([name, *argv])
  except flags.Error as e:
    out['errors'].append(f'{name} {" ".join(argv)}: {e}')
print(json.dumps(out))
'''


def _read(path):
  with open(os.path.join(REPO, path)) as f:
    return f.read()


def _documents():
  """{path in the repository: text} of README.md and every docs/*.md."""
  docs = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
  return {path: _read(path) for path in ['README.md'] + [os.path.relpath(d, REPO) for d in docs]}


def _readme_commands():
  """Every command of the README's sh blocks as an argv: continued lines joined, `&&`
  chains split, leading VAR=value assignments dropped."""
  return _commands_of(_read('README.md'), languages=('sh',))


def _ours(argv):
  """(program, args) of a command of ours: a command by name (bin/NAME or its console
  script) or an example loop (python examples/NAME.py); None for another program's."""
  head = argv[0]
  if head.startswith('bin/') or head in flag_reference.COMMANDS:
    name = head.removeprefix('bin/')
    assert name in flag_reference.COMMANDS and os.path.exists(os.path.join(REPO, 'bin', name)), (
        f'the README runs {head}, which is no command of ours')
    return name, argv[1:]
  if head == 'python' and argv[1].startswith('examples/'):
    return argv[1], argv[2:]
  if head == 'python' and argv[1] == '-c':
    return None
  assert head in NOT_OURS, f'the README runs {head}: tell this test whether it is ours'
  return None


@pytest.fixture(scope='module')
def commands():
  """{command: {'flags': its flags, 'errors': the README's argvs of it absl refused}}, one
  fresh process per command (the commands define some flags alike)."""
  argvs = {name: [] for name in flag_reference.COMMANDS}
  for program, args in filter(None, map(_ours, _readme_commands())):
    if program in argvs:
      argvs[program].append(args)

  def read(name):
    result = run_python(_READ_AND_PARSE, name, json.dumps(argvs[name]))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)

  return dict(zip(flag_reference.COMMANDS,
                  at_once(*[lambda name=name: read(name) for name in flag_reference.COMMANDS])))


def test_flag_reference_is_current(commands):
  reference = flag_reference.markdown(lambda name: commands[name]['flags'])
  assert reference in _read('docs/flags.md'), (
      'the flag reference in docs/flags.md is stale: replace it with the output of '
      '`python -m tf1compat.commands.flag_reference`')


def _example_flags():
  """The flags the example jobs define (argparse), which the docs' commands give them."""
  names = set()
  for path in glob.glob(os.path.join(REPO, 'examples', '*.py')):
    names.update(re.findall(r"add_argument\(\s*'--(\w+)'", _read(path)))
  return names


def test_every_flag_the_docs_mention_exists(commands):
  known, booleans = set(OTHER_FLAGS) | _example_flags(), set()
  for command in commands.values():
    for flag in command['flags']:
      known.add(flag['name'])
      if flag['boolean']:
        booleans.add(flag['name'])
  unknown = {}
  for path, text in _documents().items():
    mentioned = set(re.findall(r'(?<![\w-])--([a-z][a-z0-9_]*)(?![\w-])', text))
    names = sorted(name for name in mentioned
                   if name not in known and not (name.startswith('no') and name[2:] in booleans))
    if names:
      unknown[path] = names
  assert not unknown, f'flags no command defines: {unknown}'


def _parse_example(script, args):
  """The error an example job's command line gives `args`, or None. The examples parse it
  with their common module's parse_args and that module's flags for the job
  (team_common.py; tabular_common.py and its job_arguments or port_arguments), read here
  without the jobs' TensorFlow imports."""
  with open(os.path.join(REPO, script)) as f:
    source = f.read()
  common = re.search(r'\b(\w+_common)\.parse_args\(', source)
  assert common, f'{script} no longer parses its flags with an examples/*_common.py'
  name = common.group(1)
  own = re.search(rf'\b{name}\.(\w+_arguments)\b', source)
  spec = importlib.util.spec_from_file_location(
      f'readme_{name}', os.path.join(REPO, 'examples', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    module.parse_args(args, script, own and getattr(module, own.group(1)))
  except SystemExit:
    return f'{script} {" ".join(args)}: refused (argparse)'
  return None


def test_every_command_the_readme_shows_parses(commands):
  readme = _read('README.md')
  languages = {language for language, _ in _FENCE.findall(readme)}
  assert languages <= FENCE_LANGUAGES, f'fence the README\'s blocks as one of {FENCE_LANGUAGES}'
  shown = list(filter(None, map(_ours, _readme_commands())))
  assert ('check_parity', []) in shown, 'the main job is no longer among the commands found'
  errors = [error for command in commands.values() for error in command['errors']]
  errors += [_parse_example(program, args) for program, args in shown
             if program.startswith('examples/')]
  assert not list(filter(None, errors)), errors


def _slug(heading):
  """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def test_every_relative_link_resolves():
  documents = _documents()
  anchors = {path: {_slug(h) for h in re.findall(r'^#+ (.*)$', _FENCE.sub('', text), re.M)}
             for path, text in documents.items()}
  broken = []
  for path, text in documents.items():
    for target in re.findall(r'\]\(([^)\s]+)\)', _FENCE.sub('', text)):
      if re.match(r'\w+:', target):
        continue
      file_part, _, anchor = target.partition('#')
      resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part \
          else path
      if resolved not in documents and not os.path.exists(os.path.join(REPO, resolved)):
        broken.append(f'{path}: {target} (no such file)')
      elif anchor and anchor not in anchors.get(resolved, set()):
        broken.append(f'{path}: {target} (no such heading)')
  assert not broken, broken


def test_the_pitfall_table_holds_the_catalogue():
  table = ' '.join(_read('docs/pitfalls.md').split())
  missing = [name for name, problem in {**pitfalls.PITFALLS, **pitfalls.SETUP_PROBLEMS}.items()
             if f'| `{name}`' not in table or ' '.join(problem.fix.split()) not in table]
  assert not missing, f'docs/pitfalls.md lacks these pitfalls or their current fix: {missing}'


def test_the_manual_keeps_its_shape():
  """A README read in minutes; docs/ one subject a file, each opening with what it is for,
  each listed in the manual's index."""
  documents = _documents()
  assert len(documents['README.md'].splitlines()) <= README_MAX_LINES
  index = documents['docs/README.md']
  for path, text in documents.items():
    if path == 'README.md':
      continue
    assert len(text.splitlines()) <= DOC_MAX_LINES, f'{path}: split it by subject'
    title, opening = text.split('\n\n')[:2]
    assert title.startswith('# ') and '\n' not in title, f'{path}: open with one # title'
    assert opening[0].isalpha(), f'{path}: open with a paragraph saying what it is for'
    if path != 'docs/README.md':
      assert f'({os.path.basename(path)})' in index, f'docs/README.md does not list {path}'


def _sources_that_point():
  """README, docs, setup files, the package and the examples: whatever names a README
  section or a file of the checkout."""
  patterns = ('README.md', 'docs/*.md', 'setup.py', 'setup.cfg', 'recorder/setup.py',
              'tf1compat/**/*.py', 'examples/*.py')
  for pattern in patterns:
    for path in sorted(glob.glob(os.path.join(REPO, pattern), recursive=True)):
      with open(path) as f:
        yield os.path.relpath(path, REPO), f.read()


def test_every_readme_section_and_checkout_path_named_exists():
  """A pointer that drifted (a section renamed, a module moved, a test file that never was)
  sends the reader nowhere."""
  with open(os.path.join(REPO, 'README.md')) as f:
    sections = {' '.join(h.split()) for h in re.findall(r'^#+ (.+)$', f.read(), re.M)}
  missing = []
  for name, text in _sources_that_point():
    for match in re.finditer(r'README[^"\n]{0,20}?"([^"]+)"', text):
      if ' '.join(match.group(1).split()) not in sections:
        missing.append(f'{name}: README section "{match.group(1)}"')
    for match in re.finditer(r'(?<![\w/.])((?:tests|tf1compat|examples|docs|recorder|bin|\.ci)'
                             r'/[\w./-]*[\w/])', text):
      path = match.group(1)
      # Placeholders (bin/NAME) and what a command makes (.ci/venv) are no files of it.
      if re.search(r'\b[A-Z]{3,}\b', path) or path.startswith('.ci/venv'):
        continue
      if not os.path.exists(os.path.join(REPO, path)):
        missing.append(f'{name}: {path}')
  assert not missing


# In a fresh process: for each argv of ARGVS, the folder command NAME writes (its
# output_folder) and the flags that shape its runs, parsed as the command parses them.
_RESOLVE_FOLDERS = r'''
import importlib, json, sys
from absl import flags
from tf1compat.commands import output_folders
name, argvs, left_out = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
module = importlib.import_module(f'tf1compat.commands.{name}')
module.define_flags()
out = []
for argv in argvs:
  flags.FLAGS.unparse_flags()
  flags.FLAGS([name, *argv])
  out.append([module.output_folder(flags.FLAGS),
              output_folders.exploration_name(flags.FLAGS, left_out)])
print(json.dumps(out))
'''
# The commands that keep runs in their folder and refuse to replace one made otherwise.
_KEEPING_RUNS = ('check_parity', 'train_graph', 'train_eager')
# What changes neither a run nor its numbers (the folder flags themselves included).
_NOT_ARGUMENTS = ('output_dir', 'model_dir', 'overwrite', 'localize', 'log_every',
                  'checkpoint_every', 'require_gpu', 'allow_num_classes_mismatch',
                  *tool_flags.TOLERANCE_NAMES)


def _commands_of(text, languages=('sh', '')):
  """The commands of a document's fenced blocks in `languages` as argvs: continued lines
  joined, `&&` chains split, leading VAR=value assignments dropped; docs/ fences commands
  without a language, and a line there that is no shell command (program output,
  unbalanced quotes) is passed over."""
  commands = []
  for language, body in _FENCE.findall(text):
    if language not in languages:
      continue
    for line in body.replace('\\\n', ' ').splitlines():
      try:
        tokens = shlex.split(line)
      except ValueError:
        if language:
          raise
        continue
      for is_and, group in itertools.groupby(tokens, lambda token: token == '&&'):
        if not is_and:
          commands.append(list(itertools.dropwhile(lambda t: re.fullmatch(r'\w+=.*', t), group)))
  return commands


def test_the_docs_commands_followed_in_order_never_meet_in_one_folder():
  """From a fresh clone, every command of the README and docs/, one after another: no two
  with other arguments write one folder (which check_parity and the runners would refuse)."""
  index = _read('docs/README.md')
  order = ['README.md', *(f'docs/{name}' for name in re.findall(r'\]\((\w[\w-]*\.md)\)', index))]
  shown = [(path, argv[0].removeprefix('bin/'), argv[1:])
           for path in dict.fromkeys(order) for argv in _commands_of(_read(path))
           if argv and argv[0].removeprefix('bin/') in _KEEPING_RUNS]
  resolved = {}
  for name in _KEEPING_RUNS:
    argvs = [args for _, command, args in shown if command == name]
    result = run_python(_RESOLVE_FOLDERS, name, json.dumps(argvs), json.dumps(_NOT_ARGUMENTS))
    assert result.returncode == 0, result.stderr
    resolved[name] = iter(json.loads(result.stdout))
  made = {}
  for path, command, args in shown:
    folder, arguments = next(resolved[command])
    first = made.setdefault(folder, (path, command, args, arguments))
    assert first[3] == arguments, (
        f'{path}: {command} {" ".join(args)} writes {folder}, where {first[0]}\'s '
        f'{first[1]} {" ".join(first[2])} made runs with other arguments')
  assert made['runs/check_parity'][3] == '', 'the main job is no longer among the commands found'
