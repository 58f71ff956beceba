"""The first run on a GPU host (opt-in: `pytest -m gpu`; skipped where TensorFlow sees no GPU).

What a CPU cannot show: the device is logged and required, the graph runner is
reproducible bit for bit under op determinism, the calibrated check passes with and
without BatchNorm, every pitfall is still named, a TF32 difference is named by the lint,
mirrored runs with and without mixed precision finish, and the benchmark reports the
device's peak. Each test runs the real commands as subprocesses.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import read_snapshot, run_entry, tiny_run_flags
from tf1compat.judge import pitfalls
from tf1compat.runs import run_files
from tf1compat.runs import runlog

pytestmark = pytest.mark.gpu


def _gpu_count():
  code = 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))'
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=False)
  return int(result.stdout.strip() or 0) if result.returncode == 0 else 0


@pytest.fixture(scope='module', autouse=True)
def _needs_a_gpu():
  if not _gpu_count():
    pytest.skip('TensorFlow sees no GPU here (these tests are for GPU hosts)')


def _check_parity(out, *args):
  result = run_entry('check_parity', '--require_gpu', f'--output_dir={out}', *args,
                     timeout=1800)
  with open(os.path.join(out, 'parity.json')) as f:
    return result, json.load(f)


def test_matched_check_passes_on_the_gpu_calibrated(tmp_path):
  for extra in ((), ('--batch_norm',)):
    result, report = _check_parity(str(tmp_path / ('bn' if extra else 'plain')), *extra)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert report['calibration'] and report['verdict'] == 'PASS'
    assert all(run['device'].startswith('GPU') for run in report['runs'])


def test_graph_runner_is_reproducible_bit_for_bit(tiny_data_dir, tmp_path):
  runs = [str(tmp_path / name) for name in ('a', 'b')]
  for model_dir in runs:
    result = run_entry('train_graph', '--require_gpu', '--batch_norm',
                       *tiny_run_flags(tiny_data_dir, model_dir))
    assert result.returncode == 0, result.stderr[-3000:]
  losses = [runlog.read_csv(os.path.join(d, run_files.STEPS_CSV))['loss'] for d in runs]
  np.testing.assert_array_equal(losses[0], losses[1])
  last = max(run_files.snapshot_steps_in(runs[0]))
  first, second = read_snapshot(runs[0], last), read_snapshot(runs[1], last)
  for key, value in first.items():
    np.testing.assert_array_equal(value, second[key], err_msg=key)


@pytest.mark.parametrize('name', sorted(pitfalls.PITFALLS))
def test_every_pitfall_is_named_first_on_the_gpu(name, tiny_data_dir, tmp_path):
  flags = [f for f in tiny_run_flags(tiny_data_dir, 'unused') if '--model_dir' not in f]
  needs = pitfalls.PITFALLS[name].needs
  # 0.3, not 0.5: 1 - 0.5 = 0.5 would hide keep_prob_as_rate.
  model = ['--batch_norm'] if 'batch_norm' in needs else (['--dropout=0.3'] if needs else [])
  backend = [f'--port_backend={pitfalls.PITFALLS[name].port_backend}'] * bool(
      pitfalls.PITFALLS[name].port_backend)
  result, report = _check_parity(str(tmp_path / name), *flags, *model, *backend,
                                 f'--pitfall={name}')
  assert result.returncode == 1, result.stderr[-3000:]
  assert report['pairs'][0]['pitfalls'][0]['name'] == name


def test_a_tf32_difference_is_named_by_the_lint(tiny_data_dir, tmp_path):
  flags = [f for f in tiny_run_flags(tiny_data_dir, 'unused') if '--model_dir' not in f]
  result, report = _check_parity(str(tmp_path / 'tf32'), *flags, '--port_flags=--tf32=off')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  named = [d for d in report['pairs'][0]['lint'] if d['field'] == 'tf32']
  assert named and named[0]['reference'] is True and named[0]['other'] is False


@pytest.mark.parametrize('extra', [(), ('--mixed_precision',)])
def test_mirrored_runs_finish(extra, tiny_data_dir, tmp_path):
  model_dir = str(tmp_path / 'mirrored')
  result = run_entry('train_eager', '--require_gpu', '--strategy=mirrored', *extra,
                     *tiny_run_flags(tiny_data_dir, model_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert runlog.read_manifest(model_dir)['status'] == runlog.STATUS_COMPLETE


def test_benchmark_reports_the_gpu_peak(tmp_path):
  figures_path = str(tmp_path / 'benchmark.json')
  result = run_entry('benchmark', '--image_size=64', '--steps=4', '--repetitions=2',
                     '--records=512', '--shuffle_buffer=256', '--measurements=graph,eager',
                     f'--output_dir={tmp_path / "runs"}', f'--json={figures_path}',
                     timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(figures_path) as f:
    figures = json.load(f)
  assert figures['device']['accelerator'].startswith('GPU')
  assert figures['peak_gflops']['float32'] > 0 and figures['peak_gflops']['float16'] > 0
  assert set(figures['loop_fraction_of_peak']) >= {'graph', 'eager'}
