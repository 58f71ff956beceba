"""Where inside one training step two codes part: their probes judged stage by stage.

Each run of a pair gives the probe of the same step (probes.py): our runners by a
replay of that step on one batch (train/replay_mode.py; the first, or where a later-acting
mistake parts the runs), a team's loop by the recorder's probe. The control, the
reference's code again from weights one ulp apart under another reduction order, gives
its probe too: its difference from the reference, item by item (each layer's output,
each loss part, each variable's gradient, update and state change), is what correct
code shows at that item. The other's difference is judged by
the step tier's rule: inside while at most envelope_multiple x max(the control's,
float32's rounding step); without a control, at most step_rtol. In the step's order
(input, forward layer by layer, loss, gradients, update, state), the first item outside
is where the codes part; the stages after it say what follows from it.

A catalogued pitfall says where it parts the codes (pitfalls.Where): the localization
agrees with it, disagrees (reported), or leaves it unconfirmed (every stage inside).
TensorFlow-free.
"""

import math

import numpy as np

from tf1compat.judge import calibration
from tf1compat.judge import pitfalls
from tf1compat.runs import errors
from tf1compat.runs import probes
from tf1compat.runs import run_files

# A gradient stage whose variables all differ by one factor (within this, relative) is
# a scaled gradient: a loss summed where it is averaged, replicas counted twice.
FACTOR_RTOL = 1e-3
# Two learning rates within this (relative) are one rate evaluated by two frameworks.
LR_RTOL = 1e-5
# Names shown in one sentence, at most.
_LISTED = 4
_STAGE_WORDS = {'input': 'the batch', 'forward': 'layer outputs', 'loss': 'loss parts',
                'gradients': 'gradients', 'update': 'updates', 'state': 'state changes'}


def load(path, run_dir=None, weight_map=None):
  """The probe at `path`, its variables renamed by `weight_map` (weight_map.WeightMap)
  where given and, for a recorded probe without them, its update and state stages taken
  from the snapshots of `run_dir` around its step."""
  probe = probes.load(path)
  step = probe.meta.get('step')
  snapshots = run_files.snapshot_steps_in(run_dir) if run_dir else []
  if not probe.items('update') and step and {step - 1, step} <= set(snapshots):
    before, after = (run_files.load_weights(run_files.snapshot_path(run_dir, s))
                     for s in (step - 1, step))
    changes = {key: after[key].astype(np.float64) - before[key] for key in before}
    trained = probe.items('gradients')
    probe.stages['update'] = {key: changes[key] for key in trained if key in changes}
    probe.stages['state'] = {key: value for key, value in changes.items() if key not in trained}
  if weight_map is not None:
    for stage in ('gradients', 'update', 'state'):
      renamed = weight_map.rename_all(list(probe.items(stage)), path)
      probe.stages[stage] = {renamed[key]: value for key, value in probe.items(stage).items()}
    # Layer outputs keep the names the loop gave them unless a rule renames them too.
    probe.stages['forward'] = {weight_map.rename(name) or name: value
                               for name, value in probe.items('forward').items()}
  return probe


def difference(a, b):
  """||a - b|| / max(||a||, ||b||) (calibration.variable_difference); inf for two shapes."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    return math.inf
  return calibration.variable_difference(a, b)


def _ordered(probe, stage):
  items = probe.items(stage)
  if stage != 'loss':
    return items
  return {part: items[part] for part in probes.LOSS_PARTS if part in items}


def _judge_stage(stage, reference, other, control, tol, excluded):
  """The rows of one stage: each item of the reference paired with the other's."""
  theirs, controls = other.items(stage), control.items(stage) if control else {}
  rows, unpaired = [], sorted(set(theirs) - set(reference.items(stage)))
  for name, ours in _ordered(reference, stage).items():
    if name not in theirs:
      unpaired.append(name)
      continue
    value = difference(ours, theirs[name])
    row = {'name': name, 'difference': value, 'control': None,
           'excluded': (stage, name) in excluded}
    if control is not None:
      row['control'] = difference(ours, controls[name]) if name in controls else 0.0
      scale = max(row['control'], calibration.ROUNDING_FLOOR)
      row['limit'] = tol.envelope_multiple * scale
      row['ratio'] = value / scale
    else:
      row['limit'] = tol.step_rtol
      row['ratio'] = value / tol.step_rtol if tol.step_rtol else math.inf
    row['outside'] = value > row['limit'] and not row['excluded']
    rows.append(row)
  return rows, sorted(unpaired)


def _gradient_factor(reference, other, rows):
  """The one factor by which the other's gradients are the reference's, or None."""
  outside = [row['name'] for row in rows if row['outside']]
  if not outside or len(outside) != len(rows):
    return None
  ours, theirs = reference.items('gradients'), other.items('gradients')
  norms = [(float(np.linalg.norm(theirs[n])), float(np.linalg.norm(ours[n]))) for n in outside]
  if any(b == 0 for _, b in norms):
    return None
  factors = np.array([a / b for a, b in norms])
  factor = float(np.median(factors))
  if np.max(np.abs(factors / factor - 1)) > FACTOR_RTOL:
    return None
  scaled = all(difference(factor * ours[row['name']], theirs[row['name']]) <= row['limit']
               for row in rows)
  return factor if scaled else None


def _fmt(value):
  return f'{value:.2g}'


def _control_words(row, calibrated):
  if not calibrated:
    return f'(limit {_fmt(row["limit"])}, uncalibrated)'
  return (f'where the control\'s differs {_fmt(row["control"])} ({_fmt(row["ratio"])}x; '
          f'limit {_fmt(row["limit"])})')


def _first_sentence(first, reference, other, stages, calibrated, factor):
  """What the first item outside says, in words."""
  stage, name = first['stage'], first['name']
  words = _control_words(first, calibrated)
  if stage == 'input':
    return (f'input: the batches the two pipelines give differ ({name} '
            f'{_fmt(first["difference"])}): the data part before the step')
  if stage == 'forward':
    kinds = reference.meta.get('layer_kinds', {}).get(name) or ['?']
    before = stages['forward']['rows'].index(next(
        row for row in stages['forward']['rows'] if row['name'] == name))
    return (f'forward: the output of layer `{name}` ({kinds[0]}) differs '
            f'{_fmt(first["difference"])} {words}; the {before} layer output(s) before it '
            'are inside')
  if stage == 'loss':
    ours, theirs = reference.items('loss')[name], other.items('loss')[name]
    part = 'the loss' if name == 'total' else f'its {name} part'
    return (f'loss: {part} differs {_fmt(first["difference"])} ({float(ours):.6g} vs '
            f'{float(theirs):.6g}) {words}; every layer output is inside')
  rows = stages[stage]['rows']
  outside = [row['name'] for row in rows if row['outside']]
  count = f'{len(outside)} of {len(rows)}'
  if stage == 'gradients':
    sentence = (f'gradients: forward and loss inside, {count} variables\' gradients differ, '
                f'first `{name}` {_fmt(first["difference"])} {words}')
    if factor is not None:
      sentence += f'; every gradient is the reference\'s times {factor:.4g} (1/{1 / factor:.4g})'
    return sentence
  if stage == 'update':
    sentence = (f'update: gradients inside, the optimizer\'s update differs for {count} '
                f'variables, first `{name}` {_fmt(first["difference"])} {words}: the optimizer '
                '(its epsilon, betas, learning rate or kernel)')
    rates = [probe.meta.get('learning_rate') for probe in (reference, other)]
    if None not in rates and abs(rates[0] - rates[1]) > LR_RTOL * abs(rates[0]):
      sentence += f'; the learning rates differ: {rates[0]:.6g} vs {rates[1]:.6g}'
    return sentence
  return (f'state: the trainables\' updates are inside, the state after the step differs '
          f'for {count} variables, first `{name}` {_fmt(first["difference"])} {words}')


def localize_pair(reference, other, control, tol, excluded=()):
  """Where the probes `reference` and `other` part, judged against `control`'s (None:
  uncalibrated); `excluded`: (stage, name) of the items a known framework difference
  changes, reported not judged.

  Returns parity.json's 'where' of a pair: {judged, calibrated, step, stages: {stage:
  {rows, outside, unpaired, excluded}}, first (the first row outside, with its stage, or
  None), factor (gradients: the one factor, or None), summary, then}.
  """
  steps = {probe.meta.get('step') for probe in (reference, other, control) if probe}
  if len(steps) != 1:
    return {'judged': False, 'reason': f'the probes are of different steps ({sorted(steps)})'}
  step = steps.pop()
  stages, first, factor = {}, None, None
  for stage in probes.STAGES:
    rows, unpaired = _judge_stage(stage, reference, other, control, tol, excluded)
    outside = [row['name'] for row in rows if row['outside']]
    stages[stage] = {'rows': rows, 'outside': outside, 'unpaired': unpaired,
                     'excluded': [row['name'] for row in rows if row['excluded']]}
    if first is None and outside:
      first = {'stage': stage, **next(row for row in rows if row['outside'])}
      if stage == 'gradients':
        factor = _gradient_factor(reference, other, rows)
  calibrated = control is not None
  judged = sum(len(s['rows']) for s in stages.values())
  reported = sum(len(s['excluded']) for s in stages.values())
  if first is None:
    summary = (f'every stage of step {step} is inside the envelope ({judged} items'
               + (f', {reported} of them reported, not judged: a known framework difference'
                  if reported else '') + '): the codes do not part within the step')
    then = []
  else:
    summary = _first_sentence(first, reference, other, stages, calibrated, factor)
    later = probes.STAGES[probes.STAGES.index(first['stage']) + 1:]
    then = [f'{stage} ({len(stages[stage]["outside"])} of {len(stages[stage]["rows"])} '
            f'{_STAGE_WORDS[stage]}: {_listed(stages[stage]["outside"])})'
            for stage in later if stages[stage]['outside']]
  return {'judged': True, 'calibrated': calibrated, 'step': step,
          'stages': stages, 'first': first, 'factor': factor, 'summary': summary, 'then': then,
          'items': judged}


def _listed(names):
  more = f' and {len(names) - _LISTED} more' if len(names) > _LISTED else ''
  return ', '.join(names[:_LISTED]) + more


_STAGE_PLACES = {'input': 'in the input', 'forward': 'in the forward pass',
                 'loss': 'in the loss', 'gradients': 'in the gradients',
                 'update': 'in the optimizer\'s update', 'state': 'in the state after the step'}


def _expected_words(where):
  if where.stage is None:
    return 'outside one step'
  words = _STAGE_PLACES[where.stage]
  if where.layers:
    words += ' at the ' + ' or '.join(
        'output layer' if kind == 'output' else f'first {kind} layer' for kind in where.layers)
  if where.part:
    words += f' (its {where.part} part)'
  return words


def _found_words(where):
  first = where['first']
  return ('no stage' if first is None
          else f'{_STAGE_PLACES[first["stage"]]} at `{first["name"]}`')


def _at_expected_layer(expected, reference, name):
  """Whether `name` is the first layer (the reference's order) of the kinds expected."""
  kinds = reference.meta.get('layer_kinds', {})
  for layer in reference.items('forward'):
    matches = ('output' in expected.layers and layer == reference.meta.get('output_layer')) or (
        set(expected.layers) & set(kinds.get(layer, ())))
    if matches:
      return layer == name
  return False


def agreement(named, where, reference):
  """How the localization `where` stands to each catalogued problem in `named` (the
  pair's pitfalls): [{name, expected, verdict, note}]. The verdict: 'agrees' (the codes
  part where it says), 'downstream' (they differ there too, but part earlier),
  'disagrees' (another difference is at work) or 'unconfirmed' (every stage inside)."""
  out = []
  problems = {**pitfalls.SETUP_PROBLEMS, **pitfalls.PITFALLS}
  for entry in named:
    expected = problems[entry['name']].where
    first = where['first']
    if expected.stage is None:
      verdict = 'agrees' if first is None else 'disagrees'
    elif first is None:
      verdict = 'unconfirmed'
    elif first['stage'] != expected.stage:
      later = probes.STAGES.index(expected.stage) > probes.STAGES.index(first['stage'])
      verdict = ('downstream' if later and where['stages'][expected.stage]['outside']
                 else 'disagrees')
    elif expected.layers:
      verdict = ('agrees' if _at_expected_layer(expected, reference, first['name'])
                 else 'disagrees')
    elif expected.part and first['name'] in probes.LOSS_PARTS[:2]:
      verdict = 'agrees' if first['name'] == expected.part else 'disagrees'
    else:
      verdict = 'agrees'
    notes = {
        'agrees': f'{entry["name"]} parts the codes {_expected_words(expected)}, as the replay '
                  'finds',
        'disagrees': f'{entry["name"]} would part the codes {_expected_words(expected)}, the '
                     f'replay finds {_found_words(where)}: another difference may be at work',
        'downstream': f'{entry["name"]} would part the codes {_expected_words(expected)}; they '
                      f'differ there too, but part earlier: {_found_words(where)}',
        'unconfirmed': f'{entry["name"]} would part the codes {_expected_words(expected)}; the '
                       'replay finds every stage inside (a difference within the control\'s, '
                       'such as one hidden in Dropout masks drawn anew)'}
    note = notes[verdict]
    reported = expected.stage and where['stages'][expected.stage]['excluded']
    if verdict == 'unconfirmed' and reported:
      worst = max((row for row in where['stages'][expected.stage]['rows'] if row['excluded']),
                  key=lambda row: row['difference'])
      note = (f'{entry["name"]} would part the codes {_expected_words(expected)}, which a known '
              f'framework difference keeps from being judged there: `{worst["name"]}` differs '
              f'{_fmt(worst["difference"])}, the control\'s {_fmt(worst["control"] or 0)}')
    out.append({'name': entry['name'], 'expected': _expected_words(expected),
                'verdict': verdict, 'note': note})
  return out


def excluded_items(differences, reference):
  """(stage, name) of the items a pair's known framework differences
  (framework_differences.known_differences) change, reported not judged.

  bn_moving_variance: the moving variances' change. adam_rounding: every update (two Adam
  kernels round the step apart, as the step tier reports and does not judge; a port's
  own epsilon still shows in the numbers). dropout_masks: the codes draw other
  masks, so what the masks feed differs by their draw, not by the code: the layer
  outputs after the first Dropout layer, the loss, every gradient and update, and the
  state of the layers after it. The Dropout layer's own output stays judged: a layer
  that drops nothing in one code stands far outside a control that draws other masks.
  """
  excluded = set()
  if 'bn_moving_variance' in differences:
    excluded |= {('state', name) for name in reference.items('state')
                 if name.endswith('moving_variance')}
  if 'adam_rounding' in differences:
    excluded |= {('update', name) for name in reference.items('update')}
  if 'dropout_masks' in differences:
    layers = list(reference.items('forward'))
    kinds = reference.meta.get('layer_kinds', {})
    dropouts = [i for i, layer in enumerate(layers) if 'Dropout' in kinds.get(layer, ())]
    if dropouts:
      after = set(layers[dropouts[0] + 1:])
      excluded |= {('forward', layer) for layer in after}
      excluded |= {(stage, name) for stage in ('loss', 'gradients', 'update')
                   for name in reference.items(stage)}
      excluded |= {('state', name) for name in reference.items('state')
                   if name.split('/')[0] in after}
  return excluded


def not_localized(reason):
  """The 'where' of a pair that cannot be localized, and why."""
  return {'judged': False, 'reason': reason}


def localize_report(report, found, tol, weight_maps=None, pairs=None):
  """Adds 'where' to the pairs of parity report `report` (those whose indices are in
  `pairs`; None: all). `found` maps each run directory of the report (the reference,
  the control, the others) to its probe's path, or to a errors.UsageError saying why it
  has none; `weight_maps`: {run directory: weight_map.WeightMap} as the comparison
  renamed them."""
  maps = weight_maps or {}

  def loaded(run_dir):
    path = found.get(run_dir)
    if path is None or isinstance(path, errors.UsageError):
      raise path or errors.UsageError(f'{run_dir}: no probe')
    return load(path, run_dir, maps.get(run_dir))

  # The control that differs once: the per-step one's first step is the reference's.
  control_dir = (report.get('controls') or [None])[0]
  for index, pair in enumerate(report['pairs']):
    if pairs is not None and index not in pairs:
      continue
    try:
      reference = loaded(pair['reference'])
      control = loaded(control_dir) if control_dir else None
      other = loaded(pair['other'])
    except errors.UsageError as e:
      pair['where'] = not_localized(str(e))
      continue
    differences = pair['framework_differences']
    if 'dropout_masks' in differences and control is None:
      pair['where'] = not_localized('the codes draw different Dropout masks, which only a '
                                    'control (other masks) calibrates; give one')
      continue
    where = localize_pair(reference, other, control, tol,
                          excluded_items(differences, reference))
    if where['judged']:
      where['pitfalls'] = agreement(pair['pitfalls'], where, reference)
    pair['where'] = where
