"""The example loops of a team, recorded with tf1compat.runs.recorder and judged by
bin/compare_runs: the TF1 Session loop, its Keras 3 port, a control run, and the port
with a migration mistake. Graph mode and Keras 3 never share a process: each loop runs
as its own subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from conftest import read_run_csv
from conftest import read_snapshot
from conftest import run_entry
from tf1compat.runs import runlog
from tf1compat.runs import team_models

EXAMPLES = os.path.join(REPO, 'examples')
WEIGHT_MAP = os.path.join(EXAMPLES, 'tf1_to_port.map')
# Two short epochs: the runs take a second each, the processes' start the rest.
SHORT = ('--epochs=2', '--steps_per_epoch=8')
MISTAKES = ('adam_epsilon', 'metrics_never_reset')
PER_STEP_SEED = 7
# The map in tf1_to_port.map, written out by hand: TF1 names -> the Keras 3 port's.
TF1_TO_PORT = {'hidden/kernel': 'sequential/dense/kernel',
               'hidden/bias': 'sequential/dense/bias',
               'logits/kernel': 'sequential/dense_1/kernel',
               'logits/bias': 'sequential/dense_1/bias'}


def _example(script, model_dir, init_weights, *args):
  return subprocess.Popen(
      [sys.executable, os.path.join(EXAMPLES, script), *SHORT, f'--model_dir={model_dir}',
       f'--init_weights={init_weights}', *args],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'PYTHONPATH': REPO})


def _finished(proc):
  output, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, output
  return output


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{name: run directory}: the TF1 loop (which writes the initial weights), then its
  control, the port and the port with each mistake, side by side."""
  base = tmp_path_factory.mktemp('examples')
  paths = {name: str(base / name)
           for name in ('tf1', 'control', 'control_per_step', 'port', *MISTAKES)}
  paths['init'] = str(base / 'init.npz')
  _finished(_example('tf1_session_loop.py', paths['tf1'], paths['init']))
  control_init = team_models.control_start(paths['init'])
  procs = [_example('tf1_session_loop.py', paths['control'], control_init),
           _example('tf1_session_loop.py', paths['control_per_step'], paths['init'],
                    f'--nudge_seed={PER_STEP_SEED}'),
           _example('tf2_port.py', paths['port'], paths['init'])]
  procs += [_example('tf2_port.py', paths[name], paths['init'], f'--mistake={name}')
            for name in MISTAKES]
  for proc in procs:
    _finished(proc)
  return paths


def _compare(runs, out, *names, control=True):
  """compare_runs of the runs `names`, localized from the probes the loops recorded."""
  args = [runs[name] for name in names] + [f'--output_dir={out}', '--localize',
                                           f'--weight_map={runs["tf1"]}={WEIGHT_MAP}']
  if control:
    args.append(f'--control={runs["control"]}')
  result = run_entry('compare_runs', *args)
  with open(os.path.join(out, 'parity.json')) as f:
    return result, json.load(f)


def test_the_port_starts_where_the_tf1_loop_starts(runs):
  init = team_models.load_weights(runs['init'])
  assert sorted(init) == sorted(TF1_TO_PORT)
  tf1_start, port_start = read_snapshot(runs['tf1'], 0), read_snapshot(runs['port'], 0)
  for tf1_name, port_name in TF1_TO_PORT.items():
    np.testing.assert_array_equal(tf1_start[tf1_name], init[tf1_name])
    np.testing.assert_array_equal(port_start[port_name], init[tf1_name])
  # The same start and the same first batch: the same first loss, to float32 rounding.
  first = [read_run_csv(runs[name])['loss'][0] for name in ('tf1', 'port')]
  assert first[1] == pytest.approx(first[0], rel=1e-6)


@pytest.mark.parametrize('control', [True, False])
def test_the_port_passes(runs, tmp_path, control):
  result, report = _compare(runs, str(tmp_path), 'tf1', 'port', control=control)
  assert result.returncode == 0, result.stdout + result.stderr
  assert report['verdict'] == 'PASS'
  assert (report['calibration'] is not None) == control
  pair = report['pairs'][0]
  # Their loss functions differ by name only; TF1's fused Adam and Keras' round apart.
  assert [(d['field'], d['equivalent']) for d in pair['lint']] == [('loss', True)]
  assert set(pair['framework_differences']) == {'adam_rounding'}
  assert pair['weight_tier']['common_steps'] == [0, 1, 2, 5, 10, 16]
  assert report['weight_maps'][runs['tf1']] == WEIGHT_MAP
  # Their probes of step 1 pair up (layer outputs by the names both gave them, gradients
  # through the weight map) and nothing parts; the two Adam kernels' rounding of the
  # update, a known framework difference, is reported, not judged.
  where = pair['where']
  assert where['judged'] and where['calibrated'] == control and where['first'] is None, where
  stages = where['stages']
  assert [row['name'] for row in stages['forward']['rows']] == ['hidden', 'logits']
  assert sorted(row['name'] for row in stages['gradients']['rows']) == sorted(
      TF1_TO_PORT.values())
  assert sorted(stages['update']['excluded']) == sorted(TF1_TO_PORT.values())
  assert not any(info['unpaired'] for info in stages.values())


def test_each_mistake_of_the_port_fails_and_is_named_first(runs, tmp_path):
  result, report = _compare(runs, str(tmp_path), 'tf1', *MISTAKES)
  assert result.returncode == 1, result.stdout + result.stderr
  for name, pair in zip(MISTAKES, report['pairs']):
    assert pair['verdict'] == 'FAIL'
    assert pair['pitfalls'][0]['name'] == name, pair['pitfalls']
  # Neither parts the codes where a replay of step 1 may judge: metrics act outside one
  # step; Keras' epsilon changes the update, which the kernels' rounding keeps unjudged
  # here, and the report says by how much it differs all the same.
  verdicts = [pair['where']['pitfalls'][0] for pair in report['pairs']]
  assert [v['verdict'] for v in verdicts] == ['unconfirmed', 'agrees']
  assert 'keeps from being judged there' in verdicts[0]['note']
  update = report['pairs'][0]['where']['stages']['update']['rows']
  assert max(row['difference'] / max(row['control'], 2 ** -23) for row in update) > 100
  # The epsilon the port's optimizer really had, read from it by the recorder.
  epsilons = [runlog.read_manifest(runs[name])['optimizer']['epsilon']
              for name in ('tf1', 'port', 'adam_epsilon')]
  assert epsilons == [1e-8, 1e-8, 1e-7]


def test_a_teams_loop_with_a_per_step_control_passes_against_both_controls(runs, tmp_path):
  """The legacy loop again from the same start, every weight one ulp away after every step
  (team_models.nudge_session): the same first loss, then its own rounding at every step."""
  reference, per_step = (read_run_csv(runs[name])['loss'] for name in ('tf1', 'control_per_step'))
  assert per_step[0] == reference[0] and not np.array_equal(per_step[1:], reference[1:])
  step_1 = read_snapshot(runs['control_per_step'], 1)
  for name, value in read_snapshot(runs['tf1'], 1).items():
    one_ulp = ((step_1[name] == np.nextafter(value, np.inf)) |
               (step_1[name] == np.nextafter(value, -np.inf)))
    assert np.all(one_ulp[value != 0]), name
  args = [runs['tf1'], runs['port'], f'--output_dir={tmp_path}', f'--control={runs["control"]}',
          f'--control={runs["control_per_step"]}', f'--weight_map={runs["tf1"]}={WEIGHT_MAP}']
  result = run_entry('compare_runs', *args)
  assert result.returncode == 0, result.stdout + result.stderr
  with open(os.path.join(tmp_path, 'parity.json')) as f:
    report = json.load(f)
  assert report['verdict'] == 'PASS'
  assert report['controls'] == [runs['control'], runs['control_per_step']]
