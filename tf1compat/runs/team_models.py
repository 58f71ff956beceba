"""What the recorder reads from a team's code: optimizer fields, model fields, weights.

The loops being compared are a team's own (a TF1 Session, tf-keras, Keras 3): these
helpers read an optimizer's hyper-parameters and a model's weights as the recorder names
them (snapshot keys "<layer>/<variable>"), and give two loops the same start (an
initial-weights .npz written by one and loaded by the other, through a weight map where
their names differ). They work on the objects the loop passes in and import no
TensorFlow themselves, so the recorder still runs beside a legacy loop.
"""

import numbers
import os
import re
import sys

from tf1compat.runs import errors
from tf1compat.runs import nudge
from tf1compat.runs import optimizers
from tf1compat.runs import run_files
from tf1compat.runs import weight_map as weight_maps

# RunConfig's own optimizer fields; every other value goes into its hyperparameters.
_ADAM_FIELDS = ('beta_1', 'beta_2', 'epsilon')
# tf.compat.v1.GraphKeys' TRAINABLE_VARIABLES and GLOBAL_VARIABLES, named without
# importing TensorFlow.
_TRAINABLE_VARIABLES = 'trainable_variables'
_GLOBAL_VARIABLES = 'variables'
# BatchNorm's moving statistics: not trainable, yet part of the model (tiers.py checks
# that they move).
_MOVING_STATISTICS = ('moving_mean', 'moving_variance')
# TensorFlow names a variable by its op and output ('hidden/kernel:0'); a snapshot key
# is "<layer>/<variable>" (runlog's contract), without the output index.
_OUTPUT_INDEX = re.compile(r':\d+$')



def loaded_module(name, who):
  """The module `name` as the team's process imported it (TensorFlow, Keras): the recorder
  works with the team's own and imports none. errors.UsageError for `who` where it is
  not imported yet."""
  module = sys.modules.get(name)
  if module is None:
    raise errors.UsageError(f'{who}: import {name} and build the model first; the recorder '
                            'reads what the job built')
  return module


def _hyper_parameter(name, value):
  if isinstance(value, numbers.Real):
    return optimizers.short(value)
  raise errors.UsageError(f'optimizer_fields: the optimizer\'s {name} is a {type(value).__name__}, '
                          f'not a number; declare RunConfig({name}=...) yourself')


def optimizer_fields(optimizer):
  """RunConfig's optimizer fields as `optimizer` really has them: a Keras optimizer
  (Keras 3 or tf-keras) or a tf.compat.v1.train optimizer such as AdamOptimizer, read by
  optimizers.describe (what the framework fixes without an argument included).

  Returns {optimizer, algorithm, learning_rate, beta_1, beta_2, epsilon (those it has),
  hyperparameters (the algorithm's other values)}.
  """
  block = optimizers.describe(optimizer)
  fields = {'optimizer': block['name'], 'algorithm': block['algorithm']}
  if hasattr(optimizer, 'get_config'):
    rate = optimizer.get_config().get('learning_rate')
    if isinstance(rate, dict):
      # A Keras schedule: its rate at the optimizer's step, as a TF1 job's hook reads the
      # rate its kernel applies first.
      rate = float(optimizer.learning_rate)
  else:
    rate = next((getattr(optimizer, name) for name in ('_learning_rate', '_lr')
                 if hasattr(optimizer, name)), None)
  if rate is not None:
    fields['learning_rate'] = _hyper_parameter('learning_rate', rate)
  for name in _ADAM_FIELDS:
    if block.get(name) is not None:
      fields[name] = block[name]
  others = {name: value for name, value in block.items()
            if name not in ('name', 'algorithm', 'learning_rate', *_ADAM_FIELDS)}
  if others:
    fields['hyperparameters'] = others
  return fields


def keras_model_fields(model):
  """RunConfig's model fields as a Keras model (Keras 3 or tf-keras) really has them:
  {final_activation, batch_norm, dropout}."""
  activation = getattr(model.layers[-1], 'activation', None)
  name = getattr(activation, '__name__', 'linear')
  layers = [type(layer).__name__ for layer in model.layers]
  return {'final_activation': 'none' if name == 'linear' else name,
          'batch_norm': any('BatchNormalization' in kind for kind in layers),
          'dropout': max([float(layer.rate) for layer in model.layers
                          if type(layer).__name__ == 'Dropout'], default=0.0)}


def variable_name(variable):
  """The snapshot key of a variable: its Keras 3 path ('sequential/dense/kernel'), or its
  TF1 or tf-keras name without the output index ('hidden/kernel:0' -> 'hidden/kernel')."""
  return getattr(variable, 'path', None) or _OUTPUT_INDEX.sub('', variable.name)


def keras_weights(model):
  """{variable name: array} of every weight of a Keras 3 or tf-keras model (in a TF1
  graph-mode process too: model.get_weights() reads them through the session)."""
  return dict(zip((variable_name(v) for v in model.weights), model.get_weights()))


def _checked_names(names, weights, where):
  unmatched = (('variables without a weight', set(names) - set(weights)),
               ('weights of no variable', set(weights) - set(names)))
  problems = [f'{what}: {weight_maps.listed(sorted(keys))}' for what, keys in unmatched if keys]
  if problems:
    raise errors.UsageError(f'{where}: {"; ".join(problems)}; load the weights under these '
                            'names with a weight map (team_models.load_weights(path, weight_map))')


def set_keras_weights(model, weights):
  """Sets every weight of a Keras model from {variable name: array} (keras_weights' names)."""
  names = [variable_name(v) for v in model.weights]
  _checked_names(names, weights, f'model {model.name}')
  model.set_weights([weights[name] for name in names])


def _session_variables(session, variables):
  if variables is not None:
    return list(variables)
  trainable = session.graph.get_collection(_TRAINABLE_VARIABLES)
  # By identity: a variable's == may compare values.
  known = {id(v) for v in trainable}
  return trainable + [v for v in session.graph.get_collection(_GLOBAL_VARIABLES)
                      if variable_name(v).endswith(_MOVING_STATISTICS) and id(v) not in known]


def session_weights(session, variables=None):
  """{variable name: array} of a TF1 Session's `variables` (default: the graph's
  trainable variables and BatchNorm's moving statistics), named by variable_name."""
  variables = _session_variables(session, variables)
  return dict(zip((variable_name(v) for v in variables), session.run(variables)))


def assign_session_weights(session, weights, variables=None):
  """Loads {variable name: array} into a TF1 Session's `variables` (default: as
  session_weights), without adding ops to the graph."""
  variables = _session_variables(session, variables)
  _checked_names([variable_name(v) for v in variables], weights, 'the session')
  for variable in variables:
    variable.load(weights[variable_name(variable)], session)


def nudge_session(session, step, variables=None, seed=nudge.NUDGE_SEED):
  """A per-step control's nudge, for a loop to call after training step `step`: every
  non-zero weight of a TF1 Session's `variables` (default: as session_weights) one ulp up
  or down at random, drawn from (`seed`, `step`) so that a resumed run draws the same.

  The legacy loop run again with it rounds apart from the reference at every step, as a
  port with other kernels does, which a control that differs only at its start does not
  measure (docs/parity.md, "Three kinds of control"); pass it to compare_runs as a second
  --control."""
  weights = session_weights(session, variables)
  assign_session_weights(session, nudge.nudge_weights(weights, (seed, step)), variables)


def nudge_keras_model(model, step, seed=nudge.NUDGE_SEED):
  """nudge_session for a Keras model's weights (keras_weights)."""
  set_keras_weights(model, nudge.nudge_weights(keras_weights(model), (seed, step)))


# Initial weights are written as weight snapshots are, {name: array} in an .npz.
save_weights = run_files.save_weights


def load_weights(path, weight_map=None):
  """{name: array} of an initial-weights .npz; with `weight_map` (a weight_map.WeightMap,
  or a file or inline rules) renamed to this loop's names."""
  weights = run_files.load_weights(path)
  if weight_map is None:
    return weights
  if not isinstance(weight_map, weight_maps.WeightMap):
    weight_map = weight_maps.WeightMap.load(weight_map)
  return weight_map.apply(weights, path)


def start_from(model, run_dir, weight_map=None):
  """Sets a Keras model's weights to the step-0 snapshot of the recorded run `run_dir`
  (the legacy job's initial weights), renamed by `weight_map` (a file or rules) to the
  model's names; returns them."""
  weights = load_weights(run_files.snapshot_path(run_dir, 0), weight_map)
  set_keras_weights(model, weights)
  return weights


def control_start(path, control_path=None):
  """Writes the start of a control run: the weights of `path` moved by one ulp each
  (nudge.nudge_weights); returns its path (default: beside it, '-ulp.npz').

  Run the legacy loop again from it and pass that run to compare_runs --control: its
  divergence calibrates the tolerances.
  """
  control_path = control_path or f'{os.path.splitext(path)[0]}-ulp.npz'
  save_weights(control_path, nudge.nudge_weights(run_files.load_weights(path)))
  return control_path
