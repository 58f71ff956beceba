"""The typed, frozen configurations of the commands, built once from their flags.

An entry point parses its absl flags, turns them into one of these with `from_flags`
and hands it to the library's `run(config)`; nothing below reads flags. The defaults
here are the flags' defaults (flags.py reads them from these classes), so a test or a
team's script can build a config directly: `GraphConfig(data_dir=..., epochs=1)`.

TensorFlow-free; importable on Python 3.7 (the TensorFlow 1.15 legacy runner's).
"""

from __future__ import annotations

import dataclasses
import sys

# Keyword-only construction where Python has it (3.10 and up); on Python 3.7, where the
# legacy runner runs TensorFlow 1.15, the same classes are built by keyword by convention.
KEYWORD_ONLY = {'kw_only': True} if sys.version_info >= (3, 10) else {}

# The embedded and the benchmark's data: the seed's Caltech256 head.
CALTECH256_CLASSES = 257
DEFAULT_SNAPSHOT_STEPS = (0, 1, 2, 5, 10, 20, 50, 100)
# tf.compat.v1.train.AdamOptimizer's default epsilon; Keras' Adam uses 1e-7. The legacy
# loop runs with it, so it is what a port must match (check_parity passes each optimizer's
# legacy epsilon, optimizers.DEFAULTS, to every runner unless a pitfall leaves it out).
LEGACY_ADAM_EPSILON = 1e-8

# The largest value of every integer flag (flags.py) and of dataset.json's num_classes,
# unless a flag says otherwise: counts and sizes reach TensorFlow as int32 shapes and
# attributes, and the step counters' product (epochs x steps per epoch) must stay within
# TensorFlow's int64 global step. absl takes any Python integer, and one past int64
# crashed TensorFlow (issue 41: a segfault).
INT_MAX = 2**31 - 1
# Seeds: numpy's legacy seeding (np.random.seed, which keras.utils.set_random_seed calls
# in the eager runner) takes [0, 2**32 - 1]; TensorFlow's op seeds are int64, so the
# pipeline's seed offsets (data.py) and check_parity's --dropout_seed=seed+1 stay in range.
SEED_MAX = 2**32 - 1
# TensorFlow's op seeds are int64 (--dropout_seed is an op seed, never numpy's).
OP_SEED_MAX = 2**63 - 1

LOSSES = ('softmax_cross_entropy', 'keras_categorical', 'keras_categorical_probs')
# Whether each --loss takes logits: keras_categorical_probs is Keras' categorical
# cross-entropy with its default from_logits=False, which expects probabilities (the
# from_logits_lost mistake on a model that returns logits).
LOSS_TAKES_LOGITS = {'softmax_cross_entropy': True, 'keras_categorical': True,
                     'keras_categorical_probs': False}
FINAL_ACTIVATIONS = ('none', 'softmax')
LOOPS = ('custom', 'fit')
# Keras 3's backend the port runs on (train_eager --backend): TensorFlow, or JAX (the jax
# extra).
KERAS_BACKENDS = ('tensorflow', 'jax')
# --on_bad_record: stop at the first bad record, or leave bad records out and count them.
ON_BAD_RECORD = ('fail', 'skip')
STRATEGIES = ('default', 'mirrored', 'multi_worker')
# --tf32: TensorFlow's default (on where the GPU has it), or forced on or off.
TF32_MODES = ('default', 'on', 'off')
# --onednn: TensorFlow's default (which depends on the CPU: cpu_info), or forced on or off.
ONEDNN_MODES = ('default', 'on', 'off')
# --fit_accuracy: the keras.metrics class model.fit compiles as its accuracy.
# CategoricalAccuracy compares argmaxes, as the legacy loop's tf.metrics.accuracy does;
# Accuracy compares labels and outputs element by element (the accuracy_metric_class
# mistake: about 0 on one-hot labels and logits).
FIT_ACCURACY_METRICS = ('CategoricalAccuracy', 'Accuracy')
# --fit_lr_schedule: how model.fit applies the run's learning-rate schedule. optimizer: a
# Keras schedule on optimizer.iterations, step by step like the legacy
# exponential_decay on the global step; epoch_callback: keras.callbacks.LearningRateScheduler,
# which sets the rate once per epoch (the lr_schedule_per_epoch mistake).
FIT_LR_SCHEDULES = ('optimizer', 'epoch_callback')


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class DataConfig:
  """What selects and shapes the data (both runners, check_parity, benchmark)."""
  data_dir: str | None = None
  num_classes: int | None = None
  image_size: int = 224
  batch_size: int = 32
  seed: int = 0
  shuffle_buffer: int = 10000
  on_bad_record: str = 'fail'
  # A --num_classes that disagrees with dataset.json is refused unless this is set.
  allow_num_classes_mismatch: bool = False


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class TrainingConfig(DataConfig):
  """What both runners train with; check_parity forwards these to every runner."""
  epochs: int = 3
  steps_per_epoch: int = 1000
  learning_rate: float = 0.001
  # optimizers.OPTIMIZERS: tf.compat.v1.train's in the graph runner, Keras 3's twin in the
  # port; momentum, rho and epsilon None: each framework's default (optimizers.DEFAULTS).
  optimizer: str = 'adam'
  momentum: float | None = None
  rho: float | None = None
  epsilon: float | None = None
  # optimizers.SCHEDULES, on the step counter (None: exponential under lr_decay_steps, else
  # constant, as before --lr_schedule). exponential: lr * rate ** (step / decay_steps),
  # floored with staircase; polynomial and cosine decay over lr_decay_steps (0: the whole
  # run); piecewise: lr times lr_decay_rate after each of lr_boundaries (none: the run's
  # middle step).
  lr_schedule: str | None = None
  lr_decay_steps: int = 0
  lr_decay_rate: float = 0.5
  lr_staircase: bool = False
  lr_boundaries: tuple = ()
  adam_beta1: float = 0.9
  adam_beta2: float = 0.999
  loss: str = 'softmax_cross_entropy'
  final_activation: str = 'none'
  batch_norm: bool = False
  dropout: float = 0.0
  init_weights: str | None = None
  save_init_weights: str | None = None
  snapshot_steps: tuple = DEFAULT_SNAPSHOT_STEPS
  deterministic: bool = True
  tf32: str = 'default'
  onednn: str = 'default'
  intra_op_threads: int = 0
  require_gpu: bool = False
  overwrite: bool = False
  log_every: int = 100
  checkpoint_every: int = 500
  # A team's model builder and record parser, 'package.module:function'
  # (train/models/plugins.py, data/record_schema.py).
  # None: the seed's ConvNet (plugins.DEFAULT_MODEL) and the seed's record schema; unset
  # fields leave the runners' arguments and older run.json files as they were.
  model: str | None = None
  features: str | None = None

  @property
  def total_steps(self):
    return self.epochs * self.steps_per_epoch

  def snapshot_steps_within(self):
    """The sorted snapshot steps within the run, the last step included."""
    return tuple(sorted({s for s in self.snapshot_steps if s <= self.total_steps}
                        | {self.total_steps}))


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class GraphConfig(TrainingConfig):
  """bin/train_graph: the legacy TF1 loop; each non-default switch is a legacy mistake."""
  model_dir: str = 'runs/graph'
  wiring: str = 'input_tensor'
  update_ops: bool = True
  reset_metrics: str = 'epoch'
  dropout_seed: int | None = None
  # check_parity's controls: every weight one ulp up or down after each step
  # (train/graph/model_fn.py).
  nudge_seed: int | None = None
  feed_learning_phase: bool = True
  strategy: str = 'default'


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class EagerConfig(TrainingConfig):
  """bin/train_eager: the TF2 port, a custom tf.function loop or Keras model.fit."""
  model_dir: str = 'runs/eager'
  loop: str = 'custom'
  backend: str = 'tensorflow'
  jit_compile: bool = False
  mixed_precision: bool = False
  mixed_bfloat16: bool = False
  strategy: str = 'default'
  devices: tuple | None = None
  cpu_devices: int = 1
  tf1_bn_variance: bool = False
  tf1_adam: bool = False
  # Every other optimizer through TF1's fused kernel (tf1_kernels), as --tf1_adam does Adam.
  tf1_optimizer_kernel: bool = False
  fit_accuracy: str = 'CategoricalAccuracy'
  fit_lr_schedule: str = 'optimizer'
  # The custom loop adds the model's regularization losses (model.losses) to its loss;
  # False is the regularization_dropped mistake (fit always adds them).
  add_regularization_losses: bool = True
  # BatchNormalization is built with the momentum the model gives it; False builds it with
  # Keras' default 0.99 (the bn_momentum_default mistake).
  keep_bn_momentum: bool = True
  # Momentum and Nesterov keep TF1's accumulator, the sum of gradients times the current
  # rate (tf1_kernels.TF1Momentum); False: Keras' SGD, whose accumulator keeps each step's
  # own rate (the momentum_rate_change mistake, which shows once the rate changes).
  tf1_momentum: bool = True
  # RMSProp's mean square starts at one, as TF1's (tf1_kernels.TF1RMSprop); False: at
  # Keras' zero (the rmsprop_zero_start mistake).
  tf1_rmsprop_start: bool = True
  # The JAX custom loop carries the non-trainable state model.stateless_call returns
  # (BatchNorm's moving statistics, the Dropout seed) into the next step; False drops it
  # (the jax_state_dropped mistake).
  keep_non_trainable_state: bool = True


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class ReplayConfig:
  """A runner's replay mode (--replay_out): step `step` of the complete run in `model_dir`,
  replayed with the run's own flags from its snapshot before it and written as a probe to
  `output`; `batch`: a probe whose batch the step takes instead of the pipeline's;
  `start`: a probe of the same step whose start state the step starts from instead of the
  run's own (train/replay_mode.py)."""
  model_dir: str
  output: str
  batch: str | None = None
  step: int = 1
  start: str | None = None


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class CheckParityConfig(TrainingConfig):
  """bin/check_parity: the training fields are forwarded to every runner.

  Its own defaults are small enough for a 2-core machine in under 3 minutes and large
  enough that the curves mean something: 3 epochs of 40 steps of 64-pixel images.
  """
  image_size: int = 64
  steps_per_epoch: int = 40
  log_every: int = 20
  output_dir: str = 'runs/check_parity'
  with_fit: bool = False
  calibrate: bool = True
  pitfall: str | None = None
  exact: bool = True
  strategy: str = 'default'
  cpu_devices: int = 1
  mixed_precision: bool = False
  port_flags: tuple = ()
  port_backend: str = 'tensorflow'
  settings_matrix: bool = False
  # A Python with TensorFlow 1.15 (bin/legacy_env): the legacy loop also runs there, as
  # the migration ladder's first rung (None: no such rung).
  legacy_python: str | None = None
  # Where inside one step the codes part (localize.py): None on a FAIL, True for every
  # pair, False never.
  localize: bool | None = None
  # Other checks' folders (or folders of them) whose complete runs with these arguments
  # are copied instead of trained again (run_reuse.py).
  reuse_from: tuple = ()


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class RecordsConfig:
  """bin/make_records: an image folder or the synthetic dataset to TFRecord shards."""
  output_dir: str | None = None
  image_dir: str | None = None
  synthetic: bool = False
  val_fraction: float = 0.1
  num_shards: int = 4
  seed: int = 0
  synthetic_classes: int = 10
  synthetic_train_per_class: int = 64
  synthetic_val_per_class: int = 16
  overwrite: bool = False


def default(cls, name):
  """The default of field `name` of config class `cls` (the flag's default)."""
  return cls.__dataclass_fields__[name].default


def _typed(value):
  # absl hands lists; a frozen config holds tuples (and snapshot steps as integers).
  return tuple(value) if isinstance(value, list) else value


def from_flags(cls, flag_values, **overrides):
  """An instance of `cls` from the parsed flags of the same names; `overrides` win."""
  values = {}
  for field in dataclasses.fields(cls):
    if field.name in overrides:
      values[field.name] = overrides[field.name]
    elif field.name in flag_values:
      values[field.name] = _typed(flag_values[field.name].value)
  for name in ('snapshot_steps', 'lr_boundaries'):
    if name in values:
      values[name] = tuple(int(s) for s in values[name])
  return cls(**values)


def manifest_flags(config):
  """{name: value} of every field, JSON-ready: run.json's 'flags' block."""
  return {name: list(value) if isinstance(value, tuple) else value
          for name, value in sorted(dataclasses.asdict(config).items())}


def runner_args(config, names):
  """`config`'s fields `names` as the command-line flags a runner accepts (None: left out)."""
  args = []
  for name in names:
    value = getattr(config, name)
    if value is None:
      continue
    if isinstance(value, bool):
      args.append(f'--{name}' if value else f'--no{name}')
    elif isinstance(value, tuple):
      args.append(f'--{name}={",".join(str(v) for v in value)}')
    else:
      args.append(f'--{name}={value}')
  return args


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class BenchmarkConfig(DataConfig):
  """bin/benchmark: what every measurement shares (the figures' 'settings' block)."""
  steps: int = 8  # training steps per timed window
  warmup_steps: int = 3  # steps before the first window: tracing, buffers filling
  repetitions: int = 3  # timed windows per measurement and round
  rounds: int = 1  # runs of the whole sequence, each in fresh processes, pooled
  pipeline_batches: int | None = None  # None: one pass over the training records
  records: int = 10240  # of the synthetic dataset written without data_dir
  deterministic: bool = True  # the runners' own default
  model: str | None = None  # the runners' --model (None: the seed's ConvNet)
  kernels: bool = True  # each loop once more under the profiler: which kernels ran

  @property
  def total_steps(self):
    """Steps of each training measurement: the warm-up, then every timed window."""
    return self.warmup_steps + self.repetitions * self.steps


@dataclasses.dataclass(frozen=True, **KEYWORD_ONLY)
class MatrixConfig:
  """bin/parity_matrix: which cases of a matrix to run, how, and where."""
  output_root: str = 'runs/parity_matrix'
  # Built-in case names (None: every one), or one folder of case files.
  cases: tuple | None = None
  pitfalls: bool = True  # the built-in cases' pitfalls too
  case_index: int | None = None  # None: the scheduler's (JOB_COMPLETION_INDEX, ...) or all
  merge: bool = False
  write_cases: str | None = None
  parallel: int = 2  # cases at a time on this host
  overwrite: bool = False
