"""What explains a pair's differences beyond the frameworks' own (framework_differences.py):
the catalogued pitfalls and setup problems (pitfalls.py) that fit the tiers' evidence,
named best fit first, each with its evidence and margin. TensorFlow-free.
"""

import numpy as np

from tf1compat.judge import config_lint
from tf1compat.judge import framework_differences
from tf1compat.judge import pitfalls
from tf1compat.judge import tiers
from tf1compat.runs import batch_record
from tf1compat.runs import config

def _envelope_ratio(tier, index=None):
  """divergence / envelope of a calibrated loss or weight tier: at step `index` (loss
  tier), else the worst judged one; None without a control."""
  if index is None:
    return tier.get('max_envelope_ratio')
  ratios = tier.get('envelope_ratio')
  return ratios[index] if ratios else None


# Two Dropout rates that sum to 1 within this are a keep_prob taken for a rate (flags
# hold the rates as given, e.g. 0.3 and 0.7, whose float sum is 1 within 1e-16).
KEEP_PROB_ATOL = 1e-6
# Final activations after which a model returns logits (run.json's final_activation).
LOGITS_ACTIVATIONS = (None, 'none', 'linear')


def _keep_prob_evidence(reference, other, field):
  """The evidence of keep_prob_as_rate from the lint's dropout difference, or None."""
  rates = field['reference'], field['other']
  if not all(isinstance(r, (int, float)) and 0 < r < 1 for r in rates) or (
      abs(rates[0] + rates[1] - 1) > KEEP_PROB_ATOL):
    return None
  return (f'Dropout rate {rates[0]:g} vs {rates[1]:g} = 1 - {rates[0]:g}: {other.label} '
          f'drops {rates[1]:.0%} of the activations where {reference.label} drops '
          f'{rates[0]:.0%}, as when a TF1 keep_prob is passed as a rate')


def _from_logits_evidence(reference, other, field):
  """The evidence of from_logits_lost from the lint's from_logits difference, or None:
  a loss for probabilities on a model that returns logits."""
  for run, value, twin in ((other, field['other'], reference),
                           (reference, field['reference'], other)):
    if value is False and run.manifest.get('final_activation') in LOGITS_ACTIVATIONS:
      return (f'{run.label} computes its loss ({run.manifest.get("loss")}) with '
              f'from_logits=False on a model that returns logits (final activation '
              f'{run.manifest.get("final_activation")}), {twin.label} with from_logits=True')
  return None


def _accuracy_evidence(reference, other, steps, curves):
  """(evidence, margin, tier) when the losses agree and the accuracies do not, else None.

  The step tier decides where it is judged: at step 1 both runs evaluate the same
  weights on the same batch, so a batch loss within its limit with another batch
  accuracy means the accuracy is computed otherwise (margin None: exact). Elsewhere the
  curves: accuracy series over their band while the loss series are within theirs
  (margin: the worst accuracy difference over what the control shows, its
  envelope_ratio; uncalibrated, over the band).
  """
  series = (curves or {}).get('series', {})
  apart = [name for name, s in series.items() if name.endswith('accuracy') and not s['passed']]
  if (not apart or (steps is not None and not steps['passed']) or
      not all(s['passed'] for name, s in series.items() if name.endswith('loss'))):
    return None
  worst = max(apart, key=lambda name: series[name]['band_ratio'])
  s = series[worst]
  epoch = int(np.argmax(np.asarray(s['difference']) / np.asarray(s['limit'])))
  evidence = (f'the losses agree (loss curves within their band'
              f'{", batch losses within the step limits" if steps is not None else ""}) but '
              f'the accuracies do not: {worst} {s["reference"][epoch]:.4g} vs '
              f'{s["other"][epoch]:.4g} at epoch {epoch + 1} ({s["band_ratio"]:.3g}x its band'
              + (f', {s["envelope_ratio"]:.3g}x the control\'s difference'
                 if s['envelope_ratio'] is not None else '') + ')')
  accuracies = [run.steps['batch_accuracy'][0] for run in (reference, other)]
  # A run without batch accuracies (NaN) has nothing to say at step 1.
  if (steps is not None and steps['steps'] and np.all(np.isfinite(accuracies)) and
      accuracies[0] != accuracies[1]):
    evidence += (f'; at step 1 the same weights and batch give the same loss (relative '
                 f'difference {steps["relative_difference"][0]:.1e}) but batch accuracy '
                 f'{accuracies[0]:.4g} vs {accuracies[1]:.4g}: one run\'s accuracy is not the '
                 'share of argmax matches')
    return evidence, None, 'step'
  margin = s['band_ratio'] if s['envelope_ratio'] is None else s['envelope_ratio']
  return evidence, margin, 'curve'


# Two learning rates within this relative difference are the same rate.
LR_RTOL = config_lint.LR_RTOL


def _lr_per_epoch_evidence(reference, other):
  """(evidence, the run that holds its rate per epoch) when one run's learning rate
  stays at each epoch's first value while the other's changes step by step, from the
  same value at each epoch start; else None."""
  spe = reference.flag('steps_per_epoch') or other.flag('steps_per_epoch')
  rates = [np.asarray(run.steps['learning_rate'], np.float64) for run in (reference, other)]
  n = min(len(r) for r in rates)
  if not spe or n < 2:
    return None
  rates = [r[:n] for r in rates]
  if np.allclose(rates[0], rates[1], rtol=LR_RTOL, atol=0):
    return None
  starts = np.arange(n) // spe * spe
  for held, (run, twin) in ((1, (other, reference)), (0, (reference, other))):
    mine, theirs = rates[held], rates[1 - held]
    if not (np.allclose(mine, mine[starts], rtol=LR_RTOL, atol=0) and
            np.allclose(mine[starts], theirs[starts], rtol=LR_RTOL, atol=0)):
      continue
    step = int(np.argmax(~np.isclose(mine, theirs, rtol=LR_RTOL, atol=0)))
    return (f'{run.label} holds the learning rate for each epoch at the rate of its first '
            f'step, {twin.label} changes it every step: the same {theirs[0]:.4g} at step 1, '
            f'then {mine[step]:.4g} vs {theirs[step]:.4g} at step {step + 1} and '
            f'{mine[n - 1]:.4g} vs {theirs[n - 1]:.4g} at step {n} (steps.csv '
            'learning_rate)'), run
  return None


def _bn_momentum_evidence(reference, other, field):
  """The evidence of bn_momentum_default from the lint's BatchNorm momentum difference:
  the moving means' change over the first snapshot interval, measured against the ratio
  the momenta predict."""
  evidence = f'BatchNorm momentum {field["reference"]} vs {field["other"]}'
  momenta = [field[side] for side in ('reference', 'other')]
  common = sorted(set(reference.snapshot_steps) & set(other.snapshot_steps))
  if not (all(isinstance(m, list) and len(m) == 1 for m in momenta) and len(common) > 1
          and common[0] == 0):
    return evidence
  changes = []
  for run in (reference, other):
    start, after = run.snapshot(0), run.snapshot(common[1])
    keys = [k for k in start if k.endswith('moving_mean')]
    changes.append(sum(float(np.linalg.norm(after[k] - start[k])) for k in keys))
  if not changes[0]:
    return evidence
  predicted = (1 - momenta[1][0]) / (1 - momenta[0][0])
  steps = 'step 1' if common[1] == 1 else f'steps 1-{common[1]}'
  return (f'{evidence}: over {steps} the moving means of {other.label} moved '
          f'{changes[1] / changes[0]:.3g}x as far as those of {reference.label}, where '
          f'(1 - {momenta[1][0]:g}) / (1 - {momenta[0][0]:g}) = {predicted:.3g} predicts it')


# The epsilon mistake of each algorithm (run.json's optimizer.algorithm).
EPSILON_PITFALLS = {'adam': 'adam_epsilon', 'rmsprop': 'rmsprop_epsilon',
                    'adadelta': 'adadelta_epsilon', 'adagrad': 'adagrad_epsilon'}
ALGORITHM_WORDS = {'adam': 'Adam', 'rmsprop': 'RMSProp', 'adadelta': 'Adadelta',
                   'adagrad': 'Adagrad'}


def _algorithm(reference, other):
  """The algorithm both runs train with (run.json's optimizer.algorithm; Adam for runs
  from before it was recorded), or None where they differ."""
  names = {(run.manifest.get('optimizer') or {}).get('algorithm', 'adam')
           for run in (reference, other)}
  return names.pop() if len(names) == 1 else None


def _update_evidence(steps, weights, first_step_differs):
  """What the step tier says of a difference in the optimizer's update: where the loss
  parts after an equal first batch loss, and by how much over the control's envelope."""
  if steps is None:
    return ''
  words = ''
  if not first_step_differs and steps['first_step_over']:
    k = steps['first_step_over']
    words += (f'; the first batch loss matches, the loss parts from step {k} (relative '
              f'difference {steps["relative_difference"][k - 1]:.1e}), after the update of '
              f'step {k - 1}')
  ratios = [r for r in (_envelope_ratio(steps), _envelope_ratio(weights or {})) if r]
  if ratios:
    words += f'; the step tier sees it at {max(ratios):.3g}x the control\'s envelope'
  return words


def _rate_change_words(run):
  """Where the learning rate of `run` first changes (steps.csv), as words."""
  rates = np.asarray(run.steps['learning_rate'], np.float64)
  step = config_lint.first_rate_change(rates)
  if step is None:
    return ''
  return (f' ({rates[0]:.4g} until step {step}, {rates[step]:.4g} at step {step + 1}: '
          'from there TF1 multiplies every past gradient by the new rate)')


def diagnose(reference, other, lint_found, steps, weights, semantics, bn_states,
             dropout_state=None, curves=None):
  """Catalogued pitfalls and setup problems that fit the evidence, best fit first.

  Each is {name, kind, evidence, fix, corroborated, judged_by, margin}: `judged_by` is
  the tier whose evidence names it (config, step, curve, semantics); `margin` how far
  that evidence stands above what correct runs show (divergence / the control's envelope
  on the step tier, a curve difference / the control's on the curve tier, error /
  tolerance for running metrics; None where the evidence is exact: a config difference,
  statistics that never moved, masks that never applied, the same first batch loss with
  another batch accuracy).
  `steps` and `weights` are the step and weight tiers, or None where a framework
  difference makes step-wise values incomparable; `curves` the curve tier. A pitfall is
  `corroborated` when the runs' own flags say the mistake was made; those come first.
  """
  found = []

  def add(name, evidence, corroborated, margin=None, judged_by=None):
    kind = 'setup' if name in pitfalls.SETUP_PROBLEMS else 'pitfall'
    problem = {**pitfalls.SETUP_PROBLEMS, **pitfalls.PITFALLS}[name]
    found.append({'name': name, 'kind': kind, 'evidence': evidence, 'fix': problem.fix,
                  'corroborated': corroborated,
                  'judged_by': judged_by or problem.judged_by[0], 'margin': margin})

  fields = {d['field']: d for d in lint_found}
  if config_lint.INPUT_FIELD in fields:
    # The batches themselves: named before anything measured on them.
    d = fields[config_lint.INPUT_FIELD]
    add('different_inputs',
        f'the input batches differ from step {d["step"]} (digests in '
        f'{batch_record.BATCHES_DIR}/{batch_record.DIGESTS_CSV}: {d["reference"]} vs '
        f'{d["other"]}): every loss difference from there on may come from that', True)
  if 'data fingerprint' in fields:
    data = [run.manifest.get('data') or {} for run in (reference, other)]
    records = [(d.get('records') or {}).get('train') for d in data]
    add('different_data', f'the runs trained on different data ({data[0].get("data_dir")}, '
        f'{records[0]} training records vs {data[1].get("data_dir")}, {records[1]}; '
        f'fingerprints {str(fields["data fingerprint"]["reference"])[:12]} vs '
        f'{str(fields["data fingerprint"]["other"])[:12]}): every difference may come from '
        'that', True)
  if config_lint.START_FIELD in fields:
    d = fields[config_lint.START_FIELD]
    add('different_start', f'the runs started from different weights (step-0 snapshots '
        f'{d["reference"]} vs {d["other"]}): every later difference may come from that',
        True)
  # Judged like every other step: over its limit, not merely non-zero (a GPU's last bit).
  first_step_differs = steps is not None and bool(steps['relative_difference']) and (
      steps['relative_difference'][0] > steps['limit'][0])
  first_step_margin = _envelope_ratio(steps, 0) if first_step_differs else None
  algorithm = _algorithm(reference, other)
  update = _update_evidence(steps, weights, first_step_differs)
  # The start first: it parts the first update, Keras' epsilon only a decayed one.
  if config_lint.MEAN_SQUARE_START_FIELD in fields:
    d = fields[config_lint.MEAN_SQUARE_START_FIELD]
    add('rmsprop_zero_start', f'RMSProp\'s mean square starts at {d["reference"]:g} vs '
        f'{d["other"]:g} (run.json optimizer.mean_square_start){update}', True)
  if config_lint.EPSILON_FIELD in fields and algorithm in EPSILON_PITFALLS:
    d = fields[config_lint.EPSILON_FIELD]
    add(EPSILON_PITFALLS[algorithm],
        f'{ALGORITHM_WORDS[algorithm]} epsilon {d["reference"]} vs {d["other"]}{update}', True)
  if config_lint.MOMENTUM_FORM_FIELD in fields and not fields[
      config_lint.MOMENTUM_FORM_FIELD]['equivalent']:
    d = fields[config_lint.MOMENTUM_FORM_FIELD]
    add('momentum_rate_change',
        f'the momentum accumulates {d["reference"]} vs {d["other"]} (run.json '
        f'optimizer.momentum_accumulates) under a changing learning rate'
        f'{_rate_change_words(reference)}{update}', True)
  first_losses = (f'; the first batch loss already differs ({steps["reference_loss"][0]:.6g} '
                  f'vs {steps["other_loss"][0]:.6g})' if first_step_differs else '')
  softmax_runs = [run for run in (reference, other)
                  if run.manifest.get('final_activation') == 'softmax']
  # A softmax with a loss for probabilities is a consistent pair, not this mistake.
  if 'final activation' in fields and all(run.manifest.get('from_logits', True)
                                          for run in softmax_runs):
    d = fields['final activation']
    add('double_softmax', f'final activation {d["reference"]} vs {d["other"]} with losses '
        f'that take logits{first_losses}', True)
  if 'from_logits' in fields:
    evidence = _from_logits_evidence(reference, other, fields['from_logits'])
    if evidence:
      add('from_logits_lost', evidence + first_losses, True)
  if 'dropout' in fields:
    evidence = _keep_prob_evidence(reference, other, fields['dropout'])
    if evidence:
      add('keep_prob_as_rate', evidence, True)
  if config_lint.REGULARIZATION_FIELD in fields:
    for run, twin in ((other, reference), (reference, other)):
      terms = (run.manifest.get('model_summary') or {}).get('regularization_losses')
      if run.manifest.get('regularization_in_loss') is False and terms:
        add('regularization_dropped',
            f'{run.label} leaves its model\'s {terms} regularization losses (model.losses) '
            f'out of its loss, {twin.label} adds them{first_losses}', True)
        break
  if config_lint.BN_MOMENTUM_FIELD in fields:
    add('bn_momentum_default',
        _bn_momentum_evidence(reference, other, fields[config_lint.BN_MOMENTUM_FIELD]), True)
  lr_evidence = _lr_per_epoch_evidence(reference, other)
  if lr_evidence:
    evidence, run = lr_evidence
    schedule = (run.manifest.get('optimizer') or {}).get('schedule') or {}
    add('lr_schedule_per_epoch', evidence, schedule.get('updated') == 'per_epoch')
  for run in (reference, other):
    for value_name, info in semantics[run.path].items():
      if info['kind'] == tiers.METRICS_SINCE_START:
        add('metrics_never_reset', f'{run.label} shows a running {value_name} equal to the mean '
            'since step 1 (error {:.1e}), not since the epoch start (error {:.1e})'.format(
                info['error_since_start'], info['error_per_epoch']),
            run.flag('reset_metrics') == 'never', info['error_per_epoch'] / tiers.METRIC_RTOL)
        break
  for run, twin in ((reference, other), (other, reference)):
    state, twin_state = bn_states[run.path], bn_states[twin.path]
    if state and twin_state and not state['any_moved'] and twin_state['any_moved']:
      evidence = (f'{run.label}: BatchNorm moving statistics never changed from their initial '
                  f'values; {twin.label}: they did')
      if run.flag('keep_non_trainable_state') is False:
        add('jax_state_dropped', evidence, True)
      elif run.flag('wiring') == 'model_call':
        add('model_call_wiring', evidence, True)
        add('skip_update_ops', evidence, False)
      else:
        add('skip_update_ops', evidence, run.flag('update_ops') is False)
        add('model_call_wiring', evidence, False)
  if dropout_state is not None and not dropout_state['active']:
    add('no_learning_phase',
        f'{reference.label} trained with Dropout {reference.flag("dropout")}, yet its control, '
        'which drew other Dropout masks, has the same first batch loss (relative difference '
        f'{dropout_state["control_first_step_difference"]:.1e}): the masks never applied, '
        'Dropout ran in inference mode', reference.flag('feed_learning_phase') is False)
  accuracy = _accuracy_evidence(reference, other, steps, curves)
  if accuracy:
    evidence, margin, tier = accuracy
    add('accuracy_metric_class', evidence,
        any(run.flag('fit_accuracy') not in (None, config.FIT_ACCURACY_METRICS[0])
            for run in (reference, other)), margin, judged_by=tier)
  # A config difference in what the forward pass or the loss computes explains it.
  if first_step_differs and not {'final activation', 'from_logits',
                                 config_lint.REGULARIZATION_FIELD} & set(fields):
    for run in (reference, other):
      if framework_differences.batch_norm_layers(run) or (run.flag('dropout') or 0) > 0:
        add('no_learning_phase',
            f'the first batch loss differs ({steps["reference_loss"][0]:.6g} vs '
            f'{steps["other_loss"][0]:.6g}) with the same initial weights and data: the '
            'forward pass differs, as when BatchNorm/Dropout run in inference mode',
            any(r.flag('feed_learning_phase') is False for r in (reference, other)),
            first_step_margin, judged_by='step')
        break
  found.sort(key=lambda p: (p['kind'] != 'setup', not p['corroborated']))
  seen, unique = set(), []
  for p in found:
    if p['name'] not in seen:
      seen.add(p['name'])
      unique.append(p)
  return unique
