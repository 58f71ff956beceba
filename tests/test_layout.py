"""The package's wings (docs/layout.md): every module in one, imports one way only, and the
library never imports the command line."""

import ast
import os

import pytest

from conftest import HAS_JAX, REPO, run_python
from tf1compat.data import record_schema
from tf1compat.judge import legacy_env
from tf1compat.runtime import process
from tf1compat.train.models import convnet
from tf1compat.train.models import resnet

PACKAGE = os.path.join(REPO, 'tf1compat')
# Each wing may import the wings of a lower rank, never one of its own rank or above:
# commands -> judge, bench -> train -> data -> runtime -> runs.
RANKS = {'runs': 0, 'runtime': 1, 'data': 2, 'train': 3, 'bench': 4, 'judge': 4, 'commands': 5}
# What only commands/ may import: absl's command line and our own.
COMMAND_LINE = ('absl.flags', 'absl.app', 'tf1compat.commands')


def _modules():
  """{module name: path} of every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        module = os.path.relpath(path[:-3], REPO).replace(os.sep, '.')
        out[module[:-len('.__init__')] if module.endswith('.__init__') else module] = path
  return out


def _imports(path):
  """Every module the file at `path` imports, at its top or inside a function:
  'tf1compat.runs.runlog' for `from tf1compat.runs import runlog`."""
  with open(path) as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f'{node.module}.{alias.name}' for alias in node.names)
  return out


def _wing(module):
  return module.split('.')[1]


def test_every_module_sits_in_a_wing_that_says_what_it_owns():
  top_level = sorted(name for name in os.listdir(PACKAGE) if name.endswith('.py'))
  assert top_level == ['__init__.py']
  wings = sorted(name for name in os.listdir(PACKAGE)
                 if os.path.isfile(os.path.join(PACKAGE, name, '__init__.py')))
  assert wings == sorted(RANKS)
  for module, path in _modules().items():
    if path.endswith('__init__.py'):
      with open(path) as f:
        assert ast.get_docstring(ast.parse(f.read())), f'{module} says nothing of what it holds'


def test_imports_run_one_way_between_the_wings():
  modules = _modules()
  against = []
  for module, path in modules.items():
    if module == 'tf1compat':
      continue
    for imported in _imports(path):
      if imported in modules and imported != 'tf1compat' and _wing(imported) != _wing(module):
        if RANKS[_wing(imported)] >= RANKS[_wing(module)]:
          against.append(f'{module} imports {imported}')
  assert not against


def test_the_library_never_imports_the_command_line():
  # Read, not run, for absl's: TensorFlow imports absl.flags itself, so a library module's
  # own import of it changes nothing a process could observe.
  imports_it = [f'{module} imports {imported}'
                for module, path in _modules().items()
                if module != 'tf1compat' and _wing(module) != 'commands'
                for imported in _imports(path)
                if any(imported == name or imported.startswith(name + '.')
                       for name in COMMAND_LINE)]
  assert not imports_it
  # Run: every library module imports with tf1compat.commands unreachable.
  result = run_python(r'''
import importlib, importlib.util, pkgutil, sys
import tf1compat

class NoCommands:
  def find_spec(self, name, path=None, target=None):
    if name == 'tf1compat.commands' or name.startswith('tf1compat.commands.'):
      raise ImportError(f'the library imported {name}')

sys.meta_path.insert(0, NoCommands())
# The JAX port's modules import JAX, an extra.
skipped = () if importlib.util.find_spec('jax') else ('tf1compat.train.jax',)
names = [m.name for m in pkgutil.walk_packages(tf1compat.__path__, 'tf1compat.')
         if not m.name.startswith(('tf1compat.commands', *skipped))]
for name in names:
  importlib.import_module(name)
print(len(names))
''')
  assert result.returncode == 0, result.stderr
  assert int(result.stdout.split()[-1]) == sum(
      1 for module in _modules() if module.startswith('tf1compat.') and
      _wing(module) != 'commands' and (HAS_JAX or not module.startswith('tf1compat.train.jax')))


def test_team_loops_import_the_recorder_from_the_package():
  result = run_python('from tf1compat import recorder, team_models\n'
                      'print(recorder.__name__, team_models.__name__)\n')
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['tf1compat.runs.recorder', 'tf1compat.runs.team_models']


def test_the_built_in_models_load_under_the_paths_the_docs_gave_before_the_wings():
  assert record_schema.load('model', 'tf1compat.resnet:resnet_small') is resnet.resnet_small
  assert record_schema.load('model', 'tf1compat.model:build_model') is convnet.build_model
  with pytest.raises(record_schema.PluginError, match="no module named 'tf1compat.runlog'"):
    record_schema.load('model', 'tf1compat.runlog:RunLog')


def test_the_package_is_found_from_its_wings(tmp_path):
  """What a module finds from its own file is its wing's folder, not the package's."""
  assert process.PACKAGE_PARENT == REPO
  link = os.path.join(legacy_env.source_path(str(tmp_path)), 'tf1compat')
  assert os.path.samefile(link, PACKAGE)
