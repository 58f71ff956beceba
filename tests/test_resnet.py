"""The second built-in model, tf1compat.train.models.resnet:resnet_small, through check_parity.

Its matched port passes with a step-wise learning-rate schedule, and the mistakes it
exists to show (regularization dropped, a step schedule applied per epoch, Keras'
BatchNorm momentum) fail, are named first, and change what numpy predicts from the
runs' own records. One output folder: each case retrains only the runner it changes.
"""

import json
import os

import numpy as np
import pytest

from conftest import TINY_IMAGE_SIZE, read_run_csv, read_snapshot, run_entry
from tf1compat.judge import pitfalls
from tf1compat.judge import runner_jobs
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import runlog
from tf1compat.train.models import resnet

MODEL = 'tf1compat.train.models.resnet:resnet_small'
STEPS_PER_EPOCH = 6
DECAY_STEPS = 6
DECAY_RATE = 0.5
LEARNING_RATE = 0.001
ARGS = [f'--model={MODEL}', f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=2',
        f'--steps_per_epoch={STEPS_PER_EPOCH}', '--shuffle_buffer=64', '--snapshot_steps=0,1,2,5',
        f'--lr_decay_steps={DECAY_STEPS}', f'--lr_decay_rate={DECAY_RATE}']
# stem_bn; stage1 bn1, bn2; stage2 and stage3 bn1, bn2, proj_bn.
BATCH_NORM_LAYERS = 9
# Every convolution (stem, 2 in stage1, 3 in each later stage) and the logits.
REGULARIZED_KERNELS = 10


@pytest.fixture(scope='module')
def output_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('resnet') / 'out')


def _check(tiny_data_dir, output_dir, *args):
  result = run_entry('check_parity', f'--data_dir={tiny_data_dir}',
                     f'--output_dir={output_dir}', *ARGS, *args)
  assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
  with open(os.path.join(output_dir, 'parity.json')) as f:
    return result, json.load(f)


def _manifest(output_dir, name):
  return runlog.read_manifest(os.path.join(output_dir, name))


def _init_keys(output_dir):
  """The weight keys of the eager run's initial weights."""
  with np.load(_manifest(output_dir, 'eager')['flags']['init_weights']) as init:
    return list(init.files)


def _expected_rates(steps, per_epoch=False):
  """The legacy exponential_decay's rate at each step (its global step is step - 1)."""
  counted = np.asarray(steps) - 1
  if per_epoch:
    counted = counted // STEPS_PER_EPOCH * STEPS_PER_EPOCH
  return LEARNING_RATE * DECAY_RATE ** (counted / DECAY_STEPS)


def _assert_named_first(result, report, pitfall):
  assert result.returncode == 1, result.stdout[-3000:]
  assert report['pitfall_injected'] == pitfall
  assert report['pitfalls'][0] == pitfall
  assert f'pitfall {pitfall}:' in result.stdout
  first = [p for pair in report['pairs'] for p in pair['pitfalls']][0]
  assert first['evidence'] and first['fix'] == pitfalls.PITFALLS[pitfall].fix
  return first


def _assert_localized(report, pitfall, stage, item):
  """The replay of step 1 parts the codes at (stage, item), and agrees with `pitfall`."""
  where = report['pairs'][0]['where']
  assert (where['first']['stage'], where['first']['name']) == (stage, item), where['summary']
  assert {p['name']: p['verdict'] for p in where['pitfalls']}[pitfall] == 'agrees'
  return where['stages']


def test_matched_port_passes_with_a_step_schedule(tiny_data_dir, output_dir):
  result, report = _check(tiny_data_dir, output_dir, '--with_fit')
  assert result.returncode == 0, result.stdout[-3000:]
  assert report['verdict'] == 'PASS'
  assert [r['runner'] for r in report['runs']] == ['graph', 'eager', 'fit']
  summaries = [_manifest(output_dir, name)['model_summary'] for name in ('graph', 'eager', 'fit')]
  # Only tf-keras' layers say whether they run the fused kernel (Keras 3 has no such switch).
  assert summaries[0].pop('batch_norm_fused') == [True]
  assert summaries[0] == summaries[1] == summaries[2] == {
      'batch_norm_layers': BATCH_NORM_LAYERS,
      'batch_norm_momentum': [resnet.BATCH_NORM_MOMENTUM],
      'batch_norm_epsilon': [resnet.BATCH_NORM_EPSILON],
      'dropout_layers': 0, 'regularization_losses': REGULARIZED_KERNELS}
  # Each runner records the rate its step applied: exponential_decay on the global step
  # (graph), ExponentialDecay on optimizer.iterations (custom loop and fit).
  for name in ('graph', 'eager', 'fit'):
    steps = read_run_csv(os.path.join(output_dir, name))
    np.testing.assert_allclose(steps['learning_rate'], _expected_rates(steps['step']),
                               rtol=1e-6)


# Opt-in (pytest -m matrix), as the false-alarm matrix's resnet_small case checks it: the
# default suite's time went to the JAX port's tests.
@pytest.mark.matrix
def test_regularization_dropped_fails_by_the_l2_penalty(tiny_data_dir, output_dir):
  result, report = _check(tiny_data_dir, output_dir, '--pitfall=regularization_dropped',
                          '--overwrite')
  _assert_named_first(result, report, 'regularization_dropped')
  assert not _manifest(output_dir, 'eager')['regularization_in_loss']
  # Same weights and batch at step 1: the loss differs by the L2 penalty of the start.
  with np.load(_manifest(output_dir, 'eager')['flags']['init_weights']) as init:
    penalty = resnet.WEIGHT_DECAY * sum(float(np.sum(init[key].astype(np.float64) ** 2))
                                        for key in init.files if key.endswith('/kernel'))
  graph_loss = read_run_csv(os.path.join(output_dir, 'graph'))['loss'][0]
  eager_loss = read_run_csv(os.path.join(output_dir, 'eager'))['loss'][0]
  np.testing.assert_allclose(graph_loss - eager_loss, penalty, rtol=1e-3)
  # Localized: every layer output and the data loss inside, the regularization part
  # first outside, then the gradients of the regularized kernels, and of nothing else.
  stages = _assert_localized(report, 'regularization_dropped', 'loss', 'regularization')
  assert stages['forward']['outside'] == [] and stages['loss']['outside'] == [
      'regularization', 'total']
  regularized = sorted(key for key in _init_keys(output_dir) if key.endswith('/kernel'))
  assert len(regularized) == REGULARIZED_KERNELS
  assert sorted(stages['gradients']['outside']) == regularized


@pytest.mark.matrix
def test_keras_bn_momentum_fails_by_ten_times_the_moving_mean_step(tiny_data_dir, output_dir):
  result, report = _check(tiny_data_dir, output_dir, '--pitfall=bn_momentum_default',
                          '--overwrite')
  _assert_named_first(result, report, 'bn_momentum_default')
  assert _manifest(output_dir, 'eager')['model_summary']['batch_norm_momentum'] == [0.99]
  # From moving means of 0, one step moves them by (1 - momentum) x the batch mean.
  graph, eager = (read_snapshot(os.path.join(output_dir, name), 1) for name in ('graph', 'eager'))
  keys = [key for key in graph if key.endswith('moving_mean')]
  assert len(keys) == BATCH_NORM_LAYERS
  for key in keys:
    np.testing.assert_allclose(eager[key], 10 * graph[key], rtol=1e-3, atol=1e-7)
  # Localized: the updates of the trainables inside, the moving statistics outside.
  stages = _assert_localized(report, 'bn_momentum_default', 'state', 'stem_bn/moving_mean')
  assert stages['update']['outside'] == [] and stages['gradients']['outside'] == []
  assert set(keys) <= set(stages['state']['outside'])


def test_schedule_per_epoch_fails_with_the_rates_held(tiny_data_dir, output_dir):
  result, report = _check(tiny_data_dir, output_dir, '--pitfall=lr_schedule_per_epoch',
                          '--overwrite', '--nolocalize')
  first = _assert_named_first(result, report, 'lr_schedule_per_epoch')
  assert first['corroborated']
  fit_steps = read_run_csv(os.path.join(output_dir, 'fit'))
  np.testing.assert_allclose(fit_steps['learning_rate'],
                             _expected_rates(fit_steps['step'], per_epoch=True), rtol=1e-6)
  assert _manifest(output_dir, 'fit')['optimizer']['schedule']['updated'] == 'per_epoch'


# A slice of the whole false-alarm matrix (its resnet_small case runs every applicable
# pitfall): opt-in with it, pytest -m matrix.
@pytest.mark.matrix
@pytest.mark.parametrize('pitfall', ['from_logits_lost', 'accuracy_metric_class'])
def test_earlier_pitfalls_fail_on_it_too(tiny_data_dir, output_dir, pitfall):
  result, report = _check(tiny_data_dir, output_dir, f'--pitfall={pitfall}', '--overwrite',
                          '--nolocalize')
  _assert_named_first(result, report, pitfall)


@pytest.mark.parametrize('pitfall,message', [
    ('regularization_dropped', f'--model={MODEL}'),
    ('bn_momentum_default', f'--model={MODEL}'),
    ('lr_schedule_per_epoch', '--lr_decay_steps'),
])
def test_pitfall_that_cannot_show_is_a_usage_error(pitfall, message):
  with pytest.raises(errors.UsageError, match=message):
    runner_jobs.check_pitfall_requirements(config.CheckParityConfig(pitfall=pitfall))
  # With what it needs, it runs.
  runner_jobs.check_pitfall_requirements(config.CheckParityConfig(
      pitfall=pitfall, model=MODEL, lr_decay_steps=DECAY_STEPS))
