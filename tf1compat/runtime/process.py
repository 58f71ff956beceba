"""How the project's processes are set up and started.

Graph mode and Keras 3 never share a process: `TF_USE_LEGACY_KERAS=1` and
`disable_v2_behavior()` are process-wide and must precede the first TensorFlow import.
This module is that one place (the graph runner, the eager runner and the benchmark's
workers all call it), and it starts the project's own commands as subprocesses by
module name (`python -m tf1compat.commands.NAME`), with the importing tf1compat first
on their path, so nothing depends on a checkout or the current folder.
"""

import atexit
import importlib
import importlib.util
import os
import re
import shutil
import signal
import sys
import tempfile

import tf1compat
from tf1compat.runs import errors

COMMANDS_PACKAGE = 'tf1compat.commands'
# The folder that holds the tf1compat package: a checkout's root or site-packages.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(tf1compat.__file__)))
# A runner's exit after SIGINT or SIGTERM, with a checkpoint to resume from.
INTERRUPTED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)
# The temporary folder of each TensorFlow process of ours (use_private_temp_folder).
_TEMP_FOLDER = re.compile(r'tf1compat-(\d+)-[^/]+')


def use_private_temp_folder():
  """Gives this process a temporary folder of its own, tf1compat-PID-* in the system's,
  removed when it exits, and removes those of processes that are gone.

  AutoGraph writes each function it converts as __autograph_generated_file*.py into
  tempfile.gettempdir() and removes them at exit: a process ended by SIGKILL, the OOM
  killer or a crash left them in /tmp (measured: 22 files for one eager and one graph run
  killed mid-run), run after run. Here they go with the folder, at the latest when the
  next runner starts.
  """
  base = tempfile.gettempdir()
  for name in os.listdir(base):
    match = _TEMP_FOLDER.fullmatch(name)
    if match and not _alive(int(match.group(1))):
      shutil.rmtree(os.path.join(base, name), ignore_errors=True)
  folder = tempfile.mkdtemp(prefix=f'tf1compat-{os.getpid()}-', dir=base)
  atexit.register(shutil.rmtree, folder, True)
  tempfile.tempdir = folder
  # TensorFlow's C++ side (and any child) reads TMPDIR.
  os.environ['TMPDIR'] = folder


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    pass  # another user's
  return True


def set_cpu_kernels(onednn, intra_op_threads=0):
  """Turns oneDNN's CPU kernels on or off ('default': TensorFlow's choice) and sets the
  intra-op thread count (0: TensorFlow's, one per core) for this process; both are read
  once, when TensorFlow loads, so this must precede the first import."""
  if onednn == 'default' and not intra_op_threads:
    return
  if 'tensorflow' in sys.modules:
    raise RuntimeError('TensorFlow was imported before --onednn or --intra_op_threads was '
                       'applied')
  if onednn != 'default':
    os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1' if onednn == 'on' else '0'
  if intra_op_threads:
    os.environ['TF_NUM_INTRAOP_THREADS'] = str(intra_op_threads)


def use_legacy_keras():
  """Makes this a TF1 graph-mode process: tf.keras is Keras 2 (tf-keras), v2 behaviour off,
  GPU memory allocated as needed (see child_env).

  Must run before anything imports TensorFlow; returns the `tensorflow` module.
  """
  if 'tensorflow' in sys.modules and os.environ.get('TF_USE_LEGACY_KERAS') != '1':
    raise RuntimeError('TensorFlow was imported before the legacy-Keras process setup')
  use_private_temp_folder()
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  # TensorFlow 2 sets TF2_BEHAVIOR=1 in the environment of the process that imports it,
  # and its children inherit it; TensorFlow 1.15 would then import TF2's Keras API
  # (tf.keras 2.3.0-tf, the V2 layers) before disable_v2_behavior() could help.
  os.environ.pop('TF2_BEHAVIOR', None)
  os.environ.setdefault('TF_FORCE_GPU_ALLOW_GROWTH', 'true')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.compat.v1.disable_v2_behavior()
  return tf


def keras_backend_installed(backend):
  """Whether Keras 3's `backend` ('tensorflow' or 'jax') is installed (not imported)."""
  return backend != 'jax' or importlib.util.find_spec('jax') is not None


def check_keras_backend(backend):
  """Raises errors.UsageError when Keras 3's `backend` ('tensorflow' or 'jax') is not
  installed, without importing it."""
  if not keras_backend_installed(backend):
    raise errors.UsageError("the JAX port needs JAX, which is not installed: pip install "
                            "'tf1compat[jax]' (or jax[cpu], jax[cuda12])")


def use_keras3(backend='tensorflow'):
  """Makes this a Keras 3 process on `backend` ('tensorflow' or 'jax') and imports
  TensorFlow into it; returns an inherited TF_USE_LEGACY_KERAS it removed.

  The graph runner's setting, inherited from a parent process, would turn tf.keras
  into Keras 2, and an inherited KERAS_BACKEND (or ~/.keras/keras.json) another backend:
  Keras reads both once, when it is imported. GPU memory is allocated as needed (see
  child_env).
  """
  check_keras_backend(backend)
  use_private_temp_folder()
  value = os.environ.pop('TF_USE_LEGACY_KERAS', None)
  os.environ['KERAS_BACKEND'] = backend
  os.environ.setdefault('TF_FORCE_GPU_ALLOW_GROWTH', 'true')
  # `import tensorflow` loads Keras 3, and Keras 3 loads matplotlib for its image-gallery
  # helpers: about 0.5 CPU-seconds of every eager runner, replay and benchmark worker,
  # which draw nothing (a tiny run took 5.7 CPU-s with it, 5.2 without, alternated 5
  # times). Keras' own helpers then find no matplotlib; a later import (a team's module)
  # loads it as usual.
  hidden = 'matplotlib' not in sys.modules
  if hidden:
    sys.modules['matplotlib'] = None
  try:
    importlib.import_module('tensorflow')
  finally:
    if hidden and sys.modules.get('matplotlib', False) is None:
      del sys.modules['matplotlib']
  return value if value not in (None, '', '0') else None


def command(name, *args, python=None):
  """The argv that runs the project's command `name` (e.g. 'train_graph') with `args`,
  by this interpreter or `python` (check_parity --legacy_python's)."""
  return [python or sys.executable, '-m', f'{COMMANDS_PACKAGE}.{name}', *args]


def child_env(extra=(), package_parent=PACKAGE_PARENT):
  """os.environ for a subprocess of ours: this tf1compat importable first (from
  `package_parent`, a folder that holds it), plus `extra`.

  GPU memory grows as needed in every process we start (TF_FORCE_GPU_ALLOW_GROWTH),
  unless the user says otherwise: TensorFlow fixes the allocator's options with its
  first caller, and the eager runner would otherwise take almost all of every GPU.
  """
  env = dict(os.environ)
  env.setdefault('TF_FORCE_GPU_ALLOW_GROWTH', 'true')
  env['PYTHONPATH'] = os.pathsep.join(p for p in (package_parent, env.get('PYTHONPATH'))
                                      if p)
  env.update(dict(extra))
  return env


def last_line(log_path):
  """The last non-empty line of a runner's log: its own one-line error."""
  try:
    with open(log_path, errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ''
  return lines[-1] if lines else ''


def runner_error(name, code, log_path):
  """The exception for a runner that ended with exit `code` (negative: killed by a signal).

  Its own one-line message (the last line of its log) is kept; a usage error stays a
  usage error, NaN/Inf a numeric fault, SIGINT/SIGTERM an interruption, and anything
  else is a fault (exit 4), never read as a parity verdict.
  """
  message = last_line(log_path)
  if code == errors.EXIT_USAGE:
    return errors.UsageError(f'{name} runner: {message} (log: {log_path})')
  if code == errors.EXIT_NUMERIC:
    return errors.NumericFault(f'{name} runner: {message} (log: {log_path})')
  if code in INTERRUPTED_CODES:
    return errors.Interrupted(code - 128, f'{name} runner was interrupted; rerun the same '
                              'command to resume')
  how = f'killed by signal {-code}' if code < 0 else f'exit code {code}'
  return errors.Fault(f'{name} runner: internal or device fault ({how}): {message} (log: '
                      f'{log_path})')
