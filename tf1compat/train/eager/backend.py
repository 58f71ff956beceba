"""The TF2 port of the graph loop: a custom `tf.function` loop, and what Keras fit shares.

Keras 3 only (TF2's own `keras`; never `tf.compat.v1`). `EagerBackend` builds the
model with `model_fn.build_model`, the optimizer, the metrics and the same seeded pipeline
as the graph runner; its custom loop (`--loop=custom`, runner 'eager') is one
`tf.function` train step with a GradientTape and `keras.metrics`, driven by
`training.train`. Its checkpoints are `tf.train.CheckpointManager` checkpoints holding
the model, the optimizer, the step, the running metrics and the training-data
iterator, so a rerun resumes mid-epoch on exactly the batches an uninterrupted run
would see. `--loop=fit` (runner 'fit') trains the same backend's model with Keras
`model.fit` (train/fit.py). What the port computes is model_fn.py, the replay of a run's first
step replay.py; train/graph/backend.py is the twin, with the same names for the same
steps: `build_model`, `learning_rate_schedule`, `make_optimizer`, `regularization_loss`,
`per_example_loss`, `train_step`, `evaluate`, `export`.

Under `--strategy=mirrored|multi_worker` (`distribution`) both run in the strategy's
scope on the replicas' slices of the same global batches; the custom loop's
checkpoints then hold no iterator (tf.distribute's cannot be saved) and a rerun skips
the batches done instead.

Importing this module sets nothing up; `run` configures the strategy, seeds, op
determinism and the mixed-precision policy for the process it runs in.
"""

import dataclasses
import functools
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tf1compat.data import pipeline
from tf1compat.data import preflight
from tf1compat.runs import interrupts
from tf1compat.runs import optimizers
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runtime import numerics
from tf1compat.train import checkpoints
from tf1compat.train import distribution as distribution_lib
from tf1compat.train import fit
from tf1compat.train import replay_mode
from tf1compat.train import scalars
from tf1compat.train import training
from tf1compat.train.eager import model_fn
from tf1compat.train.eager import replay
from tf1compat.train.models import keras_facts

RUNNER_CUSTOM = 'eager'
RUNNER_FIT = fit.RUNNER


def runner(cfg):
  """The run's runner name: 'eager' (the custom loop) or 'fit'."""
  return RUNNER_FIT if cfg.loop == 'fit' else RUNNER_CUSTOM


def configure(cfg):
  """Process-wide setup before anything is built: seeds, op determinism, TF32, dtype
  policy."""
  # TF's own INFO lines (checkpoint sharding, SavedModel assets) would bury the
  # progress lines; its warnings still show.
  tf.get_logger().setLevel('WARNING')
  keras.utils.set_random_seed(cfg.seed)
  if cfg.deterministic:
    tf.config.experimental.enable_op_determinism()
    if tf.config.list_physical_devices('GPU'):
      logging.info('op determinism is on (--deterministic, the default): cuDNN may only '
                   'pick deterministic algorithms and scatter/segment reductions run '
                   'serially, which costs speed; bin/benchmark --nodeterministic measures '
                   'the cost on this host, and --nodeterministic trades reproducibility for '
                   'it')
  numerics.apply_tf32(cfg.tf32)
  keras.mixed_precision.set_global_policy(model_fn.dtype_policy(cfg))


class EagerBackend(replay.ReplayStep, training.Backend):
  """The port: model, optimizer, metrics, pipelines and a `tf.function` train step.

  Built inside the strategy's scope, like GraphBackend from the config and the data
  alone; `attach(log)` then points checkpoints and TensorBoard at the open run
  directory. Every replica computes its share of the global batch's mean loss
  (`compute_average_loss` over the global batch size), so that the gradients the
  optimizer sums over the replicas are those of the global batch.
  `dataset_hook(dataset, training)`, if given, wraps every input pipeline.
  """

  def __init__(self, cfg, spec, distribution, dataset_hook=None):
    self._cfg = cfg
    self._spec = spec
    self.distribution = distribution
    self._dataset_hook = dataset_hook or (lambda dataset, training: dataset)
    self.model = model_fn.build_model(cfg, spec.num_classes, distributed=distribution.distributed)
    if cfg.init_weights:
      model_fn.load_init_weights(self.model, cfg.init_weights, cfg.model)
    self.lr_schedule = model_fn.learning_rate_schedule(cfg)
    # Under --fit_lr_schedule=epoch_callback the optimizer starts at the constant rate and
    # fit's LearningRateScheduler sets it (fit.py).
    self.optimizer = model_fn.make_optimizer(
        cfg, cfg.learning_rate if model_fn.lr_per_epoch(cfg) or self.lr_schedule is None
        else self.lr_schedule)
    self._strategy = distribution.strategy
    self._global_batch = cfg.batch_size
    self._replicas = distribution.replicas
    self._train_loss = keras.metrics.Mean(name='train_loss')
    self._train_accuracy = keras.metrics.CategoricalAccuracy(name='train_accuracy')
    self._val_loss = keras.metrics.Mean(name='val_loss')
    self._val_accuracy = keras.metrics.CategoricalAccuracy(name='val_accuracy')
    self._val_dataset = self.val_batches()
    self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
    # The batches a replay trains and probes on (advance, replay.py).
    self._replay_batches = None
    self._train_fn = tf.function(self._train_step, jit_compile=cfg.jit_compile)
    self._eval_fn = tf.function(self._eval_step, jit_compile=cfg.jit_compile)

  def _dataset(self, training_split):
    """The training or validation pipeline of global batches, seeded as in the graph
    runner (its twin)."""
    return self._dataset_hook(pipeline.run_dataset(self._spec, self._cfg, training_split),
                              training_split)

  def train_batches(self, skip_batches=0, fresh_iterators=False):
    """The training batches after the first `skip_batches`, distributed over the replicas
    of a distributed run (`fresh_iterators`: each iterator starts over, for fit)."""
    def global_batches():
      dataset = self._dataset(True)
      return dataset.skip(skip_batches) if skip_batches else dataset

    if not self.distribution.distributed:
      return global_batches()
    distribute = (distribution_lib.fresh_distributed_dataset if fresh_iterators
                  else distribution_lib.distribute_dataset)
    return distribute(self.distribution, global_batches, self._global_batch)

  def val_batches(self):
    """The validation batches, or None without validation records.

    Not distributed: every worker evaluates the whole set on its default device.
    """
    return self._dataset(False) if self._spec.val_files else None

  def start_manifest(self, device):
    """The run.json fields of the run's start (training.start_manifest)."""
    return training.start_manifest(
        self._cfg, self._spec,
        versions=runlog.versions(tf.__version__, runlog.KERAS_3, keras.__version__),
        device=device, kernels=model_fn.kernels(self._cfg),
        optimizer={**optimizers.describe(self.optimizer, learning_rate=self._cfg.learning_rate),
                   'name': model_fn.optimizer_name(self._cfg, self.optimizer)},
        lr_schedule=model_fn.lr_schedule_manifest(self._cfg),
        **self.distribution.manifest(),
        dtype_policy=keras.mixed_precision.global_policy().name, settings=numerics.settings(),
        jit_compile=self._cfg.jit_compile,
        model_summary=keras_facts.summary(self.model, keras),
        # fit adds them itself.
        regularization_in_loss=self._cfg.loop == 'fit' or self._cfg.add_regularization_losses)

  def attach(self, log, agreement=None):
    """Points checkpoints and TensorBoard at the (open) run directory of `log`.

    `agreement`, a distribution.AgreedSignals, is told each step whether any worker
    caught a signal.
    """
    self._log = log
    self._agreement = agreement
    self._scalars = scalars.ScalarWriter(log.model_dir)

  def loss(self, labels, outputs):
    """The run's per-example loss (what fit compiles with)."""
    return model_fn.per_example_loss(self._cfg.loss, labels, outputs)

  def _make_checkpoint(self):
    if self.distribution.distributed:
      # tf.distribute's iterators cannot be checkpointed: `restore` makes one that
      # skips the batches trained on already.
      self._iterator = None
      iterator_state = {}
    else:
      self._iterator = iter(self.train_batches())
      iterator_state = {'iterator': self._iterator}
    # Slots exist before a restore, so that it assigns them at once.
    self.optimizer.build(self.model.trainable_variables)
    self._checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self._step,
        metrics=[*self._train_loss.variables, *self._train_accuracy.variables],
        **iterator_state)
    self._manager = tf.train.CheckpointManager(
        self._checkpoint, self._log.path(run_files.CHECKPOINTS_DIR),
        max_to_keep=checkpoints.CHECKPOINTS_KEPT)

  def _step_loss(self, labels, outputs):
    """(the step's loss, its data part, its regularization part) on the model's `outputs`."""
    per_example = self.loss(labels, outputs)
    # One device keeps reduce_mean: the graph runner's op, bit for bit.
    data_loss = (tf.reduce_mean(per_example) if self._replicas == 1 else
                 tf.nn.compute_average_loss(per_example, global_batch_size=self._global_batch))
    if not self._cfg.add_regularization_losses:
      return data_loss, data_loss, tf.zeros_like(data_loss)
    # Each replica adds its share: the sum over the replicas adds them once.
    regularization = (model_fn.regularization_loss(self.model) if self._replicas == 1 else
                      tf.nn.scale_regularization_loss(model_fn.regularization_loss(self.model)))
    return data_loss + regularization, data_loss, regularization

  def _apply(self, tape, scaled_loss):
    """The gradients of the step's `scaled_loss` (recorded on `tape`), applied; returns
    them."""
    variables = self.model.trainable_variables
    gradients = tape.gradient(scaled_loss, variables)
    self.optimizer.apply_gradients(zip(gradients, variables))
    return gradients

  def _replica_step(self, images, labels, stop_flag):
    with tf.GradientTape() as tape:
      outputs = self.model(images, training=True)
      loss, _, _ = self._step_loss(labels, outputs)
      # Identity without loss scaling; LossScaleOptimizer scales here and unscales
      # the gradients in apply_gradients.
      scaled_loss = self.optimizer.scale_loss(loss)
    self._apply(tape, scaled_loss)
    self._train_accuracy.update_state(labels, outputs)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(labels, axis=-1), tf.argmax(outputs, axis=-1)), tf.float32))
    return loss, correct, tf.identity(stop_flag)

  def _train_step(self, images, labels, stop_flag):
    sum_over_replicas = functools.partial(self._strategy.reduce, tf.distribute.ReduceOp.SUM,
                                          axis=None)
    # Read before the update increments optimizer.iterations: the rate this step applies.
    learning_rate = tf.cast(self.optimizer.learning_rate, tf.float32)
    loss, correct, stop_flags = map(
        sum_over_replicas,
        self._strategy.run(self._replica_step, args=(images, labels, stop_flag)))
    self._train_loss.update_state(loss)
    self._step.assign_add(1)
    # One tensor, so that the host fetches the step's numbers in one transfer.
    return tf.stack([loss, correct / self._global_batch, self._train_loss.result(),
                     self._train_accuracy.result(), learning_rate, stop_flags])

  def _eval_step(self, images, labels):
    outputs = self.model(images, training=False)
    # Per-example losses: the last, smaller batch weighs by its size, as in fit; with the
    # regularization losses, as fit's validation loss.
    losses = model_fn.per_example_loss(self._cfg.loss, labels, outputs)
    if self._cfg.add_regularization_losses:
      losses += model_fn.regularization_loss(self.model)
    self._val_loss.update_state(losses)
    self._val_accuracy.update_state(labels, outputs)

  def restore(self):
    self._make_checkpoint()
    # The other workers resume from the chief's checkpoints.
    path = checkpoints.restore_newest(
        self._manager.directory if self.distribution.is_chief else
        os.path.join(self._cfg.model_dir, run_files.CHECKPOINTS_DIR),
        lambda path: self._checkpoint.restore(path).assert_existing_objects_matched())
    if path is not None:
      logging.info('restored checkpoint %s', path)
    step = int(self._step.numpy())
    if self._iterator is None:
      self._iterator = iter(self.train_batches(skip_batches=step))
    return step, path

  def train_step(self):
    with pipeline.input_errors(self._spec):
      images, labels = next(self._iterator)
    stop_flag = self._agreement.local_flag() if self._agreement else 0.0
    values = self._train_fn(images, labels, tf.constant(stop_flag, tf.float32)).numpy()
    if self._agreement:
      self._agreement.agree(values[5])
    return training.StepResult(*(float(v) for v in values[:5]))

  def reset_metrics(self):
    self._train_loss.reset_state()
    self._train_accuracy.reset_state()

  def evaluate(self):
    if self._val_dataset is None:
      return None
    self._val_loss.reset_state()
    self._val_accuracy.reset_state()
    with pipeline.input_errors(self._spec):
      for images, labels in self._val_dataset:
        self._eval_fn(images, labels)
    return float(self._val_loss.result()), float(self._val_accuracy.result())

  def weights(self):
    return model_fn.model_weights(self.model)

  def optimizer_state(self):
    self.optimizer.build(self.model.trainable_variables)
    scale = model_fn.slot_scale(self._cfg, self.optimizer)
    # .numpy(), which reads a mirrored variable too (converting it fails).
    values = {name: np.asarray(variable.numpy()) for name, variable in
              model_fn.optimizer_state_variables(self._cfg, self.optimizer, self.model,
                                                 self._step).items()}
    return {name: value / scale if name.startswith('slot/') else value
            for name, value in values.items()}

  def load_optimizer_state(self, state):
    self.optimizer.build(self.model.trainable_variables)
    variables = model_fn.optimizer_state_variables(self._cfg, self.optimizer, self.model,
                                                   self._step)
    training.check_optimizer_state(state, variables)
    # The step first: the slots' scale may read the rate of the step before it.
    self.optimizer.iterations.assign(state['step'])
    scale = model_fn.slot_scale(self._cfg, self.optimizer)
    for name, variable in variables.items():
      variable.assign(state[name] * scale if name.startswith('slot/') else state[name])

  def advance(self, start, step):
    """Moves a backend loaded with a run's snapshot of `start` to just before `step`: its
    pipeline past the first `start` batches, then steps `start` + 1 to `step` - 1
    trained as the custom loop trains them (replay_mode)."""
    self._replay_batches = iter(self.train_batches(skip_batches=start))
    for _ in range(start + 1, step):
      with pipeline.input_errors(self._spec):
        images, labels = next(self._replay_batches)
      self._train_fn(images, labels, tf.constant(0.0, tf.float32))

  def save_checkpoint(self, step):
    self._scalars.flush()
    return self._manager.save(checkpoint_number=step)

  def write_scalars(self, step, scalars):
    self._scalars(step, scalars)

  def flush_scalars(self):
    """Writes the TensorBoard events written so far to disk."""
    self._scalars.flush()

  def export(self, export_dir):
    self._scalars.flush()
    model_fn.export(self.model, export_dir, self._log.path(run_files.KERAS_FILE))


def run(cfg, dataset_hook=None):
  """bin/train_eager: trains with --loop=custom or --loop=fit; returns the stats dict.

  `cfg` is a config.EagerConfig. With save_init_weights, writes the freshly initialised
  weights there and returns {'init_weights': path} without training and without a run
  directory. The data (pre-flight check), the model and --init_weights are checked
  before the run directory is touched. `dataset_hook(dataset, training)` wraps every
  input pipeline. Under --strategy=multi_worker every worker runs this; only the chief
  writes MODEL_DIR.
  """
  preflight.check_paths(cfg)
  device = training.check_device(cfg)
  # From here on SIGINT/SIGTERM only set a flag that training honours with a checkpoint.
  with interrupts.SignalCatcher() as signals:
    distribution = distribution_lib.setup(cfg)
    signals.reclaim()
    distribution_lib.check_batch(distribution, cfg.batch_size)
    spec = training.check_data(cfg)
    model_fn.check_model(cfg, spec.num_classes)
    configure(cfg)
    # Model, optimizer and metrics are created in the scope, so they are mirrored.
    with distribution.strategy.scope():
      backend = EagerBackend(cfg, spec, distribution, dataset_hook)
      if cfg.save_init_weights:
        if not distribution.is_chief:
          return {'init_weights': cfg.save_init_weights}
        return training.save_init_weights(cfg, backend.weights())
      with distribution_lib.writable_model_dir(distribution, cfg.model_dir) as model_dir:
        log = training.open_run(cfg, spec, runner(cfg), model_dir)
        with training.marking_failures(log):
          log.update(**backend.start_manifest(device))
          schedule = training.schedule(cfg)
          if cfg.loop == 'fit':
            backend.attach(log)
            return fit.train(backend, cfg, spec, log, schedule, signals)
          agreement = (distribution_lib.AgreedSignals(signals) if distribution.workers > 1
                       else None)
          backend.attach(log, agreement)
          return training.train(backend, log, schedule, agreement or signals)


def replay_run(cfg, replay_cfg):
  """Replays a step (replay_cfg.step, by default the first) of the run `cfg` describes
  (replay_mode.run_config), as
  replay_cfg (config.ReplayConfig) says, and writes its probe. A fit run's step is the
  custom loop's on the same model, with the regularization losses fit adds (replay.py)."""
  # One replica (replay_mode.replayable): its step is one device's, without a strategy.
  cfg = dataclasses.replace(cfg, strategy='default', devices=None, cpu_devices=1)
  if cfg.loop == 'fit':
    cfg = dataclasses.replace(cfg, add_regularization_losses=True)
  training.check_device(cfg)
  distribution = distribution_lib.setup(cfg)
  spec = training.check_data(cfg)
  # The run checked its model's names when it trained; the replay builds the same one.
  configure(cfg)
  with distribution.strategy.scope():
    backend = EagerBackend(cfg, spec, distribution)
    replay_mode.load_start(backend, replay_cfg)
    batch = replay_mode.read_batch(replay_cfg.batch) if replay_cfg.batch else None
    stages, learning_rate = backend.replay_step(batch)
    replay_mode.write_probe(replay_cfg, runner(cfg), stages, {
        **backend.layer_meta(), 'learning_rate': learning_rate, 'training': True,
        'settings': numerics.settings(), 'tensorflow': tf.__version__})
  logging.info('step %d of %s replayed into %s', replay_cfg.step, replay_cfg.model_dir,
               replay_cfg.output)
