"""compare_runs on a team's jobs that are no image classifiers: a regression on a dict of
features recorded without accuracies (NaN columns), run.json fields only a classifier
has left null, and the digests of the input batches. TensorFlow-free; numpy is the
oracle."""

import hashlib
import json
import math
import os
import warnings

import numpy as np
import pytest

from conftest import run_entry
from tf1compat.judge import config_lint
from tf1compat.judge import parity
from tf1compat.judge import report as parity_report
from tf1compat.judge import tiers
from tf1compat.runs import batch_record
from tf1compat.runs import recorder
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runs import team_models

# A ranking model's features, by name and width, and its linear score's weights.
FEATURES = {'query': 4, 'doc': 3}
WEIGHTS = ('query/kernel', 'doc/kernel', 'score/bias')
BATCH, STEPS_PER_EPOCH, EPOCHS = 8, 4, 2
STEPS = STEPS_PER_EPOCH * EPOCHS
LEARNING_RATE = 0.01
NO_ACCURACY = ['train_accuracy', 'val_accuracy']


def _data(rows, seed):
  rng = np.random.default_rng(seed)
  x = {name: rng.normal(size=(rows, width)).astype(np.float32)
       for name, width in FEATURES.items()}
  y = (x['query'].sum(1) - 0.5 * x['doc'][:, 0] + 0.1 * rng.normal(size=rows))
  return x, y.astype(np.float32)


def _init_weights(path):
  """The initial weights both codes start from, written once."""
  rng = np.random.default_rng(1)
  team_models.save_weights(path, {
      'query/kernel': rng.normal(size=FEATURES['query']).astype(np.float32) * 0.1,
      'doc/kernel': rng.normal(size=FEATURES['doc']).astype(np.float32) * 0.1,
      'score/bias': np.zeros((), np.float32)})
  return path


def _mse(weights, x, y):
  """(loss, gradients) of the mean squared error of the linear score on batch (x, y)."""
  error = x['query'] @ weights['query/kernel'] + x['doc'] @ weights['doc/kernel'] + (
      weights['score/bias']) - y
  g = 2 * error / len(y)
  return float(np.mean(error ** 2)), {'query/kernel': x['query'].T @ g,
                                      'doc/kernel': x['doc'].T @ g, 'score/bias': g.sum()}


def _digest(batch):
  """sha256 of a batch {key: array}: keys, dtypes, shapes and bytes."""
  digest = hashlib.sha256()
  for key in sorted(batch):
    digest.update(f'{key}:{batch[key].dtype.str}{batch[key].shape}:'.encode())
    digest.update(np.ascontiguousarray(batch[key]).tobytes())
  return digest.hexdigest()


def _write_digests(model_dir, digests):
  """batches/digests.csv of a run: one `step,digest,stored` row a step."""
  folder = os.path.join(model_dir, batch_record.BATCHES_DIR)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, batch_record.DIGESTS_CSV), 'w') as f:
    f.write('step,digest,stored\n')
    f.writelines(f'{step},{digest},0\n' for step, digest in enumerate(digests, start=1))


def regression_loop(model_dir, init_weights, *, framework='tf1', learning_rate=LEARNING_RATE,
                    recorded_learning_rate=None, batch_order=None, validation=True,
                    digests=False, hashed_dtype=None, **fields):
  """A team's regression trained with Adam in numpy and recorded without accuracy.

  `batch_order`: which of an epoch's batches each step takes (default in order).
  `recorded_learning_rate`: what run.json says, where the code declares another rate than
  it trains with. `digests`: write batches/digests.csv, of the batches cast to
  `hashed_dtype` from step 3 on when given (a pipeline that yields float64 where the
  model computes in float32). `fields`: more RunConfig fields. Returns the losses.
  """
  x, y = _data(BATCH * STEPS_PER_EPOCH, seed=0)
  x_val, y_val = _data(BATCH, seed=2)
  weights = team_models.load_weights(init_weights)
  moments = {name: [np.zeros_like(w), np.zeros_like(w)] for name, w in weights.items()}
  order = batch_order or range(STEPS_PER_EPOCH)
  # What a recorder leaves null for a model that is no image classifier.
  unrecorded = dict(loss='mean_squared_error', from_logits=None, final_activation=None,
                    image_size=None, num_classes=None)
  config = recorder.RunConfig(
      framework=framework, batch_size=BATCH, seed=0, steps_per_epoch=STEPS_PER_EPOCH,
      learning_rate=recorded_learning_rate or learning_rate, epsilon=1e-8,
      adam_kernel=runlog.ADAM_TF1_FUSED,
      data_fingerprint=recorder.data_fingerprint(*x.values(), y), init_weights=init_weights,
      snapshot_steps=(0, 1, 2, 5), **{**unrecorded, **fields})
  losses, hashed = [], []
  with recorder.RunRecorder(model_dir, config) as rec:
    rec.snapshot(0, weights)
    for _ in range(EPOCHS):
      for index in order:
        rows = slice(index * BATCH, (index + 1) * BATCH)
        batch = {name: values[rows] for name, values in x.items()}
        loss, grads = _mse(weights, batch, y[rows])
        t = len(losses) + 1
        rate = learning_rate * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        for name, g in grads.items():
          m = moments[name]
          m[0] = 0.9 * m[0] + 0.1 * g
          m[1] = 0.999 * m[1] + 0.001 * g * g
          weights[name] = (weights[name] - rate * m[0] / (np.sqrt(m[1]) + 1e-8)).astype(
              np.float32)
        losses.append(loss)
        cast = hashed_dtype if hashed_dtype and t >= 3 else None
        hashed.append(_digest({**{f'features/{k}': v.astype(cast or v.dtype)
                                  for k, v in batch.items()}, 'labels': y[rows]}))
        step = rec.record_step(loss, math.nan)
        if rec.snapshot_due(step):
          rec.snapshot(step, weights)
      rec.record_epoch(val_loss=_mse(weights, x_val, y_val)[0] if validation else None)
    rec.finish(weights)
  if digests:
    _write_digests(model_dir, hashed)
  return losses


@pytest.fixture
def init(tmp_path):
  return _init_weights(str(tmp_path / 'init.npz'))


def _compare(*runs, controls=()):
  """parity.compare of `runs`, with every warning an error: NaN columns must raise none."""
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    return parity.compare(list(runs), parity.Tolerances(), controls=list(controls))


def _label(run):
  return parity.load_run(run).label


def test_runs_without_accuracy_pass_with_a_control(tmp_path, init):
  runs = {name: str(tmp_path / name) for name in ('tf1', 'control', 'port')}
  losses = regression_loop(runs['tf1'], init)
  control = regression_loop(runs['control'], team_models.control_start(init))
  # The port computes with TF1's Adam kernel and epsilon (as --tf1_adam): bit for bit.
  assert regression_loop(runs['port'], init, framework='keras3') == losses
  steps = runlog.read_csv(os.path.join(runs['tf1'], run_files.STEPS_CSV))
  assert np.all(np.isnan(steps['batch_accuracy'])) and np.all(np.isnan(steps['accuracy']))
  out = str(tmp_path / 'out')
  result = run_entry('compare_runs', runs['tf1'], runs['port'], f'--control={runs["control"]}',
                     f'--output_dir={out}')
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Warning' not in result.stderr and 'nan' not in result.stdout.lower(), result.stderr
  with open(os.path.join(out, 'parity.json')) as f:
    report = json.load(f)
  assert report['verdict'] == 'PASS' and report['pitfalls'] == []
  pair = report['pairs'][0]
  labels = [_label(runs['tf1']), _label(runs['port'])]
  # The envelope is the control's divergence, its running maximum (numpy the oracle).
  a, b = np.asarray(losses), np.asarray(control)
  np.testing.assert_allclose(report['calibration']['loss'],
                             np.maximum.accumulate(np.abs(a - b) / np.abs(a)), rtol=1e-12)
  assert pair['tiers']['step']['judged'] and pair['bit_identical']
  curves, semantics = pair['curve_tier'], pair['semantics_tier']
  assert curves['judged_series'] == ['train_loss', 'val_loss']
  assert curves['left_out'] == {name: labels for name in NO_ACCURACY}
  assert sorted(curves['series']) == ['train_loss', 'val_loss']
  assert semantics['judged_metrics'] == ['loss']
  assert semantics['left_out'] == {'batch_accuracy': labels}
  for metrics in semantics['metrics'].values():
    assert list(metrics) == ['loss'] and metrics['loss']['kind'] == tiers.METRICS_PER_EPOCH
  assert pair['inputs'] == {'compared_steps': 0, 'first_differing_step': None,
                            'differing_steps': 0, 'with_digests': []}
  said = ('curves: judged what both runs have: train_loss, val_loss (no train_accuracy, '
          'val_accuracy in either run)',
          'running means: judged what both runs have: loss (no batch_accuracy in either run)')
  for line in said:
    assert f'  {line}' in result.stdout.splitlines(), result.stdout
  with open(os.path.join(out, 'parity.md')) as f:
    text = f.read()
  assert 'Inputs: inputs not compared (neither run hashed its batches).' in text
  assert 'Series: judged what both runs have: train_loss, val_loss' in text
  assert 'Running means: judged what both runs have: loss (no batch_accuracy' in text


def test_a_series_one_run_lacks_is_left_out_not_failed(tmp_path, init):
  """The TF1 job validates, its port does not: val_loss is left out, named with the run."""
  tf1, port = str(tmp_path / 'tf1'), str(tmp_path / 'port')
  regression_loop(tf1, init)
  regression_loop(port, init, framework='keras3', validation=False)
  pair = _compare(tf1, port)['pairs'][0]
  assert pair['verdict'] == 'PASS'
  assert pair['curve_tier']['judged_series'] == ['train_loss']
  assert pair['curve_tier']['left_out']['val_loss'] == [_label(port)]
  assert (parity_report.judged_text(['train_loss'], pair['curve_tier']['left_out']) ==
          'judged what both runs have: train_loss (no val_loss in keras3:port; no '
          'train_accuracy, val_accuracy in either run)')


def test_a_no_accuracy_port_with_ten_times_the_learning_rate_fails(tmp_path, init):
  runs = {name: str(tmp_path / name) for name in ('tf1', 'control', 'port', 'declared')}
  losses = regression_loop(runs['tf1'], init)
  regression_loop(runs['control'], team_models.control_start(init))
  port = regression_loop(runs['port'], init, framework='keras3',
                         learning_rate=10 * LEARNING_RATE)
  # The same start, the same first batch: the same first loss; the update parts them.
  assert port[0] == losses[0] and port[1] != losses[1]
  pair = _compare(runs['tf1'], runs['port'], controls=[runs['control']])['pairs'][0]
  assert pair['verdict'] == 'FAIL'
  assert [(d['field'], d['reference'], d['other']) for d in pair['lint']] == [
      ('optimizer learning_rate', LEARNING_RATE, 10 * LEARNING_RATE)]
  steps = pair['step_tier']
  expected = np.abs(np.asarray(losses) - port) / np.abs(losses)
  np.testing.assert_allclose(steps['whole_run_relative_difference'], expected, rtol=1e-12)
  assert not steps['passed'] and steps['first_step_over'] == 2
  # A port that declares the rate it was meant to have: its numbers fail it all the same.
  regression_loop(runs['declared'], init, framework='keras3',
                  learning_rate=10 * LEARNING_RATE, recorded_learning_rate=LEARNING_RATE)
  pair = _compare(runs['tf1'], runs['declared'], controls=[runs['control']])['pairs'][0]
  assert pair['verdict'] == 'FAIL' and pair['lint'] == []
  assert pair['tiers']['config']['passed'] and not pair['tiers']['step']['passed']
  assert pair['step_tier']['first_step_over'] == 2
  assert 'accuracy_metric_class' not in [p['name'] for p in pair['pitfalls']]


def _set_manifest(model_dir, **fields):
  """Writes `fields` into the run.json of `model_dir` (what another recorder would have)."""
  path = os.path.join(model_dir, run_files.RUN_JSON)
  with open(path) as f:
    manifest = json.load(f)
  with open(path, 'w') as f:
    json.dump({**manifest, **fields}, f)


def test_the_lint_compares_only_what_both_runs_record(tmp_path, init):
  tf1, port = str(tmp_path / 'tf1'), str(tmp_path / 'port')
  regression_loop(tf1, init)
  # The port's recorder could not read the loss's kind; it knows its model's output.
  regression_loop(port, init, framework='keras3', loss=None, final_activation='linear')
  pair = _compare(tf1, port)['pairs'][0]
  assert pair['verdict'] == 'PASS' and pair['lint'] == []
  not_compared = {d['field']: (d['reference'], d['other']) for d in pair['not_compared']}
  assert not_compared == {'loss': ('mean_squared_error', None),
                          'from_logits': (None, None), 'final activation': (None, 'linear'),
                          'image size': (None, None), 'number of classes': (None, None),
                          'shuffle buffer': (None, None), 'batch_norm': (None, None),
                          'dropout': (None, None),
                          'regularization losses in the loss': (None, None),
                          'regularization losses': (None, None),
                          'BatchNorm momentum': (None, None), 'BatchNorm epsilon': (None, None)}
  lines = parity_report.summary_lines(_compare(tf1, port))
  assert ('  config lint: not compared (no loss in keras3:port; no from_logits, image size, '
          'number of classes, batch_norm, dropout, shuffle buffer, regularization losses in the '
          'loss, '
          'regularization losses, BatchNorm momentum, BatchNorm epsilon in either run; no final '
          'activation in tf1:tf1)') in lines
  # Recorded by both, they are compared as ever.
  for run, size in ((tf1, 64), (port, 32)):
    _set_manifest(run, image_size=size)
  pair = _compare(tf1, port)['pairs'][0]
  assert pair['verdict'] == 'FAIL'
  assert [(d['field'], d['reference'], d['other']) for d in pair['lint']] == [
      ('image size', 64, 32)]
  # Where null is a value, a constant learning rate, it is compared: a schedule differs.
  _set_manifest(tf1, image_size=32)
  manifest = runlog.read_manifest(port)
  schedule = {'kind': 'exponential_decay', 'decay_steps': 4, 'decay_rate': 0.5}
  _set_manifest(port, optimizer={**manifest['optimizer'], 'schedule': schedule})
  pair = _compare(tf1, port)['pairs'][0]
  assert [(d['field'], d['reference'], d['other']) for d in pair['lint']] == [
      ('learning-rate schedule', None, schedule)]
  assert pair['verdict'] == 'FAIL'


def test_equal_input_digests_are_reported(tmp_path, init):
  tf1, port, unhashed = (str(tmp_path / name) for name in ('tf1', 'port', 'unhashed'))
  regression_loop(tf1, init, digests=True)
  regression_loop(port, init, framework='keras3', digests=True)
  regression_loop(unhashed, init, framework='keras3')
  report = _compare(tf1, port, unhashed)
  hashed, alone = report['pairs']
  assert hashed['verdict'] == 'PASS'
  assert hashed['inputs'] == {'compared_steps': STEPS, 'first_differing_step': None,
                              'differing_steps': 0, 'with_digests': [_label(tf1), _label(port)]}
  assert alone['inputs']['compared_steps'] == 0
  assert alone['verdict'] == 'PASS'
  lines = parity_report.summary_lines(report)
  assert (f'  inputs: the same input at every one of {STEPS} steps (digests in '
          'batches/digests.csv)') in lines
  assert '  inputs: inputs not compared (only tf1:tf1 hashed its batches)' in lines


def test_input_digests_differing_at_step_3_fail_and_are_named_first(tmp_path, init):
  tf1, port, widened = (str(tmp_path / name) for name in ('tf1', 'port', 'widened'))
  losses = regression_loop(tf1, init, digests=True)
  # The port's pipeline takes an epoch's third and fourth batches the other way round.
  swapped = regression_loop(port, init, framework='keras3', digests=True,
                            batch_order=[0, 1, 3, 2])
  assert swapped[:2] == losses[:2] and swapped[2] != losses[2]
  report = _compare(tf1, port)
  pair = report['pairs'][0]
  assert pair['verdict'] == 'FAIL'
  # Steps 3, 4, 7 and 8 trained on other batches (the oracle: the digests themselves).
  ours, theirs = (batch_record.read_digests(run) for run in (tf1, port))
  differing = [step for step in range(1, STEPS + 1) if ours[step] != theirs[step]]
  assert differing == [3, 4, 7, 8]
  assert pair['inputs'] == {'compared_steps': STEPS, 'first_differing_step': 3,
                            'differing_steps': 4, 'with_digests': [_label(tf1), _label(port)]}
  assert pair['lint'][0] == {'field': config_lint.INPUT_FIELD, 'reference': ours[3][:12],
                             'other': theirs[3][:12], 'equivalent': False, 'step': 3}
  first = pair['pitfalls'][0]
  assert (first['name'], first['kind']) == ('different_inputs', 'setup')
  assert first['evidence'].startswith(
      'the input batches differ from step 3 (digests in batches/digests.csv')
  lines = parity_report.summary_lines(report)
  assert lines[2] == ('  inputs: the input batches differ from step 3 (4 of 8 steps; digests '
                      'in batches/digests.csv): the runs did not train on the same data')
  assert next(line for line in lines if line.startswith(('  setup', '  pitfall'))).startswith(
      '  setup different_inputs: the input batches differ from step 3')
  # The same numbers from batches hashed otherwise from step 3 on: the losses agree bit
  # for bit, yet the runs did not read the same input. FAIL all the same.
  assert regression_loop(widened, init, framework='keras3', digests=True,
                         hashed_dtype=np.float64) == losses
  pair = _compare(tf1, widened)['pairs'][0]
  assert pair['tiers']['step']['passed'] and pair['bit_identical']
  assert not pair['tiers']['config']['passed'] and pair['verdict'] == 'FAIL'
  assert pair['inputs']['first_differing_step'] == 3
  assert pair['pitfalls'][0]['name'] == 'different_inputs'
