"""The port on Keras 3's JAX backend: a `jax.jit` custom loop, and what Keras fit shares.

Keras 3 on JAX only (process.use_keras3('jax') sets it before anything imports Keras).
`JaxBackend` builds the model, the optimizer and the same seeded tf.data pipeline as the
other runners (train/eager/model_fn.py's, Keras-generic), and hands each batch to JAX as
numpy. Its custom loop (`--loop=custom`, runner 'eager') is one jitted, stateless step,
the twin of the `tf.function` step: `model.stateless_call` under `jax.value_and_grad`,
then the optimizer's `stateless_apply`; the state it returns goes back into the Keras
variables, which stay the run's state between steps (weights, snapshots, checkpoints).
The running metrics are Keras' Mean and CategoricalAccuracy computed on the host in
float32. `--loop=fit` is Keras' model.fit on JAX (train/fit.py).

Checkpoints (state.py): the state (every model and optimizer variable, the step, the
running metrics) as `ckpt-N.state.npz`, written atomically, beside a `tf.train.Checkpoint`
of the training-data iterator (`ckpt-N`), so that a rerun resumes mid-epoch on exactly the
batches an uninterrupted run would see. train/eager/backend.py is the twin.

One device, float32: the flags refuse --strategy, --mixed_precision and --jit_compile.
Importing this module sets nothing up; `run` seeds and configures the process.
"""

import dataclasses
import importlib.metadata
import os

from absl import logging
import jax
import jax.numpy as jnp
import keras
from keras import ops
import numpy as np
import tensorflow as tf

from tf1compat.data import pipeline
from tf1compat.data import preflight
from tf1compat.runs import errors
from tf1compat.runs import interrupts
from tf1compat.runs import optimizers
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runtime import numerics
from tf1compat.train import distribution as distribution_lib
from tf1compat.train import fit
from tf1compat.train import replay_mode
from tf1compat.train import scalars
from tf1compat.train import training
from tf1compat.train.eager import model_fn as keras3_model_fn
from tf1compat.train.jax import model_fn
from tf1compat.train.jax import replay
from tf1compat.train.jax import state as state_lib
from tf1compat.train.models import keras_facts

RUNNER_CUSTOM = 'eager'
RUNNER_FIT = fit.RUNNER
# --tf32 as JAX's default precision of float32 matmuls and convolutions: on a GPU JAX's
# own default computes them in TensorFloat-32 (or bfloat16 passes), as TF32 does.
_MATMUL_PRECISION = {'on': 'tensorfloat32', 'off': 'highest'}


def runner(cfg):
  """The run's runner name: 'eager' (the custom loop) or 'fit', as for the TensorFlow port."""
  return RUNNER_FIT if cfg.loop == 'fit' else RUNNER_CUSTOM


# XLA's switch for deterministic GPU kernels (scatter, reductions), read when JAX starts its
# backend; XLA on a CPU is deterministic.
_DETERMINISTIC_XLA = '--xla_gpu_deterministic_ops=true'


def set_up_process(cfg):
  """What must precede JAX's first computation and TensorFlow's first operation: --deterministic
  as XLA's flag, and TensorFlow, which only runs the input pipeline here, off the GPU JAX
  computes on."""
  flags = os.environ.get('XLA_FLAGS', '')
  if cfg.deterministic and _DETERMINISTIC_XLA not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {_DETERMINISTIC_XLA}'.strip()
  tf.config.set_visible_devices([], 'GPU')
  tf.get_logger().setLevel('WARNING')


def configure(cfg):
  """Process-wide setup before anything is built: seeds, matmul precision, the float32
  policy."""
  keras.utils.set_random_seed(cfg.seed)
  if cfg.tf32 in _MATMUL_PRECISION:
    jax.config.update('jax_default_matmul_precision', _MATMUL_PRECISION[cfg.tf32])
  keras.mixed_precision.set_global_policy('float32')


def device_description():
  """What JAX computes on: 'CPU', or 'GPU (name)' and ' xN' for N > 1."""
  devices = jax.devices()
  if devices[0].platform == 'cpu':
    return 'CPU'
  return f'GPU ({devices[0].device_kind})' + (f' x{len(devices)}' if len(devices) > 1 else '')


def check_device(cfg):
  """Logs the device JAX computes on; with --require_gpu, a CPU is a usage error."""
  device = device_description()
  logging.info('device: %s (JAX %s)', device, jax.__version__)
  if cfg.require_gpu and device == 'CPU':
    raise errors.UsageError("--require_gpu: JAX sees no GPU here (it would train on the CPU); "
                            "install JAX's CUDA wheels (pip install 'jax[cuda12]') or drop "
                            '--require_gpu')
  return device


def settings():
  """run.json's 'settings' block: TensorFlow's (its pipeline's threads), XLA's determinism
  and JAX's matmul precision."""
  return {**numerics.settings(),
          'op_determinism': _DETERMINISTIC_XLA in os.environ.get('XLA_FLAGS', ''),
          'jax_default_matmul_precision': jax.config.jax_default_matmul_precision or 'default'}


class JaxBackend(replay.ReplayStep, training.Backend):
  """The JAX port: model, optimizer, metrics, pipelines and a jitted stateless train step.

  Built from the config and the data alone; `attach(log)` then points checkpoints and
  TensorBoard at the open run directory. `dataset_hook(dataset, training)`, if given,
  wraps every input pipeline.
  """

  def __init__(self, cfg, spec, distribution, dataset_hook=None):
    self._cfg = cfg
    self._spec = spec
    # The default strategy: what fit and the manifest ask of a one-device run.
    self.distribution = distribution
    self._dataset_hook = dataset_hook or (lambda dataset, training: dataset)
    self.model = keras3_model_fn.build_model(cfg, spec.num_classes)
    if cfg.init_weights:
      keras3_model_fn.load_init_weights(self.model, cfg.init_weights, cfg.model)
    self.lr_schedule = keras3_model_fn.learning_rate_schedule(cfg)
    self.optimizer = keras3_model_fn.make_optimizer(
        cfg, cfg.learning_rate if keras3_model_fn.lr_per_epoch(cfg) or self.lr_schedule is None
        else self.lr_schedule)
    # Slots exist before a restore or the first step, which hand them to the step.
    self.optimizer.build(self.model.trainable_variables)
    self._step = 0
    self._train_loss = state_lib.RunningMean()
    self._train_correct = state_lib.RunningMean()
    self._val_dataset = self.val_batches()
    self._replay_batches = None
    self._iterator = None
    self._train_fn = jax.jit(self._train_step)
    self._eval_fn = jax.jit(self._eval_step)

  def _dataset(self, training_split):
    """The training or validation pipeline, seeded as in the other runners (the twin's)."""
    return self._dataset_hook(pipeline.run_dataset(self._spec, self._cfg, training_split),
                              training_split)

  def train_batches(self, skip_batches=0, fresh_iterators=False):
    """The training batches after the first `skip_batches` (`fresh_iterators`: each
    iterator starts over, for fit)."""
    def batches():
      dataset = self._dataset(True)
      return dataset.skip(skip_batches) if skip_batches else dataset

    return pipeline.fresh_each_iteration(batches) if fresh_iterators else batches()

  def val_batches(self):
    """The validation batches, or None without validation records."""
    return self._dataset(False) if self._spec.val_files else None

  def start_manifest(self, device):
    """The run.json fields of the run's start (training.start_manifest)."""
    versions = runlog.versions(tf.__version__, runlog.KERAS_3, keras.__version__)
    versions.update(keras_backend='jax', jax=jax.__version__,
                    jaxlib=importlib.metadata.version('jaxlib'))
    return training.start_manifest(
        self._cfg, self._spec, versions=versions, device=device,
        kernels=model_fn.kernels(self._cfg),
        optimizer={**optimizers.describe(self.optimizer, learning_rate=self._cfg.learning_rate),
                   'name': model_fn.optimizer_name(self._cfg, self.optimizer)},
        lr_schedule=keras3_model_fn.lr_schedule_manifest(self._cfg),
        **self.distribution.manifest(), dtype_policy='float32', settings=settings(),
        jit_compile=True, model_summary=keras_facts.summary(self.model, keras),
        regularization_in_loss=self._cfg.loop == 'fit' or self._cfg.add_regularization_losses)

  def attach(self, log):
    """Points checkpoints and TensorBoard at the (open) run directory of `log`."""
    self._log = log
    self._scalars = scalars.ScalarWriter(log.model_dir)

  def loss(self, labels, outputs):
    """The run's per-example loss (what fit compiles with)."""
    return model_fn.per_example_loss(self._cfg.loss, labels, outputs)

  def _state(self):
    """(trainable, non-trainable, optimizer variables) as the arrays the step takes."""
    return ([v.value for v in self.model.trainable_variables],
            [v.value for v in self.model.non_trainable_variables],
            [v.value for v in self.optimizer.variables])

  def _set_state(self, state):
    """Puts a step's returned state into the Keras variables."""
    for variables, values in zip((self.model.trainable_variables,
                                  self.model.non_trainable_variables,
                                  self.optimizer.variables), state):
      for variable, value in zip(variables, values):
        variable.assign(value)

  def _step_loss(self, trainable, non_trainable, images, labels, model=None, output_index=None):
    """(the step's loss, (the model's outputs, its new non-trainable state, the data part,
    the regularization part)) of one stateless forward pass of `model` (the run's; a
    replay's probe model, whose output `output_index` is the run's)."""
    outputs, non_trainable, losses = (model or self.model).stateless_call(
        trainable, non_trainable, images, training=True, return_losses=True)
    final = outputs if output_index is None else outputs[output_index]
    data_loss = ops.mean(self.loss(labels, final))
    regularization = (model_fn.regularization_loss(losses) if self._cfg.add_regularization_losses
                      else jnp.zeros_like(data_loss))
    return data_loss + regularization, (outputs, non_trainable, data_loss, regularization)

  def _train_step(self, state, images, labels):
    """The pure step: (the new state, the batch's loss, its correct predictions)."""
    trainable, non_trainable, optimizer_variables = state
    (loss, (outputs, non_trainable, _, _)), gradients = jax.value_and_grad(
        self._step_loss, has_aux=True)(trainable, non_trainable, images, labels)
    trainable, optimizer_variables = self.optimizer.stateless_apply(
        optimizer_variables, gradients, trainable)
    correct = jnp.sum(jnp.argmax(labels, -1) == jnp.argmax(outputs, -1), dtype=jnp.float32)
    return (trainable, non_trainable, optimizer_variables), loss, correct

  def _eval_step(self, trainable, non_trainable, images, labels):
    """(sum of the per-example losses, correct predictions) of one validation batch."""
    outputs, _, losses = self.model.stateless_call(trainable, non_trainable, images,
                                                   training=False, return_losses=True)
    # Per example, with the regularization losses: fit's validation loss (the twin's).
    per_example = self.loss(labels, outputs)
    if self._cfg.add_regularization_losses:
      per_example = per_example + model_fn.regularization_loss(losses)
    return (jnp.sum(per_example),
            jnp.sum(jnp.argmax(labels, -1) == jnp.argmax(outputs, -1), dtype=jnp.float32))

  def learning_rate(self):
    """The rate the next step applies (float32, as the optimizer reads it)."""
    if self.lr_schedule is None or keras3_model_fn.lr_per_epoch(self._cfg):
      return float(np.float32(self._cfg.learning_rate))
    return float(np.float32(ops.convert_to_numpy(self.lr_schedule(self._step))))

  def _run_step(self, images, labels):
    """One training step on numpy `images`, `labels`; returns (its loss, its correct
    predictions, the rate it applied)."""
    learning_rate = self.learning_rate()
    before = self._state()
    state, loss, correct = self._train_fn(before, images, labels)
    if not self._cfg.keep_non_trainable_state:
      # The jax_state_dropped mistake: the step's own non-trainable state stays.
      state = (state[0], before[1], state[2])
    self._set_state(state)
    self._step += 1
    return np.float32(loss), np.float32(correct), learning_rate

  def _next_batch(self, iterator):
    with pipeline.input_errors(self._spec):
      images, labels = next(iterator)
    return images.numpy(), labels.numpy()

  def train_step(self):
    images, labels = self._next_batch(self._iterator)
    loss, correct, learning_rate = self._run_step(images, labels)
    self._train_loss.add(loss, 1)
    self._train_correct.add(correct, labels.shape[0])
    return training.StepResult(float(loss), float(correct / np.float32(self._cfg.batch_size)),
                               self._train_loss.result(), self._train_correct.result(),
                               learning_rate)

  def reset_metrics(self):
    self._train_loss.reset()
    self._train_correct.reset()

  def evaluate(self):
    if self._val_dataset is None:
      return None
    loss, correct = state_lib.RunningMean(), state_lib.RunningMean()
    trainable, non_trainable, _ = self._state()
    with pipeline.input_errors(self._spec):
      for images, labels in self._val_dataset:
        total, right = self._eval_fn(trainable, non_trainable, images.numpy(), labels.numpy())
        loss.add(total, labels.shape[0])
        correct.add(right, labels.shape[0])
    return loss.result(), correct.result()

  def _sync(self):
    """Puts the state model.fit's JAX trainer holds mid-epoch back into the variables (it
    leaves them empty between its steps); nothing outside fit."""
    self.model.jax_state_sync()

  def weights(self):
    self._sync()
    return keras3_model_fn.model_weights(self.model)

  def _optimizer_variables(self):
    return keras3_model_fn.optimizer_state_variables(self._cfg, self.optimizer, self.model,
                                                     self.optimizer.iterations)

  def optimizer_state(self):
    self._sync()
    scale = keras3_model_fn.slot_scale(self._cfg, self.optimizer)
    values = {name: np.asarray(ops.convert_to_numpy(variable))
              for name, variable in self._optimizer_variables().items()}
    values['step'] = values['step'].astype(np.int64)
    return {name: value / scale if name.startswith('slot/') else value
            for name, value in values.items()}

  def load_optimizer_state(self, state):
    variables = self._optimizer_variables()
    training.check_optimizer_state(state, variables)
    # The step first: the slots' scale may read the rate of the step before it.
    self.optimizer.iterations.assign(state['step'])
    self._step = int(state['step'])
    scale = keras3_model_fn.slot_scale(self._cfg, self.optimizer)
    for name, variable in variables.items():
      if name != 'step':
        variable.assign(state[name] * scale if name.startswith('slot/') else state[name])

  def _checkpoint_state(self):
    """{name: array}: every variable the step carries, the step and the running metrics."""
    state = {f'model/{key}': np.asarray(ops.convert_to_numpy(variable))
             for key, variable in keras_facts.weight_items(self.model)}
    state.update({f'optimizer/{index:04d}': np.asarray(ops.convert_to_numpy(variable))
                  for index, variable in enumerate(self.optimizer.variables)})
    state.update({'step': np.asarray(self._step, np.int64),
                  'metrics/loss': np.array([self._train_loss.total, self._train_loss.count]),
                  'metrics/correct': np.array([self._train_correct.total,
                                               self._train_correct.count])})
    return state

  def _load_checkpoint_state(self, state):
    """Puts a checkpoint's state (_checkpoint_state()'s) into the variables and metrics."""
    for key, variable in keras_facts.weight_items(self.model):
      variable.assign(state[f'model/{key}'])
    for index, variable in enumerate(self.optimizer.variables):
      variable.assign(state[f'optimizer/{index:04d}'])
    self._step = int(state['step'])
    self._train_loss.total, self._train_loss.count = state['metrics/loss']
    self._train_correct.total, self._train_correct.count = state['metrics/correct']

  def restore(self):
    self._iterator = iter(self.train_batches())
    self._checkpoints = state_lib.Checkpoints(self._log.path(run_files.CHECKPOINTS_DIR),
                                              self._iterator)
    path = self._checkpoints.restore_newest(set(self._checkpoint_state()),
                                            self._load_checkpoint_state)
    if path is not None:
      logging.info('restored checkpoint %s', path)
    return self._step, path

  def save_checkpoint(self, step):
    self._scalars.flush()
    return self._checkpoints.save(step, self._checkpoint_state())

  def advance(self, start, step):
    """Moves a backend loaded with a run's snapshot of `start` to just before `step`: its
    pipeline past the first `start` batches, then steps `start` + 1 to `step` - 1
    trained as the custom loop trains them (replay_mode)."""
    self._replay_batches = iter(self.train_batches(skip_batches=start))
    self._step = start
    for _ in range(start + 1, step):
      self._run_step(*self._next_batch(self._replay_batches))

  def write_scalars(self, step, scalars_by_tag):
    self._scalars(step, scalars_by_tag)

  def flush_scalars(self):
    """Writes the TensorBoard events written so far to disk."""
    self._scalars.flush()

  def export(self, export_dir):
    self._scalars.flush()
    keras3_model_fn.export(self.model, export_dir, self._log.path(run_files.KERAS_FILE))


def run(cfg, dataset_hook=None):
  """bin/train_eager --backend=jax: trains with --loop=custom or --loop=fit; returns the
  stats dict (the twin's contract: --save_init_weights writes the initial weights and
  trains not; the data, the model and --init_weights are checked before the run
  directory is touched)."""
  preflight.check_paths(cfg)
  set_up_process(cfg)
  device = check_device(cfg)
  # From here on SIGINT/SIGTERM only set a flag that training honours with a checkpoint.
  with interrupts.SignalCatcher() as signals:
    distribution = distribution_lib.setup(cfg)
    spec = training.check_data(cfg)
    keras3_model_fn.check_model(cfg, spec.num_classes)
    configure(cfg)
    backend = JaxBackend(cfg, spec, distribution, dataset_hook)
    if cfg.save_init_weights:
      return training.save_init_weights(cfg, backend.weights())
    log = training.open_run(cfg, spec, runner(cfg))
    with training.marking_failures(log):
      log.update(**backend.start_manifest(device))
      schedule = training.schedule(cfg)
      backend.attach(log)
      if cfg.loop == 'fit':
        return fit.train(backend, cfg, spec, log, schedule, signals)
      return training.train(backend, log, schedule, signals)


def replay_run(cfg, replay_cfg):
  """Replays a step (replay_cfg.step, by default the first) of the run `cfg` describes
  (replay_mode.run_config) as replay_cfg (config.ReplayConfig) says, and writes its
  probe. A fit run's step is the custom loop's, with the regularization losses fit adds."""
  if cfg.loop == 'fit':
    cfg = dataclasses.replace(cfg, add_regularization_losses=True)
  set_up_process(cfg)
  check_device(cfg)
  distribution = distribution_lib.setup(cfg)
  spec = training.check_data(cfg)
  # The run checked its model's names when it trained; the replay builds the same one.
  configure(cfg)
  backend = JaxBackend(cfg, spec, distribution)
  replay_mode.load_start(backend, replay_cfg)
  batch = replay_mode.read_batch(replay_cfg.batch) if replay_cfg.batch else None
  stages, learning_rate = backend.replay_step(batch)
  replay_mode.write_probe(replay_cfg, runner(cfg), stages, {
      **backend.layer_meta(), 'learning_rate': learning_rate, 'training': True,
      'settings': settings(), 'tensorflow': tf.__version__, 'jax': jax.__version__})
  logging.info('step %d of %s replayed into %s', replay_cfg.step, replay_cfg.model_dir,
               replay_cfg.output)
