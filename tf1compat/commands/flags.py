"""absl flag definitions shared by the entry points (docs/commands.md).

Each command module calls the `define_*_flags` functions it needs; its `main` turns the
parsed flags into a frozen config (config.py) once and passes that to the library,
which never reads flags. Every flag's default is the default of its config field, so
`define_*_flags` take the config class whose defaults they show.
"""

import dataclasses
import math

from absl import flags

from tf1compat.bench import benchmark
from tf1compat.runs import errors
from tf1compat.runs import config
from tf1compat.judge import matrix
from tf1compat.train.models import convnet
from tf1compat.judge import parity
from tf1compat.judge import pitfalls
from tf1compat.data import record_schema
from tf1compat.train.models import plugins


# The most images make_records --synthetic writes (ImageNet's training set is 1.28 million).
SYNTHETIC_MAX_IMAGES = 2_000_000

def _integer(name, default, help_text, lower_bound, upper_bound=config.INT_MAX):
  """absl.flags.DEFINE_integer with an upper bound always (config.INT_MAX unless given)."""
  flags.DEFINE_integer(name, default, help_text, lower_bound=lower_bound,
                       upper_bound=upper_bound)


def _float(name, default, help_text, lower_bound=None, upper_bound=None, below=None):
  """absl.flags.DEFINE_float that refuses NaN and infinity too: absl's bounds are
  comparisons, which NaN passes, and --learning_rate=nan trained to a NaN loss (exit 3).
  `below`: an exclusive upper bound, which absl's bounds cannot say."""
  flags.DEFINE_float(name, default, help_text, lower_bound=lower_bound,
                     upper_bound=upper_bound)
  flags.register_validator(name, lambda value: value is None or math.isfinite(value),
                           message=f'--{name} takes a finite number, not nan or inf')
  if below is not None:
    flags.register_validator(name, lambda value: value is None or value < below,
                             message=f'--{name} must be below {below}')


def _int_list_validator(name):
  def check(values):
    try:
      return all(int(v) >= 0 for v in values)
    except ValueError:
      return False
  flags.register_validator(name, check, message=f'--{name} takes non-negative integers '
                           'separated by commas, e.g. 0,1,2,5,10')


def define_data_flags(defaults=config.DataConfig):
  """Flags that select and shape the data: both runners, check_parity and benchmark."""
  default = lambda name: config.default(defaults, name)
  flags.DEFINE_string('data_dir', default('data_dir'),
                      'Folder of train-*.tfrecord (and optional val-*.tfrecord) files; plain '
                      '*.tfrecord means all training data. Unset: the embedded synthetic dataset, '
                      'generated once into a cache folder ($TF1COMPAT_CACHE or '
                      '~/.cache/tf1compat).')
  _integer('num_classes', default('num_classes'),
           'Number of classes. Default: from dataset.json, else 257 (Caltech256).',
           lower_bound=2)
  _integer('image_size', default('image_size'), 'Side of the square input images.',
           lower_bound=convnet.MIN_IMAGE_SIZE)
  _integer('batch_size', default('batch_size'), 'Batch size.', lower_bound=1)
  _integer('seed', default('seed'),
           'Seeds every random op, shuffles included.', lower_bound=0,
           upper_bound=config.SEED_MAX)
  _integer('shuffle_buffer', default('shuffle_buffer'),
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
    flags.DEFINE_string('model_dir', default('model_dir'), 'The run directory.')
  _integer('epochs', default('epochs'), 'Epochs to train.', lower_bound=1)
  _integer('steps_per_epoch', default('steps_per_epoch'),
           'Training steps per epoch.', lower_bound=1)
  _float('learning_rate', default('learning_rate'),
         'Adam learning rate.', lower_bound=0.0)
  _integer('lr_decay_steps', default('lr_decay_steps'),
           'Decay the learning rate exponentially on the step counter: '
           'learning_rate * lr_decay_rate ** (step / lr_decay_steps), as '
           'tf.compat.v1.train.exponential_decay on the global step (graph) and '
           'keras.optimizers.schedules.ExponentialDecay on optimizer.iterations '
           '(eager). 0: a constant rate.', lower_bound=0)
  _float('lr_decay_rate', default('lr_decay_rate'),
         'The learning rate\'s factor per --lr_decay_steps steps.',
         lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_bool('lr_staircase', default('lr_staircase'),
                    'Decay in whole steps of --lr_decay_steps (an integer exponent).')
  # Adam divides by 1 - beta1**t and scales by sqrt(1 - beta2**t): a beta of 1 trained to
  # a NaN loss (beta1, exit 3) or left every weight where it was (beta2).
  _float('adam_beta1', default('adam_beta1'),
         'Adam beta1, in [0, 1).', lower_bound=0.0, below=1.0)
  _float('adam_beta2', default('adam_beta2'),
         'Adam beta2, in [0, 1).', lower_bound=0.0, below=1.0)
  _float('adam_epsilon', default('adam_epsilon'),
         "Adam epsilon. Default: each framework's own (graph 1e-8, eager 1e-7).",
         lower_bound=0.0)
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
  _float('dropout', default('dropout'),
         'Dropout rate before the logits (0: no Dropout layer).',
         lower_bound=0.0, upper_bound=0.99)
  flags.DEFINE_string('init_weights', default('init_weights'),
                      '.npz of initial weights (keys as in weight snapshots).')
  flags.DEFINE_string('save_init_weights', default('save_init_weights'),
                      'Write the initial weights to this .npz and exit without training (an '
                      'existing file is replaced only with --overwrite).')
  flags.DEFINE_list('snapshot_steps', [str(s) for s in default('snapshot_steps')],
                    'Steps after which all weights are saved (0: initial); the last step is '
                    'always saved.')
  _int_list_validator('snapshot_steps')
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
  _integer('intra_op_threads', default('intra_op_threads'),
           "Threads of one op (TF_NUM_INTRAOP_THREADS; 0: TensorFlow's, one per core). "
           'Another count sums in another order.', lower_bound=0, upper_bound=1024)
  flags.DEFINE_bool('require_gpu', default('require_gpu'),
                    'Stop with exit 2 when TensorFlow sees no GPU, instead of training on the '
                    'CPU (what a CUDA driver or library mismatch silently does).')
  flags.DEFINE_bool('overwrite', default('overwrite'),
                    'Replace a completed run directory (an interrupted one is resumed), or the '
                    'file --save_init_weights names.')
  _integer('log_every', default('log_every'),
           'Without a terminal, log progress every this many steps.', lower_bound=1)
  _integer('checkpoint_every', default('checkpoint_every'),
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
  _integer('dropout_seed', default('dropout_seed'),
           "Op seed of the Dropout masks (default: from --seed). check_parity's "
           'control run draws other masks with it, as every port does.',
           lower_bound=0, upper_bound=config.OP_SEED_MAX)
  _integer('nudge_seed', default('nudge_seed'),
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


def define_eager_flags():
  """TF2-runner switches (bin/train_eager)."""
  default = lambda name: config.default(config.EagerConfig, name)
  flags.DEFINE_enum('loop', default('loop'), config.LOOPS,
                    'custom: a tf.function train step with GradientTape; fit: Keras model.fit.')
  flags.DEFINE_bool('jit_compile', default('jit_compile'),
                    'Compile the train and eval steps with XLA.')
  flags.DEFINE_bool('mixed_precision', default('mixed_precision'),
                    'mixed_float16 policy (float32 logits and variables) with loss scaling.')
  flags.DEFINE_enum('strategy', default('strategy'), config.STRATEGIES,
                    'tf.distribute strategy. default: one device; mirrored: '
                    'MirroredStrategy over the local GPUs (or --devices); multi_worker: '
                    'MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (run the same '
                    'command on every worker; only the chief writes --model_dir, which must '
                    'be on storage all workers see). --batch_size is the global batch.')
  flags.DEFINE_list('devices', default('devices'),
                    '--strategy=mirrored: the devices to mirror over, e.g. GPU:0,GPU:1. '
                    'Default: every local GPU, else every (logical) CPU.')
  _integer('cpu_devices', default('cpu_devices'),
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
  flags.register_multi_flags_validator(
      ['loop', 'fit_lr_schedule', 'add_regularization_losses'],
      lambda v: (v['loop'] == 'fit' or v['fit_lr_schedule'] == config.FIT_LR_SCHEDULES[0]) and (
          v['loop'] == 'custom' or v['add_regularization_losses']),
      message='--fit_lr_schedule applies to --loop=fit only, and --noadd_regularization_losses '
              'to --loop=custom only (fit adds model.losses itself)')
  flags.register_multi_flags_validator(
      ['fit_lr_schedule', 'lr_decay_steps'],
      lambda v: v['fit_lr_schedule'] == config.FIT_LR_SCHEDULES[0] or v['lr_decay_steps'] > 0,
      message='--fit_lr_schedule=epoch_callback needs a schedule to apply: --lr_decay_steps')
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
  define_replay_flags()


def define_replay_flags():
  """The runners' replay mode (train/replay_mode.py): config.ReplayConfig, with --model_dir."""
  flags.DEFINE_string('replay_out', None,
                      'Replay mode: run the first training step of the complete run in '
                      '--model_dir once more, with its own flags, from its step-0 snapshot, '
                      'and write what the step computes (every layer\'s output, the loss and '
                      'its regularization part, the gradients, the update, the state) to this '
                      '.npz; nothing of the run changes. check_parity and compare_runs '
                      '--localize do it (docs/localization.md).')
  flags.DEFINE_string('replay_batch', None,
                      'Replay mode: compute on the batch of this replay (another run\'s '
                      '--replay_out) instead of the pipeline\'s first batch.')


def replay_config(flag_values, runner_config):
  """config.ReplayConfig of a runner's replay mode, or None without --replay_out.

  Raises errors.UsageError for --replay_batch without --replay_out, and for a training flag
  given with it: a replay takes the run's own flags from its run.json.
  """
  if not flag_values.replay_out:
    if flag_values.replay_batch:
      raise errors.UsageError('--replay_batch applies to a replay: add --replay_out=PATH')
    return None
  given = [name for name in (field.name for field in dataclasses.fields(runner_config))
           if name != 'model_dir' and flag_values[name].present]
  if given:
    raise errors.UsageError(f'--replay_out replays the run in --model_dir with its own flags; '
                         f'leave out --{given[0]}')
  return config.ReplayConfig(model_dir=flag_values.model_dir, output=flag_values.replay_out,
                             batch=flag_values.replay_batch)


def define_records_flags():
  """Flags of bin/make_records."""
  default = lambda name: config.default(config.RecordsConfig, name)
  flags.DEFINE_string('output_dir', default('output_dir'),
                      'Folder to write the shards and dataset.json into.')
  flags.DEFINE_string('image_dir', default('image_dir'),
                      'Image folder in Caltech256 layout (one sub-folder per class, e.g. '
                      '001.ak47/001_0001.jpg) to convert.')
  flags.DEFINE_bool('synthetic', default('synthetic'),
                    'Write the embedded synthetic dataset instead.')
  _float('val_fraction', default('val_fraction'),
         'Share of each class written to val-* shards.',
         lower_bound=0.0, upper_bound=0.9)
  _integer('num_shards', default('num_shards'), 'Shards per split.', lower_bound=1)
  _integer('seed', default('seed'),
           'Seed of the validation split and the synthetic images.',
           lower_bound=0, upper_bound=config.SEED_MAX)
  _integer('synthetic_classes', default('synthetic_classes'),
           'Classes of the synthetic dataset.',
           lower_bound=2)
  _integer('synthetic_train_per_class', default('synthetic_train_per_class'),
           'Synthetic training images per class.',
           lower_bound=1)
  _integer('synthetic_val_per_class', default('synthetic_val_per_class'),
           'Synthetic validation images per class.',
           lower_bound=0)
  flags.DEFINE_bool('overwrite', default('overwrite'), 'Replace records already in --output_dir.')
  flags.mark_flag_as_required('output_dir')
  # Written image by image: --synthetic_classes=100000000 ran for hours before its first
  # shard; a set larger than ImageNet's training set is a typo, not a test set.
  flags.register_multi_flags_validator(
      ['synthetic_classes', 'synthetic_train_per_class', 'synthetic_val_per_class'],
      lambda v: v['synthetic_classes'] * (v['synthetic_train_per_class'] +
                                          v['synthetic_val_per_class']) <= SYNTHETIC_MAX_IMAGES,
      message=f'the synthetic dataset would hold more than {SYNTHETIC_MAX_IMAGES:,} images; '
              'lower --synthetic_classes or the images per class')
  flags.register_multi_flags_validator(
      ['image_dir', 'synthetic'], lambda v: bool(v['image_dir']) != bool(v['synthetic']),
      message='pass exactly one of --image_dir=FOLDER or --synthetic')


def define_parity_flags(output_dir=None):
  """Tolerances and output of compare_runs and check_parity (defaults: parity.Tolerances);
  `output_dir` is --output_dir's default."""
  defaults = parity.Tolerances()
  flags.DEFINE_string('output_dir', output_dir,
                      'Folder for parity.md, parity.json and parity.png.')
  _integer('parity_steps', defaults.parity_steps,
           'Without a control run: the steps (and snapshot steps) the step tier '
           'judges.', lower_bound=1)
  for name, lower_bound, meaning in _TOLERANCE_FLAGS:
    _float(name, getattr(defaults, name), meaning, lower_bound=lower_bound)


# The float fields of parity.Tolerances as flags: (name, lower bound, meaning).
_TOLERANCE_FLAGS = (
    ('step_rtol', 0.0, 'Without a control run: relative tolerance of the batch loss.'),
    ('weight_rtol', 0.0, 'Without a control run: tolerance of ||a-b|| / ||a|| per variable at '
     'each judged snapshot.'),
    ('curve_rtol', 0.0, 'Curve tier: tolerance of per-epoch losses, relative to the initial '
     'loss (the floor of the band with a control run).'),
    ('accuracy_atol', 0.0, 'Curve tier: absolute tolerance of per-epoch accuracies (the floor '
     'of the band with a control run).'),
    ('envelope_multiple', 1.0, 'With a control run: step and weight tiers pass while the '
     "divergence is at most this many times the control's (floored at float32's rounding "
     'step).'),
    ('horizon_level', 0.0, 'With a control run: step and weight tiers are judged up to the '
     "step where the control's own divergence exceeds this."),
    ('curve_multiple', 1.0, "With a control run: the curve band is this many times the "
     "control's curve difference where that is wider than --curve_rtol/--accuracy_atol."),
)


def tolerances(parsed_flags):
  """parity.Tolerances from the parsed parity flags (`flags.FLAGS`)."""
  return parity.Tolerances(parity_steps=parsed_flags.parity_steps,
                           **{name: parsed_flags[name].value for name, _, _ in _TOLERANCE_FLAGS})


def define_check_parity_flags():
  """Flags of check_parity, and its own defaults: a no-flag run takes about half a minute on
  2 cores."""
  default = lambda name: config.default(config.CheckParityConfig, name)
  flags.DEFINE_bool('with_fit', default('with_fit'), 'Also run the Keras model.fit loop.')
  flags.DEFINE_bool('calibrate', default('calibrate'),
                    'Run a control (the legacy runner again from initial weights one ulp '
                    'apart, under another reduction order) and judge the port against its '
                    'divergence; --nocalibrate judges with the fixed tolerances.')
  flags.DEFINE_enum('pitfall', default('pitfall'), sorted(pitfalls.PITFALLS),
                    'Inject one catalogued migration mistake into the runner that makes it.')
  flags.DEFINE_bool('exact', default('exact'),
                    "Run the port with TF1's fused Adam and BatchNorm kernels (train_eager "
                    '--tf1_adam --tf1_bn_variance), so a matched port agrees bit for bit on '
                    "CPU and the step tier can judge it; --noexact compares Keras' own kernels "
                    'and reports their rounding as framework differences, judged on the curves.')
  flags.DEFINE_enum('strategy', default('strategy'), ('default', 'mirrored'),
                    "The port's tf.distribute strategy (train_eager --strategy; the graph "
                    'runner stays single-device). Multi-worker runs are started per worker and '
                    'compared with compare_runs.')
  _integer('cpu_devices', default('cpu_devices'),
           "The port's --cpu_devices (logical CPU devices for "
           '--strategy=mirrored without GPUs).', lower_bound=1)
  flags.DEFINE_bool('mixed_precision', default('mixed_precision'),
                    "Run the port with --mixed_precision.")
  flags.DEFINE_list('port_flags', list(default('port_flags')),
                    'More train_eager flags for the port only, e.g. --jit_compile,--tf32=off '
                    '(the legacy runner and its control keep the forwarded ones).')
  flags.register_validator('port_flags', lambda v: all(f.startswith('--') for f in v),
                           message='--port_flags takes train_eager flags, e.g. '
                                   '--port_flags=--jit_compile,--nodeterministic')
  flags.DEFINE_string('legacy_python', default('legacy_python'),
                      'A Python with TensorFlow 1.15 (bin/legacy_env DIR makes one): the legacy '
                      'loop also runs there (run directory tf115), the first rung of the '
                      'migration ladder TensorFlow 1.15 -> tf.compat.v1 on this TensorFlow -> '
                      'the port; a pitfall of the legacy loop goes into that run.')
  flags.DEFINE_bool('localize', default('localize'),
                    'Replay the first step in every runner and say where inside it the codes '
                    'part (docs/localization.md). Unset: on a FAIL; --localize: on a '
                    'PASS too; --nolocalize: never.')
  flags.DEFINE_bool('settings_matrix', default('settings_matrix'),
                    'Run the matched check once per setting that applies on this device '
                    '(the port without op determinism, with oneDNN turned the other way than this '
                    'CPU runs it by default, with XLA; on a GPU also '
                    'TF32 off and mixed precision) and write settings_matrix.md: the verdict, '
                    'the divergence over the envelope and the step time of each.')


def define_matrix_flags():
  """Flags of bin/parity_matrix."""
  default = lambda name: config.default(config.MatrixConfig, name)
  flags.DEFINE_string('output_dir', default('output_dir'),
                      "Folder for each case's check_parity output, matrix.md and matrix.json.")
  flags.DEFINE_list('cases', default('cases'),
                    f'Cases to run (default: all): {", ".join(matrix.CASE_NAMES)}.')
  flags.register_validator('cases', lambda v: not v or set(v) <= set(matrix.CASE_NAMES),
                           message=f'--cases takes names from {", ".join(matrix.CASE_NAMES)}')
  flags.DEFINE_bool('pitfalls', default('pitfalls'),
                    'Also run each applicable pitfall in every case.')


def define_benchmark_flags():
  """Flags of bin/benchmark, besides define_data_flags (image size, batch, buffer, seed)."""
  default = lambda name: config.default(config.BenchmarkConfig, name)
  flags.DEFINE_string('output_dir', 'runs/benchmark',
                      "Folder for the measurements' run directories and worker logs.")
  flags.DEFINE_string('json', None, 'Also write the figures to this JSON file (an existing '
                      "file only when it holds a benchmark's figures).")
  flags.DEFINE_list('measurements', None,
                    'Measurements to run, by name (default: all): '
                    f'{", ".join(benchmark.MEASUREMENT_NAMES)}.')
  # An empty list (--measurements=$UNSET) read as "all" started the whole benchmark.
  flags.register_validator('measurements', lambda names: names is None or bool(names),
                           message='--measurements= is empty; name measurements, or leave the '
                                   'flag out for all')
  _integer('repetitions', default('repetitions'),
           'Timed windows per measurement and round; figures are the median, min '
           'and max over all windows.', lower_bound=1)
  _integer('rounds', default('rounds'),
           'Runs of the whole sequence of measurements, each in fresh processes; '
           'the windows of all rounds are pooled. More rounds spread slow phases '
           'of a shared machine over all measurements instead of one.',
           lower_bound=1)
  _integer('steps', default('steps'), 'Training steps per timed window.',
           lower_bound=1)
  _integer('warmup_steps', default('warmup_steps'),
           'Training steps run before timing (tracing, buffers filling).',
           lower_bound=0)
  _integer('pipeline_batches', default('pipeline_batches'),
           'Batches per timed window of a pipeline. Default: one pass over the '
           "training records, so that the seed pipeline's buffer drain and refill "
           'both count.', lower_bound=1)
  _integer('records', default('records'),
           'Training records of the synthetic benchmark dataset (without '
           '--data_dir), written once into the cache folder.', lower_bound=1)
  flags.DEFINE_bool('deterministic', default('deterministic'),
                    "The runners' --deterministic (their default). Keras declines XLA in "
                    'model.fit under op determinism.')
  flags.DEFINE_string('model', default('model'),
                      "The runners' --model: a builder named as package.module:function (e.g. "
                      "tf1compat.train.models.resnet:resnet_small). Unset: the seed's ConvNet.")
  flags.register_validator('model', lambda spec: spec is None or record_schema.is_spec(spec),
                           message=f'--model takes {record_schema.SPEC_FORMAT}')
