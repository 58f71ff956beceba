"""absl flag definitions of the runners (train_graph, train_eager), which check_parity
forwards (docs/commands.md).

flag_kinds.py holds the bounded flag kinds every command's flags use, replay_flags.py the
runners' replay mode, tool_flags.py the other commands' flags. Each command module calls
the `define_*_flags` functions it needs; its `main` turns the parsed flags into a frozen
config (config.py) once and passes that to the library, which never reads flags. Every
flag's default is the default of its config field, so `define_*_flags` take the config
class whose defaults they show.
"""

from absl import flags

from tf1compat.commands import flag_kinds
from tf1compat.commands import output_folders
from tf1compat.commands import replay_flags
from tf1compat.data import record_schema
from tf1compat.runs import config
from tf1compat.runs import optimizers
from tf1compat.runs import runlog
from tf1compat.train.models import convnet
from tf1compat.train.models import plugins



# Former flag names that still work: --adam_epsilon was Adam's epsilon before --optimizer.
ALIASES = {'adam_epsilon': 'epsilon'}


def define_data_flags(defaults=config.DataConfig):
  """Flags that select and shape the data: both runners, check_parity and benchmark."""
  default = lambda name: config.default(defaults, name)
  flag_kinds.define_path(
      'data_dir', default('data_dir'),
      'Folder of train-*.tfrecord (and optional val-*.tfrecord) files; plain '
      '*.tfrecord means all training data. Unset: the embedded synthetic dataset, '
      'generated once into a cache folder ($TF1COMPAT_CACHE or '
      '~/.cache/tf1compat).')
  flag_kinds.define_integer(
      'num_classes', default('num_classes'),
      'Number of classes. Default: from dataset.json, else 257 (Caltech256).',
      lower_bound=2)
  flag_kinds.define_integer(
      'image_size', default('image_size'), 'Side of the square input images.',
      lower_bound=convnet.MIN_IMAGE_SIZE)
  flag_kinds.define_integer('batch_size', default('batch_size'), 'Batch size.', lower_bound=1)
  flag_kinds.define_integer(
      'seed', default('seed'),
      'Seeds every random op, shuffles included.', lower_bound=0,
      upper_bound=config.SEED_MAX)
  flag_kinds.define_integer(
      'shuffle_buffer', default('shuffle_buffer'),
      'Records in the shuffle buffer.', lower_bound=1)
  flags.DEFINE_enum('on_bad_record', default('on_bad_record'), config.ON_BAD_RECORD,
                    'What to do with a bad record (truncated, not a tf.train.Example, without '
                    'image or label, label outside [0, num_classes), image bytes that do not '
                    'decode). fail: stop before training and name it (exit 2); skip: leave it '
                    'out and count it in run.json.')
  flags.DEFINE_bool('allow_num_classes_mismatch', default('allow_num_classes_mismatch'),
                    'Train with a --num_classes other than the one dataset.json says (refused '
                    'without this switch: a wrong count trains a wrong head silently).')


def define_training_flags(defaults):
  """Flags common to the graph and eager runners, with the defaults of config class
  `defaults`; --model_dir where it has one.

  check_parity's config has no model_dir: it defines the flags to forward them, and
  names the runners' directories itself.
  """
  default = lambda name: config.default(defaults, name)
  if 'model_dir' in defaults.__dataclass_fields__:
    flag_kinds.define_path(
        'model_dir', default('model_dir'),
        f'The run directory. Default: {default("model_dir")} (train_eager --loop=fit: '
        'runs/fit) with every flag at its default, else that followed by -NAME, NAME the '
        'flags set otherwise (e.g. -batch_norm), so that other flags never meet in one '
        'run directory.')
  flag_kinds.define_integer('epochs', default('epochs'), 'Epochs to train.', lower_bound=1)
  flag_kinds.define_integer(
      'steps_per_epoch', default('steps_per_epoch'),
      'Training steps per epoch.', lower_bound=1)
  flag_kinds.define_float(
      'learning_rate', default('learning_rate'),
      'The learning rate (the schedule\'s initial rate).', lower_bound=0.0)
  flags.DEFINE_enum('optimizer', default('optimizer'), optimizers.OPTIMIZERS,
                    'tf.compat.v1.train\'s optimizer in the graph runner, its Keras 3 twin in '
                    'the port (docs/optimizers.md): adam, sgd (GradientDescent), momentum and '
                    'nesterov (Momentum, --momentum), rmsprop, rmsprop_momentum (--momentum), '
                    'rmsprop_centered, adagrad, adadelta, ftrl.')
  flag_kinds.define_float(
      'momentum', default('momentum'),
      'momentum, nesterov, rmsprop_momentum: the momentum, in [0, 1). Default 0.9.',
               lower_bound=0.0, below=1.0)
  flag_kinds.define_float(
      'rho', default('rho'),
      'rmsprop*: the mean square\'s decay (TF1\'s decay, Keras\' rho); adadelta: '
      'rho. In [0, 1). Default: each framework\'s (0.9 and 0.95 in both).',
               lower_bound=0.0, below=1.0)
  flag_kinds.define_float(
      'epsilon', default('epsilon'),
      'adam, rmsprop*, adadelta, adagrad: epsilon. Default: each framework\'s own '
      '(graph: 1e-8, rmsprop 1e-10, adagrad none; eager: Keras\' 1e-7); check_parity '
      'passes the graph runner\'s to every runner.', lower_bound=0.0)
  for alias, name in ALIASES.items():
    flags.DEFINE_alias(alias, name)
  flags.register_multi_flags_validator(
      ['optimizer', *optimizers.OPTIMIZER_FLAGS],
      lambda v: optimizers.flag_problem(v['optimizer'], [
          name for name in optimizers.OPTIMIZER_FLAGS if v[name] is not None]) is None,
      message='an optimizer flag for an --optimizer without it: --momentum applies to '
              'momentum, nesterov and rmsprop_momentum, --rho to rmsprop* and adadelta, '
              '--epsilon to adam, rmsprop*, adagrad and adadelta')
  flags.DEFINE_enum('lr_schedule', default('lr_schedule'), optimizers.SCHEDULES,
                    'The learning-rate schedule on the step counter: '
                    'tf.compat.v1.train\'s exponential_decay, piecewise_constant, '
                    'polynomial_decay, cosine_decay on the global step (graph) and their '
                    'keras.optimizers.schedules twins on optimizer.iterations (eager). '
                    'Default: exponential under --lr_decay_steps, else constant.')
  flag_kinds.define_integer(
      'lr_decay_steps', default('lr_decay_steps'),
      'exponential: learning_rate * lr_decay_rate ** (step / lr_decay_steps); '
      'polynomial and cosine: the steps they decay over. 0: a constant rate '
      'without --lr_schedule, the whole run with it.', lower_bound=0)
  flag_kinds.define_float(
      'lr_decay_rate', default('lr_decay_rate'),
      'exponential: the learning rate\'s factor per --lr_decay_steps steps; '
      'piecewise: its factor at each boundary.',
      lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_bool('lr_staircase', default('lr_staircase'),
                    'exponential: decay in whole steps of --lr_decay_steps (an integer exponent).')
  flags.DEFINE_list('lr_boundaries', [str(s) for s in default('lr_boundaries')],
                    'piecewise: the steps after which the rate is multiplied by --lr_decay_rate '
                    '(the rate of a boundary step is the one before it, as in both '
                    'frameworks). Default: the run\'s middle step.')
  flags.register_validator(
      'lr_boundaries', lambda v: all(s.isdigit() and 0 < int(s) <= config.INT_MAX for s in v)
      and [int(s) for s in v] == sorted({int(s) for s in v}),
      message='--lr_boundaries takes increasing positive steps, e.g. 40,80')
  # Adam divides by 1 - beta1**t and scales by sqrt(1 - beta2**t): a beta of 1 trained to
  # a NaN loss (beta1, exit 3) or left every weight where it was (beta2).
  flag_kinds.define_float(
      'adam_beta1', default('adam_beta1'),
      'Adam beta1, in [0, 1).', lower_bound=0.0, below=1.0)
  flag_kinds.define_float(
      'adam_beta2', default('adam_beta2'),
      'Adam beta2, in [0, 1).', lower_bound=0.0, below=1.0)
  flags.DEFINE_enum('loss', default('loss'), config.LOSSES,
                    'softmax_cross_entropy: tf.nn.softmax_cross_entropy_with_logits on logits; '
                    "keras_categorical: keras categorical_crossentropy(from_logits=True), the "
                    "seed's fix; keras_categorical_probs: keras categorical_crossentropy with "
                    'its default from_logits=False, which expects probabilities: on the '
                    "model's logits it is the from_logits_lost mistake.")
  flags.DEFINE_enum('final_activation', default('final_activation'), config.FINAL_ACTIVATIONS,
                    'Activation of the last Dense layer. The losses take logits, so softmax here '
                    'reproduces the double-softmax mistake.')
  flags.DEFINE_bool('batch_norm', default('batch_norm'),
                    'Add BatchNormalization after each convolution.')
  flag_kinds.define_float(
      'dropout', default('dropout'),
      'Dropout rate before the logits (0: no Dropout layer).',
      lower_bound=0.0, upper_bound=0.99)
  flag_kinds.define_path(
      'init_weights', default('init_weights'),
      '.npz of initial weights (keys as in weight snapshots).')
  flag_kinds.define_path(
      'save_init_weights', default('save_init_weights'),
      'Write the initial weights to this .npz and exit without training (an '
      'existing file is replaced only with --overwrite).')
  flags.DEFINE_list('snapshot_steps', [str(s) for s in default('snapshot_steps')],
                    'Steps after which all weights are saved (0: initial); the last step is '
                    'always saved.')
  flag_kinds.register_int_list_validator('snapshot_steps')
  flags.DEFINE_bool('deterministic', default('deterministic'),
                    'Deterministic ops (same flags, same numbers).')
  flags.DEFINE_enum('tf32', default('tf32'), config.TF32_MODES,
                    'TensorFloat-32 for float32 matmuls and convolutions (GPUs from Ampere on): '
                    "default: TensorFlow's (on); on/off: forced. A legacy run and its port must "
                    'match (the config lint names a difference).')
  flags.DEFINE_enum('onednn', default('onednn'), config.ONEDNN_MODES,
                    "oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS): default: TensorFlow's, which "
                    'depends on the CPU (on x86 with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, '
                    'off on others; run.json records it); on/off: forced. They sum in another '
                    'order than the plain kernels.')
  flag_kinds.define_integer(
      'intra_op_threads', default('intra_op_threads'),
      "Threads of one op (TF_NUM_INTRAOP_THREADS; 0: TensorFlow's, one per core). "
      'Another count sums in another order.', lower_bound=0, upper_bound=1024)
  flags.DEFINE_bool('require_gpu', default('require_gpu'),
                    'Stop with exit 2 when TensorFlow sees no GPU, instead of training on the '
                    'CPU (what a CUDA driver or library mismatch silently does).')
  flags.DEFINE_bool('overwrite', default('overwrite'),
                    'Replace a completed run directory (an interrupted one is resumed), or the '
                    'file --save_init_weights names.')
  flag_kinds.define_integer(
      'log_every', default('log_every'),
      'Without a terminal, log progress every this many steps.', lower_bound=1)
  flag_kinds.define_integer(
      'checkpoint_every', default('checkpoint_every'),
      'Write a checkpoint every this many steps (and at every epoch end).',
      lower_bound=1)
  flags.DEFINE_string('model', default('model'),
                      'Your own model: a builder named as package.module:function, importable '
                      '(on PYTHONPATH), called with the Keras module of the runner and the '
                      "run's shapes; it returns a functional Keras model whose layers with "
                      'weights are named explicitly (docs/own-migration.md, "Your own model"). '
                      f"Unset: the seed's ConvNet ({plugins.DEFAULT_MODEL}).")
  flags.DEFINE_string('features', default('features'),
                      'Your own record schema: a parser named as package.module:function that '
                      'maps one serialized record to (image bytes or a decoded [H, W, 3] '
                      'image, integer label) before the shared resize, standardization, '
                      "one-hot and batching. Unset: the seed's schema ('image' bytes, int64 "
                      "'label'). The pre-flight check then verifies each record's framing and "
                      'checksum only (under --on_bad_record=skip also the parser and the '
                      'decode).')
  for name, example in (('model', 'team_model:build'), ('features', 'team_records:parse')):
    flags.register_validator(name, lambda spec: spec is None or record_schema.is_spec(spec),
                             message=f'--{name} takes {record_schema.SPEC_FORMAT}, e.g. {example}')


def define_graph_flags():
  """Graph-runner switches; each non-default value reproduces a known legacy mistake."""
  default = lambda name: config.default(config.GraphConfig, name)
  flags.DEFINE_enum('wiring', default('wiring'), ('input_tensor', 'model_call'),
                    'input_tensor: Input(tensor=features); model_call: the seed\'s '
                    'model(features), whose model.updates are bound to the unfed Input '
                    'placeholder, so legacy code ran the UPDATE_OPS collection instead, which '
                    'Keras layers never fill: BatchNorm statistics never update.')
  flags.DEFINE_bool('update_ops', default('update_ops'),
                    'Run model.updates (BatchNormalization statistics) with the train op.')
  flags.DEFINE_enum('reset_metrics', default('reset_metrics'), ('epoch', 'never'),
                    'epoch: reset tf.metrics local variables at each epoch start and before '
                    'evaluation; never: the seed\'s loop.')
  flag_kinds.define_integer(
      'dropout_seed', default('dropout_seed'),
      "Op seed of the Dropout masks (default: from --seed). check_parity's "
      'control run draws other masks with it, as every port does.',
      lower_bound=0, upper_bound=config.OP_SEED_MAX)
  flag_kinds.define_integer(
      'nudge_seed', default('nudge_seed'),
      'After every training step, move every non-zero weight by one ulp, up or down '
      'at random from this seed and the step (default: never). check_parity\'s '
      'controls use it to measure how far rounding that differs at every step, as a '
      'port\'s kernels do, carries a run.',
      lower_bound=0, upper_bound=config.OP_SEED_MAX)
  flags.DEFINE_bool('feed_learning_phase', default('feed_learning_phase'),
                    'Feed keras learning_phase()=1 when training (Dropout/BatchNorm behave as '
                    'in training).')
  # Defined so that asking the TF1 loop for a strategy is a usage error, not an
  # unknown flag.
  flags.DEFINE_enum('strategy', default('strategy'), config.STRATEGIES,
                    'Only default: the TF1 graph loop is single-device.')
  flags.register_validator(
      'strategy', lambda value: value == 'default',
      message='train_graph is the single-device TF1 loop; tf.distribute strategies are for '
              'the TF2 port: bin/train_eager --strategy=mirrored|multi_worker')
  flags.register_multi_flags_validator(
      ['optimizer', 'epsilon'],
      lambda v: v['optimizer'] != 'adagrad' or not v['epsilon'],
      message='train_graph --optimizer=adagrad: tf.compat.v1.train.AdagradOptimizer has no '
              'epsilon (0 is its only value; Keras\' Adagrad adds 1e-7)')


def define_eager_flags():
  """TF2-runner switches (bin/train_eager)."""
  default = lambda name: config.default(config.EagerConfig, name)
  flags.DEFINE_enum('loop', default('loop'), config.LOOPS,
                    'custom: a tf.function train step with GradientTape; fit: Keras model.fit.')
  flags.DEFINE_enum('backend', default('backend'), config.KERAS_BACKENDS,
                    "Keras 3's backend the port runs on: tensorflow, or jax (pip install "
                    "'tf1compat[jax]'): the custom loop is then a jax.jit step on "
                    "model.stateless_call and the optimizer's stateless_apply, fit Keras' "
                    'own on JAX; the input pipeline stays tf.data. One device, float32.')
  flags.DEFINE_bool('jit_compile', default('jit_compile'),
                    'Compile the train and eval steps with XLA.')
  flags.DEFINE_bool('mixed_precision', default('mixed_precision'),
                    'mixed_float16 policy (float32 logits and variables) with loss scaling.')
  flags.DEFINE_bool('mixed_bfloat16', default('mixed_bfloat16'),
                    'mixed_bfloat16 policy (float32 logits and variables), no loss scaling: '
                    "bfloat16 has float32's range. Pays where the hardware computes in "
                    'bfloat16 (GPUs, CPUs with AVX512_BF16 or AMX); elsewhere TensorFlow '
                    'emulates it, slower than float32.')
  flags.register_multi_flags_validator(
      ['mixed_precision', 'mixed_bfloat16'],
      lambda v: not (v['mixed_precision'] and v['mixed_bfloat16']),
      message='--mixed_precision (float16) and --mixed_bfloat16 are two policies; pick one')
  flags.DEFINE_enum('strategy', default('strategy'), config.STRATEGIES,
                    'tf.distribute strategy. default: one device; mirrored: '
                    'MirroredStrategy over the local GPUs (or --devices); multi_worker: '
                    'MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (run the same '
                    'command on every worker; only the chief writes --model_dir, which must '
                    'be on storage all workers see). --batch_size is the global batch.')
  flags.DEFINE_list('devices', default('devices'),
                    '--strategy=mirrored: the devices to mirror over, e.g. GPU:0,GPU:1. '
                    'Default: every local GPU, else every (logical) CPU.')
  flag_kinds.define_integer(
      'cpu_devices', default('cpu_devices'),
      'Split the host CPU into this many logical devices, so that '
      '--strategy=mirrored can run (and be tested) without GPUs.',
      lower_bound=1)
  flags.register_multi_flags_validator(
      ['strategy', 'devices', 'cpu_devices'],
      lambda v: (not v['devices'] or v['strategy'] == 'mirrored') and (
          v['cpu_devices'] == 1 or v['strategy'] != 'multi_worker'),
      message='--devices applies to --strategy=mirrored only, and --strategy=multi_worker '
              'uses each worker\'s GPUs or its one CPU device (no --cpu_devices)')
  # Measured: Keras 3.15's fit fails on its first batch under MultiWorkerMirroredStrategy
  # (it passes the per-replica batch to strategy.reduce to build its metrics; past that,
  # its train step fails on a scalar reduction).
  flags.register_multi_flags_validator(
      ['loop', 'strategy'], lambda v: not (v['loop'] == 'fit' and v['strategy'] == 'multi_worker'),
      message='--loop=fit does not run under --strategy=multi_worker with Keras 3.15 (fit '
              'fails on its first batch); use --loop=custom, or --strategy=mirrored for fit')
  flags.register_multi_flags_validator(
      ['backend', 'strategy', 'cpu_devices', 'mixed_precision', 'mixed_bfloat16',
       'jit_compile'],
      lambda v: v['backend'] != 'jax' or (
          v['strategy'] == 'default' and v['cpu_devices'] == 1 and not (
              v['mixed_precision'] or v['mixed_bfloat16'] or v['jit_compile'])),
      message='--backend=jax trains in float32 on one device, every step compiled by XLA: '
              '--strategy, --cpu_devices, --mixed_precision, --mixed_bfloat16 and '
              '--jit_compile are the TensorFlow port\'s')
  flags.DEFINE_bool('tf1_bn_variance', default('tf1_bn_variance'),
                    "Update BatchNormalization's moving variance with the Bessel-corrected "
                    'batch variance (n/(n-1)), as TF1 fused batch norm does, so that a matched '
                    'comparison with the graph runner can be exact. Normalization still uses '
                    'the biased batch variance, as in TF1.')
  flags.DEFINE_bool('tf1_adam', default('tf1_adam'),
                    "Apply Adam through TF1's fused ApplyAdam kernel with its beta-power "
                    "accumulators: Keras' formula, TF1's float rounding. Keras' own Adam rounds "
                    'differently by an ulp, and Adam amplifies that chaotically; with this switch '
                    'a matched comparison with the graph runner is bit for bit on CPU.')
  flags.DEFINE_bool('tf1_optimizer_kernel', default('tf1_optimizer_kernel'),
                    'Apply every other --optimizer through TF1\'s fused kernel (ApplyRMSProp, '
                    'ApplyAdagrad, ApplyAdadelta, ApplyFtrl, ApplyGradientDescent; Momentum '
                    'always runs ApplyMomentum): Keras\' formula as the port sets it, TF1\'s '
                    'float rounding, so that a matched comparison can be bit for bit.')
  flags.DEFINE_enum('fit_accuracy', default('fit_accuracy'), config.FIT_ACCURACY_METRICS,
                    '--loop=fit: the keras.metrics class model.fit compiles as its accuracy. '
                    'CategoricalAccuracy compares argmaxes, as the legacy tf.metrics.accuracy '
                    'does; Accuracy compares labels and outputs element by element (the '
                    'accuracy_metric_class mistake).')
  flags.DEFINE_enum('fit_lr_schedule', default('fit_lr_schedule'), config.FIT_LR_SCHEDULES,
                    '--loop=fit with --lr_decay_steps: optimizer: the schedule on '
                    'optimizer.iterations, step by step as the legacy loop; epoch_callback: '
                    'keras.callbacks.LearningRateScheduler, which sets the rate once per epoch '
                    '(the lr_schedule_per_epoch mistake).')
  flags.DEFINE_bool('add_regularization_losses', default('add_regularization_losses'),
                    "--loop=custom: add the model's regularization losses (model.losses) to the "
                    'loss, as the legacy loop adds them by hand and fit does itself; false is '
                    'the regularization_dropped mistake.')
  flags.DEFINE_bool('keep_bn_momentum', default('keep_bn_momentum'),
                    'Build BatchNormalization with the momentum the model gives it; false builds '
                    "it with Keras' default 0.99 (the bn_momentum_default mistake: TF1 "
                    "contrib/slim batch norm's decay was 0.999).")
  flags.DEFINE_bool('tf1_momentum', default('tf1_momentum'),
                    '--optimizer=momentum|nesterov: keep TF1\'s accumulator, the sum of '
                    'gradients times the current rate (a keras.optimizers.SGD subclass); false: '
                    'Keras\' SGD, whose accumulator keeps each step\'s own rate (the '
                    'momentum_rate_change mistake, shown once the rate changes).')
  flags.DEFINE_bool('tf1_rmsprop_start', default('tf1_rmsprop_start'),
                    '--optimizer=rmsprop*: start the mean square at one, as TF1\'s '
                    'RMSPropOptimizer does; false: at Keras\' zero (the rmsprop_zero_start '
                    'mistake: the first steps are up to sqrt(1 / (1 - rho)) = 3.2x larger).')
  flags.DEFINE_bool('keep_non_trainable_state', default('keep_non_trainable_state'),
                    '--backend=jax --loop=custom: carry the non-trainable state '
                    "model.stateless_call returns (BatchNorm's moving statistics, the Dropout "
                    'seed) into the next step; false drops it (the jax_state_dropped mistake).')
  flags.register_multi_flags_validator(
      ['backend', 'loop', 'keep_non_trainable_state'],
      lambda v: v['keep_non_trainable_state'] or (v['backend'] == 'jax' and v['loop'] == 'custom'),
      message='--nokeep_non_trainable_state is a mistake of the JAX custom loop: it needs '
              '--backend=jax --loop=custom')
  flags.register_multi_flags_validator(
      ['loop', 'fit_lr_schedule', 'add_regularization_losses'],
      lambda v: (v['loop'] == 'fit' or v['fit_lr_schedule'] == config.FIT_LR_SCHEDULES[0]) and (
          v['loop'] == 'custom' or v['add_regularization_losses']),
      message='--fit_lr_schedule applies to --loop=fit only, and --noadd_regularization_losses '
              'to --loop=custom only (fit adds model.losses itself)')
  flags.register_multi_flags_validator(
      ['fit_lr_schedule', 'lr_schedule', 'lr_decay_steps'],
      lambda v: v['fit_lr_schedule'] == config.FIT_LR_SCHEDULES[0] or (
          v['lr_schedule'] not in (None, 'constant') or v['lr_decay_steps'] > 0),
      message='--fit_lr_schedule=epoch_callback needs a schedule to apply: --lr_schedule or '
              '--lr_decay_steps')
  flags.register_multi_flags_validator(
      ['loop', 'fit_accuracy'],
      lambda v: v['loop'] == 'fit' or v['fit_accuracy'] == config.FIT_ACCURACY_METRICS[0],
      message='--fit_accuracy applies to --loop=fit only (the custom loop computes its '
              'accuracy itself)')


def define_runner_flags(runner_config):
  """Every flag of a runner: the data, training and its own flags, with the defaults of
  `runner_config` (config.GraphConfig or config.EagerConfig), and its replay mode's."""
  define_data_flags(runner_config)
  define_training_flags(runner_config)
  own = {config.GraphConfig: define_graph_flags, config.EagerConfig: define_eager_flags}
  own[runner_config]()
  replay_flags.define_replay_flags()


# What changes neither a run nor its numbers: the run directory's name leaves them out.
_NOT_IN_FOLDER_NAME = frozenset({*runlog.OPERATIONAL_FLAGS, 'replay_out', 'replay_batch',
                                 'replay_step', 'replay_start', 'loop'})


def runner_model_dir(flag_values, default=None):
  """--model_dir, or the run directory of this exploration: `default` (None: the flag's)
  followed by the flags set otherwise (output_folders.py)."""
  return output_folders.resolve('model_dir', _NOT_IN_FOLDER_NAME, default,
                                flag_values=flag_values)
