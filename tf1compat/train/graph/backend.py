"""The legacy TF1 graph-mode training loop, written the way TF1 teams wrote it.

One `tf.Graph` holds everything: a one-shot iterator over the shared pipeline, the
seed's ConvNet (or a team's model, --model) wired onto its output with
`Input(tensor=features)`, the loss with the model's regularization losses added by hand,
a `tf.compat.v1.train.AdamOptimizer` train op that depends on `model.updates` (its rate
`exponential_decay` on the global step under --lr_decay_steps),
`tf.compat.v1.metrics` running metrics in a `metrics` variable scope, a validation
pipeline with its own initializable iterator, and a `tf.compat.v1.train.Saver` that
checkpoints the weights, the optimizer slots, the global step, the training
iterator's position and the running metrics, so a rerun resumes exactly where the
last one stopped (Dropout masks excepted: TF1's stateful random ops keep their position
outside any checkpoint). `GraphBackend` exposes that graph and its Session to the
shared driver in `training.py`; what the graph computes is model_fn.py, the replay of a
run's step replay.py. train/eager/backend.py is the twin.

Process setup is the caller's job and must happen before TensorFlow is imported
(`bin/train_graph` does it): `TF_USE_LEGACY_KERAS=1`, so that `tf.keras` is Keras 2
from `tf-keras` (`Input(tensor=...)`, `learning_phase()`, `model.updates`), then
`tf.compat.v1.disable_v2_behavior()`. Importing this module does nothing else.

The graph switches of `define_graph_flags` reproduce the legacy mistakes on request:
`--wiring=model_call`, `--update_ops=false`, `--reset_metrics=never`,
`--feed_learning_phase=false`.
"""

import dataclasses
import os

from absl import logging
import tensorflow as tf

from tf1compat.data import data_folder
from tf1compat.data import pipeline
from tf1compat.data import preflight
from tf1compat.runs import errors
from tf1compat.runs import interrupts
from tf1compat.runs import run_files
from tf1compat.runs import optimizers
from tf1compat.runs import runlog
from tf1compat.runtime import stacks
from tf1compat.train import checkpoints
from tf1compat.train import replay_mode
from tf1compat.train import training
from tf1compat.train.graph import model_fn
from tf1compat.train.graph import replay
from tf1compat.train.models import keras_facts
from tf1compat.train.models import plugins

RUNNER = 'graph'
CHECKPOINT_PREFIX = 'model.ckpt'


class GraphBackend(replay.ReplayStep, training.Backend):
  """The TF1 graph, its Session and its run-directory outputs, for `training.train`.

  The constructor builds the whole graph, finalizes it, starts a Session, initializes
  every variable and loads `--init_weights`; `attach(log)` then points checkpoints and
  TensorBoard at the run directory once it is open. `close()` ends the Session.
  `dataset_hook(dataset, training)`, if given, wraps every input pipeline.
  """

  def __init__(self, cfg, spec, dataset_hook=None):
    self._cfg = cfg
    self._spec = spec
    self._dataset_hook = dataset_hook or (lambda dataset, training: dataset)
    self._checkpoint_dir = None
    self._writer = None
    self.graph = tf.Graph()
    with self.graph.as_default():
      # The graph-level seed fixes every op seed that is not given explicitly (weight
      # initializers, Dropout masks) from the order the ops are built in, so the build
      # order below is part of what makes two runs with the same flags identical.
      tf.compat.v1.set_random_seed(cfg.seed)
      self._build_training()
      self._build_evaluation()
      self._saver = tf.compat.v1.train.Saver(
          var_list=(tf.compat.v1.global_variables() + self._train_metric_variables
                    + [self._iterator_saveable]),
          max_to_keep=checkpoints.CHECKPOINTS_KEPT,
          # The state file names checkpoints by file name, as CheckpointManager does: with
          # absolute paths a run directory copied elsewhere resumed from the original's.
          save_relative_paths=True)
      self._build_weight_loader()
      initialize = tf.group(tf.compat.v1.global_variables_initializer(),
                            tf.compat.v1.local_variables_initializer())
    # Nothing may add ops once training runs: a graph that grows each step is the
    # classic TF1 leak, and finalize() turns it into an immediate error.
    self.graph.finalize()
    config = tf.compat.v1.ConfigProto()
    config.gpu_options.allow_growth = True
    self._sess = tf.compat.v1.Session(graph=self.graph, config=config)
    self._sess.run(initialize)
    if cfg.init_weights:
      self._load_weights(cfg.init_weights)

  def _dataset(self, training_split):
    """The training or validation pipeline (the eager runner's twin reads the same)."""
    return self._dataset_hook(pipeline.run_dataset(self._spec, self._cfg, training_split),
                              training_split)

  def _build_training(self):
    cfg = self._cfg
    iterator = tf.compat.v1.data.make_one_shot_iterator(self._dataset(True))
    # The iterator's position (shuffle buffer, RNG state, files read) goes into every
    # checkpoint, so a resumed run sees the batches an uninterrupted one would have.
    self._iterator_saveable = tf.compat.v1.data.experimental.make_saveable_from_iterator(
        iterator)
    features, labels = iterator.get_next()
    self._batch = (features, labels)
    self.model, logits, model_updates, update_ops = model_fn.wire_model(
        cfg, self._spec.num_classes, features)
    # Each layer's output where the model was built (its first node), which a replay
    # fetches: under input_tensor on the training batch itself; under model_call on the
    # model's own Input placeholder, which the replay feeds the same batch (calling the
    # model on the batch gives the layers no node of their own to fetch).
    self._layer_outputs = {layer.name: layer.get_output_at(0) for layer in self.model.layers
                           if not isinstance(layer, tf.keras.layers.InputLayer)}
    self._model_input = self.model.input if cfg.wiring == 'model_call' else None
    self._model_updates = len(model_updates)
    self._update_ops_run = len(update_ops)
    self._learning_phase = tf.compat.v1.keras.backend.learning_phase()

    self._data_loss = tf.reduce_mean(model_fn.per_example_loss(cfg.loss, labels, logits))
    self._regularization_loss = model_fn.regularization_loss(self.model)
    self._loss = self._data_loss + self._regularization_loss
    # model.losses builds the regularizers' ops when read: read before the graph is final.
    self.model_summary = keras_facts.summary(self.model, tf.keras)
    self.kernels = model_fn.kernels(cfg, self.model)
    label_classes, predicted_classes = model_fn.classes(labels, logits)
    self._batch_accuracy = tf.reduce_mean(
        tf.cast(tf.equal(label_classes, predicted_classes), tf.float32))
    (_, self._mean_loss_update, _, self._accuracy_update, self._train_metric_variables,
     self._reset_train_metrics) = model_fn.running_metrics('metrics', self._loss, label_classes,
                                                           predicted_classes)

    self._global_step = tf.compat.v1.train.get_or_create_global_step()
    # Read in the same run as the train op, before it increments the global step: the
    # rate this step applies.
    self._learning_rate = model_fn.learning_rate_schedule(cfg, self._global_step)
    with tf.control_dependencies(update_ops):
      # minimize() in its two halves, so that a replay can fetch the gradients.
      optimizer = model_fn.make_optimizer(cfg, self._learning_rate)
      self.optimizer_manifest = {
          **optimizers.describe(optimizer, learning_rate=cfg.learning_rate),
          'name': model_fn.optimizer_name(cfg)}
      self._gradients = optimizer.compute_gradients(self._loss)
      self._train_op = optimizer.apply_gradients(self._gradients,
                                                 global_step=self._global_step)
    self._optimizer_state = model_fn.optimizer_state_variables(
        cfg, optimizer, self.model, self._global_step)
    self._state_placeholders = {
        name: tf.compat.v1.placeholder(variable.dtype.base_dtype, variable.shape)
        for name, variable in self._optimizer_state.items()}
    self._assign_state = tf.group(*[
        tf.compat.v1.assign(self._optimizer_state[name], placeholder)
        for name, placeholder in self._state_placeholders.items()])
    if cfg.nudge_seed is not None:
      self._train_op = model_fn.nudge_each_step(
          keras_facts.weight_items(self.model), self._train_op,
          self._global_step, cfg.nudge_seed)
    self._train_feed = {self._learning_phase: True} if cfg.feed_learning_phase else {}

  def _build_evaluation(self):
    """The validation pipeline and metrics, apart from the training ones.

    An initializable iterator restarts the validation files at each evaluation; the
    metrics live in their own scope so that evaluating never touches the running
    training metrics (nor, with them, what a checkpoint resumes).
    """
    self._val_iterator = None
    if not self._spec.val_files:
      return
    self._val_iterator = tf.compat.v1.data.make_initializable_iterator(self._dataset(False))
    features, labels = self._val_iterator.get_next()
    logits = self.model(features)
    # As Keras' evaluate: the validation loss holds the regularization losses too.
    losses = (model_fn.per_example_loss(self._cfg.loss, labels, logits)
              + model_fn.regularization_loss(self.model))
    (self._val_loss, self._val_loss_update, self._val_accuracy, self._val_accuracy_update,
     _, self._reset_val_metrics) = model_fn.running_metrics('validation', losses,
                                                            *model_fn.classes(labels, logits))

  def _build_weight_loader(self):
    self._weight_items = keras_facts.weight_items(self.model)
    self._weight_placeholders = {}
    assigns = []
    if self._cfg.init_weights:
      for key, variable in self._weight_items:
        placeholder = tf.compat.v1.placeholder(variable.dtype.base_dtype, variable.shape)
        self._weight_placeholders[key] = placeholder
        assigns.append(tf.compat.v1.assign(variable, placeholder))
    self._assign_weights = tf.group(*assigns)

  def _load_weights(self, path):
    shapes = {key: tuple(v.shape.as_list()) for key, v in self._weight_items}
    plugins.check_weight_file(self._cfg.model, path, list(shapes), tf.keras)
    weights = run_files.load_weights(path, shapes)
    self._sess.run(self._assign_weights,
                   {self._weight_placeholders[key]: value for key, value in weights.items()})
    logging.info('initial weights loaded from %s', path)

  def _draws_dropout_masks(self):
    return self._cfg.dropout > 0 and self._cfg.feed_learning_phase

  def describe(self):
    """The graph-specific block of run.json."""
    return {
        'wiring': self._cfg.wiring,
        'iterator': 'one_shot, checkpointed with make_saveable_from_iterator',
        'model_updates': self._model_updates,
        'update_ops_in_train_op': self._update_ops_run,
        'learning_phase_fed': self._cfg.feed_learning_phase,
        'exact_resume': not self._draws_dropout_masks(),
        'reset_metrics': self._cfg.reset_metrics,
        'trainable_parameters': int(sum(v.shape.num_elements()
                                        for v in self.model.trainable_weights)),
    }

  def attach(self, log):
    """Points checkpoints and TensorBoard events at the (open) run directory of `log`."""
    self._checkpoint_dir = log.path(run_files.CHECKPOINTS_DIR)
    self._writer = tf.compat.v1.summary.FileWriter(log.model_dir, graph=self.graph)

  def restore(self):
    latest = checkpoints.restore_newest(self._checkpoint_dir,
                                        lambda path: self._saver.restore(self._sess, path))
    if latest is None:
      return 0, None
    step = int(self._sess.run(self._global_step))
    if self._draws_dropout_masks():
      logging.warning(
          'resumed at step %d with --dropout: the Dropout masks come from a stateful random '
          'op whose position no checkpoint holds, so from here on they differ from an '
          'uninterrupted run (weights, optimizer, data order and metrics resume exactly)',
          step)
    # Lets TensorBoard drop events the previous process wrote after this step.
    self._writer.add_session_log(
        tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START), step)
    return step, latest

  def train_step(self):
    try:
      with pipeline.input_errors(self._spec):
        values = self._sess.run(
            {'train': self._train_op, 'loss': self._loss,
             'batch_accuracy': self._batch_accuracy, 'mean_loss': self._mean_loss_update,
             'accuracy': self._accuracy_update, 'learning_rate': self._learning_rate},
            self._train_feed)
    except tf.errors.OutOfRangeError as e:
      # The training pipeline repeats forever, so it only ends when it is empty.
      raise data_folder.DataError(f'--data_dir={self._spec.data_dir}: the training files hold no '
                                  'records; write some with bin/make_records') from e
    return training.StepResult(
        loss=float(values['loss']), batch_accuracy=float(values['batch_accuracy']),
        mean_loss=float(values['mean_loss']), accuracy=float(values['accuracy']),
        learning_rate=float(values['learning_rate']))

  def reset_metrics(self):
    self._sess.run(self._reset_train_metrics)

  def evaluate(self):
    if self._val_iterator is None:
      return None
    self._sess.run([self._val_iterator.initializer, self._reset_val_metrics])
    feed = {self._learning_phase: False}
    batches = 0
    while True:
      try:
        with pipeline.input_errors(self._spec):
          self._sess.run([self._val_loss_update, self._val_accuracy_update], feed)
      except tf.errors.OutOfRangeError:
        break
      batches += 1
    if not batches:
      return None
    val_loss, val_accuracy = self._sess.run([self._val_loss, self._val_accuracy])
    return float(val_loss), float(val_accuracy)

  def weights(self):
    return self._sess.run({key: variable for key, variable in self._weight_items})

  def optimizer_state(self):
    return self._sess.run(self._optimizer_state)

  def load_optimizer_state(self, state):
    training.check_optimizer_state(state, self._optimizer_state)
    self._sess.run(self._assign_state, {placeholder: state[name] for name, placeholder
                                        in self._state_placeholders.items()})

  def advance(self, start, step):
    """Moves a backend loaded with a run's snapshot of `start` to just before `step`: its
    pipeline past the first `start` batches, then steps `start` + 1 to `step` - 1
    trained as the run trained them (replay_mode)."""
    with pipeline.input_errors(self._spec):
      for _ in range(start):
        self._sess.run(self._batch)
    for _ in range(start + 1, step):
      self.train_step()

  def save_checkpoint(self, step):
    path = self._saver.save(self._sess, os.path.join(self._checkpoint_dir, CHECKPOINT_PREFIX),
                            global_step=step)
    self._writer.flush()
    return path

  def write_scalars(self, step, scalars):
    summary = tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=tag, simple_value=value)
        for tag, value in scalars.items()])
    self._writer.add_summary(summary, step)

  def export(self, export_dir):
    model_fn.export(self._cfg, self._spec.num_classes, self.weights(), export_dir)

  def close(self):
    """Closes the TensorBoard writer and the Session."""
    if self._writer is not None:
      self._writer.close()
    self._sess.close()


def _determinism_for(cfg, device):
  """`cfg`, with op determinism off where no deterministic kernel exists for it."""
  if (cfg.deterministic and device != 'CPU' and cfg.batch_norm and
      not cfg.feed_learning_phase):
    # BatchNorm's inference branch trained on (the learning phase never fed) has its
    # gradient in FusedBatchNormGradV3 with is_training=False, which has no
    # deterministic GPU kernel in TF 2.21: under op determinism the first step would
    # stop with UnimplementedError. This mistake's run goes on without determinism;
    # run.json records deterministic false and why.
    logging.warning('--nofeed_learning_phase with --batch_norm on %s: op determinism turned '
                    'off (no deterministic GPU kernel for its BatchNorm gradient)', device)
    return dataclasses.replace(cfg, deterministic=False)
  return cfg


def run(cfg, dataset_hook=None):
  """Trains as `cfg` (a config.GraphConfig) says and returns training.train's stats.

  With save_init_weights, writes the model's initial weights there instead and returns
  {'init_weights': path}, without a run directory. `dataset_hook(dataset, training)`
  wraps every input pipeline (the benchmark's compute-only measurement serves one batch
  from memory with it). Raises errors.UsageError (bad flags, files or data),
  errors.NumericFault and errors.Interrupted as training.train. Assumes the process setup
  described in the module docstring.
  """
  preflight.check_paths(cfg)
  problem = stacks.tf32_problem(cfg.tf32)
  if problem:
    raise errors.UsageError(problem)
  device = training.check_device(cfg)
  cfg = _determinism_for(cfg, device)
  if cfg.deterministic:
    stacks.enable_op_determinism()
  stacks.apply_tf32(cfg.tf32)
  # From here on SIGINT/SIGTERM only set a flag that training honours with a checkpoint.
  with interrupts.SignalCatcher() as signals:
    # The data (pre-flight check), the graph and --init_weights are checked before the
    # run directory is touched, so a bad flag or file leaves no half-started run behind.
    spec = training.check_data(cfg)
    model_fn.check_model(cfg, spec.num_classes)
    backend = GraphBackend(cfg, spec, dataset_hook)
    try:
      if cfg.save_init_weights:
        return training.save_init_weights(cfg, backend.weights())
      log = training.open_run(cfg, spec, RUNNER)
      with training.marking_failures(log):
        backend.attach(log)
        log.update(**training.start_manifest(
            cfg, spec, versions=runlog.versions(tf.__version__, *stacks.graph_keras()),
            device=device, kernels=backend.kernels, optimizer=backend.optimizer_manifest,
            lr_schedule=optimizers.schedule_manifest(cfg), strategy='default',
            replicas=1, workers=1, devices=[], dtype_policy='float32', jit_compile=False,
            settings=stacks.settings(), model_summary=backend.model_summary,
            regularization_in_loss=True,
            graph=backend.describe()))
        return training.train(backend, log, training.schedule(
            cfg, reset_metrics=cfg.reset_metrics == 'epoch'), signals)
    finally:
      backend.close()


def replay_run(cfg, replay_cfg):
  """Replays a step (replay_cfg.step, by default the first) of the run `cfg` describes
  (replay_mode.run_config), as replay_cfg (config.ReplayConfig) says, and writes its probe.
  Assumes the process setup described in the module docstring and the run's thread counts
  (replay_mode.apply_settings)."""
  device = training.check_device(cfg)
  cfg = _determinism_for(cfg, device)
  if cfg.deterministic:
    stacks.enable_op_determinism()
  stacks.apply_tf32(cfg.tf32)
  spec = training.check_data(cfg)
  # The run checked its model's names when it trained; the replay builds the same one.
  backend = GraphBackend(cfg, spec)
  try:
    replay_mode.load_start(backend, replay_cfg)
    batch = replay_mode.read_batch(replay_cfg.batch) if replay_cfg.batch else None
    stages, learning_rate = backend.replay_step(batch)
    meta = backend.layer_meta()
  finally:
    backend.close()
  replay_mode.write_probe(replay_cfg, RUNNER, stages, {
      **meta, 'learning_rate': learning_rate, 'training': cfg.feed_learning_phase,
      'settings': stacks.settings(), 'tensorflow': tf.__version__})
  logging.info('step %d of %s replayed into %s', replay_cfg.step, replay_cfg.model_dir,
               replay_cfg.output)
