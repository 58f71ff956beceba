"""Judgement of finished run directories: config lint, tiers, verdict, pitfalls.

TensorFlow-free: it reads what runners wrote (runlog's contract) and judges it with
numpy. Runs are compared pairwise against the first (the reference, normally the
legacy graph run). With a control run (calibration.py) the step, weight and curve
tiers are judged against the measured divergence of two correct runs; without one,
against fixed tolerances over the first steps. report.py writes the result.
"""

import dataclasses
import hashlib
import math
import os

import numpy as np

from tf1compat import calibration
from tf1compat import cli
from tf1compat import model
from tf1compat import runlog

# Manifest fields whose difference changes the math, as (label, path in run.json).
LINT_FIELDS = (
    ('optimizer learning_rate', ('optimizer', 'learning_rate')),
    ('optimizer beta_1', ('optimizer', 'beta_1')),
    ('optimizer beta_2', ('optimizer', 'beta_2')),
    ('optimizer epsilon', ('optimizer', 'epsilon')),
    ('loss', ('loss',)),
    ('from_logits', ('from_logits',)),
    ('final activation', ('final_activation',)),
    ('batch size', ('batch_size',)),
    ('image size', ('image_size',)),
    ('seed', ('seed',)),
    ('data fingerprint', ('data', 'fingerprint')),
    ('number of classes', ('data', 'num_classes')),
    ('init-weights sha256', ('init_weights_sha256',)),
    ('deterministic', ('deterministic',)),
    ('batch_norm', ('flags', 'batch_norm')),
    ('dropout', ('flags', 'dropout')),
    ('shuffle buffer', ('flags', 'shuffle_buffer')),
    ('steps per epoch', ('flags', 'steps_per_epoch')),
    ('tensorflow version', ('versions', 'tensorflow')),
)
# Both losses compute softmax cross-entropy on logits; the seed's "fix" changed nothing
# numerically. Listed, but not a mismatch.
EQUIVALENT_LOSSES = frozenset({'softmax_cross_entropy', 'keras_categorical'})

# How a run's shown running metrics relate to its own per-step values.
METRICS_PER_EPOCH = 'per_epoch'
METRICS_SINCE_START = 'since_start'
METRICS_UNEXPLAINED = 'unexplained'
_METRIC_RTOL = 1e-4  # float32 accumulation of a running mean over a few thousand steps

PITFALLS = {
    'adam_epsilon': 'Pass the legacy epsilon explicitly: keras.optimizers.Adam(epsilon=1e-8) '
                    '(TF1 AdamOptimizer default) instead of Keras\' 1e-7.',
    'metrics_never_reset': 'Reset the metric local variables at every epoch start '
                           '(sess.run(metrics_reset_op)); Keras: metric.reset_state().',
    'skip_update_ops': 'Create the train op under tf.control_dependencies(model.updates) so '
                       'BatchNormalization moving statistics are updated.',
    'model_call_wiring': 'Build the model on the iterator tensor, Input(tensor=features), '
                         'instead of calling model(features), so its update ops are the ones run.',
    'no_learning_phase': 'Feed tf.keras.backend.learning_phase(): 1 in training steps (TF2: '
                         'model(x, training=True)).',
    'double_softmax': 'Return logits from the model (no final softmax) when the loss takes '
                      'logits, or use from_logits=False with a softmax output.',
}

# Not a migration mistake but a comparison that cannot hold: named before any pitfall.
SETUP_PROBLEMS = {
    'different_start': 'Give every runner the same initial weights: write them once with '
                       '--save_init_weights and pass that file as --init_weights to each run '
                       '(check_parity does this).',
}

FRAMEWORK_DIFFERENCES = {
    'adam_rounding': "Keras 3's Adam computes TF1's formula with separate ops and beta ** t, "
                     "TF1's AdamOptimizer with one fused kernel and beta-power accumulators: the "
                     'weights differ by an ulp after the first step, and Adam amplifies that '
                     'chaotically, so step-wise values part within a few steps; judged on the '
                     'curve tier. Remove it with train_eager --tf1_adam.',
    'bn_moving_variance': 'TF1 fused BatchNormalization updates the moving variance with the '
                          'Bessel-corrected batch variance (x n/(n-1)), Keras 3 with the biased '
                          'one, and the unfused Keras 3 ops round differently; judged on the '
                          'curve tier. Remove it with train_eager --tf1_bn_variance.',
    'dropout_masks': 'TF1 and Keras 3 draw different dropout masks from the same seed, so '
                     'per-step losses cannot match bit for bit; judged on the curve tier.',
    'replica_reduction': 'A run over several replicas sums the gradients (and BatchNorm '
                         'moments) of its replicas, in another order than one device sums the '
                         'batch: last-bit differences from the first update on, which Adam '
                         'amplifies over the steps; judged on the curve tier. Same global '
                         'batch, same batches: the first batch loss agrees to round-off.',
    'mixed_precision': 'A mixed_float16 run computes in float16 (with loss scaling) what a '
                       'float32 run computes in float32: expected to differ from the first '
                       'step on by float16 round-off; judged on the curve tier.',
}
# Differences after which step-wise values are no longer comparable.
STEP_BREAKING = frozenset({'adam_rounding', 'bn_moving_variance', 'dropout_masks',
                           'replica_reduction', 'mixed_precision'})


@dataclasses.dataclass
class Tolerances:
  """How the tiers judge (defaults measured: README, "Parity method").

  With a control run: step and weight tiers pass while the divergence stays within
  `envelope_multiple` times the control's (floored at float32's rounding step), up to
  the horizon where the control's own divergence passes `horizon_level`; the curve band
  is `curve_multiple` times the control's curve difference, never below the fixed bands.
  Without one: `step_rtol` / `weight_rtol` over the first `parity_steps` steps.
  """
  parity_steps: int = 10
  step_rtol: float = 1e-5
  weight_rtol: float = 1e-3
  curve_rtol: float = 0.05
  accuracy_atol: float = 0.05
  envelope_multiple: float = calibration.ENVELOPE_MULTIPLE
  horizon_level: float = calibration.HORIZON_LEVEL
  curve_multiple: float = calibration.CURVE_MULTIPLE


@dataclasses.dataclass
class Run:
  """A finished run directory, loaded."""
  path: str
  manifest: dict
  steps: dict
  epochs: dict
  snapshot_steps: list

  @property
  def label(self):
    return f'{self.manifest.get("runner", "?")}:{os.path.basename(os.path.normpath(self.path))}'

  def flag(self, name, default=None):
    return self.manifest.get('flags', {}).get(name, default)

  def snapshot(self, step):
    with np.load(runlog.snapshot_path(self.path, step)) as npz:
      return {key: npz[key] for key in npz.files}

  def start_digest(self):
    """sha256 of the weights the run really started from (its step-0 snapshot), or None.

    A run's manifest names its --init_weights file only when one was given; two runs
    seeded alike but initialised by different frameworks start apart all the same.
    """
    if 0 not in self.snapshot_steps:
      return None
    digest = hashlib.sha256()
    for key, value in sorted(self.snapshot(0).items()):
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def load_run(path):
  """Loads a complete run directory; raises cli.UsageError for a missing or unfinished one."""
  if not os.path.isdir(path):
    raise cli.UsageError(f'{path}: no such run directory')
  manifest = runlog.read_manifest(path)
  if manifest is None:
    raise cli.UsageError(f'{path}: no {runlog.RUN_JSON}; it is not a run directory written by '
                         'train_graph or train_eager')
  status = manifest.get('status')
  if status != runlog.STATUS_COMPLETE:
    raise cli.UsageError(f'{path}: run is {status}, not complete; rerun its command to finish '
                         'it before comparing')
  steps = runlog.read_csv(os.path.join(path, runlog.STEPS_CSV))
  if not steps:
    raise cli.UsageError(f'{path}: {runlog.STEPS_CSV} is missing or empty')
  return Run(path, manifest, steps, runlog.read_csv(os.path.join(path, runlog.EPOCHS_CSV)),
             runlog.snapshot_steps_in(path))


def _get(manifest, keys):
  value = manifest
  for key in keys:
    if not isinstance(value, dict):
      return None
    value = value.get(key)
  return value


START_FIELD = 'initial weights (step-0 snapshot)'


def lint(reference, other):
  """Differences that change the math: [{field, reference, other, equivalent}].

  The weights the runs started from come first (a different start explains any later
  difference); then the manifest fields.
  """
  found = []
  starts = reference.start_digest(), other.start_digest()
  if None not in starts and starts[0] != starts[1]:
    found.append({'field': START_FIELD, 'reference': starts[0][:12], 'other': starts[1][:12],
                  'equivalent': False})
  for label, keys in LINT_FIELDS:
    a, b = _get(reference.manifest, keys), _get(other.manifest, keys)
    if a != b:
      equivalent = label == 'loss' and {a, b} <= EQUIVALENT_LOSSES
      found.append({'field': label, 'reference': a, 'other': b, 'equivalent': equivalent})
  return found


def step_tier(reference, other, tol, envelope=None):
  """The batch loss step by step, judged up to the horizon (or the first parity_steps).

  Step 1 is the loss of the initial weights. With an envelope, step s passes while its
  relative difference is at most envelope_multiple x max(envelope(s), floor).
  """
  n_all = int(min(len(reference.steps['loss']), len(other.steps['loss'])))
  a, b = reference.steps['loss'][:n_all], other.steps['loss'][:n_all]
  rel_all = calibration.relative_difference(a, b)
  if envelope is None:
    n = min(tol.parity_steps, n_all)
    scales, limits = None, np.full(n, tol.step_rtol)
  else:
    n = min(envelope.loss_horizon, n_all)
    scales = np.array([envelope.loss_scale(s) for s in range(1, n + 1)])
    limits = tol.envelope_multiple * scales
  rel = rel_all[:n]
  ratios = rel / scales if scales is not None else None
  first = np.nonzero(rel > limits)[0]
  return {
      'steps': n,
      'calibrated': envelope is not None,
      'reference_loss': a[:n].tolist(),
      'other_loss': b[:n].tolist(),
      'relative_difference': rel.tolist(),
      # Every step, judged or not: what parity.png and the TensorBoard series show.
      'whole_run_relative_difference': rel_all.tolist(),
      'limit': limits.tolist(),
      'envelope_ratio': ratios.tolist() if ratios is not None else None,
      'max_relative_difference': float(rel.max()) if n else 0.0,
      'max_envelope_ratio': float(ratios.max()) if ratios is not None and n else None,
      'first_step_over': int(reference.steps['step'][first[0]]) if len(first) else None,
      'losses_identical': bool(n_all and not rel_all.any()),
      'passed': n > 0 and not len(first),
  }


def weight_tier(reference, other, tol, excluded=(), envelope=None):
  """Every variable at every common snapshot step; judged up to the horizon.

  The difference of a variable is norm-based (calibration.variable_difference); the
  `excluded` keys (a framework difference) are reported, not judged. Snapshots past
  the horizon (or past parity_steps without a control) are reported, not judged.
  """
  common = sorted(set(reference.snapshot_steps) & set(other.snapshot_steps))
  last_judged = tol.parity_steps if envelope is None else envelope.weight_horizon
  per_step = []
  first_over = None
  worst = worst_ratio = 0.0
  identical = True
  for step in common:
    a, b = reference.snapshot(step), other.snapshot(step)
    if sorted(a) != sorted(b):
      return {'common_steps': common, 'per_step': [], 'max_relative_difference': math.inf,
              'max_envelope_ratio': None, 'first_over': {'step': step, 'variable': 'keys differ'},
              'passed': False, 'key_mismatch': sorted(set(a) ^ set(b)), 'judged_steps': [],
              'weights_identical': False, 'excluded': sorted(excluded)}
    diffs = {key: calibration.variable_difference(a[key], b[key]) for key in sorted(a)}
    identical = identical and not any(diffs.values())
    judged = {k: v for k, v in diffs.items() if k not in excluded}
    step_max = max(judged.values()) if judged else 0.0
    entry = {'step': step, 'judged': step <= last_judged, 'max_relative_difference': step_max,
             'variables': diffs}
    if entry['judged']:
      scale = None if envelope is None else envelope.weight_scale(step)
      limit = tol.weight_rtol if scale is None else tol.envelope_multiple * scale
      entry['limit'] = limit
      worst = max(worst, step_max)
      if scale is not None:
        entry['envelope_ratio'] = step_max / scale
        worst_ratio = max(worst_ratio, entry['envelope_ratio'])
      if first_over is None:
        for key, value in model_order(judged):
          if value > limit:
            first_over = {'step': step, 'variable': key, 'relative_difference': value}
            break
    per_step.append(entry)
  # Without a common snapshot there is nothing to judge; the report says so.
  return {'common_steps': common, 'judged_steps': [e['step'] for e in per_step if e['judged']],
          'per_step': per_step, 'max_relative_difference': worst,
          'max_envelope_ratio': worst_ratio if envelope is not None else None,
          'first_over': first_over, 'passed': first_over is None,
          'weights_identical': identical, 'excluded': sorted(excluded)}


def model_order(weights):
  """(key, value) pairs in the model's layer order (conv1 first, logits last)."""
  def rank(key):
    layer = key.split('/')[0]
    digits = ''.join(c for c in layer if c.isdigit())
    return (int(digits) if digits else 99, layer == 'logits', key)
  return sorted(weights.items(), key=lambda kv: rank(kv[0]))


CURVE_SERIES = ('train_loss', 'val_loss', 'train_accuracy', 'val_accuracy')


def curve_differences(reference, other):
  """{series: per-epoch difference} in the curve tier's units (NaN-free series only).

  Loss differences are taken relative to the reference's initial loss (its first batch,
  about ln(classes)): a converged run's small losses would turn harmless round-off
  chaos into large relative numbers. Accuracies are compared absolutely.
  """
  n = min(len(reference.epochs.get('epoch', [])), len(other.epochs.get('epoch', [])))
  initial = abs(float(reference.steps['loss'][0]))
  out = {}
  for name in CURVE_SERIES:
    a, b = reference.epochs[name][:n], other.epochs[name][:n]
    if n == 0 or (np.all(np.isnan(a)) and np.all(np.isnan(b))):
      continue
    diff = np.abs(np.asarray(a) - np.asarray(b))
    if name.endswith('loss'):
      diff = diff / initial
    out[name] = np.where(np.isnan(diff), np.inf, diff)
  return out


def curve_tier(reference, other, tol, envelope=None):
  """Per-epoch train/val loss and accuracy within a band.

  The band is the fixed tolerance (curve_rtol, accuracy_atol) or, with an envelope,
  curve_multiple times the control's running curve difference where that is wider.
  """
  n = min(len(reference.epochs.get('epoch', [])), len(other.epochs.get('epoch', [])))
  result = {'epochs': n, 'series': {}, 'passed': n > 0,
            'initial_loss': float(reference.steps['loss'][0])}
  for name, diff in curve_differences(reference, other).items():
    floor = tol.curve_rtol if name.endswith('loss') else tol.accuracy_atol
    limit = np.full(n, floor)
    control = (envelope.curves.get(name) if envelope is not None else None) or []
    for e in range(n):
      if control:
        limit[e] = max(floor, tol.curve_multiple * control[min(e, len(control) - 1)])
    passed = bool(np.all(diff <= limit))
    result['series'][name] = {
        'reference': list(map(float, reference.epochs[name][:n])),
        'other': list(map(float, other.epochs[name][:n])),
        'difference': diff.tolist(), 'limit': limit.tolist(),
        'band_ratio': float(np.max(diff / limit)), 'passed': passed}
    result['passed'] = result['passed'] and passed
  return result


def metric_semantics(run):
  """How the run's shown running mean loss and accuracy relate to its own step values.

  Returns {'loss': kind, 'accuracy': kind, 'error_per_epoch': x, 'error_since_start': y}
  with kind one of METRICS_PER_EPOCH, METRICS_SINCE_START, METRICS_UNEXPLAINED.
  """
  steps = run.steps
  epoch = steps['epoch'].astype(int)
  out = {}
  for shown_name, value_name in (('mean_loss', 'loss'), ('accuracy', 'batch_accuracy')):
    values, shown = steps[value_name], steps[shown_name]
    per_epoch = np.empty_like(values)
    for e in np.unique(epoch):
      mask = epoch == e
      per_epoch[mask] = np.cumsum(values[mask]) / np.arange(1, mask.sum() + 1)
    since_start = np.cumsum(values) / np.arange(1, len(values) + 1)
    scale = np.maximum(np.abs(shown), 1e-6)
    error_epoch = float(np.max(np.abs(shown - per_epoch) / scale))
    error_start = float(np.max(np.abs(shown - since_start) / scale))
    if error_epoch <= _METRIC_RTOL:
      kind = METRICS_PER_EPOCH
    elif error_start <= _METRIC_RTOL:
      kind = METRICS_SINCE_START
    else:
      kind = METRICS_UNEXPLAINED
    out[value_name] = {'kind': kind, 'error_per_epoch': error_epoch,
                       'error_since_start': error_start}
  return out


def _bn_keys(weights):
  return [k for k in weights if k.startswith('bn') and k.endswith(('moving_mean',
                                                                   'moving_variance'))]


def batch_norm_state(run):
  """Whether each BatchNorm moving statistic moved from step 0 to the last snapshot."""
  if not run.snapshot_steps or run.snapshot_steps[0] != 0 or len(run.snapshot_steps) < 2:
    return None
  first, last = run.snapshot(0), run.snapshot(run.snapshot_steps[-1])
  keys = _bn_keys(first)
  if not keys:
    return None
  moved = {k: bool(np.any(first[k] != last[k])) for k in keys}
  return {'moved': moved, 'any_moved': any(moved.values()), 'all_moved': all(moved.values())}


def dropout_in_training(reference, control, envelope):
  """Whether the reference's Dropout acted in training, from its control.

  The control draws other Dropout masks (another --dropout_seed); with Dropout active
  that alone moves the first batch loss far above rounding (4e-3 measured at rate 0.3).
  A first batch loss equal to rounding says the masks never applied: the layer ran in
  inference mode. None where this cannot be told (no control, no Dropout, same seed).
  """
  if (envelope is None or control is None or not (reference.flag('dropout') or 0) > 0 or
      control.flag('dropout_seed') == reference.flag('dropout_seed') or not envelope.loss):
    return None
  first = envelope.loss[0]
  return {'active': first > calibration.ENVELOPE_MULTIPLE * calibration.ROUNDING_FLOOR,
          'control_first_step_difference': first,
          'control_dropout_seed': control.flag('dropout_seed')}


def bessel_factor(run, layer_index):
  """n/(n-1) for the batch variance of bn<layer_index>: n = batch x height x width."""
  size = run.manifest.get('image_size') or run.flag('image_size')
  for _ in range(layer_index):
    size = (size - 3) // 2 + 1
  n = (run.manifest.get('batch_size') or run.flag('batch_size')) * size * size
  return n / (n - 1)


def _uses_tf1_bn_variance(run):
  return run.manifest.get('runner') == 'graph' or bool(run.flag('tf1_bn_variance'))


def _uses_tf1_adam(run):
  return run.manifest.get('runner') == 'graph' or bool(run.flag('tf1_adam'))


def known_differences(reference, other):
  """Framework differences these two runs are expected to show, by name, with details."""
  found = {}
  if _uses_tf1_adam(reference) != _uses_tf1_adam(other):
    found['adam_rounding'] = {}
  if reference.flag('batch_norm') and other.flag('batch_norm') and (
      _uses_tf1_bn_variance(reference) != _uses_tf1_bn_variance(other)):
    found['bn_moving_variance'] = {
        'predicted_factor_last_layer': bessel_factor(reference, len(model.CONV_FILTERS)),
        'predicted_factor_first_layer': bessel_factor(reference, 1)}
  if (reference.flag('dropout') or 0) > 0 and (other.flag('dropout') or 0) > 0:
    found['dropout_masks'] = {'rate': other.flag('dropout')}
  replicas = [run.manifest.get('replicas', 1) for run in (reference, other)]
  if replicas[0] != replicas[1]:
    found['replica_reduction'] = {'replicas': replicas,
                                  'strategies': [run.manifest.get('strategy', 'default')
                                                 for run in (reference, other)]}
  policies = [run.manifest.get('dtype_policy', 'float32') for run in (reference, other)]
  if policies[0] != policies[1]:
    found['mixed_precision'] = {'dtype_policies': policies}
  return found


def _measure_bn_variance(reference, other):
  """Max relative difference of the moving variances at the first common snapshot > 0."""
  common = [s for s in sorted(set(reference.snapshot_steps) & set(other.snapshot_steps)) if s]
  if not common:
    return None
  a, b = reference.snapshot(common[0]), other.snapshot(common[0])
  keys = [k for k in a if k.endswith('moving_variance')]
  return {'step': common[0],
          'max_relative_difference': max(calibration.variable_difference(a[k], b[k])
                                     for k in keys)}


def _envelope_ratio(tier, index=None):
  """divergence / envelope of a calibrated loss or weight tier: at step `index` (loss
  tier), else the worst judged one; None without a control."""
  if index is None:
    return tier.get('max_envelope_ratio')
  ratios = tier.get('envelope_ratio')
  return ratios[index] if ratios else None


def diagnose(reference, other, lint_found, steps, weights, semantics, bn_states,
             dropout_state=None):
  """Catalogued pitfalls that fit the evidence, best fit first.

  Each is {name, evidence, fix, corroborated, judged_by, margin}: `judged_by` is the tier
  whose evidence names it (config, step, semantics); `margin` how far that evidence
  stands above what correct runs show (divergence / the control's envelope on the step
  tier, error / tolerance for running metrics; None where the evidence is exact: a
  config difference, statistics that never moved, masks that never applied). `steps` and `weights` are the
  step and weight tiers, or None where a framework difference makes step-wise values
  incomparable. A pitfall is `corroborated` when the runs' own flags say the mistake
  was made; those come first.
  """
  found = []

  def add(name, evidence, corroborated, judged_by, margin=None):
    kind = 'setup' if name in SETUP_PROBLEMS else 'pitfall'
    found.append({'name': name, 'kind': kind, 'evidence': evidence,
                  'fix': {**SETUP_PROBLEMS, **PITFALLS}[name], 'corroborated': corroborated,
                  'judged_by': judged_by, 'margin': margin})

  fields = {d['field']: d for d in lint_found}
  if START_FIELD in fields:
    d = fields[START_FIELD]
    add('different_start', f'the runs started from different weights (step-0 snapshots '
        f'{d["reference"]} vs {d["other"]}): every later difference may come from that',
        True, 'config')
  # Judged like every other step: over its limit, not merely non-zero (a GPU's last bit).
  first_step_differs = steps is not None and bool(steps['relative_difference']) and (
      steps['relative_difference'][0] > steps['limit'][0])
  first_step_margin = _envelope_ratio(steps, 0) if first_step_differs else None
  if 'optimizer epsilon' in fields:
    d = fields['optimizer epsilon']
    evidence = f'Adam epsilon {d["reference"]} vs {d["other"]}'
    if steps is not None and not first_step_differs and steps['first_step_over']:
      k = steps['first_step_over']
      evidence += (f'; the first batch loss matches, the loss parts from step {k} (relative '
                   f'difference {steps["relative_difference"][k - 1]:.1e}), after the first '
                   'update')
    if steps is not None:
      ratios = [r for r in (_envelope_ratio(steps), _envelope_ratio(weights or {})) if r]
      if ratios:
        evidence += f'; the step tier sees it at {max(ratios):.3g}x the control\'s envelope'
    add('adam_epsilon', evidence, True, 'config')
  if 'final activation' in fields:
    d = fields['final activation']
    evidence = (f'final activation {d["reference"]} vs {d["other"]} with losses that take '
                'logits')
    if first_step_differs:
      evidence += (f'; the first batch loss already differs ({steps["reference_loss"][0]:.6g} '
                   f'vs {steps["other_loss"][0]:.6g})')
    add('double_softmax', evidence, True, 'config')
  for run in (reference, other):
    for value_name, info in semantics[run.path].items():
      if info['kind'] == METRICS_SINCE_START:
        add('metrics_never_reset', f'{run.label} shows a running {value_name} equal to the mean '
            'since step 1 (error {:.1e}), not since the epoch start (error {:.1e})'.format(
                info['error_since_start'], info['error_per_epoch']),
            run.flag('reset_metrics') == 'never', 'semantics', info['error_per_epoch'] / _METRIC_RTOL)
        break
  for run, twin in ((reference, other), (other, reference)):
    state, twin_state = bn_states[run.path], bn_states[twin.path]
    if state and twin_state and not state['any_moved'] and twin_state['any_moved']:
      evidence = (f'{run.label}: BatchNorm moving statistics never changed from their initial '
                  f'values; {twin.label}: they did')
      if run.flag('wiring') == 'model_call':
        add('model_call_wiring', evidence, True, 'semantics')
        add('skip_update_ops', evidence, False, 'semantics')
      else:
        add('skip_update_ops', evidence, run.flag('update_ops') is False, 'semantics')
        add('model_call_wiring', evidence, False, 'semantics')
  if dropout_state is not None and not dropout_state['active']:
    add('no_learning_phase',
        f'{reference.label} trained with Dropout {reference.flag("dropout")}, yet its control, '
        'which drew other Dropout masks, has the same first batch loss (relative difference '
        f'{dropout_state["control_first_step_difference"]:.1e}): the masks never applied, '
        'Dropout ran in inference mode', reference.flag('feed_learning_phase') is False,
        'semantics')
  if first_step_differs and 'final activation' not in fields:
    for run in (reference, other):
      if run.flag('batch_norm') or (run.flag('dropout') or 0) > 0:
        add('no_learning_phase',
            f'the first batch loss differs ({steps["reference_loss"][0]:.6g} vs '
            f'{steps["other_loss"][0]:.6g}) with the same initial weights and data: the '
            'forward pass differs, as when BatchNorm/Dropout run in inference mode',
            any(r.flag('feed_learning_phase') is False for r in (reference, other)),
            'step', first_step_margin)
        break
  found.sort(key=lambda p: (p['kind'] != 'setup', not p['corroborated']))
  seen, unique = set(), []
  for p in found:
    if p['name'] not in seen:
      seen.add(p['name'])
      unique.append(p)
  return unique


# How a control may differ from its reference: its start is nudged by one ulp, and the
# harness turns op determinism off in it (a reduction-order change, as on a GPU).
CONTROL_DIFFERENCES = frozenset({START_FIELD, 'init-weights sha256', 'deterministic'})


def measure_envelope(reference, control, tol):
  """The calibration.Envelope of `control` against `reference`.

  Raises cli.UsageError when the control is not the reference's own run again (a
  field that changes the math differs, or it is shorter).
  """
  different = [d['field'] for d in lint(reference, control)
               if not d['equivalent'] and d['field'] not in CONTROL_DIFFERENCES]
  if different or control.manifest.get('runner') != reference.manifest.get('runner'):
    what = ', '.join(different) or 'runner'
    raise cli.UsageError(f'{control.path}: not a control of {reference.path} ({what} '
                         'differ); a control is the reference command run again with '
                         '--init_weights nudged by one ulp (check_parity makes one)')
  if len(control.steps['loss']) < len(reference.steps['loss']):
    raise cli.UsageError(f'{control.path}: the control has fewer steps than the reference; '
                         'run it as long')
  common = sorted(set(reference.snapshot_steps) & set(control.snapshot_steps))
  weight_diffs = calibration.weight_divergence(reference.snapshot, control.snapshot, common)
  return calibration.measure(control.label, reference.steps['loss'], control.steps['loss'],
                             weight_diffs, curve_differences(reference, control),
                             tol.horizon_level)


def _measured(steps):
  return {'first_step_loss_relative_difference': steps['relative_difference'][0],
          'max_loss_relative_difference': steps['max_relative_difference'],
          'over_steps': steps['steps']}


def compare_pair(reference, other, tol, envelope=None, dropout_state=None):
  """All tiers for one pair; returns the pair's section of parity.json.

  `dropout_state` is dropout_in_training() of the reference, judged in the semantics tier.
  """
  lint_found = lint(reference, other)
  differences = known_differences(reference, other)
  excluded = set()
  if 'bn_moving_variance' in differences:
    excluded = {k for k in reference.snapshot(reference.snapshot_steps[0])
                if k.endswith('moving_variance')}
    differences['bn_moving_variance']['measured'] = _measure_bn_variance(reference, other)
  steps = step_tier(reference, other, tol, envelope)
  for name in STEP_BREAKING & set(differences):
    if steps['steps'] and not differences[name].get('measured'):
      differences[name]['measured'] = _measured(steps)
  weights = weight_tier(reference, other, tol, excluded, envelope)
  curves = curve_tier(reference, other, tol, envelope)
  semantics = {run.path: metric_semantics(run) for run in (reference, other)}
  bn_states = {run.path: batch_norm_state(run) for run in (reference, other)}
  semantics_ok = all(info['kind'] == METRICS_PER_EPOCH
                     for run_info in semantics.values() for info in run_info.values())
  bn_ok = all(state is None or state['all_moved'] for state in bn_states.values())
  step_judged = not STEP_BREAKING & set(differences)
  mismatches = [d for d in lint_found if not d['equivalent']]
  tiers = {
      'config': {'judged': True, 'passed': not mismatches},
      'step': {'judged': step_judged, 'passed': steps['passed'] and weights['passed']},
      'curve': {'judged': True, 'passed': curves['passed']},
      'semantics': {'judged': True, 'passed': semantics_ok and bn_ok and (
          dropout_state is None or dropout_state['active'])},
  }
  passed = all(t['passed'] for t in tiers.values() if t['judged'])
  pitfalls = [] if passed else diagnose(
      reference, other, lint_found, steps if step_judged else None,
      weights if step_judged else None, semantics, bn_states, dropout_state)
  ratios = [r for r in (steps['max_envelope_ratio'], weights['max_envelope_ratio'])
            if r is not None and step_judged]
  return {
      'reference': reference.path, 'other': other.path,
      'reference_label': reference.label, 'other_label': other.label,
      'lint': lint_found, 'lint_mismatches': len(mismatches),
      'step_tier': steps, 'weight_tier': weights, 'curve_tier': curves,
      'semantics_tier': {'metrics': {run.label: semantics[run.path]
                                     for run in (reference, other)},
                         'batch_norm': {run.label: bn_states[run.path]
                                        for run in (reference, other)},
                         'reference_dropout': dropout_state},
      'tiers': tiers, 'framework_differences': differences,
      # divergence / envelope at the worst judged step (the limit is envelope_multiple).
      'envelope_ratio': max(ratios) if ratios else None,
      'bit_identical': steps['losses_identical'] and weights['weights_identical'],
      'verdict': 'PASS' if passed else 'FAIL', 'pitfalls': pitfalls,
  }


def compare(paths, tol, control=None):
  """Compares every run against the first; returns the whole parity.json content.

  `control` is the run directory of a control run of the first (the reference): with
  it the tiers are calibrated, without it they use the fixed tolerances.
  """
  if len(paths) < 2:
    raise cli.UsageError('compare_runs needs at least two run directories')
  runs = [load_run(p) for p in paths]
  control_run = load_run(control) if control else None
  envelope = measure_envelope(runs[0], control_run, tol) if control else None
  dropout_state = dropout_in_training(runs[0], control_run, envelope)
  pairs = [compare_pair(runs[0], other, tol, envelope, dropout_state) for other in runs[1:]]
  verdict = 'PASS' if all(p['verdict'] == 'PASS' for p in pairs) else 'FAIL'
  return {'verdict': verdict, 'tolerances': dataclasses.asdict(tol),
          'calibration': envelope.as_dict() if envelope else None,
          'control': control,
          'runs': [{'path': r.path, 'label': r.label, 'runner': r.manifest.get('runner'),
                    'device': r.manifest.get('device'), 'steps': len(r.steps['step'])}
                   for r in runs],
          'pairs': pairs,
          'pitfalls': [p['name'] for pair in pairs for p in pair['pitfalls']]}
