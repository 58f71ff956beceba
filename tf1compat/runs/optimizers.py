"""The optimizers and learning-rate schedules a run trains with, in one form for every framework.

run.json's optimizer block names the algorithm and every value it computes with, as
`describe` reads them off a tf.compat.v1.train optimizer or a Keras one (Keras 3 or
tf-keras), whichever made the run: what the constructor was given and what the framework
fixes without an argument (RMSProp's mean square starting at one in TF1 and at zero in
Keras; the momentum accumulator holding gradients in TF1 and rate-scaled steps in Keras;
Adagrad's epsilon, none in TF1). The config lint compares these field by field. The
runners' --optimizer and --lr_schedule resolve here too (`hyperparameters`,
`schedule_manifest`). TensorFlow-free; importable on Python 3.7.
"""

import numbers

OPTIMIZERS = ('adam', 'sgd', 'momentum', 'nesterov', 'rmsprop', 'rmsprop_momentum',
              'rmsprop_centered', 'adagrad', 'adadelta', 'ftrl')
SCHEDULES = ('constant', 'exponential', 'piecewise', 'polynomial', 'cosine')
# The algorithm each --optimizer runs, and what it sets besides the flags.
ALGORITHMS = {'adam': ('adam', {}), 'sgd': ('sgd', {}),
              'momentum': ('momentum', {'nesterov': False}),
              'nesterov': ('momentum', {'nesterov': True}),
              'rmsprop': ('rmsprop', {'momentum': 0.0, 'centered': False}),
              'rmsprop_momentum': ('rmsprop', {'momentum': 0.9, 'centered': False}),
              'rmsprop_centered': ('rmsprop', {'momentum': 0.0, 'centered': True}),
              'adagrad': ('adagrad', {}), 'adadelta': ('adadelta', {}), 'ftrl': ('ftrl', {})}
# What each algorithm computes with, as run.json's optimizer block names it.
FIELDS = {
    'adam': ('beta_1', 'beta_2', 'epsilon'),
    'sgd': (),
    'momentum': ('momentum', 'nesterov', 'momentum_accumulates'),
    'rmsprop': ('rho', 'momentum', 'centered', 'epsilon', 'mean_square_start'),
    'adagrad': ('initial_accumulator_value', 'epsilon'),
    'adadelta': ('rho', 'epsilon'),
    'ftrl': ('learning_rate_power', 'initial_accumulator_value', 'l1', 'l2', 'l2_shrinkage',
             'beta'),
}
# momentum_accumulates: TF1's ApplyMomentum keeps the sum of gradients and multiplies it
# by the current rate (var -= lr * accum); Keras' SGD keeps the sum of rate-scaled steps
# (m = momentum * m - lr * g; var += m). One constant rate makes them equal.
GRADIENTS, STEPS = 'gradients', 'steps'
# What each framework computes with when the code leaves a value out: the constructors'
# defaults (TensorFlow 1.15's and 2.21's tf.compat.v1.train alike, Keras 3.15's and
# tf-keras' alike; tests/test_optimizers.py reads them from the installed signatures) and
# what no argument sets (rmsprop.py creates the mean square with ones_initializer, Keras
# with zeros; TF1's ApplyAdagrad has no epsilon).
DEFAULTS = {
    'tf1': {
        'adam': {'beta_1': 0.9, 'beta_2': 0.999, 'epsilon': 1e-8},
        'momentum': {'momentum': 0.9, 'nesterov': False, 'momentum_accumulates': GRADIENTS},
        'rmsprop': {'rho': 0.9, 'momentum': 0.0, 'centered': False, 'epsilon': 1e-10,
                    'mean_square_start': 1.0},
        'adagrad': {'initial_accumulator_value': 0.1, 'epsilon': 0.0},
        'adadelta': {'rho': 0.95, 'epsilon': 1e-8},
        'ftrl': {'learning_rate_power': -0.5, 'initial_accumulator_value': 0.1, 'l1': 0.0,
                 'l2': 0.0, 'l2_shrinkage': 0.0, 'beta': 0.0},
    },
    'keras': {
        'adam': {'beta_1': 0.9, 'beta_2': 0.999, 'epsilon': 1e-7},
        'momentum': {'momentum': 0.9, 'nesterov': False, 'momentum_accumulates': STEPS},
        'rmsprop': {'rho': 0.9, 'momentum': 0.0, 'centered': False, 'epsilon': 1e-7,
                    'mean_square_start': 0.0},
        'adagrad': {'initial_accumulator_value': 0.1, 'epsilon': 1e-7},
        'adadelta': {'rho': 0.95, 'epsilon': 1e-7},
        'ftrl': {'learning_rate_power': -0.5, 'initial_accumulator_value': 0.1, 'l1': 0.0,
                 'l2': 0.0, 'l2_shrinkage': 0.0, 'beta': 0.0},
    },
}
# The optimizer flags each --optimizer takes (every other value is the framework's; Adam's
# betas have flags of their own). Adagrad's epsilon is Keras' (TF1's has none: 0).
FLAGS = {'adam': ('epsilon',), 'sgd': (), 'momentum': ('momentum',), 'nesterov': ('momentum',),
         'rmsprop': ('rho', 'epsilon'), 'rmsprop_momentum': ('rho', 'momentum', 'epsilon'),
         'rmsprop_centered': ('rho', 'epsilon'), 'adagrad': ('epsilon',),
         'adadelta': ('rho', 'epsilon'), 'ftrl': ()}
OPTIMIZER_FLAGS = ('momentum', 'rho', 'epsilon')
# The class names of each algorithm, TF1's and Keras' (a subclass is read by its base).
_CLASSES = {'AdamOptimizer': 'adam', 'Adam': 'adam', 'GradientDescentOptimizer': 'sgd',
            'SGD': 'sgd', 'MomentumOptimizer': 'momentum', 'RMSPropOptimizer': 'rmsprop',
            'RMSprop': 'rmsprop', 'AdagradOptimizer': 'adagrad', 'Adagrad': 'adagrad',
            'AdadeltaOptimizer': 'adadelta', 'Adadelta': 'adadelta', 'FtrlOptimizer': 'ftrl',
            'Ftrl': 'ftrl'}
_ALGORITHM_OF = {**{name.lower(): algorithm for name, algorithm in _CLASSES.items()},
                 **{algorithm: algorithm for algorithm in FIELDS}}
# Each algorithm's slots under one name for both frameworks: (name, TF1's slot name
# (get_slot_names), Keras 3's attributes holding them, the first non-empty one). An
# optimizer state (run_files.save_optimizer_state) names a slot 'slot/NAME/VARIABLE KEY'.
SLOTS = {
    'adam': (('m', 'm', ('_momentums',)), ('v', 'v', ('_velocities',))),
    'sgd': (),
    'momentum': (('accum', 'momentum', ('momentums',)),),
    'rmsprop': (('ms', 'rms', ('_velocities',)),
                ('mom', 'momentum', ('_momentums', '_tf1_momentums')),
                ('mg', 'mg', ('_average_gradients',))),
    'adagrad': (('accum', 'accumulator', ('_accumulators',)),),
    'adadelta': (('accum', 'accum', ('_accumulated_grads',)),
                 ('accum_update', 'accum_update', ('_accumulated_delta_vars',))),
    'ftrl': (('accum', 'accum', ('_accumulators',)), ('linear', 'linear', ('_linears',))),
}
# Adam's beta powers, the scalars TF1's AdamOptimizer (and tf1_kernels.TF1Adam) keep.
BETA_POWERS = ('beta_1_power', 'beta_2_power')


def slot_name(algorithm, tf1_name):
  """The one name of TF1's slot `tf1_name` of `algorithm`, or None."""
  return next((name for name, tf1, _ in SLOTS.get(algorithm, ()) if tf1 == tf1_name), None)


# TF1 optimizers keep their constructor's arguments as private attributes.
_TF1_ATTRIBUTES = {'learning_rate': ('_learning_rate', '_lr'), 'beta_1': ('_beta1',),
                   'beta_2': ('_beta2',), 'epsilon': ('_epsilon',), 'momentum': ('_momentum',),
                   'nesterov': ('_use_nesterov',), 'rho': ('_decay', '_rho'),
                   'centered': ('_centered',),
                   'initial_accumulator_value': ('_initial_accumulator_value',),
                   'learning_rate_power': ('_learning_rate_power',),
                   'l1': ('_l1_regularization_strength',), 'l2': ('_l2_regularization_strength',),
                   'l2_shrinkage': ('_l2_shrinkage_regularization_strength',), 'beta': ('_beta',)}
# Keras' get_config() names, where they are not the block's.
_KERAS_NAMES = {'l1': 'l1_regularization_strength', 'l2': 'l2_regularization_strength',
                'l2_shrinkage': 'l2_shrinkage_regularization_strength'}
# Float32 hyper-parameters read back as float64 carry noise past the 7th digit (Keras'
# get_config gives 0.0010000000474974513 for 0.001): run.json holds, and the lint
# compares, 7 significant digits.
_FLOAT32_DIGITS = 7


def algorithm_of(class_name):
  """The algorithm a TF1 or Keras optimizer class of this name runs (or the algorithm's own
  name, any case), or None (a Keras SGD runs 'sgd' here; `algorithm` reads its momentum)."""
  name = str(class_name).rsplit('.', 1)[-1].lower()
  return _ALGORITHM_OF.get(name)


def algorithm(optimizer):
  """The algorithm `optimizer` (an object) runs, from its class or the first base class
  known (a Keras SGD with momentum runs 'momentum'), or None."""
  for cls in type(optimizer).__mro__:
    name = algorithm_of(cls.__name__)
    if name:
      if name == 'sgd' and _keras_config(optimizer).get('momentum'):
        return 'momentum'
      return name
  return None


def framework(optimizer):
  """'keras' for a Keras optimizer (Keras 3 or tf-keras: it has get_config), else 'tf1'
  (tf.compat.v1.train's keep their arguments as attributes)."""
  return 'keras' if hasattr(optimizer, 'get_config') else 'tf1'


def _keras_config(optimizer):
  return optimizer.get_config() if framework(optimizer) == 'keras' else {}


def short(value):
  """A hyperparameter as run.json holds it: a float at float32's precision, a bool or a
  string as it is."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return value
  return float(f'{float(value):.{_FLOAT32_DIGITS}g}')


def describe(optimizer, learning_rate=None):
  """run.json's optimizer block of `optimizer`, a tf.compat.v1.train or Keras optimizer
  (a loss-scale wrapper is read through): {name, algorithm, learning_rate, and the
  algorithm's FIELDS}. `learning_rate`: the rate where the optimizer holds a tensor or a
  schedule (None: read it off the optimizer, None where it is no number).

  What the object does not hold comes from its framework's DEFAULTS; an optimizer class
  that computes otherwise says so in attributes of the same names
  (`mean_square_start`, `momentum_accumulates`, tf1_kernels' classes).
  """
  optimizer = getattr(optimizer, 'inner_optimizer', optimizer)
  kind, name = framework(optimizer), algorithm(optimizer)
  if kind == 'tf1':
    values = {}
    for field, attributes in _TF1_ATTRIBUTES.items():
      for attribute in attributes:
        if isinstance(getattr(optimizer, attribute, None), (numbers.Real, bool)):
          values[field] = getattr(optimizer, attribute)
          break
  else:
    config = _keras_config(optimizer)
    values = {field: config[_KERAS_NAMES.get(field, field)]
              for field in _TF1_ATTRIBUTES
              if isinstance(config.get(_KERAS_NAMES.get(field, field)), (numbers.Real, bool))}
  block = {'name': type(optimizer).__name__, 'algorithm': name,
           'learning_rate': short(learning_rate if learning_rate is not None
                                  else values.get('learning_rate'))}
  values['mean_square_start'] = _mean_square_start(optimizer)
  values['momentum_accumulates'] = getattr(optimizer, 'momentum_accumulates', None)
  defaults = DEFAULTS[kind].get(name, {})
  for field in FIELDS.get(name, ()):
    value = values.get(field)
    block[field] = short(defaults.get(field) if value is None else value)
  return block


def _mean_square_start(optimizer):
  """Where a Keras RMSprop's mean square starts: as the class says (tf1_kernels.TF1RMSprop),
  else what a built optimizer's `velocity` variables hold before its first step (a port
  that assigned TF1's ones after build), else None (the framework's default)."""
  declared = getattr(optimizer, 'mean_square_start', None)
  if declared is not None:
    return declared
  velocities = getattr(optimizer, '_velocities', None)
  iterations = getattr(optimizer, 'iterations', None)
  if not velocities or iterations is None or int(_numpy(iterations)) != 0:
    return None
  starts = {float(value) for v in velocities if v is not None
            for value in set(_numpy(v).ravel().tolist())}
  return starts.pop() if len(starts) == 1 else None


def _numpy(variable):
  return variable.numpy() if hasattr(variable, 'numpy') else variable


def hyperparameters(cfg, kind):
  """The values the run's --optimizer computes with in framework `kind` ('tf1' or 'keras'):
  the flags where given, else the framework's DEFAULTS; {algorithm, and its FIELDS}."""
  name, fixed = ALGORITHMS[cfg.optimizer]
  values = {**DEFAULTS[kind].get(name, {}), **fixed}
  for field in FLAGS[cfg.optimizer]:
    if getattr(cfg, field) is not None:
      values[field] = getattr(cfg, field)
  if name == 'adam':
    values.update(beta_1=cfg.adam_beta1, beta_2=cfg.adam_beta2)
  return {'algorithm': name, **{field: values[field] for field in FIELDS[name]}}


def flag_problem(optimizer, given):
  """Why the optimizer flags `given` (the names of those set) do not apply to --optimizer
  `optimizer`, or None."""
  extra = sorted(set(given) - set(FLAGS[optimizer]))
  if not extra:
    return None
  takes = ', '.join(f'--{name}' for name in FLAGS[optimizer]) or 'none of them'
  return (f'--optimizer={optimizer} has no {", ".join(extra)} (it takes {takes}); leave '
          f'{", ".join("--" + name for name in extra)} out')


def schedule_name(cfg):
  """The run's --lr_schedule; unset: exponential under --lr_decay_steps, else constant."""
  if cfg.lr_schedule:
    return cfg.lr_schedule
  return 'exponential' if cfg.lr_decay_steps else 'constant'


def decay_steps(cfg):
  """--lr_decay_steps, or the whole run where it is 0."""
  return cfg.lr_decay_steps or cfg.epochs * cfg.steps_per_epoch


def boundaries(cfg):
  """The piecewise schedule's boundaries: --lr_boundaries, or the run's middle step."""
  return tuple(cfg.lr_boundaries) or (cfg.epochs * cfg.steps_per_epoch // 2,)


def piecewise_values(cfg):
  """The piecewise schedule's rates: --learning_rate times --lr_decay_rate per boundary."""
  return tuple(cfg.learning_rate * cfg.lr_decay_rate ** i
               for i in range(len(boundaries(cfg)) + 1))


# tf.compat.v1.train.polynomial_decay's and keras' PolynomialDecay's defaults.
POLYNOMIAL_END_RATE = 0.0001
POLYNOMIAL_POWER = 1.0
# cosine_decay's and CosineDecay's floor, as a fraction of the initial rate.
COSINE_ALPHA = 0.0


def schedule_manifest(cfg):
  """run.json's optimizer.schedule of the run's --lr_schedule (None: a constant rate),
  stepped per step as both runners apply it."""
  name = schedule_name(cfg)
  if name == 'constant':
    return None
  if name == 'exponential':
    out = {'name': 'exponential_decay', 'decay_steps': decay_steps(cfg),
           'decay_rate': cfg.lr_decay_rate, 'staircase': cfg.lr_staircase}
  elif name == 'piecewise':
    out = {'name': 'piecewise_constant', 'boundaries': list(boundaries(cfg)),
           'values': [short(v) for v in piecewise_values(cfg)]}
  elif name == 'polynomial':
    out = {'name': 'polynomial_decay', 'decay_steps': decay_steps(cfg),
           'end_learning_rate': POLYNOMIAL_END_RATE, 'power': POLYNOMIAL_POWER}
  else:
    out = {'name': 'cosine_decay', 'decay_steps': decay_steps(cfg), 'alpha': COSINE_ALPHA}
  return {**out, 'updated': 'per_step'}
