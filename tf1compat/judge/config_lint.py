"""The config tier: what two runs' manifests say they computed with, compared field by
field (the lint), only where both runs record a field; the weights they started from and
the input batches they trained on, where both hashed them; the versions, reported.

Takes loaded runs (parity.Run); TensorFlow-free.
"""

import numpy as np

from tf1compat.runs import config

# Labels of the lint fields the diagnosis reads.
REGULARIZATION_FIELD = 'regularization losses in the loss'
FROM_LOGITS_FIELD = 'from_logits'
BN_MOMENTUM_FIELD = 'BatchNorm momentum'
ALGORITHM_FIELD = 'optimizer'
EPSILON_FIELD = 'optimizer epsilon'
MEAN_SQUARE_START_FIELD = 'optimizer mean-square start'
MOMENTUM_FORM_FIELD = 'optimizer momentum accumulates'
# What an optimizer computes with (optimizers.FIELDS): null in both runs where their
# algorithm has no such value, which is no field left unrecorded.
OPTIMIZER_FIELDS = (
    (ALGORITHM_FIELD, ('optimizer', 'algorithm')),
    ('optimizer learning_rate', ('optimizer', 'learning_rate')),
    ('optimizer beta_1', ('optimizer', 'beta_1')),
    ('optimizer beta_2', ('optimizer', 'beta_2')),
    (EPSILON_FIELD, ('optimizer', 'epsilon')),
    ('optimizer momentum', ('optimizer', 'momentum')),
    ('optimizer nesterov', ('optimizer', 'nesterov')),
    (MOMENTUM_FORM_FIELD, ('optimizer', 'momentum_accumulates')),
    ('optimizer rho', ('optimizer', 'rho')),
    ('optimizer centered', ('optimizer', 'centered')),
    (MEAN_SQUARE_START_FIELD, ('optimizer', 'mean_square_start')),
    ('optimizer initial accumulator', ('optimizer', 'initial_accumulator_value')),
    ('optimizer learning_rate_power', ('optimizer', 'learning_rate_power')),
    ('optimizer l1', ('optimizer', 'l1')),
    ('optimizer l2', ('optimizer', 'l2')),
    ('optimizer l2_shrinkage', ('optimizer', 'l2_shrinkage')),
    ('optimizer beta', ('optimizer', 'beta')),
)
# Manifest fields whose difference changes the math, as (label, path in run.json).
LINT_FIELDS = (
    *OPTIMIZER_FIELDS,
    ('loss', ('loss',)),
    (FROM_LOGITS_FIELD, ('from_logits',)),
    ('final activation', ('final_activation',)),
    ('batch size', ('batch_size',)),
    ('image size', ('image_size',)),
    ('seed', ('seed',)),
    ('data fingerprint', ('data', 'fingerprint')),
    ('number of classes', ('data', 'num_classes')),
    ('init-weights sha256', ('init_weights_sha256',)),
    ('batch_norm', ('flags', 'batch_norm')),
    ('dropout', ('flags', 'dropout')),
    ('shuffle buffer', ('flags', 'shuffle_buffer')),
    ('steps per epoch', ('flags', 'steps_per_epoch')),
    ('model', ('flags', 'model')),
    ('record parser', ('flags', 'features')),
    ('learning-rate schedule', ('optimizer', 'schedule')),
    (REGULARIZATION_FIELD, ('regularization_in_loss',)),
    ('regularization losses', ('model_summary', 'regularization_losses')),
    (BN_MOMENTUM_FIELD, ('model_summary', 'batch_norm_momentum')),
    ('BatchNorm epsilon', ('model_summary', 'batch_norm_epsilon')),
)
# Lint fields whose null is a value: a constant learning rate, no --init_weights file, the
# seed's model and record parser. In every other field null says the run did not record
# it (a team's model that is no image classifier has no image size, classes or
# from_logits; an optimizer without Adam's betas; a loss the recorder could not read):
# such a field is compared only where both runs record it, and listed as not compared.
NULL_IS_A_VALUE = frozenset({'learning-rate schedule', 'init-weights sha256', 'model',
                             'record parser'})
# Process settings that change the numbers, not the math (numerics.py): named by the
# lint, but a port may run with another one as long as the tiers pass (what the
# settings matrix measures); the numbers decide.
SETTING_FIELDS = (
    ('deterministic', ('deterministic',)),
    ('jit_compile', ('jit_compile',)),
    ('tf32', ('settings', 'tf32')),
    ('oneDNN', ('settings', 'onednn')),
    ('intra-op threads', ('settings', 'intra_op_threads')),
    ('inter-op threads', ('settings', 'inter_op_threads')),
    ('GPU', ('settings', 'gpu')),
)
# What a run computed with besides its flags: recorded in run.json's versions block and
# reported beside the lint (versions), never judged: a TensorFlow 1.15 run and its
# tf.compat.v1 twin on TensorFlow 2.21 differ in all of them by design. What changed
# between versions that matters to training shows in the fields that record its effect
# (the optimizer's epsilon, the kernels, BatchNorm's momentum, epsilon and fused kernel).
VERSION_FIELDS = (
    ('Python', ('versions', 'python')),
    ('numpy', ('versions', 'numpy')),
    ('TensorFlow', ('versions', 'tensorflow')),
    ('Keras implementation', ('versions', 'keras_implementation')),
    ('Keras', ('versions', 'keras')),
)
# Defaults that differ between Keras versions, recorded where the Keras says (Keras 2 has
# BatchNorm's `fused`; Keras 3 has none): named when both runs record them and differ,
# as a setting is; their rounding (BatchNorm's variance rule) is a framework difference
# the kernels block names and the tiers judge.
VERSION_DEFAULT_FIELDS = (
    ('BatchNorm fused kernel', ('model_summary', 'batch_norm_fused')),
)
# Both losses compute softmax cross-entropy on logits; the seed's "fix" changed nothing
# numerically. Listed, but not a mismatch.
EQUIVALENT_LOSSES = frozenset({'softmax_cross_entropy', 'keras_categorical'})

# Two learning rates within this relative difference are one rate (float32 evaluations of
# one schedule by the two frameworks differ by an ulp, 3e-7 measured).
LR_RTOL = 1e-5

START_FIELD = 'initial weights (step-0 snapshot)'
INPUT_FIELD = 'input batches'
def _get(manifest, keys):
  value = manifest
  for key in keys:
    if not isinstance(value, dict):
      return None
    value = value.get(key)
  return value


def lint(reference, other):
  """Differences that change the math (the config tier): [{field, reference, other, equivalent}].

  The weights the runs started from come first (a different start explains any later
  difference), then the input batches where both runs hashed them (INPUT_FIELD, with the
  first `step` whose batches differ), then the manifest fields both runs record
  (not_compared lists the others).
  """
  found = []
  starts = reference.start_digest(), other.start_digest()
  if None not in starts and starts[0] != starts[1]:
    found.append({'field': START_FIELD, 'reference': starts[0][:12], 'other': starts[1][:12],
                  'equivalent': False})
  digests = reference.input_digests(), other.input_digests()
  _, differing = _input_steps(digests)
  if differing:
    step = differing[0]
    found.append({'field': INPUT_FIELD, 'reference': digests[0][step][:12],
                  'other': digests[1][step][:12], 'equivalent': False, 'step': step})
  constant_rate = all(_constant_rate(run) for run in (reference, other))
  for label, a, b in _differing(reference, other, LINT_FIELDS):
    if _unrecorded(label, a, b):
      continue
    # TF1's and Keras' momentum forms are one algorithm under one constant rate.
    equivalent = (label == 'loss' and {a, b} <= EQUIVALENT_LOSSES) or (
        label == MOMENTUM_FORM_FIELD and constant_rate)
    found.append({'field': label, 'reference': a, 'other': b, 'equivalent': equivalent})
  found += [{'field': label, 'reference': a, 'other': b, 'equivalent': True, 'setting': True}
            for label, a, b in _differing(reference, other, SETTING_FIELDS)]
  found += [{'field': label, 'reference': a, 'other': b, 'equivalent': True,
             'version_default': True}
            for label, a, b in _differing(reference, other, VERSION_DEFAULT_FIELDS)
            if a is not None and b is not None]
  return found


def first_rate_change(rates):
  """The index of the first of `rates` (steps.csv's learning rates, NaN where a run records
  none) that is another rate than the first finite one (LR_RTOL), or None."""
  rates = np.asarray(rates, np.float64)
  finite = np.isfinite(rates)
  if not finite.any():
    return None
  changed = np.flatnonzero(finite & ~np.isclose(rates, rates[finite][0], rtol=LR_RTOL, atol=0))
  return int(changed[0]) if changed.size else None


def _constant_rate(run):
  """Whether `run` trained at one learning rate: steps.csv's rates where it has them (a
  recorded loop names no schedule), else its schedule."""
  rates = np.asarray(run.steps.get('learning_rate', []), np.float64)
  if np.isfinite(rates).any():
    return first_rate_change(rates) is None
  return _get(run.manifest, ('optimizer', 'schedule')) is None


def not_compared(reference, other):
  """The lint fields one run or both do not record (null where null is no value, or no
  step-0 snapshot): [{field, reference, other}], never a mismatch."""
  out = []
  starts = ['recorded' if 0 in run.snapshot_steps else None for run in (reference, other)]
  if None in starts:
    out.append({'field': START_FIELD, 'reference': starts[0], 'other': starts[1]})
  optimizer_labels = {label for label, _ in OPTIMIZER_FIELDS[1:]}
  for label, keys in LINT_FIELDS:
    a, b = _recorded(reference, label, keys), _recorded(other, label, keys)
    if _unrecorded(label, a, b) and not (label in optimizer_labels and a is None and b is None):
      out.append({'field': label, 'reference': a, 'other': b})
  return out


def _unrecorded(label, a, b):
  """Whether lint field `label`, valued `a` and `b` in the two runs, is one a run lacks."""
  return label not in NULL_IS_A_VALUE and (a is None or b is None)


def _recorded(run, label, keys):
  """What `run` records for lint field `label` (path `keys` in run.json), None where it
  records nothing."""
  value = _get(run.manifest, keys)
  if label == FROM_LOGITS_FIELD and value is None:
    # The runners' losses say whether they take logits (config.LOSS_TAKES_LOGITS): a
    # run.json naming one of them says it through its loss.
    value = config.LOSS_TAKES_LOGITS.get(run.manifest.get('loss'))
  return value


def inputs(reference, other):
  """Whether the runs trained on the same input batches, step by step, from the digests a
  recorded loop keeps (batches/digests.csv), over the steps both hashed:
  {compared_steps, first_differing_step, differing_steps, with_digests}. compared_steps
  is 0 where one run or neither hashed its batches; with_digests names those that did."""
  digests = reference.input_digests(), other.input_digests()
  common, differing = _input_steps(digests)
  return {'compared_steps': len(common),
          'first_differing_step': differing[0] if differing else None,
          'differing_steps': len(differing),
          'with_digests': [run.label for run, d in zip((reference, other), digests) if d]}


def _input_steps(digests):
  """(the steps both of two runs' {step: digest} hold, those whose digests differ), in order;
  none where either is None."""
  common = sorted(set(digests[0]) & set(digests[1])) if all(digests) else []
  return common, [step for step in common if digests[0][step] != digests[1][step]]


def versions(reference, other):
  """What each run computed with (VERSION_FIELDS): [{field, reference, other, same}],
  reported and never judged."""
  out = []
  for label, keys in VERSION_FIELDS:
    a, b = _get(reference.manifest, keys), _get(other.manifest, keys)
    out.append({'field': label, 'reference': a, 'other': b, 'same': a == b})
  return out


def _differing(reference, other, fields):
  """(label, reference value, other value) of each of `fields` the two manifests differ in."""
  for label, keys in fields:
    a, b = _recorded(reference, label, keys), _recorded(other, label, keys)
    if a != b:
      yield label, a, b
