"""absl flag definitions of the commands around the runners: make_records, compare_runs
and check_parity, parity_matrix and benchmark (docs/commands.md).

As in flags.py, each `define_*_flags` takes its defaults from the command's config class
(config.py), and the command turns the parsed flags into that config once.
"""

from absl import flags

from tf1compat.bench import benchmark
from tf1compat.commands import flag_kinds
from tf1compat.data import record_schema
from tf1compat.judge import matrix_cases
from tf1compat.judge import parity
from tf1compat.judge import pitfalls
from tf1compat.runs import config

# The most images make_records --synthetic writes (ImageNet's training set is 1.28 million).
SYNTHETIC_MAX_IMAGES = 2_000_000


def define_records_flags():
  """Flags of bin/make_records."""
  default = lambda name: config.default(config.RecordsConfig, name)
  flag_kinds.define_path('output_dir', default('output_dir'),
                         'Folder to write the shards and dataset.json into.')
  flag_kinds.define_path('image_dir', default('image_dir'),
                         'Image folder in Caltech256 layout (one sub-folder per class, e.g. '
                         '001.ak47/001_0001.jpg) to convert.')
  flags.DEFINE_bool('synthetic', default('synthetic'),
                    'Write the embedded synthetic dataset instead.')
  flag_kinds.define_float('val_fraction', default('val_fraction'),
                          'Share of each class written to val-* shards.',
                          lower_bound=0.0, upper_bound=0.9)
  flag_kinds.define_integer(
 'num_shards', default('num_shards'), 'Shards per split.', lower_bound=1)
  flag_kinds.define_integer('seed', default('seed'),
                            'Seed of the validation split and the synthetic images.',
                            lower_bound=0, upper_bound=config.SEED_MAX)
  flag_kinds.define_integer('synthetic_classes', default('synthetic_classes'),
                            'Classes of the synthetic dataset.',
                            lower_bound=2)
  flag_kinds.define_integer('synthetic_train_per_class', default('synthetic_train_per_class'),
                            'Synthetic training images per class.',
                            lower_bound=1)
  flag_kinds.define_integer('synthetic_val_per_class', default('synthetic_val_per_class'),
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


def define_parity_flags(output_dir=None, explorations=False):
  """Tolerances and output of compare_runs and check_parity (defaults: parity.Tolerances);
  `output_dir` is --output_dir's default, followed by the flags set otherwise where
  `explorations` (output_folders.py)."""
  defaults = parity.Tolerances()
  where = ('Folder for the runs, parity.md, parity.json and parity.png. Default: '
           f'{output_dir} with every flag at its default, else {output_dir}-NAME, NAME the '
           f'flags set otherwise (e.g. {output_dir}-batch_norm), so that other arguments never '
           'meet in one folder' if explorations
           else 'Folder for parity.md, parity.json and parity.png.')
  flag_kinds.define_path('output_dir', output_dir, where)
  flag_kinds.define_integer(
 'parity_steps', defaults.parity_steps,
 'Without a control run: the steps (and snapshot steps) the step tier '
 'judges.', lower_bound=1)
  for name, lower_bound, meaning in _TOLERANCE_FLAGS:
    flag_kinds.define_float(name, getattr(defaults, name), meaning, lower_bound=lower_bound)


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


# The flags that judge the runs without changing them: check_parity's folder leaves them out.
TOLERANCE_NAMES = ('parity_steps', *(name for name, _, _ in _TOLERANCE_FLAGS))


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
  flag_kinds.define_integer('cpu_devices', default('cpu_devices'),
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
  flags.DEFINE_enum('port_backend', default('port_backend'), config.KERAS_BACKENDS,
                    "Keras 3's backend the port runs on (its train_eager --backend): "
                    "tensorflow, or jax (pip install 'tf1compat[jax]'), judged against the "
                    'same legacy loop and controls.')
  flag_kinds.define_path(
 'legacy_python', default('legacy_python'),
 'A Python with TensorFlow 1.15 (bin/legacy_env DIR makes one): the legacy '
 'loop also runs there (run directory tf115), the first rung of the '
 'migration ladder TensorFlow 1.15 -> tf.compat.v1 on this TensorFlow -> '
 'the port; a pitfall of the legacy loop goes into that run.')
  flags.DEFINE_bool('localize', default('localize'),
                    'Replay the first step in every runner and say where inside it the codes '
                    'part (docs/localization.md). Unset: on a FAIL; --localize: on a '
                    'PASS too; --nolocalize: never.')
  flags.DEFINE_list('reuse_from', list(default('reuse_from')),
                    'Other check_parity output folders, or folders that hold them (a '
                    "parity_matrix output root): a runner's complete run made there with this "
                    "check's arguments is copied into --output_dir instead of trained again.")
  flags.DEFINE_bool('settings_matrix', default('settings_matrix'),
                    'Run the matched check once per setting that applies on this device '
                    '(the port without op determinism, with oneDNN turned the other way than this '
                    'CPU runs it by default, with XLA; on a GPU also '
                    'TF32 off and mixed precision; mixed_bfloat16, alone and with XLA, on a '
                    'GPU or a CPU with AVX512_BF16 or AMX) and write settings_matrix.md: the '
                    'verdict, the divergence over the envelope and the step time of each, '
                    "against the legacy Session's too, and the fastest setting that PASSes.")


def define_matrix_flags():
  """Flags of bin/parity_matrix."""
  default = lambda name: config.default(config.MatrixConfig, name)
  flag_kinds.define_path(
 'output_root', default('output_root'),
 'Folder for the matrix: each case\'s check_parity output in a folder of its name, '
 'matrix.md and matrix.json. On a cluster, storage every job sees.')
  flags.DEFINE_alias('output_dir', 'output_root')
  flags.DEFINE_list('cases', default('cases'),
                    'A folder of case files (NAME.flags, check_parity flags, one case each), or '
                    f'built-in cases by name (default: all): {", ".join(matrix_cases.CASE_NAMES)}.')
  flags.register_validator(
      'cases', lambda v: not v or len(v) == 1 or set(v) <= set(matrix_cases.CASE_NAMES),
      message=f'--cases takes one folder of case files, or names from '
              f'{", ".join(matrix_cases.CASE_NAMES)}')
  flags.DEFINE_bool('pitfalls', default('pitfalls'),
                    'Built-in cases: also each applicable pitfall of every case.')
  flag_kinds.define_integer(
 'case_index', default('case_index'),
 'Run the case of this index (0 for the first file of --cases in name order) and exit '
 'with its check_parity exit code. Default: JOB_COMPLETION_INDEX (a Kubernetes Indexed '
 'Job) or SLURM_ARRAY_TASK_ID (a Slurm array) where set; without one, every case.',
 lower_bound=0)
  flags.DEFINE_bool('merge', default('merge'),
                    'Write matrix.md and matrix.json from what has finished under '
                    '--output_root and exit 0 only if every case finished as expected.')
  flag_kinds.define_path(
 'write_cases', default('write_cases'),
 'Write the built-in cases (--cases names, --pitfalls) into this folder as case files, '
 'then exit.')
  flag_kinds.define_integer(
 'parallel', default('parallel'), 'Without a case index: cases run at a time here.',
 lower_bound=1, upper_bound=256)
  flags.DEFINE_bool('overwrite', default('overwrite'),
                    "Replace a case's runs made with other arguments (its case file changed).")
  flags.register_multi_flags_validator(
      ['merge', 'write_cases', 'case_index'],
      lambda v: sum((v['merge'], v['write_cases'] is not None, v['case_index'] is not None)) <= 1,
      message='--merge, --write_cases and --case_index are three different jobs: pass one')


def define_benchmark_flags():
  """Flags of bin/benchmark, besides define_data_flags (image size, batch, buffer, seed)."""
  default = lambda name: config.default(config.BenchmarkConfig, name)
  flag_kinds.define_path('output_dir', 'runs/benchmark',
                         "Folder for the measurements' run directories and worker logs.")
  flag_kinds.define_path('json', None, 'Also write the figures to this JSON file (an existing '
                         "file only when it holds a benchmark's figures).")
  flags.DEFINE_list('measurements', None,
                    'Measurements to run, by name (default: all): '
                    f'{", ".join(benchmark.MEASUREMENT_NAMES)}.')
  # An empty list (--measurements=$UNSET) read as "all" started the whole benchmark.
  flags.register_validator('measurements', lambda names: names is None or bool(names),
                           message='--measurements= is empty; name measurements, or leave the '
                                   'flag out for all')
  flag_kinds.define_integer(
 'repetitions', default('repetitions'),
 'Timed windows per measurement and round; figures are the median, min '
 'and max over all windows.', lower_bound=1)
  flag_kinds.define_integer(
 'rounds', default('rounds'),
 'Runs of the whole sequence of measurements, each in fresh processes; '
 'the windows of all rounds are pooled. More rounds spread slow phases '
 'of a shared machine over all measurements instead of one.',
 lower_bound=1)
  flag_kinds.define_integer('steps', default('steps'), 'Training steps per timed window.',
                            lower_bound=1)
  flags.DEFINE_bool('kernels', default('kernels'),
                    'Run the graph, eager custom and fit loops once more (first round, '
                    "warm-up and one window) under TensorFlow's profiler and report which "
                    'kernels each ran and their op time per step, side by side.')
  flag_kinds.define_integer('warmup_steps', default('warmup_steps'),
                            'Training steps run before timing (tracing, buffers filling).',
                            lower_bound=0)
  flag_kinds.define_integer(
 'pipeline_batches', default('pipeline_batches'),
 'Batches per timed window of a pipeline. Default: one pass over the '
 "training records, so that the seed pipeline's buffer drain and refill "
 'both count.', lower_bound=1)
  flag_kinds.define_integer('records', default('records'),
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
