"""Shared fixtures: tiny synthetic datasets and a runner for the bin/ entry points.

Entry points run as subprocesses, because the graph runner's TF1 process setup and
the eager runner's Keras 3 must never share a process (this one included).
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tf1compat import runlog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

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
  from tf1compat import records  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('tiny_data'))
  records.write_synthetic(out, **TINY)
  return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
  """Keeps the embedded-dataset cache of the tests away from the user's."""
  monkeypatch.setenv('TF1COMPAT_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


def tiny_run_flags(data_dir, model_dir, *extra):
  """Flags for a runner run that takes seconds: 32-pixel images, batch 8, 2 epochs of 6."""
  return [f'--data_dir={data_dir}', f'--model_dir={model_dir}', f'--image_size={TINY_IMAGE_SIZE}',
          '--batch_size=8', '--epochs=2', '--steps_per_epoch=6', '--shuffle_buffer=64',
          '--snapshot_steps=0,1,2,5', *extra]


def read_run_csv(model_dir, name=runlog.STEPS_CSV):
  """{column: array} of a run directory's steps.csv (or `name`)."""
  return runlog.read_csv(os.path.join(model_dir, name))


def read_snapshot(model_dir, step):
  """{weight key: array} of the run's weight snapshot after `step`."""
  with np.load(runlog.snapshot_path(model_dir, step)) as npz:
    return {key: npz[key] for key in npz.files}


# Data rows of a CSV file (0 while it does not exist): the harness's own counter.
csv_rows = runlog.count_rows


def signal_after(script, args, model_dir, rows, signum, log_path):
  """Runs bin/<script>, sends `signum` once steps.csv has `rows` rows; returns the exit code.

  stderr goes to `log_path` (a pipe that nobody reads while polling could fill up).
  """
  steps = os.path.join(model_dir, runlog.STEPS_CSV)
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
