"""Comparison of finished run directories: config lint, three tiers, verdict, pitfalls, report.

TensorFlow-free: it reads what runners wrote (runlog's contract) and judges it with
numpy. Runs are compared pairwise against the first (the reference, normally the
legacy graph run). See DESIGN.md, "Parity method".
"""

import dataclasses
import math
import os

import numpy as np

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
  """Tolerances of the three tiers (defaults measured: see README, Parity method)."""
  parity_steps: int = 10
  step_rtol: float = 1e-5
  weight_rtol: float = 1e-3
  curve_rtol: float = 0.05
  accuracy_atol: float = 0.05


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


def lint(reference, other):
  """Manifest differences that change the math: [{field, reference, other, equivalent}]."""
  found = []
  for label, keys in LINT_FIELDS:
    a, b = _get(reference.manifest, keys), _get(other.manifest, keys)
    if a != b:
      equivalent = label == 'loss' and {a, b} <= EQUIVALENT_LOSSES
      found.append({'field': label, 'reference': a, 'other': b, 'equivalent': equivalent})
  return found


def relative_difference(a, b):
  """|a - b| / |a| elementwise, with 0/0 = 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = np.abs(a)
  with np.errstate(divide='ignore', invalid='ignore'):
    rel = np.abs(a - b) / scale
  rel[(scale == 0) & (a == b)] = 0.0
  rel[(scale == 0) & (a != b)] = np.inf
  return rel


def variable_difference(a, b):
  """max|a - b| over the variable, relative to the variable's largest magnitude."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
  diff = np.max(np.abs(a - b))
  return 0.0 if diff == 0 else diff / scale if scale > 0 else math.inf


def step_tier(reference, other, tol):
  """Batch loss over the first `tol.parity_steps` steps: relative difference per step."""
  n = int(min(tol.parity_steps, len(reference.steps['loss']), len(other.steps['loss'])))
  a, b = reference.steps['loss'][:n], other.steps['loss'][:n]
  rel = relative_difference(a, b)
  over = np.nonzero(rel > tol.step_rtol)[0]
  return {
      'steps': n,
      'reference_loss': a.tolist(),
      'other_loss': b.tolist(),
      'relative_difference': rel.tolist(),
      'max_relative_difference': float(rel.max()) if n else 0.0,
      'first_step_over': int(reference.steps['step'][over[0]]) if len(over) else None,
      'passed': n > 0 and not len(over),
  }


def weight_tier(reference, other, tol, excluded=()):
  """Every variable at every common snapshot step; `excluded` keys are reported, not judged."""
  common = sorted(set(reference.snapshot_steps) & set(other.snapshot_steps))
  per_step = []
  first_over = None
  worst = 0.0
  for step in common:
    a, b = reference.snapshot(step), other.snapshot(step)
    if sorted(a) != sorted(b):
      return {'common_steps': common, 'per_step': [], 'max_relative_difference': math.inf,
              'first_over': {'step': step, 'variable': 'keys differ'}, 'passed': False,
              'key_mismatch': sorted(set(a) ^ set(b))}
    diffs = {key: variable_difference(a[key], b[key]) for key in sorted(a)}
    judged = {k: v for k, v in diffs.items() if k not in excluded}
    step_max = max(judged.values()) if judged else 0.0
    worst = max(worst, step_max)
    if first_over is None:
      for key in (k for k, _ in model_order(judged)):
        if judged[key] > tol.weight_rtol:
          first_over = {'step': step, 'variable': key, 'relative_difference': judged[key]}
          break
    per_step.append({'step': step, 'max_relative_difference': step_max, 'variables': diffs})
  # Without a common snapshot there is nothing to judge; the report says so.
  return {'common_steps': common, 'per_step': per_step, 'max_relative_difference': worst,
          'first_over': first_over, 'passed': first_over is None,
          'excluded': sorted(excluded)}


def model_order(weights):
  """(key, value) pairs in the model's layer order (conv1 first, logits last)."""
  def rank(key):
    layer = key.split('/')[0]
    digits = ''.join(c for c in layer if c.isdigit())
    return (int(digits) if digits else 99, layer == 'logits', key)
  return sorted(weights.items(), key=lambda kv: rank(kv[0]))


def curve_tier(reference, other, tol):
  """Per-epoch train/val loss and accuracy within a band.

  Loss differences are taken relative to the reference's initial loss (its first batch,
  about ln(classes)): a converged run's small losses would turn harmless round-off
  chaos into large relative numbers. Accuracies are compared absolutely.
  """
  n = min(len(reference.epochs.get('epoch', [])), len(other.epochs.get('epoch', [])))
  result = {'epochs': n, 'series': {}, 'passed': n > 0,
            'initial_loss': float(reference.steps['loss'][0])}
  if n == 0:
    return result
  for name in ('train_loss', 'val_loss', 'train_accuracy', 'val_accuracy'):
    a, b = reference.epochs[name][:n], other.epochs[name][:n]
    if np.all(np.isnan(a)) and np.all(np.isnan(b)):
      continue
    diff = np.abs(np.asarray(a) - np.asarray(b))
    if name.endswith('loss'):
      diff, limit = diff / abs(result['initial_loss']), tol.curve_rtol
    else:
      limit = tol.accuracy_atol
    diff = np.where(np.isnan(diff), np.inf, diff)
    passed = bool(np.all(diff <= limit))
    result['series'][name] = {'reference': list(map(float, a)), 'other': list(map(float, b)),
                              'difference': diff.tolist(), 'limit': limit, 'passed': passed}
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
          'max_relative_difference': max(variable_difference(a[k], b[k]) for k in keys)}


def diagnose(reference, other, lint_found, steps, semantics, bn_states):
  """Catalogued pitfalls that fit the evidence, best fit first: [{name, evidence, fix}].

  `steps` is the step tier, or None where a framework difference makes step-wise values
  incomparable. A pitfall is `corroborated` when the runs' own flags say the mistake
  was made; those come first.
  """
  found = []

  def add(name, evidence, corroborated):
    found.append({'name': name, 'evidence': evidence, 'fix': PITFALLS[name],
                  'corroborated': corroborated})

  fields = {d['field']: d for d in lint_found}
  first_step_differs = steps is not None and bool(steps['relative_difference']) and (
      steps['relative_difference'][0] > 0)
  if 'optimizer epsilon' in fields:
    d = fields['optimizer epsilon']
    evidence = f'Adam epsilon {d["reference"]} vs {d["other"]}'
    if steps is not None and not first_step_differs and steps['first_step_over']:
      k = steps['first_step_over']
      evidence += (f'; the first batch loss matches, the loss parts from step {k} (relative '
                   f'difference {steps["relative_difference"][k - 1]:.1e}), after the first '
                   'update')
    add('adam_epsilon', evidence, True)
  if 'final activation' in fields:
    d = fields['final activation']
    evidence = (f'final activation {d["reference"]} vs {d["other"]} with losses that take '
                'logits')
    if first_step_differs:
      evidence += (f'; the first batch loss already differs ({steps["reference_loss"][0]:.6g} '
                   f'vs {steps["other_loss"][0]:.6g})')
    add('double_softmax', evidence, True)
  for run in (reference, other):
    for value_name, info in semantics[run.path].items():
      if info['kind'] == METRICS_SINCE_START:
        add('metrics_never_reset', f'{run.label} shows a running {value_name} equal to the mean '
            'since step 1 (error {:.1e}), not since the epoch start (error {:.1e})'.format(
                info['error_since_start'], info['error_per_epoch']),
            run.flag('reset_metrics') == 'never')
        break
  for run, twin in ((reference, other), (other, reference)):
    state, twin_state = bn_states[run.path], bn_states[twin.path]
    if state and twin_state and not state['any_moved'] and twin_state['any_moved']:
      evidence = (f'{run.label}: BatchNorm moving statistics never changed from their initial '
                  f'values; {twin.label}: they did')
      if run.flag('wiring') == 'model_call':
        add('model_call_wiring', evidence, True)
        add('skip_update_ops', evidence, False)
      else:
        add('skip_update_ops', evidence, run.flag('update_ops') is False)
        add('model_call_wiring', evidence, False)
  if first_step_differs and 'final activation' not in fields:
    for run in (reference, other):
      if run.flag('batch_norm') or (run.flag('dropout') or 0) > 0:
        add('no_learning_phase',
            f'the first batch loss differs ({steps["reference_loss"][0]:.6g} vs '
            f'{steps["other_loss"][0]:.6g}) with the same initial weights and data: the '
            'forward pass differs, as when BatchNorm/Dropout run in inference mode',
            any(r.flag('feed_learning_phase') is False for r in (reference, other)))
        break
  found.sort(key=lambda p: not p['corroborated'])
  seen, unique = set(), []
  for p in found:
    if p['name'] not in seen:
      seen.add(p['name'])
      unique.append(p)
  return unique


def compare_pair(reference, other, tol):
  """All tiers for one pair; returns the pair's section of parity.json."""
  lint_found = lint(reference, other)
  differences = known_differences(reference, other)
  excluded = set()
  if 'bn_moving_variance' in differences:
    excluded = {k for k in reference.snapshot(reference.snapshot_steps[0])
                if k.endswith('moving_variance')}
    differences['bn_moving_variance']['measured'] = _measure_bn_variance(reference, other)
  steps = step_tier(reference, other, tol)
  for name in ('replica_reduction', 'mixed_precision'):
    if name in differences and steps['steps']:
      differences[name]['measured'] = {
          'first_step_loss_relative_difference': steps['relative_difference'][0],
          'max_loss_relative_difference': steps['max_relative_difference'],
          'over_steps': steps['steps']}
  weights = weight_tier(reference, other, tol, excluded)
  curves = curve_tier(reference, other, tol)
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
      'semantics': {'judged': True, 'passed': semantics_ok and bn_ok},
  }
  passed = all(t['passed'] for t in tiers.values() if t['judged'])
  pitfalls = [] if passed else diagnose(reference, other, lint_found, steps if step_judged
                                        else None, semantics, bn_states)
  return {
      'reference': reference.path, 'other': other.path,
      'reference_label': reference.label, 'other_label': other.label,
      'lint': lint_found, 'lint_mismatches': len(mismatches),
      'step_tier': steps, 'weight_tier': weights, 'curve_tier': curves,
      'semantics_tier': {'metrics': {run.label: semantics[run.path]
                                     for run in (reference, other)},
                         'batch_norm': {run.label: bn_states[run.path]
                                        for run in (reference, other)}},
      'tiers': tiers, 'framework_differences': differences,
      'verdict': 'PASS' if passed else 'FAIL', 'pitfalls': pitfalls,
  }


def compare(paths, tol):
  """Compares every run against the first; returns the whole parity.json content."""
  if len(paths) < 2:
    raise cli.UsageError('compare_runs needs at least two run directories')
  runs = [load_run(p) for p in paths]
  pairs = [compare_pair(runs[0], other, tol) for other in runs[1:]]
  verdict = 'PASS' if all(p['verdict'] == 'PASS' for p in pairs) else 'FAIL'
  return {'verdict': verdict, 'tolerances': dataclasses.asdict(tol),
          'runs': [{'path': r.path, 'label': r.label, 'runner': r.manifest.get('runner'),
                    'steps': len(r.steps['step'])} for r in runs],
          'pairs': pairs,
          'pitfalls': [p['name'] for pair in pairs for p in pair['pitfalls']]}


def _fmt(value):
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.3g}'
  return str(value)


def summary_lines(report):
  """The short table and verdict that compare_runs and check_parity print."""
  lines = [f'{"pair":<40} {"step max rel":>13} {"weight max rel":>15} {"curve":>6} '
           f'{"semantics":>9}  verdict']
  for pair in report['pairs']:
    name = f'{pair["reference_label"]} vs {pair["other_label"]}'
    tiers = pair['tiers']
    lines.append(
        f'{name[:40]:<40} {_fmt(pair["step_tier"]["max_relative_difference"]):>13} '
        f'{_fmt(pair["weight_tier"]["max_relative_difference"]):>15} '
        f'{"ok" if tiers["curve"]["passed"] else "FAIL":>6} '
        f'{"ok" if tiers["semantics"]["passed"] else "FAIL":>9}  {pair["verdict"]}')
    for p in pair['pitfalls']:
      lines.append(f'  pitfall {p["name"]}: {p["evidence"]}')
      lines.append(f'    fix: {p["fix"]}')
    if pair['verdict'] == 'FAIL' and not pair['pitfalls']:
      lines.append('  no catalogued pitfall fits the evidence; see parity.md')
  lines.append(f'VERDICT: {report["verdict"]}')
  return lines


def _markdown(report):
  tol = report['tolerances']
  out = ['# Parity report', '', f'**Verdict: {report["verdict"]}**', '',
         'Runs (compared pairwise against the first):', '']
  out += [f'- `{r["label"]}` ({r["steps"]} steps): `{r["path"]}`' for r in report['runs']]
  out += ['', 'Tolerances: ' + ', '.join(f'{k}={v}' for k, v in tol.items()), '']
  for pair in report['pairs']:
    out += [f'## {pair["reference_label"]} vs {pair["other_label"]}: {pair["verdict"]}', '']
    out += ['### Config lint', '']
    if pair['lint']:
      out += ['| field | reference | other | note |', '|---|---|---|---|']
      out += [f'| {d["field"]} | {_fmt(d["reference"])} | {_fmt(d["other"])} | '
              f'{"numerically equivalent" if d["equivalent"] else "changes the math"} |'
              for d in pair['lint']]
    else:
      out.append('The manifests agree on every field that changes the math.')
    steps = pair['step_tier']
    out += ['', f'### Step tier ({"judged" if pair["tiers"]["step"]["judged"] else "reported only"})',
            '', f'Batch loss over the first {steps["steps"]} steps (step 1 uses the initial '
            'weights):', '', '| step | reference | other | relative difference |',
            '|---|---|---|---|']
    out += [f'| {i + 1} | {a:.8g} | {b:.8g} | {d:.2e} |' for i, (a, b, d) in enumerate(
        zip(steps['reference_loss'], steps['other_loss'], steps['relative_difference']))]
    out += ['', f'Max relative difference {_fmt(steps["max_relative_difference"])} '
            f'(tolerance {tol["step_rtol"]}); first step over: {_fmt(steps["first_step_over"])}.']
    weights = pair['weight_tier']
    if weights['common_steps']:
      out += ['', f'Weights at the common snapshot steps {weights["common_steps"]}: max '
              f'relative difference {_fmt(weights["max_relative_difference"])} (tolerance '
              f'{tol["weight_rtol"]}); first over: {_fmt(weights["first_over"])}.']
    else:
      out += ['', 'The runs have no common snapshot step: weights not compared (align '
              '--snapshot_steps to compare them).']
    if weights.get('excluded'):
      out.append(f'Reported, not judged (framework difference): {", ".join(weights["excluded"])}.')
    if weights['per_step']:
      out += ['', '| step | max relative difference | worst variable |', '|---|---|---|']
      for entry in weights['per_step']:
        worst = max(entry['variables'].items(), key=lambda kv: kv[1])
        out.append(f'| {entry["step"]} | {entry["max_relative_difference"]:.2e} | '
                   f'{worst[0]} ({worst[1]:.2e}) |')
    out += ['', '### Curve tier', '']
    series = pair['curve_tier']['series']
    if series:
      out += ['| series | reference | other | difference | limit | ok |',
              '|---|---|---|---|---|---|']
      for name, s in series.items():
        out.append(f'| {name} | {", ".join(f"{v:.4f}" for v in s["reference"])} | '
                   f'{", ".join(f"{v:.4f}" for v in s["other"])} | '
                   f'{", ".join(f"{v:.2e}" for v in s["difference"])} | {s["limit"]} | '
                   f'{"yes" if s["passed"] else "NO"} |')
    else:
      out.append('No common epochs.')
    out += ['', '### Semantics tier', '']
    for label, info in pair['semantics_tier']['metrics'].items():
      for value_name, m in info.items():
        out.append(f'- `{label}` running {value_name}: {m["kind"]} (error vs per-epoch mean '
                   f'{m["error_per_epoch"]:.1e}, vs mean since step 1 {m["error_since_start"]:.1e})')
    for label, state in pair['semantics_tier']['batch_norm'].items():
      if state is not None:
        out.append(f'- `{label}` BatchNorm moving statistics moved: '
                   f'{"all" if state["all_moved"] else "some" if state["any_moved"] else "none"}')
    if pair['framework_differences']:
      out += ['', '### Known framework differences (not mistakes)', '']
      for name, details in pair['framework_differences'].items():
        out.append(f'- **{name}**: {FRAMEWORK_DIFFERENCES[name]} Measured: {_fmt(details)}')
    if pair['pitfalls']:
      out += ['', '### Pitfalls that fit the evidence', '']
      for p in pair['pitfalls']:
        out.append(f'- **{p["name"]}**: {p["evidence"]}. Fix: {p["fix"]}')
    elif pair['verdict'] == 'FAIL':
      out += ['', 'No catalogued pitfall fits the evidence.']
    out.append('')
  out += ['![loss curves and step-wise difference](parity.png)', '']
  return '\n'.join(out)


def _plot(report, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, (curves, diffs) = pyplot.subplots(1, 2, figsize=(12, 4.5))
  for entry in report['runs']:
    steps = runlog.read_csv(os.path.join(entry['path'], runlog.STEPS_CSV))
    curves.plot(steps['step'], steps['loss'], label=entry['label'], linewidth=1)
  curves.set_xlabel('step')
  curves.set_ylabel('batch loss')
  curves.set_title('Training loss')
  curves.legend()
  for pair in report['pairs']:
    a = runlog.read_csv(os.path.join(pair['reference'], runlog.STEPS_CSV))['loss']
    b = runlog.read_csv(os.path.join(pair['other'], runlog.STEPS_CSV))['loss']
    n = min(len(a), len(b))
    rel = relative_difference(a[:n], b[:n])
    diffs.semilogy(np.arange(1, n + 1), np.maximum(rel, 1e-12), linewidth=1,
                   label=f'{pair["other_label"]} vs {pair["reference_label"]}')
  diffs.axhline(report['tolerances']['step_rtol'], color='red', linestyle='--',
                label='step_rtol')
  diffs.axvspan(0.5, report['tolerances']['parity_steps'] + 0.5, color='grey', alpha=0.15,
                label='step tier window')
  diffs.set_xlabel('step')
  diffs.set_ylabel('relative loss difference (1e-12 = equal)')
  diffs.set_title('Step-wise difference')
  diffs.legend()
  figure.tight_layout()
  figure.savefig(path + '.tmp.png', dpi=100)
  pyplot.close(figure)
  os.replace(path + '.tmp.png', path)


def write_report(report, output_dir):
  """Writes parity.json, parity.md and parity.png into `output_dir`; returns their paths."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {name: os.path.join(output_dir, f'parity.{name}') for name in ('json', 'md', 'png')}
  runlog.atomic_write_json(paths['json'], report)
  runlog.atomic_write_text(paths['md'], _markdown(report))
  _plot(report, paths['png'])
  return paths

