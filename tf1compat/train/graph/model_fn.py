"""What the legacy graph loop computes, built the TF1 way (`tf.compat.v1`, tf-keras).

The model (--model, by default the seed's ConvNet) and how it is wired onto the iterator's
batch, the loss with the model's regularization losses added by hand, --optimizer's
tf.compat.v1.train optimizer and --lr_schedule's schedule on the global step, the
`tf.compat.v1.metrics` running metrics, and the SavedModel export. Every function builds
ops in the caller's default graph. train/eager/model_fn.py is its twin: the same names,
in the same order, for what both compute; what only TF1 has (the wiring, the per-step
nudge, the metrics' scopes) follows.
"""

from absl import logging
import tensorflow as tf

from tf1compat.runs import atomic
from tf1compat.runs import optimizers
from tf1compat.runs import runlog
from tf1compat.train.models import keras_facts
from tf1compat.train.models import plugins

SERVING_SIGNATURE = 'serving_default'


def kernels(cfg, keras_model):
  """run.json's kernels block: ApplyAdam with beta-power accumulators (None without Adam),
  every other optimizer's fused Apply kernel, and BatchNorm's moving-variance rule as the
  built layers compute it. Fused BatchNorm (what tf.keras and tf-keras choose where they
  can) takes the Bessel-corrected batch variance; the unfused layer the biased one."""
  fused = [getattr(layer, 'fused', True)
           for layer in keras_facts.batch_norm_layers(keras_model, tf.keras)]
  variance = runlog.BN_VARIANCE_BESSEL if all(fused) else runlog.BN_VARIANCE_BIASED
  adam = cfg.optimizer == 'adam'
  return {'adam': runlog.ADAM_TF1_FUSED if adam else None,
          'optimizer': None if adam else runlog.OPTIMIZER_TF1_FUSED,
          'batch_norm_variance': variance}


# tf.compat.v1.train's class of each algorithm.
_OPTIMIZER_CLASSES = {'adam': 'AdamOptimizer', 'sgd': 'GradientDescentOptimizer',
                      'momentum': 'MomentumOptimizer', 'rmsprop': 'RMSPropOptimizer',
                      'adagrad': 'AdagradOptimizer', 'adadelta': 'AdadeltaOptimizer',
                      'ftrl': 'FtrlOptimizer'}


def optimizer_name(cfg):
  """The optimizer as run.json names it."""
  algorithm = optimizers.ALGORITHMS[cfg.optimizer][0]
  return f'tf.compat.v1.train.{_OPTIMIZER_CLASSES[algorithm]}'


def learning_rate_schedule(cfg, global_step):
  """The learning rate of the step `global_step` counts: --learning_rate under
  --lr_schedule, tf.compat.v1.train's schedule of that name on the global step."""
  name = optimizers.schedule_name(cfg)
  train = tf.compat.v1.train
  if name == 'constant':
    return tf.constant(cfg.learning_rate, tf.float32)
  if name == 'exponential':
    return train.exponential_decay(cfg.learning_rate, global_step, optimizers.decay_steps(cfg),
                                   cfg.lr_decay_rate, staircase=cfg.lr_staircase)
  if name == 'piecewise':
    return train.piecewise_constant(global_step, list(optimizers.boundaries(cfg)),
                                    list(optimizers.piecewise_values(cfg)))
  if name == 'polynomial':
    return train.polynomial_decay(cfg.learning_rate, global_step, optimizers.decay_steps(cfg),
                                  end_learning_rate=optimizers.POLYNOMIAL_END_RATE,
                                  power=optimizers.POLYNOMIAL_POWER)
  return train.cosine_decay(cfg.learning_rate, global_step, optimizers.decay_steps(cfg),
                            alpha=optimizers.COSINE_ALPHA)


def make_optimizer(cfg, rate):
  """--optimizer as tf.compat.v1.train has it, with the run's hyper-parameters (the flags
  where given, else TF1's defaults: optimizers.hyperparameters) at learning rate `rate`
  (learning_rate_schedule())."""
  values = optimizers.hyperparameters(cfg, 'tf1')
  train = tf.compat.v1.train
  algorithm = values['algorithm']
  if algorithm == 'adam':
    return train.AdamOptimizer(learning_rate=rate, beta1=values['beta_1'],
                               beta2=values['beta_2'], epsilon=values['epsilon'])
  if algorithm == 'sgd':
    return train.GradientDescentOptimizer(rate)
  if algorithm == 'momentum':
    return train.MomentumOptimizer(rate, values['momentum'], use_nesterov=values['nesterov'])
  if algorithm == 'rmsprop':
    return train.RMSPropOptimizer(rate, decay=values['rho'], momentum=values['momentum'],
                                  epsilon=values['epsilon'], centered=values['centered'])
  if algorithm == 'adagrad':
    return train.AdagradOptimizer(
        rate, initial_accumulator_value=values['initial_accumulator_value'])
  if algorithm == 'adadelta':
    return train.AdadeltaOptimizer(rate, rho=values['rho'], epsilon=values['epsilon'])
  return train.FtrlOptimizer(
      rate, learning_rate_power=values['learning_rate_power'],
      initial_accumulator_value=values['initial_accumulator_value'],
      l1_regularization_strength=values['l1'], l2_regularization_strength=values['l2'],
      l2_shrinkage_regularization_strength=values['l2_shrinkage'])


def optimizer_state_variables(cfg, optimizer, keras_model, global_step):
  """{optimizer state name: variable} (training.Backend.optimizer_state's names): the
  global step, each slot of each trained weight under optimizers.SLOTS' name, Adam's beta
  powers."""
  algorithm = optimizers.ALGORITHMS[cfg.optimizer][0]
  out = {'step': global_step}
  for key, variable in keras_facts.weight_items(keras_model):
    for tf1_name in optimizer.get_slot_names():
      slot = optimizer.get_slot(variable, tf1_name)
      if slot is not None:
        out[f'slot/{optimizers.slot_name(algorithm, tf1_name)}/{key}'] = slot
  if algorithm == 'adam':
    powers = optimizer._get_beta_accumulators()  # pylint: disable=protected-access
    out.update({f'scalar/{name}': variable
                for name, variable in zip(optimizers.BETA_POWERS, powers)})
  return out


def build_model(cfg, num_classes, **wiring):
  """The run's model (--model, by default the seed's ConvNet) in tf-keras with the run's
  model fields, checked by plugins.build_model; `wiring`: input_tensor and dropout_seed
  for the training model."""
  return plugins.build_model(
      cfg.model, tf.keras, num_classes=num_classes, image_size=cfg.image_size,
      batch_norm=cfg.batch_norm, dropout=cfg.dropout,
      final_activation=None if cfg.final_activation == 'none' else cfg.final_activation,
      **wiring)


def check_model(cfg, num_classes):
  """plugins.check_stable_names on builds in a graph of their own (no variable of them is
  ever initialized, and the training graph's op seeds stay as they were)."""
  with tf.Graph().as_default():
    # Random initializers need a seed under op determinism, even unrun.
    tf.compat.v1.set_random_seed(cfg.seed)
    plugins.check_stable_names(cfg.model, lambda: build_model(cfg, num_classes))


def regularization_loss(keras_model):
  """The sum of the model's regularization losses (0 without any).

  Keras regularizers never fill TF1's REGULARIZATION_LOSSES collection, so
  tf.compat.v1.losses.get_regularization_loss() misses them: a loop on the model's
  tensors adds model.losses itself, as fit does.
  """
  if not keras_model.losses:
    return tf.constant(0.0, tf.float32)
  return tf.add_n(keras_model.losses)


def per_example_loss(loss_name, labels, logits):
  """Cross-entropy of each example, as the seed wrote it (`--loss` picks which)."""
  if loss_name == 'keras_categorical':
    # The seed's "fix"; numerically the same as the default on logits.
    return tf.compat.v1.keras.backend.categorical_crossentropy(labels, logits, from_logits=True)
  if loss_name == 'keras_categorical_probs':
    # Keras' default from_logits=False: the logits taken for probabilities.
    return tf.compat.v1.keras.backend.categorical_crossentropy(labels, logits)
  return tf.compat.v1.nn.softmax_cross_entropy_with_logits_v2(
      labels=tf.stop_gradient(labels), logits=logits)


def export(cfg, num_classes, weights, export_dir):
  """A SavedModel of the trained `weights` with a serving signature on an images input.

  The training model reads the iterator; the export rebuilds it in a graph of its own
  on an Input placeholder, so the SavedModel holds neither the input pipeline nor the
  optimizer. Whole or absent (atomic.atomic_path).
  """
  graph = tf.Graph()
  with graph.as_default():
    # The initializers run before the trained weights replace them, but they still need
    # a seed under op determinism.
    tf.compat.v1.set_random_seed(cfg.seed)
    serving_model = build_model(cfg, num_classes)
    items = keras_facts.weight_items(serving_model)
    placeholders = {key: tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape)
                    for key, v in items}
    assign = tf.group(*[tf.compat.v1.assign(v, placeholders[key]) for key, v in items])
    signature = tf.compat.v1.saved_model.predict_signature_def(
        inputs={'images': serving_model.input},
        outputs={'outputs': serving_model.output,
                 'classes': tf.argmax(serving_model.output, axis=-1)})
    with tf.compat.v1.Session(graph=graph) as sess, atomic.atomic_path(export_dir) as tmp_dir:
      sess.run(assign, {placeholders[key]: weights[key] for key, _ in items})
      builder = tf.compat.v1.saved_model.Builder(tmp_dir)
      builder.add_meta_graph_and_variables(
          sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
          signature_def_map={SERVING_SIGNATURE: signature}, strip_default_attrs=True)
      builder.save()
  logging.info('SavedModel written to %s', export_dir)


def wire_model(cfg, num_classes, features):
  """(model, logits, model.updates, the update ops the train op runs) of the training
  model on the iterator's `features`, wired as --wiring says (--noupdate_ops: none run)."""
  if cfg.wiring == 'input_tensor':
    # The input layer sits on the iterator's tensor, so model.updates are the update
    # ops of the very batch being trained on.
    model = build_model(cfg, num_classes, input_tensor=features,
                        dropout_seed=cfg.dropout_seed)
    logits = model.output
    model_updates = list(model.updates)
    update_ops = model_updates
  else:
    # The seed's wiring: the model is built on its own Input placeholder and then
    # called on the batch. model.updates now also holds updates bound to that
    # placeholder, which cannot run without feeding it ("You must feed a value for
    # placeholder tensor 'images'"), so legacy code fell back on the tf.layers idiom,
    # the UPDATE_OPS collection, which Keras layers never fill: no update op runs.
    model = build_model(cfg, num_classes, dropout_seed=cfg.dropout_seed)
    logits = model(features)
    model_updates = list(model.updates)
    update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  if not cfg.update_ops:
    update_ops = []
  return model, logits, model_updates, update_ops


# The integer type of each float type's bits (one ulp is one unit of them).
_BITS = {tf.float16: tf.int16, tf.bfloat16: tf.int16, tf.float32: tf.int32,
         tf.float64: tf.int64}


def nudge_each_step(weight_items, train_op, global_step, seed):
  """An op that runs `train_op`, then moves every non-zero weight by one ulp, up or down
  at random (from `seed` and the step just taken, so a resumed run draws the same).

  nudge.nudge_weights' rule, applied after every step: a correct port rounds
  differently at every step where its kernels differ, and that per-step difference can
  grow faster than a one-time nudge of the start (a control that differed only at its
  start stayed near 2e-6 for 37 steps while a correct port reached 1e-2).
  """
  with tf.control_dependencies([train_op]):
    step_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(global_step, tf.int64)])
    nudges = []
    for index, (_, variable) in enumerate(weight_items):
      value = tf.identity(variable)
      bits_type = _BITS[value.dtype.base_dtype]
      # One ulp away from zero is +1 on the magnitude's bits, for either sign.
      up = tf.random.stateless_uniform(tf.shape(value), step_seed + index) < 0.5
      bits = tf.bitcast(value, bits_type)
      moved = tf.bitcast(bits + tf.where(up, tf.ones_like(bits), -tf.ones_like(bits)),
                         value.dtype.base_dtype)
      nudges.append(tf.compat.v1.assign(variable, tf.where(tf.equal(value, 0), value, moved)))
    return tf.group(*nudges)


def classes(labels, logits):
  """(label classes, predicted classes) of a batch, as int64."""
  return (tf.argmax(labels, axis=-1, output_type=tf.int64),
          tf.argmax(logits, axis=-1, output_type=tf.int64))


def running_metrics(scope_name, losses, label_classes, predicted_classes):
  """tf.compat.v1.metrics mean loss and accuracy in their own variable scope.

  Returns (mean_loss value, mean_loss update, accuracy value, accuracy update, the
  scope's local variables, their reset op). Each update op returns the metric's value
  after the update, so fetching it shows this step's batch included.
  """
  with tf.compat.v1.variable_scope(scope_name) as scope:
    mean_loss, mean_loss_update = tf.compat.v1.metrics.mean(losses)
    accuracy, accuracy_update = tf.compat.v1.metrics.accuracy(
        labels=label_classes, predictions=predicted_classes)
    local_variables = tf.compat.v1.get_collection(
        tf.compat.v1.GraphKeys.LOCAL_VARIABLES, scope=scope.name + '/')
    reset = tf.compat.v1.variables_initializer(var_list=local_variables)
  return mean_loss, mean_loss_update, accuracy, accuracy_update, local_variables, reset
