"""The real legacy stack's environment: TensorFlow 1.15 on Python 3.7, made and checked.

`create(folder)` (bin/legacy_env) makes a virtual environment from the machine's Python
3.7 and installs REQUIREMENTS into it; `check(python)` (check_parity --legacy_python)
asks an interpreter, in a process of its own, whether it is such an environment. The
graph runner then runs there from this very tf1compat source (`source_path`), not from
an installed copy: the two stacks run one source. TensorFlow-free.
"""

import glob
import json
import os
import shutil
import subprocess

import tf1compat
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runtime import progress

# The real legacy stack. TensorFlow 1.15's cp37 wheel wants numpy < 1.19 and protobuf 3.20
# or older (the 4.21 line refuses the generated modules 1.15 ships); absl-py comes with
# TensorFlow; tqdm draws the runner's progress bars.
REQUIREMENTS = ('tensorflow-cpu==1.15.0', 'numpy<1.19', 'protobuf<3.21', 'tqdm')
PYTHON_VERSION = (3, 7)
# Where the machine's Python 3.7 may be besides PATH: pyenv's versions.
_PYENV_PATTERN = os.path.join('versions', '3.7.*', 'bin', 'python3.7')
# Seconds a step may take: pip downloads a 111 MB wheel, importing TensorFlow takes a few.
_INSTALL_TIMEOUT = 1800
_CHECK_TIMEOUT = 300

# Asked of an interpreter by check(), run in that interpreter's own process: its print is the
# answer, its versions and what the graph runner imports.
_PROBE = """
import json, platform
import absl, numpy, tqdm
import tensorflow as tf
print(json.dumps({'python': platform.python_version(), 'tensorflow': tf.__version__,
                  'numpy': numpy.__version__, 'keras': tf.keras.__version__}))
"""


def _version(python):
  """(major, minor) of the interpreter `python`, or None when it does not run (a pyenv
  shim whose version is not selected, a missing file)."""
  try:
    # The print runs in the interpreter asked, not here.
    done = subprocess.run([python, '-c', 'import sys; print(*sys.version_info[:2])'],
                          capture_output=True, text=True, timeout=60, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  words = done.stdout.split()
  # Something that runs but is not Python (/bin/true) prints no version.
  if done.returncode != 0 or len(words) != 2 or not all(w.isdigit() for w in words):
    return None
  return tuple(int(w) for w in words)


def find_python37():
  """The machine's Python 3.7: the first that runs of python3.7 on PATH and pyenv's
  (under `pyenv root`, $PYENV_ROOT or ~/.pyenv, newest first); None when none does."""
  candidates = [shutil.which('python3.7')]
  roots = [os.environ.get('PYENV_ROOT'), os.path.expanduser('~/.pyenv')]
  if shutil.which('pyenv'):
    found = subprocess.run(['pyenv', 'root'], capture_output=True, text=True, check=False)
    roots.insert(0, found.stdout.strip() if found.returncode == 0 else None)
  for root in filter(None, roots):
    candidates += sorted(glob.glob(os.path.join(root, _PYENV_PATTERN)), reverse=True)
  return next((python for python in filter(None, candidates)
               if _version(python) == PYTHON_VERSION), None)


def venv_python(folder):
  """The interpreter of the virtual environment in `folder`."""
  return os.path.join(folder, 'bin', 'python')


def _step(what, argv, timeout):
  """Runs one phase's command; its output is shown only when it fails (errors.Fault)."""
  done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=timeout, check=False)
  if done.returncode:
    tail = '\n'.join(done.stdout.strip().splitlines()[-15:])
    raise errors.Fault(f'{what} failed (exit {done.returncode}): {" ".join(argv)}\n{tail}')


def create(folder, python=None):
  """Makes `folder` a Python 3.7 virtual environment with REQUIREMENTS and checks it;
  returns check()'s versions. `python`: the Python 3.7 to make it from (default:
  find_python37()). One progress line per phase.

  Raises errors.UsageError when no Python 3.7 is found, when `python` is not one, or when
  `folder` holds something other than such an environment; errors.Fault when pip fails.
  An environment already there is completed, not made again.
  """
  python = python or find_python37()
  if python is None:
    raise errors.UsageError('no Python 3.7 found (python3.7 on PATH, or pyenv\'s under '
                            '$(pyenv root)/versions/3.7.*); install one (pyenv install 3.7.16) '
                            'or pass --python=PATH')
  target = venv_python(folder)
  # Under a file, in a read-only folder, among the data or the package: refused before
  # venv fails on it (exit 4).
  folders.check_output(folder, 'legacy_env DIR', folder=True)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise errors.UsageError(f'{folder} is a file, not a folder; pass a new or empty folder to make '
                            'the environment in')
  if os.path.exists(folder) and os.listdir(folder) and not os.path.exists(target):
    raise errors.UsageError(f'{folder} holds files but no virtual environment; choose an empty '
                            'or new folder')
  if not os.path.exists(target):
    _check_version(python)
    progress.say(f'python: {python}')
    progress.say(f'venv: creating {folder}')
    _step('creating the virtual environment', [python, '-m', 'venv', folder], _INSTALL_TIMEOUT)
  progress.say(f'install: {" ".join(REQUIREMENTS)} (pip; the TensorFlow wheel is 111 MB)')
  _step('pip install', [target, '-m', 'pip', 'install', '--quiet', *REQUIREMENTS],
        _INSTALL_TIMEOUT)
  found = check(target)
  progress.say(f'check: Python {found["python"]}, TensorFlow {found["tensorflow"]} (tf.keras '
               f'{found["keras"]}), numpy {found["numpy"]}')
  progress.say(f'ready: check_parity --legacy_python={target}')
  return found


def _check_version(python):
  version = _version(python)
  if version != PYTHON_VERSION:
    found = 'it does not run' if version is None else 'it is Python {}.{}'.format(*version)
    raise errors.UsageError(f'{python} is not a Python 3.7 ({found}); pass the path of one with '
                            '--python')


def check(python):
  """{python, tensorflow, numpy, keras} versions of the interpreter `python`, asked in a
  process of its own. Raises errors.UsageError when it does not run, lacks what the graph
  runner imports, or runs another TensorFlow than 1.x."""
  fix = f'make one with bin/legacy_env DIR (it installs {" ".join(REQUIREMENTS)})'
  if not os.path.isfile(python):
    raise errors.UsageError(f'--legacy_python={python}: no such interpreter; {fix}')
  if not os.access(python, os.X_OK):
    raise errors.UsageError(f'--legacy_python={python} is not executable; chmod +x it, or {fix}')
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  # Neither our path nor TensorFlow 2's TF2_BEHAVIOR (process.use_legacy_keras).
  env.pop('PYTHONPATH', None)
  env.pop('TF2_BEHAVIOR', None)
  try:
    done = subprocess.run([python, '-c', _PROBE], capture_output=True, text=True, env=env,
                          errors='replace', timeout=_CHECK_TIMEOUT, check=False)
  except OSError as e:
    raise errors.UsageError(f'--legacy_python={python} does not start ({e.strerror}); {fix}') from e
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ['no output'])[-1]
    raise errors.UsageError(f'--legacy_python={python}: it cannot import what the graph runner '
                            f'needs ({last}); {fix}')
  found = _probe_answer(done.stdout)
  if found is None:
    # It ran and exited 0 without the probe's answer: /bin/true, a wrapper script, a
    # program that prints its own version.
    said = (done.stdout.strip().splitlines() or ['nothing'])[-1][:80]
    raise errors.UsageError(f'--legacy_python={python} ran but is not a Python interpreter (it '
                            f'printed {said!r} for a Python script); {fix}')
  if not found['tensorflow'].startswith('1.'):
    raise errors.UsageError(f'--legacy_python={python} runs TensorFlow {found["tensorflow"]}, not '
                            f'1.x; {fix}')
  return found


def _probe_answer(stdout):
  """The versions _PROBE prints as its last line, or None when `stdout` does not end in them."""
  lines = stdout.strip().splitlines()
  try:
    found = json.loads(lines[-1]) if lines else None
  except ValueError:
    return None
  keys = ('python', 'tensorflow', 'numpy', 'keras')
  if not isinstance(found, dict) or not all(isinstance(found.get(key), str) for key in keys):
    return None
  return found


def source_path(folder):
  """A folder to put on the legacy interpreter's PYTHONPATH that holds this tf1compat and
  nothing else (a link in `folder`): the folder above the package may be a Python 3.10+
  site-packages, whose compiled modules a Python 3.7 must not import."""
  package = os.path.dirname(os.path.abspath(tf1compat.__file__))
  link = os.path.join(folder, 'tf1compat')
  os.makedirs(folder, exist_ok=True)
  if os.path.islink(link) and os.readlink(link) == package:
    return folder
  if os.path.islink(link):
    os.remove(link)
  os.symlink(package, link)
  return folder
