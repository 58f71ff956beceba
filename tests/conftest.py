"""Shared fixtures: tiny synthetic datasets and a runner for the bin/ entry points.

Entry points run as subprocesses, because the graph runner's TF1 process setup and
the eager runner's Keras 3 must never share a process (this one included).
"""

import concurrent.futures
import functools
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tf1compat.runs import run_files

from tf1compat.runs import runlog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# The JAX port's tests need the jax extra, which the test extra installs.
HAS_JAX = importlib.util.find_spec('jax') is not None
requires_jax = pytest.mark.skipif(
    not HAS_JAX, reason="JAX is not installed: pip install -e '.[test]' (or '.[jax]') runs "
                        'the JAX port tests')
JAX_PORT = ('train_eager', '--loop=custom', '--backend=jax')

# A dataset small enough for 2-core CI: 4 classes, 16 training and 4 validation
# images per class; runs use 32-pixel images.
TINY = dict(num_classes=4, train_per_class=16, val_per_class=4, num_shards=2, seed=0)
TINY_IMAGE_SIZE = 32


def run_entry(name, *args, env=None, timeout=600):
  """Runs bin/<name> with `args`; returns the CompletedProcess (text output)."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run([sys.executable, os.path.join(REPO, 'bin', name), *args],
                        capture_output=True, text=True, env=full_env, timeout=timeout,
                        check=False)


def run_python(code, *args, env=None, timeout=600):
  """Runs a Python snippet in a fresh interpreter with the repository importable."""
  full_env = dict(os.environ)
  full_env['PYTHONPATH'] = REPO + os.pathsep + full_env.get('PYTHONPATH', '')
  full_env.update(env or {})
  return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True,
                        env=full_env, timeout=timeout, check=False)


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """A tiny synthetic dataset written once per test session."""
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('tiny_data'))
  records.write_synthetic(out, **TINY)
  return out


@pytest.fixture(scope='session', autouse=True)
def _isolated_cache(tmp_path_factory):
  """Keeps the embedded-dataset cache of the tests away from the user's (session-wide, so
  that the runs of module and session fixtures see it too)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('TF1COMPAT_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))
    yield


def at_once(*calls):
  """Calls the functions `calls` (no arguments; each typically runs an entry point) in
  threads, at least two at a time; returns their results in order, re-raising the first
  failure.

  A runner spends most of its seconds starting TensorFlow on one core: on this project's
  2-core machine two at a time take about 60% as long as one after the other.
  """
  with pytest.MonkeyPatch.context() as patch:
    # Runners sharing a GPU must not each reserve all of its memory.
    patch.setenv('TF_FORCE_GPU_ALLOW_GROWTH', 'true')
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
      futures = [pool.submit(call) for call in calls]
      return [future.result() for future in futures]


def tiny_run_flags(data_dir, model_dir, *extra):
  """Flags for a runner run that takes seconds: 32-pixel images, batch 8, 2 epochs of 6."""
  return [f'--data_dir={data_dir}', f'--model_dir={model_dir}', f'--image_size={TINY_IMAGE_SIZE}',
          '--batch_size=8', '--epochs=2', '--steps_per_epoch=6', '--shuffle_buffer=64',
          '--snapshot_steps=0,1,2,5', *extra]


@pytest.fixture(scope='session')
def graph_init_weights(tiny_data_dir, tmp_path_factory):
  """Initial weights of the default model for the tiny dataset, written once by
  train_graph --save_init_weights (which trains nothing and makes no run directory)."""
  root = tmp_path_factory.mktemp('graph_init')
  path, model_dir = str(root / 'init.npz'), str(root / 'never_created')
  proc = run_entry('train_graph', *tiny_run_flags(tiny_data_dir, model_dir,
                                                  f'--save_init_weights={path}'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not os.path.exists(model_dir)
  return path


# The flags of runs that get interrupted, and of their `references`: 2 epochs of 8 steps
# (tiny_run_flags has 6), room for a signal to land mid-epoch; periodic checkpoints every
# 3 steps for SIGKILL.
EPOCHS, STEPS_PER_EPOCH = 2, 8
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
KILL_FLAGS = (f'--epochs={EPOCHS}', f'--steps_per_epoch={STEPS_PER_EPOCH}',
              '--checkpoint_every=3')
# runner -> (script, its arguments): the runs `references` holds.
REFERENCE_RUNNERS = {'graph': ('train_graph',), 'eager': ('train_eager', '--loop=custom'),
                     'fit': ('train_eager', '--loop=fit'),
                     **({'jax': JAX_PORT} if HAS_JAX else {})}


@pytest.fixture(scope='session')
def references(tiny_data_dir, tmp_path_factory):
  """(runner -> model_dir) of uninterrupted KILL_FLAGS runs on the tiny dataset, one per
  runner of REFERENCE_RUNNERS, trained once for the session. Tests copy them before
  changing anything."""
  root = tmp_path_factory.mktemp('references')
  made = {runner: str(root / runner) for runner in REFERENCE_RUNNERS}

  def train(runner):
    script, *args = REFERENCE_RUNNERS[runner]
    proc = run_entry(script, *tiny_run_flags(tiny_data_dir, made[runner], *KILL_FLAGS, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]

  at_once(*(functools.partial(train, runner) for runner in made))
  return made.__getitem__


def read_run_csv(model_dir, name=run_files.STEPS_CSV):
  """{column: array} of a run directory's steps.csv (or `name`)."""
  return runlog.read_csv(os.path.join(model_dir, name))


def read_snapshot(model_dir, step):
  """{weight key: array} of the run's weight snapshot after `step`."""
  with np.load(run_files.snapshot_path(model_dir, step)) as npz:
    return {key: npz[key] for key in npz.files}


# Data rows of a CSV file (0 while it does not exist): the harness's own counter.
csv_rows = runlog.count_rows


def signal_after(script, args, model_dir, rows, signum, log_path):
  """Runs bin/<script>, sends `signum` once steps.csv has `rows` rows; returns the exit code.

  stderr goes to `log_path` (a pipe that nobody reads while polling could fill up).
  """
  steps = os.path.join(model_dir, run_files.STEPS_CSV)
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'bin', script), *args],
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
      if csv_rows(steps) >= rows:
        proc.send_signal(signum)
        break
      time.sleep(0.005)
    return proc.wait(timeout=300)
