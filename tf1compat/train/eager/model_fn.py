"""What the port computes, in Keras 3 (TF2's own `keras`, never `tf.compat.v1`).

The model (--model, by default the seed's ConvNet) with the exact mode's BatchNorm when
asked, the per-example loss and the regularization losses a custom loop adds itself,
--optimizer's Keras 3 twin set to compute what TF1's does (Adam through TF1's fused
ApplyAdam with --tf1_adam) and --lr_schedule's keras.optimizers.schedules twin, the
weights in and out, and the SavedModel and .keras export. train/graph/model_fn.py is its
twin: the same names, in the same order, for what both compute; what only the port has
(the schedule under fit, the weights' I/O) follows.
"""

import functools

import keras
import tensorflow as tf

from tf1compat.runs import atomic
from tf1compat.runs import optimizers
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.train import distribution as distribution_lib
from tf1compat.train import tf1_kernels
from tf1compat.train.models import keras_facts
from tf1compat.train.models import plugins


def kernels(cfg):
  """Which Adam (None without Adam), other optimizer and BatchNorm moving-variance kernels
  the run computes with (run.json)."""
  adam = runlog.ADAM_TF1_FUSED if cfg.tf1_adam else runlog.ADAM_KERAS
  algorithm = optimizers.ALGORITHMS[cfg.optimizer][0]
  fused = {'adam': False, 'momentum': cfg.tf1_momentum,
           'rmsprop': cfg.tf1_rmsprop_start and cfg.tf1_optimizer_kernel}.get(
               algorithm, cfg.tf1_optimizer_kernel)
  return {'adam': adam if algorithm == 'adam' else None,
          'optimizer': None if algorithm == 'adam' else (
              runlog.OPTIMIZER_TF1_FUSED if fused else runlog.OPTIMIZER_KERAS),
          'batch_norm_variance': (runlog.BN_VARIANCE_BESSEL if cfg.tf1_bn_variance
                                  else runlog.BN_VARIANCE_BIASED)}


def optimizer_name(cfg, optimizer):
  """The optimizer as run.json names it (a loss-scale wrapper by the optimizer it wraps)."""
  optimizer = getattr(optimizer, 'inner_optimizer', optimizer)
  name = f'keras.optimizers.{type(optimizer).__name__}'
  return f'{name} (TF1 fused ApplyAdam)' if cfg.tf1_adam and cfg.optimizer == 'adam' else name


def learning_rate_schedule(cfg):
  """--lr_schedule as keras.optimizers.schedules has it, the twin of the graph loop's
  schedule on the global step; None for a constant rate."""
  name = optimizers.schedule_name(cfg)
  schedules = keras.optimizers.schedules
  if name == 'constant':
    return None
  if name == 'exponential':
    return schedules.ExponentialDecay(cfg.learning_rate, optimizers.decay_steps(cfg),
                                      cfg.lr_decay_rate, staircase=cfg.lr_staircase)
  if name == 'piecewise':
    return schedules.PiecewiseConstantDecay(list(optimizers.boundaries(cfg)),
                                            list(optimizers.piecewise_values(cfg)))
  if name == 'polynomial':
    return schedules.PolynomialDecay(cfg.learning_rate, optimizers.decay_steps(cfg),
                                     end_learning_rate=optimizers.POLYNOMIAL_END_RATE,
                                     power=optimizers.POLYNOMIAL_POWER)
  return schedules.CosineDecay(cfg.learning_rate, optimizers.decay_steps(cfg),
                               alpha=optimizers.COSINE_ALPHA)


def dtype_policy(cfg):
  """The Keras dtype policy the run computes under: float32, or a mixed policy (float32
  variables, 16-bit computation)."""
  if cfg.mixed_precision:
    return 'mixed_float16'
  return 'mixed_bfloat16' if cfg.mixed_bfloat16 else 'float32'


def make_optimizer(cfg, rate):
  """--optimizer's Keras 3 twin with the run's hyper-parameters (the flags where given, else
  Keras' defaults: optimizers.hyperparameters) at learning rate `rate` (a schedule on
  optimizer.iterations, learning_rate_schedule(), or a float), loss-scaled under
  mixed_float16 (with the replicas' agreement on finite gradients,
  distribution.AgreedLossScaleOptimizer; bfloat16 has float32's range and needs no
  scaling). The exact port computes TF1's algorithm: TF1's Momentum accumulator
  (--tf1_momentum) and RMSProp's mean square starting at one (--tf1_rmsprop_start)."""
  values = optimizers.hyperparameters(cfg, 'keras')
  algorithm = values['algorithm']
  if algorithm == 'adam':
    adam = tf1_kernels.TF1Adam if cfg.tf1_adam else keras.optimizers.Adam
    optimizer = adam(learning_rate=rate, beta_1=values['beta_1'], beta_2=values['beta_2'],
                     epsilon=values['epsilon'])
  elif algorithm == 'momentum':
    sgd = tf1_kernels.TF1Momentum if cfg.tf1_momentum else keras.optimizers.SGD
    optimizer = sgd(learning_rate=rate, momentum=values['momentum'],
                    nesterov=values['nesterov'])
  elif algorithm == 'rmsprop':
    if cfg.tf1_rmsprop_start:
      rmsprop = functools.partial(tf1_kernels.TF1RMSprop, fused=cfg.tf1_optimizer_kernel)
    else:
      rmsprop = keras.optimizers.RMSprop
    optimizer = rmsprop(learning_rate=rate, rho=values['rho'], momentum=values['momentum'],
                        epsilon=values['epsilon'], centered=values['centered'])
  else:
    fused = cfg.tf1_optimizer_kernel
    if algorithm == 'sgd':
      optimizer = (tf1_kernels.TF1SGD if fused else keras.optimizers.SGD)(learning_rate=rate)
    elif algorithm == 'adagrad':
      optimizer = (tf1_kernels.TF1Adagrad if fused else keras.optimizers.Adagrad)(
          learning_rate=rate, initial_accumulator_value=values['initial_accumulator_value'],
          epsilon=values['epsilon'])
    elif algorithm == 'adadelta':
      optimizer = (tf1_kernels.TF1Adadelta if fused else keras.optimizers.Adadelta)(
          learning_rate=rate, rho=values['rho'], epsilon=values['epsilon'])
    else:
      optimizer = (tf1_kernels.TF1Ftrl if fused else keras.optimizers.Ftrl)(
          learning_rate=rate, learning_rate_power=values['learning_rate_power'],
          initial_accumulator_value=values['initial_accumulator_value'],
          l1_regularization_strength=values['l1'], l2_regularization_strength=values['l2'],
          l2_shrinkage_regularization_strength=values['l2_shrinkage'], beta=values['beta'])
  if cfg.mixed_precision:
    optimizer = distribution_lib.AgreedLossScaleOptimizer(optimizer)
  return optimizer


def optimizer_state_variables(cfg, optimizer, model, global_step):
  """{optimizer state name: variable} (training.Backend.optimizer_state's names) of the
  built `optimizer`: the global step, each slot of each trained weight under
  optimizers.SLOTS' name (Keras keeps them in lists in the order of the variables it was
  built on), TF1Adam's beta powers."""
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  algorithm = optimizers.ALGORITHMS[cfg.optimizer][0]
  out = {'step': global_step}
  trainable = {id(variable) for variable in model.trainable_variables}
  for key, variable in keras_facts.weight_items(model):
    if id(variable) not in trainable:
      continue
    index = inner._get_variable_index(variable)  # pylint: disable=protected-access
    for name, _, attributes in optimizers.SLOTS[algorithm]:
      slots = next((getattr(inner, a) for a in attributes if getattr(inner, a, None)), None)
      if slots and slots[index] is not None:
        out[f'slot/{name}/{key}'] = slots[index]
  if isinstance(inner, tf1_kernels.TF1Adam):
    out.update({f'scalar/{name}': getattr(inner, f'_{name}') for name in optimizers.BETA_POWERS})
  return out


def slot_scale(cfg, optimizer):
  """The factor from a slot's one form (optimizers.SLOTS) to the built `optimizer`'s own:
  Keras' SGD keeps its momentum as minus the rate times TF1's accumulator of gradients,
  the rate of the last step applied (exact while the rate held); 1 for every other."""
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  if (optimizers.ALGORITHMS[cfg.optimizer][0] != 'momentum'
      or getattr(inner, 'momentum_accumulates', optimizers.STEPS) != optimizers.STEPS):
    return 1.0
  rate = inner._learning_rate  # pylint: disable=protected-access
  if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
    rate = rate(max(int(inner.iterations.numpy()) - 1, 0))
  return -float(keras.ops.convert_to_numpy(rate))


def build_model(cfg, num_classes, distributed=False):
  """The run's model (--model, by default the seed's ConvNet) in Keras 3 with the run's
  model fields, checked by plugins.build_model.

  `distributed`: BatchNormalization normalizes with the moments of the global batch,
  not of each replica's share, so that a distributed run computes what a one-device
  run of the same global batch does.
  """
  batch_norm_layer = None
  if cfg.tf1_bn_variance:
    batch_norm_layer = tf1_kernels.TF1BatchNormalization
  elif distributed:
    batch_norm_layer = functools.partial(keras.layers.BatchNormalization, synchronized=True)
  if not cfg.keep_bn_momentum:
    batch_norm_layer = _keras_default_momentum(
        batch_norm_layer or keras.layers.BatchNormalization)
  return plugins.build_model(
      cfg.model, keras, num_classes=num_classes, image_size=cfg.image_size,
      batch_norm=cfg.batch_norm, dropout=cfg.dropout,
      final_activation=None if cfg.final_activation == 'none' else cfg.final_activation,
      batch_norm_layer=batch_norm_layer,
      # The loss must see float32 logits under a mixed policy.
      logits_dtype='float32' if dtype_policy(cfg) != 'float32' else None)


def check_model(cfg, num_classes):
  """plugins.check_stable_names on builds of the run's model (before the process is seeded,
  so that the run's numbers do not depend on them)."""
  plugins.check_stable_names(cfg.model, lambda: build_model(cfg, num_classes))


def regularization_loss(model):
  """The sum of the model's regularization losses (0 without any), which a custom loop
  adds to its loss itself (fit does)."""
  losses = model.losses
  return tf.add_n(losses) if losses else tf.constant(0.0, tf.float32)


def per_example_loss(loss_name, labels, outputs):
  """The per-example loss of --loss on the model's outputs, [batch].

  softmax_cross_entropy is the graph loop's `tf.nn.softmax_cross_entropy_with_logits`;
  keras_categorical is the seed's "fix", Keras' categorical cross-entropy on logits;
  keras_categorical_probs is that loss with Keras' default from_logits=False, which
  normalizes the outputs by their sum and clips them to [1e-7, 1 - 1e-7] as if they were
  probabilities (the from_logits_lost mistake on logits).
  """
  if loss_name == 'keras_categorical':
    return keras.losses.categorical_crossentropy(labels, outputs, from_logits=True)
  if loss_name == 'keras_categorical_probs':
    return keras.losses.categorical_crossentropy(labels, outputs)
  return tf.nn.softmax_cross_entropy_with_logits(labels=tf.stop_gradient(labels),
                                                 logits=outputs)


def export(model, export_dir, keras_file):
  """SavedModel in `export_dir` and the Keras file `keras_file`, each whole or absent."""
  with atomic.atomic_path(export_dir) as tmp_dir:
    model.export(tmp_dir, verbose=False)
  with atomic.atomic_path(keras_file) as tmp_file:
    model.save(tmp_file)


def lr_per_epoch(cfg):
  """Whether model.fit sets the rate once per epoch (--fit_lr_schedule=epoch_callback)."""
  return cfg.loop == 'fit' and cfg.fit_lr_schedule == 'epoch_callback'


def lr_schedule_manifest(cfg):
  """run.json's optimizer.schedule: the run's schedule as this runner applies it."""
  schedule = optimizers.schedule_manifest(cfg)
  if schedule and lr_per_epoch(cfg):
    schedule['updated'] = 'per_epoch'
  return schedule


def _keras_default_momentum(layer_class):
  """`layer_class` that leaves out the momentum the model gives it: a port that writes
  BatchNormalization() gets Keras' 0.99 (--nokeep_bn_momentum)."""
  def build(*args, momentum=None, **kwargs):
    del momentum
    return layer_class(*args, **kwargs)
  return build


def model_weights(model):
  """{weight key: numpy array} of every weight of `model` (keys as in snapshots)."""
  return {key: variable.numpy() for key, variable in keras_facts.weight_items(model)}


def load_init_weights(model, path, model_spec=None):
  """Assigns the weights of the .npz at `path` (checked key by key, shape by shape);
  `model_spec`: the run's --model, whose key mismatches plugins names."""
  items = keras_facts.weight_items(model)
  plugins.check_weight_file(model_spec, path, [key for key, _ in items], keras)
  weights = run_files.load_weights(path, {key: tuple(v.shape) for key, v in items})
  for key, variable in items:
    variable.assign(weights[key])
