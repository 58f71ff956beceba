"""compare_runs on hand-made run directories, with numpy as the oracle."""

import json
import os

import numpy as np
import pytest

from conftest import run_entry
from tf1compat.judge import config_lint
from tf1compat.judge import parity
from tf1compat.judge import report as parity_report
from tf1compat.judge import tiers
from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import runlog

STEPS_PER_EPOCH = 4
EPOCHS = 2
KEYS_SHAPES = {'conv1/kernel': (3, 3, 3, 4), 'conv1/bias': (4,), 'bn1/moving_mean': (4,),
               'bn1/moving_variance': (4,), 'logits/kernel': (4, 3), 'logits/bias': (3,)}


def _losses(seed=0):
  rng = np.random.default_rng(seed)
  return 2.0 * np.exp(-0.1 * np.arange(EPOCHS * STEPS_PER_EPOCH)) + rng.uniform(
      0, 0.05, EPOCHS * STEPS_PER_EPOCH)


def run_fields(runner, flags):
  """The run.json fields that say how a runner computed: its kernels (the graph runner
  TF1's, the eager runners Keras' unless told --tf1_adam/--tf1_bn_variance), its
  distribution and its precision."""
  graph = runner == 'graph'
  fields = {runlog.KERNELS: {
      'adam': (runlog.ADAM_TF1_FUSED if graph or flags.get('tf1_adam')
               else runlog.ADAM_KERAS),
      'batch_norm_variance': (runlog.BN_VARIANCE_BESSEL if graph or flags.get('tf1_bn_variance')
                              else runlog.BN_VARIANCE_BIASED)},
            'strategy': 'default', 'replicas': 1, 'dtype_policy': 'float32', 'jit_compile': False}
  if not graph:
    fields.update(workers=1, devices=['/device:CPU:0'])
  return fields


def make_run(path, *, runner='graph', losses=None, accuracies=None, reset='epoch',
             snapshot_steps=(0, 1, 2, 8), weight_offsets=None, bn_moves=True, epsilon=1e-8,
             status='complete', flags_extra=None, manifest_extra=None):
  """Writes a run directory as a runner would, from per-step losses and accuracies."""
  os.makedirs(path)
  losses = _losses() if losses is None else np.asarray(losses)
  accuracies = (np.linspace(0.1, 0.9, len(losses)).round(3) if accuracies is None
                else np.asarray(accuracies))
  flags = {'batch_norm': True, 'dropout': 0.0, 'image_size': 32, 'batch_size': 8,
           'reset_metrics': reset, **(flags_extra or {})}
  log = runlog.RunLog(path, runner, flags)
  log.open()
  for i, (loss, acc) in enumerate(zip(losses, accuracies)):
    step = i + 1
    epoch = i // STEPS_PER_EPOCH + 1
    start = 0 if reset == 'never' else (epoch - 1) * STEPS_PER_EPOCH
    log.append_step({'step': step, 'epoch': epoch, 'loss': loss, 'batch_accuracy': acc,
                     'mean_loss': np.mean(losses[start:step]),
                     'accuracy': np.mean(accuracies[start:step]), 'learning_rate': 0.001,
                     'seconds': 0.01})
  for epoch in range(1, EPOCHS + 1):
    end = epoch * STEPS_PER_EPOCH
    log.append_epoch({'epoch': epoch, 'train_loss': np.mean(losses[end - STEPS_PER_EPOCH:end]),
                      'train_accuracy': np.mean(accuracies[end - STEPS_PER_EPOCH:end]),
                      'val_loss': losses[end - 1], 'val_accuracy': accuracies[end - 1],
                      'seconds': 1.0})
  rng = np.random.default_rng(1)
  base = {k: rng.normal(size=s).astype(np.float32) for k, s in KEYS_SHAPES.items()}
  for step in snapshot_steps:
    weights = {k: v + 0.01 * step for k, v in base.items()}
    weights['bn1/moving_mean'] = np.zeros(4, np.float32) + (0.01 * step if bn_moves else 0)
    weights['bn1/moving_variance'] = np.ones(4, np.float32) + (0.01 * step if bn_moves else 0)
    for (key, at_step), offset in (weight_offsets or {}).items():
      if step >= at_step:
        weights[key] = weights[key] + offset
    log.save_snapshot(step, weights)
  manifest = {'status': status, 'global_step': len(losses), 'batch_size': 8, 'image_size': 32,
              'seed': 0, 'loss': 'softmax_cross_entropy', 'final_activation': 'none',
              'optimizer': {'learning_rate': 0.001, 'beta_1': 0.9, 'beta_2': 0.999,
                            'epsilon': epsilon},
              **run_fields(runner, flags)}
  log.update(**{**manifest, **(manifest_extra or {})})
  return path


def _compare(*paths, **tol):
  return parity.compare(list(paths), parity.Tolerances(**tol))


def test_identical_runs_pass(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  b = make_run(str(tmp_path / 'b'), runner='eager')
  report = _compare(a, b)
  pair = report['pairs'][0]
  assert report['verdict'] == 'PASS'
  assert pair['step_tier']['max_relative_difference'] == 0.0
  assert pair['weight_tier']['common_steps'] == [0, 1, 2, 8]
  assert pair['lint'] == []
  assert report['pitfalls'] == []


def test_step_tier_matches_numpy_oracle(tmp_path):
  losses = _losses()
  noisy = losses * (1 + np.array([0, 1e-7, -2e-7, 5e-3, 0, 0, 0, 0]))
  a = make_run(str(tmp_path / 'a'), losses=losses)
  b = make_run(str(tmp_path / 'b'), losses=noisy)
  steps = _compare(a, b, parity_steps=6)['pairs'][0]['step_tier']
  expected = np.abs(losses[:6] - noisy[:6]) / np.abs(losses[:6])
  np.testing.assert_allclose(steps['relative_difference'], expected, rtol=1e-12)
  assert steps['steps'] == 6
  assert steps['first_step_over'] == 4
  assert not steps['passed']
  assert _compare(a, b, parity_steps=3)['verdict'] == 'PASS'


def test_weight_tier_names_first_variable_and_step(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  b = make_run(str(tmp_path / 'b'), weight_offsets={('logits/kernel', 2): 0.5,
                                                    ('conv1/bias', 8): 0.5})
  weights = _compare(a, b)['pairs'][0]['weight_tier']
  assert weights['first_over']['step'] == 2
  assert weights['first_over']['variable'] == 'logits/kernel'
  ra = run_files.load_weights(run_files.snapshot_path(a, 2))['logits/kernel']
  rb = run_files.load_weights(run_files.snapshot_path(b, 2))['logits/kernel']
  # Norm-based, so that variables near zero (zero-initialised biases) compare sensibly.
  expected = np.linalg.norm(ra - rb) / max(np.linalg.norm(ra), np.linalg.norm(rb))
  assert weights['first_over']['relative_difference'] == pytest.approx(expected)
  assert not weights['passed']


def test_no_common_snapshot_steps(tmp_path):
  a = make_run(str(tmp_path / 'a'), snapshot_steps=(0, 2))
  b = make_run(str(tmp_path / 'b'), snapshot_steps=(1, 8))
  report = _compare(a, b)
  pair = report['pairs'][0]
  assert pair['weight_tier']['common_steps'] == []
  assert pair['weight_tier']['per_step'] == []
  assert report['verdict'] == 'PASS'  # losses still decide
  paths = parity_report.write_report(report, str(tmp_path / 'out'))
  with open(paths['md']) as f:
    assert 'no common snapshot step' in f.read()


def test_metric_semantics_classification(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  never = make_run(str(tmp_path / 'never'), reset='never')
  assert {m['kind'] for m in tiers.metric_semantics(parity.load_run(a)).values()} == {
      tiers.METRICS_PER_EPOCH}
  semantics = tiers.metric_semantics(parity.load_run(never))
  assert {m['kind'] for m in semantics.values()} == {tiers.METRICS_SINCE_START}
  report = _compare(a, never)
  assert report['verdict'] == 'FAIL'
  assert report['pairs'][0]['step_tier']['passed']
  assert report['pitfalls'][0] == 'metrics_never_reset'


def test_epsilon_lint_and_pitfall(tmp_path):
  losses = _losses()
  a = make_run(str(tmp_path / 'a'), losses=losses)
  b = make_run(str(tmp_path / 'b'), losses=losses * np.r_[1, np.full(7, 1 + 1e-3)],
               epsilon=1e-7)
  pair = _compare(a, b)['pairs'][0]
  assert pair['lint'] == [{'field': 'optimizer epsilon', 'reference': 1e-8, 'other': 1e-7,
                           'equivalent': False}]
  assert pair['pitfalls'][0]['name'] == 'adam_epsilon'
  assert 'step 2' in pair['pitfalls'][0]['evidence']


def test_frozen_batch_norm_statistics(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  b = make_run(str(tmp_path / 'b'), bn_moves=False, flags_extra={'update_ops': False})
  report = _compare(a, b)
  assert report['verdict'] == 'FAIL'
  assert report['pitfalls'][0] == 'skip_update_ops'
  c = make_run(str(tmp_path / 'c'), bn_moves=False, flags_extra={'wiring': 'model_call'})
  assert _compare(a, c)['pitfalls'][0] == 'model_call_wiring'


def test_equivalent_losses_are_listed_not_failed(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  b = make_run(str(tmp_path / 'b'), manifest_extra={'loss': 'keras_categorical'})
  pair = _compare(a, b)['pairs'][0]
  assert pair['verdict'] == 'PASS'
  assert pair['lint'][0]['field'] == 'loss' and pair['lint'][0]['equivalent']
  assert pair['lint_mismatches'] == 0


def test_bn_moving_variance_is_a_framework_difference(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  b = make_run(str(tmp_path / 'b'), runner='eager',
               weight_offsets={('bn1/moving_variance', 1): 1e-2})
  pair = _compare(a, b)['pairs'][0]
  assert pair['verdict'] == 'PASS'
  difference = pair['framework_differences']['bn_moving_variance']
  # 32-pixel images: bn1 sees 15x15 maps, so n = 8 * 225 per batch.
  assert difference['predicted_factor_first_layer'] == pytest.approx(1800 / 1799)
  assert difference['measured']['max_relative_difference'] > 1e-3
  assert pair['weight_tier']['excluded'] == ['bn1/moving_variance']


@pytest.mark.parametrize('name,manifest', [
    ('mixed_precision', {'dtype_policy': 'mixed_float16'}),
    ('mixed_precision', {'dtype_policy': 'mixed_bfloat16'}),
    ('replica_reduction', {'strategy': 'mirrored', 'replicas': 2}),
])
def test_mixed_precision_and_replicas_are_judged_on_the_curves(name, manifest, tmp_path):
  """16-bit round-off (or another summation order) from step 1 on: the step tier is
  reported with its numbers, the verdict comes from the curves."""
  losses = _losses()
  drift = 1.0 + 1e-3 * np.arange(1, len(losses) + 1)
  a = make_run(str(tmp_path / 'a'), runner='eager', losses=losses)
  b = make_run(str(tmp_path / 'b'), runner='eager', losses=losses * drift,
               weight_offsets={('conv1/kernel', 1): 0.05}, manifest_extra=manifest)
  pair = _compare(a, b)['pairs'][0]
  assert pair['verdict'] == 'PASS'
  assert set(pair['framework_differences']) == {name}
  measured = pair['framework_differences'][name]['measured']
  rel = np.abs(losses * drift - losses) / losses
  assert measured['first_step_loss_relative_difference'] == pytest.approx(rel[0])
  assert measured['max_loss_relative_difference'] == pytest.approx(rel[:10].max())
  assert not pair['tiers']['step']['judged'] and not pair['step_tier']['passed']
  # Curves apart by more than the band still fail.
  c = make_run(str(tmp_path / 'c'), runner='eager', losses=losses * 1.2,
               manifest_extra=manifest)
  assert _compare(a, c)['pairs'][0]['verdict'] == 'FAIL'


def test_compare_runs_command(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  b = make_run(str(tmp_path / 'b'), runner='eager')
  out = str(tmp_path / 'report')
  result = run_entry('compare_runs', a, b, f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  assert 'VERDICT: PASS' in result.stdout
  with open(os.path.join(out, 'parity.json')) as f:
    assert json.load(f)['verdict'] == 'PASS'
  with open(os.path.join(out, 'parity.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(out, 'parity.md')) as f:
    assert 'Verdict: PASS' in f.read()

  never = make_run(str(tmp_path / 'never'), reset='never')
  failed = run_entry('compare_runs', a, never, f'--output_dir={out}')
  assert failed.returncode == 1
  assert 'pitfall metrics_never_reset' in failed.stdout


def test_compare_runs_rejects_missing_and_unfinished_runs(tmp_path):
  a = make_run(str(tmp_path / 'a'))
  unfinished = make_run(str(tmp_path / 'b'), status='interrupted')
  for args, message in (([a, str(tmp_path / 'nope')], 'no such run directory'),
                        ([a, unfinished], 'interrupted, not complete'),
                        ([a], 'at least two run directories'),
                        ([a, str(tmp_path)], 'no run.json')):
    result = run_entry('compare_runs', *args, f'--output_dir={tmp_path / "out"}')
    assert result.returncode == 2, (args, result.stderr)
    assert message in result.stderr
    assert 'Traceback' not in result.stderr


def test_a_run_that_does_not_name_its_kernels_is_refused(tmp_path):
  """The framework differences come from run.json's kernels block, never from a guess
  on the runner's name or flags: an older runner's run directory is a usage error."""
  a = make_run(str(tmp_path / 'a'))
  for name, kernels in (('none', None),
                        ('unknown', {'adam': 'sgd', 'batch_norm_variance': 'biased'})):
    old = make_run(str(tmp_path / name), runner='eager',
                   manifest_extra={runlog.KERNELS: kernels})
    with pytest.raises(errors.UsageError, match='does not say which kernels'):
      _compare(a, old)


def test_a_different_start_is_named_first(tmp_path):
  """Runs seeded alike but initialised apart, without --init_weights (so no init-weights
  hash to compare): the step-0 snapshots differ, and that is named before the epsilon."""
  a = make_run(str(tmp_path / 'a'))
  b = make_run(str(tmp_path / 'b'), runner='eager', epsilon=1e-7,
               weight_offsets={('conv1/kernel', 0): 0.1})
  pair = _compare(a, b)['pairs'][0]
  assert pair['lint'][0]['field'] == config_lint.START_FIELD
  assert pair['verdict'] == 'FAIL'
  assert [p['name'] for p in pair['pitfalls']][:2] == ['different_start', 'adam_epsilon']
  assert pair['pitfalls'][0]['kind'] == 'setup'


def test_adam_rounding_reports_its_measured_size(tmp_path):
  """--noexact: Keras' own Adam; the difference is listed with its size, not '{}'."""
  losses = _losses()
  drift = 1.0 + 1e-6 * np.arange(len(losses))
  a = make_run(str(tmp_path / 'a'), losses=losses)
  b = make_run(str(tmp_path / 'b'), runner='eager', losses=losses * drift)
  pair = _compare(a, b)['pairs'][0]
  measured = pair['framework_differences']['adam_rounding']['measured']
  rel = np.abs(losses * drift - losses) / losses
  assert measured['first_step_loss_relative_difference'] == 0.0
  assert measured['max_loss_relative_difference'] == pytest.approx(rel[:10].max())
  assert pair['verdict'] == 'PASS'


@pytest.mark.parametrize('field, keys, port_value', [
    ('deterministic', ('deterministic',), False),
    ('jit_compile', ('jit_compile',), True),
    ('tf32', ('settings', 'tf32'), False),
])
def test_a_setting_on_one_side_is_named_and_the_tiers_decide(field, keys, port_value,
                                                             tmp_path):
  """A process setting that differs (numerics.py) is listed by the lint as a setting; it
  does not fail the config tier: runs whose numbers agree pass."""
  manifest = {'deterministic': True, 'settings': {'tf32': True, 'onednn': True}}
  port = json.loads(json.dumps(manifest))
  target = port
  for key in keys[:-1]:
    target = target[key]
  target[keys[-1]] = port_value
  a = make_run(str(tmp_path / 'a'), manifest_extra=manifest)
  b = make_run(str(tmp_path / 'b'), runner='eager', flags_extra={'tf1_adam': True,
                                                                 'tf1_bn_variance': True},
               manifest_extra=port)
  pair = _compare(a, b)['pairs'][0]
  assert [d['field'] for d in pair['lint']] == [field]
  assert pair['lint'][0]['setting'] and pair['lint'][0]['other'] == port_value
  assert pair['verdict'] == 'PASS'


# The port's flags that remove the known framework differences (check_parity's --exact).
EXACT = {'tf1_adam': True, 'tf1_bn_variance': True}


def _names(pair):
  return [p['name'] for p in pair['pitfalls']]


def test_keep_prob_as_rate_is_named_from_the_dropout_rates(tmp_path):
  """Rates that sum to 1 are a keep_prob taken for a rate; another rate is a mismatch only."""
  a = make_run(str(tmp_path / 'a'), flags_extra={'dropout': 0.3})
  b = make_run(str(tmp_path / 'b'), runner='eager', flags_extra={'dropout': 1 - 0.3, **EXACT})
  pair = _compare(a, b)['pairs'][0]
  assert pair['verdict'] == 'FAIL'
  assert [d['field'] for d in pair['lint']] == ['dropout']
  assert _names(pair) == ['keep_prob_as_rate']
  named = pair['pitfalls'][0]
  assert (named['judged_by'], named['margin'], named['corroborated']) == ('config', None, True)
  assert 'Dropout rate 0.3 vs 0.7 = 1 - 0.3' in named['evidence']
  assert 'drops 70% of the activations where graph:a drops 30%' in named['evidence']
  c = make_run(str(tmp_path / 'c'), runner='eager', flags_extra={'dropout': 0.6, **EXACT})
  pair = _compare(a, c)['pairs'][0]
  assert pair['verdict'] == 'FAIL' and 'keep_prob_as_rate' not in _names(pair)


def _probabilities_loss(logits, label):
  """Keras' categorical cross-entropy with from_logits=False, in numpy: the outputs
  divided by their sum and clipped to [1e-7, 1 - 1e-7]."""
  p = np.clip(logits / logits.sum(), 1e-7, 1 - 1e-7)
  return -np.log(p[label])


def test_from_logits_lost_is_named_from_the_recorded_loss(tmp_path):
  logits, label = np.array([2.0, -1.0, 0.5]), 1
  on_logits = np.log(np.exp(logits).sum()) - logits[label]  # 3.24 (softmax cross-entropy)
  on_probabilities = _probabilities_loss(logits, label)  # -log(1e-7) = 16.1: -1/1.5 clipped
  assert on_probabilities == pytest.approx(-np.log(1e-7))
  losses = _losses()
  a = make_run(str(tmp_path / 'a'), losses=np.r_[on_logits, losses[1:]])
  b = make_run(str(tmp_path / 'b'), runner='eager', flags_extra=EXACT,
               losses=np.r_[on_probabilities, losses[1:] * 2],
               manifest_extra={'loss': 'keras_categorical_probs', 'from_logits': False})
  pair = _compare(a, b)['pairs'][0]
  assert {d['field'] for d in pair['lint']} == {'loss', 'from_logits'}
  # Not no_learning_phase, though the model has BatchNorm and the first losses differ.
  assert _names(pair) == ['from_logits_lost']
  evidence = pair['pitfalls'][0]['evidence']
  assert 'eager:b computes its loss (keras_categorical_probs) with from_logits=False' in evidence
  assert f'({on_logits:.6g} vs {on_probabilities:.6g})' in evidence
  # A softmax output with a loss for probabilities is a consistent pair: neither mistake.
  c = make_run(str(tmp_path / 'c'), runner='eager', flags_extra=EXACT,
               manifest_extra={'loss': 'keras_categorical_probs', 'from_logits': False,
                               'final_activation': 'softmax'})
  pair = _compare(a, c)['pairs'][0]
  assert pair['verdict'] == 'FAIL'
  assert not {'from_logits_lost', 'double_softmax'} & set(_names(pair))


def test_accuracy_metric_class_is_named_when_losses_agree_and_accuracies_do_not(tmp_path):
  accuracies = np.linspace(0.1, 0.9, EPOCHS * STEPS_PER_EPOCH).round(3)
  a = make_run(str(tmp_path / 'a'), accuracies=accuracies)
  b = make_run(str(tmp_path / 'b'), runner='fit', accuracies=np.zeros_like(accuracies),
               flags_extra={**EXACT, 'fit_accuracy': 'Accuracy'})
  pair = _compare(a, b)['pairs'][0]
  assert pair['tiers']['step']['passed'] and not pair['tiers']['curve']['passed']
  assert _names(pair) == ['accuracy_metric_class']
  named = pair['pitfalls'][0]
  # Step 1: the same loss from the same weights and batch, batch accuracy 0.1 vs 0.
  assert (named['judged_by'], named['margin'], named['corroborated']) == ('step', None, True)
  assert 'batch accuracy 0.1 vs 0' in named['evidence']
  # The worst curve: validation accuracy, 0.9 (the last step of epoch 2) vs 0, band 0.05.
  assert 'val_accuracy 0.9 vs 0 at epoch 2 (18x its band)' in named['evidence']
  # With Dropout the step tier is not judged: the curves name it, with their margin.
  dropout = {'dropout': 0.3}
  c = make_run(str(tmp_path / 'c'), accuracies=accuracies, flags_extra=dropout)
  d = make_run(str(tmp_path / 'd'), runner='fit', accuracies=np.zeros_like(accuracies),
               flags_extra={**EXACT, **dropout, 'fit_accuracy': 'Accuracy'})
  named = _compare(c, d)['pairs'][0]['pitfalls'][0]
  assert named['name'] == 'accuracy_metric_class' and named['judged_by'] == 'curve'
  # Uncalibrated: over the fixed band.
  assert named['margin'] == pytest.approx(accuracies[-1] / 0.05)
  # Calibrated by a control whose accuracies are 0.02 apart: the band is 3 x 0.02 = 0.06,
  # the margin the difference over the control's 0.02.
  control = make_run(str(tmp_path / 'control'), accuracies=accuracies + 0.02,
                     flags_extra=dropout)
  pair = parity.compare([c, d], parity.Tolerances(), controls=[control])['pairs'][0]
  val = pair['curve_tier']['series']['val_accuracy']
  np.testing.assert_allclose(val['limit'], [0.06, 0.06])
  named = pair['pitfalls'][0]
  assert named['name'] == 'accuracy_metric_class'
  assert named['margin'] == pytest.approx(accuracies[-1] / 0.02)
  assert f'{accuracies[-1] / 0.06:.3g}x its band, {accuracies[-1] / 0.02:.3g}x the control' in (
      named['evidence'])
  # Losses apart as well: not this mistake.
  e = make_run(str(tmp_path / 'e'), runner='fit', losses=_losses() * 1.5,
               accuracies=np.zeros_like(accuracies), flags_extra=EXACT)
  assert 'accuracy_metric_class' not in _names(_compare(a, e)['pairs'][0])


def test_an_accuracy_is_judged_to_one_example_at_least(tmp_path):
  """16 validation images: a correct port that classifies one of them otherwise is 0.0625
  apart, over the fixed 0.05 band, and passes; two of them fail."""
  accuracies = np.linspace(0.1, 0.9, EPOCHS * STEPS_PER_EPOCH).round(4)
  data = {'data': {'records': {'train': 64, 'val': 16}}}
  reference = make_run(str(tmp_path / 'reference'), accuracies=accuracies,
                       manifest_extra=data)
  for images, verdict in ((1, 'PASS'), (2, 'FAIL')):
    moved = accuracies.copy()
    moved[STEPS_PER_EPOCH - 1] += images / 16  # epochs.csv's val_accuracy of epoch 1
    other = make_run(str(tmp_path / f'other{images}'), runner='eager', accuracies=moved,
                     flags_extra=EXACT, manifest_extra=data)
    series = _compare(reference, other)['pairs'][0]['curve_tier']['series']['val_accuracy']
    assert series['limit'] == pytest.approx([1 / 16] * EPOCHS)
    assert series['passed'] == (verdict == 'PASS'), (images, series)
