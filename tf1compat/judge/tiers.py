"""The tiers that judge a pair of finished runs by their numbers: step, weight, curve,
semantics, each on what both runs record (the config tier is config_lint.py).

Each takes loaded runs (parity.Run) and returns its measurements and whether they pass;
parity.compare_pair puts them together. TensorFlow-free (numpy only).
"""

import math

import numpy as np

from tf1compat.judge import calibration

# How a run's shown running metrics relate to its own per-step values.
METRICS_PER_EPOCH = 'per_epoch'
METRICS_SINCE_START = 'since_start'
METRICS_UNEXPLAINED = 'unexplained'
METRIC_RTOL = 1e-4  # float32 accumulation of a running mean over a few thousand steps

# One example's share of an accuracy, and the float rounding of the shares written.
ONE_EXAMPLE = 1.0 + 1e-6


def parting(steps, weights):
  """Where a pair parts: the first step whose batch loss differs and by how much, and
  the first snapshot whose weights differ, its first differing variable in the model's
  layer order and the largest difference there (None where they never part)."""
  rel = steps['whole_run_relative_difference']
  first = next((i for i, d in enumerate(rel) if d > 0), None)
  out = {'loss_step': None if first is None else first + 1,
         'loss_difference': None if first is None else rel[first],
         'weight_step': None, 'first_variable': None, 'weight_difference': None}
  for entry in weights['per_step']:
    differing = [(key, value) for key, value in model_order(entry['variables']) if value > 0]
    if differing:
      out.update(weight_step=entry['step'], first_variable=differing[0][0],
                 weight_difference=max(value for _, value in differing))
      break
  return out


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
# The per-step values the semantics tier judges, each with the running mean a run shows
# of it (steps.csv columns).
METRICS = (('loss', 'mean_loss'), ('batch_accuracy', 'accuracy'))


def _has(columns, name):
  """Whether the CSV `columns` (runlog.read_csv) hold a value of `name` in some row: a model
  without an accuracy, or a run without validation, leaves its column NaN."""
  values = columns.get(name)
  return values is not None and bool(np.any(~np.isnan(values)))


def _has_metric(run, value_name):
  return _has(run.steps, value_name) and _has(run.steps, dict(METRICS)[value_name])


def _shared(reference, other, names, has):
  """(judged, left_out) of `names`: those both runs have (has(run, name)), in order, and
  {name: labels of the runs without it} of the others, which are left out, not failed."""
  judged, left_out = [], {}
  for name in names:
    lacking = [run.label for run in (reference, other) if not has(run, name)]
    if lacking:
      left_out[name] = lacking
    else:
      judged.append(name)
  return judged, left_out


def shared_series(reference, other):
  """_shared() of the epochs.csv series the curve tier judges."""
  return _shared(reference, other, CURVE_SERIES, lambda run, name: _has(run.epochs, name))


def shared_metrics(reference, other):
  """_shared() of the per-step values whose running means the semantics tier judges."""
  return _shared(reference, other, [name for name, _ in METRICS], _has_metric)


def curve_differences(reference, other):
  """{series: per-epoch difference} in the curve tier's units, of the series both runs
  have (shared_series); a NaN where one has a value is an infinite difference.

  Loss differences are taken relative to the reference's initial loss (its first batch,
  about ln(classes)): a converged run's small losses would turn harmless round-off
  chaos into large relative numbers. Accuracies are compared absolutely.
  """
  n = min(len(reference.epochs.get('epoch', [])), len(other.epochs.get('epoch', [])))
  if n == 0:
    return {}
  initial = abs(float(reference.steps['loss'][0]))
  out = {}
  for name in shared_series(reference, other)[0]:
    a, b = reference.epochs[name][:n], other.epochs[name][:n]
    diff = np.abs(np.asarray(a) - np.asarray(b))
    if name.endswith('loss'):
      diff = diff / initial
    out[name] = np.where(np.isnan(diff), np.inf, diff)
  return out


def _examples(run, series):
  """How many examples one epoch's value of the accuracy `series` is a share of (0 where
  the run does not say): a correct port that classifies one of them otherwise moves it by
  one over that. Measured: 16 validation images, one of them the other side of the
  decision boundary, 0.0625 apart, over the fixed 0.05 band."""
  if series.startswith('val'):
    return ((run.manifest.get('data') or {}).get('records') or {}).get('val') or 0
  return (run.flag('steps_per_epoch') or 0) * (run.manifest.get('batch_size') or 0)


def curve_tier(reference, other, tol, envelope=None):
  """Per-epoch train/val loss and accuracy within a band, for the series both runs have
  (`judged_series`; `left_out`: {series: labels of the runs without it}).

  The band is the fixed tolerance (curve_rtol; accuracy_atol, or one example's share of
  an epoch's accuracy where that is more) or, with an envelope,
  curve_multiple times the control's running curve difference where that is wider. A
  series' `band_ratio` is its worst difference over the band; with an envelope its
  `envelope_ratio` is that difference over what the control shows, the band / curve_multiple
  (the control's difference, floored at the fixed tolerance / curve_multiple), as the
  step tier's divergence over the envelope.
  """
  n = min(len(reference.epochs.get('epoch', [])), len(other.epochs.get('epoch', [])))
  judged, left_out = shared_series(reference, other)
  result = {'epochs': n, 'series': {}, 'passed': n > 0,
            'initial_loss': float(reference.steps['loss'][0]),
            'judged_series': judged if n else [], 'left_out': left_out}
  for name, diff in curve_differences(reference, other).items():
    examples = _examples(reference, name)
    floor = (tol.curve_rtol if name.endswith('loss') else
             max(tol.accuracy_atol, ONE_EXAMPLE / examples if examples else 0.0))
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
        'band_ratio': float(np.max(diff / limit)),
        'envelope_ratio': (float(np.max(diff / limit)) * tol.curve_multiple if control
                           else None),
        'passed': passed}
    result['passed'] = result['passed'] and passed
  return result


def metric_semantics(run, value_names=None):
  """How the run's shown running means relate to its own step values (METRICS), of
  `value_names` (default: those the run records; a pair judges what both have,
  shared_metrics).

  Returns {value name: {'kind': kind, 'error_per_epoch': x, 'error_since_start': y}}
  with kind one of METRICS_PER_EPOCH, METRICS_SINCE_START, METRICS_UNEXPLAINED.
  """
  steps = run.steps
  epoch = steps['epoch'].astype(int)
  if value_names is None:
    value_names = [name for name, _ in METRICS if _has_metric(run, name)]
  out = {}
  for value_name in value_names:
    values, shown = steps[value_name], steps[dict(METRICS)[value_name]]
    per_epoch = np.empty_like(values)
    for e in np.unique(epoch):
      mask = epoch == e
      per_epoch[mask] = np.cumsum(values[mask]) / np.arange(1, mask.sum() + 1)
    since_start = np.cumsum(values) / np.arange(1, len(values) + 1)
    scale = np.maximum(np.abs(shown), 1e-6)
    error_epoch = float(np.max(np.abs(shown - per_epoch) / scale))
    error_start = float(np.max(np.abs(shown - since_start) / scale))
    if error_epoch <= METRIC_RTOL:
      kind = METRICS_PER_EPOCH
    elif error_start <= METRIC_RTOL:
      kind = METRICS_SINCE_START
    else:
      kind = METRICS_UNEXPLAINED
    out[value_name] = {'kind': kind, 'error_per_epoch': error_epoch,
                       'error_since_start': error_start}
  return out


def _bn_keys(weights):
  """The BatchNorm moving statistics among `weights`, whatever their layers are named."""
  return [k for k in weights if k.endswith(('/moving_mean', '/moving_variance'))]


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
