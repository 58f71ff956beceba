"""The TF2 port of the graph loop: a custom `tf.function` loop and Keras `model.fit`.

Keras 3 only (TF2's own `keras`; never `tf.compat.v1`). Both loops build the model with
`model.build_model`, read the same seeded pipeline as the graph runner and write the
run-directory contract of `runlog`:

- `--loop=custom` (runner 'eager'): `EagerBackend`, one `tf.function` train step with a
  GradientTape and `keras.metrics`, driven by `training.train`; checkpoints are
  `tf.train.CheckpointManager` checkpoints holding the model, the optimizer, the step,
  the running metrics and the training-data iterator, so a rerun resumes mid-epoch on
  exactly the batches an uninterrupted run would see.
- `--loop=fit` (runner 'fit'): `model.compile` + `model.fit`, recorded by a callback
  through `training.Recorder`; `BackupAndRestore` resumes at epoch boundaries.

Under `--strategy=mirrored|multi_worker` (`distribution`) both run in the strategy's
scope on the replicas' slices of the same global batches; the custom loop's
checkpoints then hold no iterator (tf.distribute's cannot be saved) and a rerun skips
the batches done instead.

Importing this module sets nothing up; `run` configures the strategy, seeds, op
determinism and the mixed-precision policy for the process it runs in.
"""

import functools
import json
import os
import shutil
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tf1compat import cli
from tf1compat import data
from tf1compat import distribution as distribution_lib
from tf1compat import flags as tf1compat_flags
from tf1compat import model as model_lib
from tf1compat import progress
from tf1compat import runlog
from tf1compat import training

RUNNER_CUSTOM = 'eager'
RUNNER_FIT = 'fit'
OPTIMIZER_NAME = 'keras.optimizers.Adam'
KERAS_FILE = 'model.keras'
# model.fit's BackupAndRestore folder inside MODEL_DIR/checkpoints.
FIT_BACKUP_DIR = 'backup'
# Keras writes this beside the backed-up weights; its 'epoch' is the epochs completed.
_FIT_BACKUP_METADATA = 'training_metadata.json'
_MAX_CHECKPOINTS = 5

# tf.nn.fused_batch_norm's floor on epsilon, which tf-keras' fused path goes through.
_FUSED_BN_MIN_EPSILON = 1.001e-5


class TF1BatchNormalization(keras.layers.BatchNormalization):
  """BatchNormalization computed as TF1's fused batch norm (`--tf1_bn_variance`).

  tf-keras in graph mode runs the fused kernel, which normalizes with the biased batch
  variance but returns the Bessel-corrected one (var * n / (n - 1), n = batch x height
  x width) for the moving variance, and updates the moving statistics as
  `moving -= (moving - value) * (1 - momentum)`. Keras 3 uses the biased variance and
  unfused ops, which also round differently (README, `bn_moving_variance`). This
  layer runs the same kernel (`FusedBatchNormV3`, whose gradient TF registers) and the
  same update, so a matched comparison with the graph runner is exact. Masked, renorm
  and non-image inputs fall back to the base class.
  """

  def call(self, inputs, training=None, mask=None):
    if mask is not None or self.renorm or len(inputs.shape) != 4 or self.axis % 4 != 3:
      return super().call(inputs, training=training, mask=mask)
    training = bool(training) and self.trainable
    x = tf.cast(inputs, tf.float32)
    gamma = self.gamma.value if self.scale else tf.ones(x.shape[-1:], tf.float32)
    beta = self.beta.value if self.center else tf.zeros(x.shape[-1:], tf.float32)
    replicas = tf.distribute.get_replica_context()
    if training and replicas is not None and replicas.num_replicas_in_sync > 1:
      outputs, mean, variance = self._synchronized(x, gamma, beta, replicas)
      self._update_moving_statistics(mean, variance)
      return tf.cast(outputs, self.compute_dtype)
    outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=self.moving_mean.value,
        variance=self.moving_variance.value,
        epsilon=max(self.epsilon, _FUSED_BN_MIN_EPSILON), exponential_avg_factor=1.0,
        data_format='NHWC', is_training=training)
    if training:
      self._update_moving_statistics(mean, variance)
    return tf.cast(outputs, self.compute_dtype)

  def _synchronized(self, x, gamma, beta, replicas):
    """Normalizes with the moments of the global batch, all replicas together.

    The fused kernel sees only its replica's rows; the single-device run's math needs
    the whole batch's moments (the role of Keras' `synchronized=True`). Returns the
    outputs, the mean and TF1's Bessel-corrected variance of the global batch.
    """
    axes = [0, 1, 2]
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    total, total_squares, count = replicas.all_reduce(
        tf.distribute.ReduceOp.SUM,
        [tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes), count])
    mean = total / count
    variance = tf.maximum(total_squares / count - tf.square(mean), 0.0)
    outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma,
                                        max(self.epsilon, _FUSED_BN_MIN_EPSILON))
    return outputs, mean, variance * count / (count - 1.0)

  def _update_moving_statistics(self, mean, variance):
    # In graph mode the learning phase is a placeholder, so tf-keras takes momentum
    # as a float32 tensor and computes 1 - momentum in float32, not in Python.
    decay = tf.constant(1.0, tf.float32) - tf.constant(self.momentum, tf.float32)
    self.moving_mean.assign_sub((self.moving_mean.value - mean) * decay)
    self.moving_variance.assign_sub((self.moving_variance.value - variance) * decay)


def _softmax_cross_entropy(labels, outputs):
  return tf.nn.softmax_cross_entropy_with_logits(labels=tf.stop_gradient(labels),
                                                 logits=outputs)


def _keras_categorical(labels, outputs):
  return keras.losses.categorical_crossentropy(labels, outputs, from_logits=True)


_LOSSES = {'softmax_cross_entropy': _softmax_cross_entropy,
           'keras_categorical': _keras_categorical}


def loss_function(name):
  """The per-example loss of --loss=`name`, on logits: (labels, outputs) -> [batch].

  softmax_cross_entropy is the graph loop's `tf.nn.softmax_cross_entropy_with_logits`;
  keras_categorical is the seed's "fix", Keras' categorical cross-entropy on logits.
  """
  return _LOSSES[name]


def configure(flags_obj):
  """Process-wide setup before anything is built: seeds, op determinism, dtype policy."""
  # TF's own INFO lines (checkpoint sharding, SavedModel assets) would bury the
  # progress lines; its warnings still show.
  tf.get_logger().setLevel('WARNING')
  keras.utils.set_random_seed(flags_obj.seed)
  if flags_obj.deterministic:
    tf.config.experimental.enable_op_determinism()
    if tf.config.list_physical_devices('GPU'):
      logging.info('op determinism is on (--deterministic, the default): cuDNN may only '
                   'pick deterministic algorithms and scatter/segment reductions run '
                   'serially, which costs speed; bin/benchmark --nodeterministic measures '
                   'the cost on this host, and --nodeterministic trades reproducibility for '
                   'it')
  keras.mixed_precision.set_global_policy(
      'mixed_float16' if flags_obj.mixed_precision else 'float32')


def build_model(flags_obj, num_classes, distributed=False):
  """The seed's ConvNet in Keras 3 with the run's model flags.

  `distributed`: BatchNormalization normalizes with the moments of the global batch,
  not of each replica's share, so that a distributed run computes what a one-device
  run of the same global batch does.
  """
  batch_norm_layer = None
  if flags_obj.tf1_bn_variance:
    batch_norm_layer = TF1BatchNormalization
  elif distributed:
    batch_norm_layer = functools.partial(keras.layers.BatchNormalization, synchronized=True)
  return model_lib.build_model(
      keras, num_classes=num_classes, image_size=flags_obj.image_size,
      batch_norm=flags_obj.batch_norm, dropout=flags_obj.dropout,
      final_activation=None if flags_obj.final_activation == 'none'
      else flags_obj.final_activation,
      batch_norm_layer=batch_norm_layer,
      # The loss must see float32 logits under mixed_float16.
      logits_dtype='float32' if flags_obj.mixed_precision else None)


def model_weights(model):
  """{weight key: numpy array} of every weight of `model` (keys as in snapshots)."""
  return {key: variable.numpy() for key, variable in model_lib.weight_items(model)}


def load_init_weights(model, path):
  """Assigns the weights of the .npz at `path` (checked key by key, shape by shape)."""
  items = model_lib.weight_items(model)
  weights = runlog.load_weights(path, {key: tuple(v.shape) for key, v in items})
  for key, variable in items:
    variable.assign(weights[key])


class TF1Adam(keras.optimizers.Adam):
  """Keras 3 Adam applied through TF1's fused `ApplyAdam` kernel (`--tf1_adam`).

  The formula is Adam's either way; what differs is float rounding. TF1's
  AdamOptimizer feeds the kernel beta powers kept as variables and multiplied by beta
  once per step; Keras computes `beta ** t` and the update with separate ops. The
  results differ by an ulp at the first step, and Adam's normalization amplifies that
  chaotically. Through the same kernel with the same accumulators, a Keras 3 loop
  matches the graph runner bit for bit on CPU.
  """

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    # Updated once per step, not per replica: the first replica's value is the value.
    self._beta_1_power = self.add_variable(
        (), initializer=keras.initializers.Constant(self.beta_1), name='beta_1_power',
        aggregation='only_first_replica')
    self._beta_2_power = self.add_variable(
        (), initializer=keras.initializers.Constant(self.beta_2), name='beta_2_power',
        aggregation='only_first_replica')

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=self._momentums[index].value.handle,
        v=self._velocities[index].value.handle,
        beta1_power=tf.cast(self._beta_1_power.value, dtype),
        beta2_power=tf.cast(self._beta_2_power.value, dtype),
        lr=tf.cast(learning_rate, dtype), beta1=tf.constant(self.beta_1, dtype),
        beta2=tf.constant(self.beta_2, dtype), epsilon=tf.constant(self.epsilon, dtype),
        grad=tf.cast(gradient, dtype), use_locking=False)

  def _backend_apply_gradients(self, grads, trainable_variables):
    super()._backend_apply_gradients(grads, trainable_variables)
    # After every variable's update, as TF1's AdamOptimizer._finish does.
    self._beta_1_power.assign(self._beta_1_power * self.beta_1)
    self._beta_2_power.assign(self._beta_2_power * self.beta_2)


def make_optimizer(flags_obj):
  """Keras 3 Adam with the run's hyper-parameters, loss-scaled under mixed precision."""
  kwargs = {'learning_rate': flags_obj.learning_rate, 'beta_1': flags_obj.adam_beta1,
            'beta_2': flags_obj.adam_beta2}
  if flags_obj.adam_epsilon is not None:
    kwargs['epsilon'] = flags_obj.adam_epsilon
  optimizer = (TF1Adam if flags_obj.tf1_adam else keras.optimizers.Adam)(**kwargs)
  if flags_obj.mixed_precision:
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def optimizer_name(flags_obj):
  """The optimizer as run.json names it."""
  return f'{OPTIMIZER_NAME} (TF1 fused ApplyAdam)' if flags_obj.tf1_adam else OPTIMIZER_NAME


def _adam(optimizer):
  return getattr(optimizer, 'inner_optimizer', optimizer)


def _dataset(flags_obj, spec, training_split):
  """The training or validation pipeline of global batches, seeded as in the graph runner."""
  split = 'train' if training_split else 'val'
  return data.make_dataset(
      spec.train_files if training_split else spec.val_files, training=training_split,
      skip=spec.skip(split), image_size=flags_obj.image_size, num_classes=spec.num_classes,
      batch_size=flags_obj.batch_size, seed=flags_obj.seed,
      shuffle_buffer=flags_obj.shuffle_buffer)


def _train_dataset(flags_obj, spec, distribution, skip_batches=0, fresh_iterators=False):
  """The training batches after the first `skip_batches`, distributed over the replicas
  of a distributed run (`fresh_iterators`: each iterator starts over, for fit)."""
  def global_batches():
    dataset = _dataset(flags_obj, spec, True)
    return dataset.skip(skip_batches) if skip_batches else dataset

  if not distribution.distributed:
    return global_batches()
  distribute = (distribution_lib.fresh_distributed_dataset if fresh_iterators
                else distribution_lib.distribute_dataset)
  return distribute(distribution, global_batches, flags_obj.batch_size)


def _fit_datasets(flags_obj, spec, distribution, skip_batches):
  """(training batches after the first `skip_batches`, validation batches or None) for
  model.fit.

  Distributed, the training batches are the custom loop's per-replica slices of the
  global batches, in a dataset that starts over for each iterator fit makes
  (`distribution.fresh_distributed_dataset`). fit keeps one validation iterator for
  all epochs, so the validation set (no shuffle; fit splits its batches over the
  replicas) repeats: each pass reads it once.
  """
  train = _train_dataset(flags_obj, spec, distribution, skip_batches, fresh_iterators=True)
  val = _val_dataset(flags_obj, spec)
  if val is not None and distribution.distributed:
    val = val.repeat()
  return train, val


def _val_dataset(flags_obj, spec):
  """The validation batches, or None without validation records.

  Not distributed: every worker evaluates the whole set on its default device.
  """
  return _dataset(flags_obj, spec, False) if spec.val_files else None


class _ScalarWriter:
  """TensorBoard scalars in the run directory; the events file is opened on first use.

  `tf.summary.scalar` lives in the tensorboard package, which is no dependency here;
  `tf.summary.write` with the scalars plugin's metadata writes the same event.
  """

  _METADATA = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))

  def __init__(self, logdir):
    self._logdir = logdir
    self._writer = None

  def __call__(self, step, scalars):
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self._logdir)
    with self._writer.as_default(step=step):
      for tag, value in scalars.items():
        tf.summary.write(tag, tf.constant(value, tf.float32), metadata=self._METADATA)

  def flush(self):
    if self._writer is not None:
      self._writer.flush()


def _export(model, log, export_dir):
  """SavedModel in `export_dir` and the Keras file MODEL_DIR/model.keras.

  Each is written beside its target and renamed, so it is whole or absent.
  """
  tmp_dir = f'{export_dir}.tmp{os.getpid()}'
  shutil.rmtree(tmp_dir, ignore_errors=True)
  model.export(tmp_dir, verbose=False)
  shutil.rmtree(export_dir, ignore_errors=True)
  os.replace(tmp_dir, export_dir)
  keras_file = log.path(KERAS_FILE)
  # Keras wants the .keras suffix on the file it writes.
  tmp_file = f'{keras_file[:-len(".keras")]}.tmp{os.getpid()}.keras'
  model.save(tmp_file)
  os.replace(tmp_file, keras_file)


class EagerBackend(training.Backend):
  """The custom loop: a `tf.function` step, keras.metrics and a CheckpointManager.

  Built inside the strategy's scope. Every replica computes its share of the global
  batch's mean loss (`compute_average_loss` over the global batch size), so that the
  gradients the optimizer sums over the replicas are those of the global batch.
  `restore_dir` is where checkpoints are read: the chief's, for the other workers.
  `agreement`, a distribution.AgreedSignals, is told each step whether any worker
  caught a signal.
  """

  def __init__(self, flags_obj, spec, log, model, optimizer, distribution, restore_dir=None,
               agreement=None):
    self._spec = spec
    self._log = log
    self._model = model
    self._optimizer = optimizer
    self._strategy = distribution.strategy
    self._global_batch = flags_obj.batch_size
    self._replicas = distribution.replicas
    self._loss = loss_function(flags_obj.loss)
    self._train_loss = keras.metrics.Mean(name='train_loss')
    self._train_accuracy = keras.metrics.CategoricalAccuracy(name='train_accuracy')
    self._val_loss = keras.metrics.Mean(name='val_loss')
    self._val_accuracy = keras.metrics.CategoricalAccuracy(name='val_accuracy')
    self._val_dataset = _val_dataset(flags_obj, spec)
    self._train_batches = functools.partial(_train_dataset, flags_obj, spec, distribution)
    if distribution.distributed:
      # tf.distribute's iterators cannot be checkpointed: `restore` makes one that
      # skips the batches trained on already.
      self._iterator = None
      iterator_state = {}
    else:
      self._iterator = iter(self._train_batches())
      iterator_state = {'iterator': self._iterator}
    self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
    # Slots exist before a restore, so that it assigns them at once.
    optimizer.build(model.trainable_variables)
    self._checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, step=self._step,
        metrics=[*self._train_loss.variables, *self._train_accuracy.variables],
        **iterator_state)
    self._manager = tf.train.CheckpointManager(
        self._checkpoint, log.path(runlog.CHECKPOINTS_DIR), max_to_keep=_MAX_CHECKPOINTS)
    self._restore_dir = restore_dir
    self._agreement = agreement
    self._train_fn = tf.function(self._train_step, jit_compile=flags_obj.jit_compile)
    self._eval_fn = tf.function(self._eval_step, jit_compile=flags_obj.jit_compile)
    self._scalars = _ScalarWriter(log.model_dir)

  def _replica_step(self, images, labels, stop_flag):
    with tf.GradientTape() as tape:
      outputs = self._model(images, training=True)
      per_example = self._loss(labels, outputs)
      # One device keeps reduce_mean: the graph runner's op, bit for bit.
      loss = (tf.reduce_mean(per_example) if self._replicas == 1 else
              tf.nn.compute_average_loss(per_example, global_batch_size=self._global_batch))
      # Identity without loss scaling; LossScaleOptimizer scales here and unscales
      # the gradients in apply_gradients.
      scaled_loss = self._optimizer.scale_loss(loss)
    variables = self._model.trainable_variables
    gradients = tape.gradient(scaled_loss, variables)
    self._optimizer.apply_gradients(zip(gradients, variables))
    self._train_accuracy.update_state(labels, outputs)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(labels, axis=-1), tf.argmax(outputs, axis=-1)), tf.float32))
    return loss, correct, tf.identity(stop_flag)

  def _train_step(self, images, labels, stop_flag):
    sum_over_replicas = functools.partial(self._strategy.reduce, tf.distribute.ReduceOp.SUM,
                                          axis=None)
    loss, correct, stop_flags = map(
        sum_over_replicas,
        self._strategy.run(self._replica_step, args=(images, labels, stop_flag)))
    self._train_loss.update_state(loss)
    self._step.assign_add(1)
    # One tensor, so that the host fetches the step's numbers in one transfer.
    return tf.stack([loss, correct / self._global_batch, self._train_loss.result(),
                     self._train_accuracy.result(), stop_flags])

  def _eval_step(self, images, labels):
    outputs = self._model(images, training=False)
    # Per-example losses: the last, smaller batch weighs by its size, as in fit.
    self._val_loss.update_state(self._loss(labels, outputs))
    self._val_accuracy.update_state(labels, outputs)

  def restore(self):
    path = (tf.train.latest_checkpoint(self._restore_dir) if self._restore_dir
            else self._manager.latest_checkpoint)
    if path is not None:
      self._checkpoint.restore(path).assert_existing_objects_matched()
      logging.info('restored checkpoint %s', path)
    step = int(self._step.numpy())
    if self._iterator is None:
      self._iterator = iter(self._train_batches(skip_batches=step))
    return step, path

  def train_step(self):
    with data.input_errors(self._spec):
      images, labels = next(self._iterator)
    stop_flag = self._agreement.local_flag() if self._agreement else 0.0
    values = self._train_fn(images, labels, tf.constant(stop_flag, tf.float32)).numpy()
    if self._agreement:
      self._agreement.agree(values[4])
    return training.StepResult(*(float(v) for v in values[:4]))

  def reset_metrics(self):
    self._train_loss.reset_state()
    self._train_accuracy.reset_state()

  def evaluate(self):
    if self._val_dataset is None:
      return None
    self._val_loss.reset_state()
    self._val_accuracy.reset_state()
    with data.input_errors(self._spec):
      for images, labels in self._val_dataset:
        self._eval_fn(images, labels)
    return float(self._val_loss.result()), float(self._val_accuracy.result())

  def weights(self):
    return model_weights(self._model)

  def save_checkpoint(self, step):
    self._scalars.flush()
    return self._manager.save(checkpoint_number=step)

  def write_scalars(self, step, scalars):
    self._scalars(step, scalars)

  def export(self, export_dir):
    self._scalars.flush()
    _export(self._model, self._log, export_dir)


class _FiniteWeights(keras.callbacks.Callback):
  """Stops fit before BackupAndRestore backs up NaN or Inf weights (it must precede it).

  A step's loss is computed before its update, so the last step of an epoch can leave
  non-finite weights behind a finite loss.
  """

  def __init__(self, recorder, steps_per_epoch):
    super().__init__()
    self._recorder = recorder
    self._steps_per_epoch = steps_per_epoch

  def on_epoch_end(self, epoch, logs=None):
    self._recorder.check_weights((epoch + 1) * self._steps_per_epoch)


class _FitRecorder(keras.callbacks.Callback):
  """Writes model.fit's steps and epochs into the run directory via training.Recorder.

  fit reports running means since the epoch start; the batch values are recovered as
  x_k = k * mean_k - (k - 1) * mean_(k-1) (steps_per_execution=1, so every batch is
  reported). Must follow BackupAndRestore in the callback list, so that an epoch's
  backup is written before the epoch is recorded and a signal is honoured.
  """

  def __init__(self, recorder, schedule, batch_size, scalars, signals, backup_dir):
    super().__init__()
    self._recorder = recorder
    self._schedule = schedule
    self._batch_size = batch_size
    self._scalars = scalars
    self._signals = signals
    self._backup_dir = backup_dir
    self._epoch = 0
    self._previous = (0.0, 0.0)
    self._bar = None
    self._epoch_started = 0.0
    self.final_metrics = None

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch + 1
    self._previous = (0.0, 0.0)
    self._bar = progress.EpochProgress(self._epoch, self._schedule.epochs,
                                       self._schedule.steps_per_epoch,
                                       log_every=self._schedule.log_every)
    self._epoch_started = time.perf_counter()

  def on_train_batch_begin(self, batch, logs=None):
    self._recorder.start_step()

  def on_train_batch_end(self, batch, logs=None):
    k = batch + 1
    mean_loss, accuracy = float(logs['loss']), float(logs['accuracy'])
    previous_loss, previous_accuracy = self._previous
    self._previous = (mean_loss, accuracy)
    loss = k * mean_loss - (k - 1) * previous_loss
    # A batch accuracy is a multiple of 1/batch: rounding removes the float32 error.
    batch_accuracy = float(np.round((k * accuracy - (k - 1) * previous_accuracy)
                                    * self._batch_size) / self._batch_size)
    step = (self._epoch - 1) * self._schedule.steps_per_epoch + k
    self._recorder.record_step(
        step, training.StepResult(loss, batch_accuracy, mean_loss, accuracy), self._scalars)
    self._bar.update(loss=mean_loss, accuracy=accuracy)
    if self._signals.caught:
      # BackupAndRestore resumes at the last epoch end: report that step.
      raise self._recorder.interrupted(
          self._signals.signum, (self._epoch - 1) * self._schedule.steps_per_epoch,
          self._recorder.last_checkpoint)

  def on_epoch_end(self, epoch, logs=None):
    self.close()
    evaluation = ((float(logs['val_loss']), float(logs['val_accuracy']))
                  if 'val_loss' in logs else None)
    self.final_metrics = self._recorder.record_epoch(
        epoch + 1, float(logs['loss']), float(logs['accuracy']), evaluation,
        time.perf_counter() - self._epoch_started, self._scalars)
    self._recorder.last_checkpoint = self._backup_dir
    self._scalars.flush()
    if self._signals.caught:
      raise self._recorder.interrupted(
          self._signals.signum, (epoch + 1) * self._schedule.steps_per_epoch,
          self._backup_dir)

  def close(self):
    """Closes the progress bar of the current epoch, if one is open."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _fit_resume_step(backup_dir, steps_per_epoch):
  """The step BackupAndRestore will resume from: completed epochs x steps per epoch."""
  path = os.path.join(backup_dir, _FIT_BACKUP_METADATA)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return int(json.load(f)['epoch']) * steps_per_epoch


def train_fit(flags_obj, spec, log, model, optimizer, schedule, signals, distribution):
  """--loop=fit: model.compile + model.fit, recorded like the custom loop.

  Resumes from the BackupAndRestore state at the last epoch end; the training
  stream skips the batches already trained on, so the resumed epochs see the batches
  of an uninterrupted run. `signals` is the runner's cli.SignalCatcher: a signal stops
  fit after the current batch (the rerun redoes the epoch) or after the epoch's backup.
  Runs on one device or under --strategy=mirrored (one process, the chief). Returns the
  stats dict.
  """
  started = time.time()
  spe = schedule.steps_per_epoch
  backup_dir = log.path(runlog.CHECKPOINTS_DIR, FIT_BACKUP_DIR)
  step = _fit_resume_step(backup_dir, spe)
  log.truncate_after(step, spe)
  recorder = training.Recorder(log, schedule, lambda: model_weights(model))
  if step:
    recorder.last_checkpoint = backup_dir
    logging.info('resuming %s from step %d (model.fit resumes at epoch ends)',
                 log.model_dir, step)
  elif 0 in schedule.snapshot_steps:
    log.save_snapshot(0, model_weights(model))
  # jit_compile explicitly: fit's 'auto' would turn XLA on on a GPU without op
  # determinism, where the custom loop compiles only with --jit_compile.
  model.compile(optimizer=optimizer, loss=loss_function(flags_obj.loss),
                metrics=[keras.metrics.CategoricalAccuracy(name='accuracy')],
                jit_compile=flags_obj.jit_compile, steps_per_execution=1)
  if flags_obj.jit_compile and not model.jit_compile:
    # Keras 3 declines XLA under op determinism (with the warning above); the manifest
    # says what ran.
    logging.warning('model.fit runs without XLA: Keras disables jit_compile under '
                    '--deterministic; pass --nodeterministic for XLA in fit')
  log.update(jit_compile=bool(model.jit_compile))
  train_dataset, val_dataset = _fit_datasets(flags_obj, spec, distribution, step)
  scalars = _ScalarWriter(log.model_dir)
  callback = _FitRecorder(recorder, schedule, flags_obj.batch_size, scalars, signals,
                          backup_dir)
  backup = keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True,
                                            delete_checkpoint=False)
  try:
    # A known length keeps Keras from warning, after every first validation pass,
    # that the input "ran out of data; interrupting training".
    validation_steps = (-(-spec.val_check.good_records // flags_obj.batch_size)
                        if val_dataset is not None else None)
    # shuffle=False: the pipeline shuffles; Keras would only warn that it cannot. Only
    # errors of the input pipeline are data errors; the model's are faults.
    with data.input_errors(spec):
      model.fit(train_dataset, epochs=schedule.epochs, steps_per_epoch=spe,
                validation_data=val_dataset, validation_steps=validation_steps,
                callbacks=[_FiniteWeights(recorder, spe), backup, callback], shuffle=False,
                verbose=0)
  finally:
    callback.close()
    scalars.flush()
  final_metrics = callback.final_metrics or training.last_epoch_metrics(log)
  export_dir = log.path(runlog.EXPORT_DIR)
  _export(model, log, export_dir)
  if signals.caught:
    # The last epoch's backup is written: the rerun only exports again.
    raise recorder.interrupted(signals.signum, schedule.total_steps, backup_dir)
  recorder.complete(schedule.total_steps, final_metrics, export_dir, started)
  return {'global_step': schedule.total_steps, 'model_dir': log.model_dir, **final_metrics}


def run(flags_obj):
  """bin/train_eager: trains with --loop=custom or --loop=fit; returns the stats dict.

  With --save_init_weights, writes the freshly initialised weights there and returns
  without training and without a run directory. The data (pre-flight check), the model
  and --init_weights are checked before the run directory is touched. Under
  --strategy=multi_worker every worker runs this; only the chief writes MODEL_DIR.
  """
  training.check_device(flags_obj)
  # From here on SIGINT/SIGTERM only set a flag that training honours with a checkpoint.
  with cli.SignalCatcher() as signals:
    distribution = distribution_lib.setup(flags_obj)
    signals.reclaim()
    distribution_lib.check_batch(distribution, flags_obj.batch_size)
    spec = training.resolve_data(flags_obj)
    configure(flags_obj)
    # Model, optimizer and metrics are created in the scope, so they are mirrored.
    with distribution.strategy.scope():
      return _run_in_scope(flags_obj, spec, distribution, signals)


def _run_in_scope(flags_obj, spec, distribution, signals):
  model = build_model(flags_obj, spec.num_classes, distributed=distribution.distributed)
  if flags_obj.save_init_weights:
    if distribution.is_chief:
      runlog.save_weights(flags_obj.save_init_weights, model_weights(model))
      logging.info('initial weights written to %s', flags_obj.save_init_weights)
    return {'init_weights': flags_obj.save_init_weights}
  if flags_obj.init_weights:
    load_init_weights(model, flags_obj.init_weights)
  optimizer = make_optimizer(flags_obj)
  runner = RUNNER_FIT if flags_obj.loop == 'fit' else RUNNER_CUSTOM
  with distribution_lib.writable_model_dir(distribution, flags_obj.model_dir) as model_dir:
    log = runlog.RunLog(model_dir, runner, tf1compat_flags.flag_values(flags_obj),
                        overwrite=flags_obj.overwrite, fingerprint=spec.fingerprint)
    log.open()
    with training.marking_failures(log):
      log.update(
          **training.common_manifest(
              flags_obj, spec, optimizer_name=optimizer_name(flags_obj),
              epsilon=float(_adam(optimizer).epsilon),
              versions=runlog.versions(keras.__version__, tf.__version__),
              device=training.device_description()),
          **distribution.manifest(),
          batch_norm_moving_variance=('bessel_corrected' if flags_obj.tf1_bn_variance
                                      else 'biased'),
          dtype_policy=keras.mixed_precision.global_policy().name,
          jit_compile=flags_obj.jit_compile)
      schedule = training.schedule_from_flags(flags_obj)
      # The other workers resume from the chief's checkpoints.
      chief_checkpoints = (None if distribution.is_chief else
                           os.path.join(flags_obj.model_dir, runlog.CHECKPOINTS_DIR))
      if flags_obj.loop == 'fit':
        return train_fit(flags_obj, spec, log, model, optimizer, schedule, signals,
                         distribution)
      agreement = (distribution_lib.AgreedSignals(signals) if distribution.workers > 1
                   else None)
      backend = EagerBackend(flags_obj, spec, log, model, optimizer, distribution,
                             restore_dir=chief_checkpoints, agreement=agreement)
      return training.train(backend, log, schedule, agreement or signals)
