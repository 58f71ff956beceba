"""tf1compat: a legacy TF1 graph-mode training loop, its TF2 port, and a parity harness.

Importing the package or any of its modules sets up nothing: the graph runner's entry
point (`bin/train_graph`) does the process-wide TF1 setup before importing TensorFlow.
The modules live in wings by concern (docs/layout.md): runs, runtime, data, train, bench,
judge, commands. `from tf1compat import recorder, team_models, session_hook,
keras_callback`, the imports the docs give teams for their own jobs, reach them in runs/.
"""

import importlib

__version__ = '0.1.0'

# The names a team's own loop imports from the package itself (docs/own-migration.md).
_TEAM_MODULES = {'recorder': 'tf1compat.runs.recorder',
                 'team_models': 'tf1compat.runs.team_models',
                 'session_hook': 'tf1compat.runs.session_hook',
                 'keras_callback': 'tf1compat.runs.keras_callback'}


def __getattr__(name):
  if name in _TEAM_MODULES:
    return importlib.import_module(_TEAM_MODULES[name])
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
