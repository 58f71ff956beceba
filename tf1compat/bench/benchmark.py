"""bin/benchmark (issue 7): input-pipeline and training throughput, side by side.

One invocation measures, on the same data and settings:

1. the input pipeline alone, images/s and peak memory: the seed's op order (sequential
   maps, then a shuffle of decoded float images; also as TF 2's default rewrites
   parallelize it) versus `data.make_dataset`;
2. training throughput after warm-up: the graph loop, the eager custom loop and
   `model.fit`, each with Keras' Adam and with `tf1_adam`, and each loop's compute-only
   bound: the same runner, the same step, fed one batch held in memory;
3. the eager custom loop with `jit_compile`, and the port on Keras 3's JAX backend (its
   jitted custom loop, its compute-only bound and fit; where JAX is installed);
4. the roofline (issue 16.3): the device's matmul peak and the FLOPs of a training step
   (roofline.py), so each loop's images/s is also a fraction of the peak's FLOP/s;
5. the device it ran on.

This module is the orchestrator: it starts one worker process per measurement
(benchmark_workers), so that each peak memory is its own and graph mode and Keras 3
never share a process, and benchmark_figures turns what they measured into figures and
the table. Training measurements run the real runners (train/graph's and
train/eager's `backend.run`) for one epoch of `warmup_steps + repetitions * steps` steps and read
the per-step seconds of their steps.csv: the batch fetch, the step and the host sync of
the values shown, as each runner times them. A repetition is a window of `steps`
consecutive steps after the warm-up; at 224 pixels on 2 CPU cores, starting a process
and tracing its step costs more than the steps timed, so the windows share one process
per measurement. Figures are medians over the repetitions, with their min and max.

A pipeline repetition is a window of `pipeline_batches` batches after the first batch
(which waits for the shuffle buffer to fill), by default one pass over the records.
Both pipelines are periodic with the records: the seed's, which shuffles before it
repeats, decodes nothing while its buffer drains at the end of a pass, then decodes a
whole buffer before its next batch. A window of one pass holds one drain and one
refill, so its images/s is what training would see over many passes; a shorter one
can fall into the drain and time a pipeline that decodes nothing.

A shared machine has slow phases (other jobs, noisy neighbours of a VM) lasting from
seconds to minutes; a measurement that runs in one of them is slow as a whole. Each
measurement reports how many cores other processes kept busy meanwhile (`others`), and
`rounds=N` runs the whole sequence N times in fresh processes and pools the windows,
so that a slow phase spreads over all measurements instead of biasing one ratio.

The compute-only bound of a loop is that loop with the training dataset replaced by
its first batch, computed once by the real pipeline and then served from memory
(`take(1).cache().repeat()`): everything but the pipeline's work. `loop_over_compute_only`
compares each loop with its own bound, so it measures what the pipeline costs the loop.

The roofline runs in a worker of its own at the start of each round that trains: a
square matmul's GFLOP/s after warm-up (seconds), and in the first round the FLOPs per
image of the runners' model (the seed's ConvNet, or --model), counted from its layers
(the three loops build the same model with model.build_model; no measured switch
changes its layers).

No TensorFlow in this process: each worker sets its process up (legacy Keras and TF1
behaviour for the graph runner, Keras 3 otherwise) before TensorFlow is first imported.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

from absl import logging

from tf1compat.bench import benchmark_figures
from tf1compat.runs import atomic
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runtime import process

# Workers run by module name, each on the spec file in its work folder.
_WORKER_MODULE = 'tf1compat.commands.benchmark_worker'
_RESULT_JSON = 'result.json'
_SPEC_JSON = 'spec.json'
_LOG_FILE = 'worker.log'
# The folders run() writes into --output_dir besides one per measurement.
_DATA_DIR = 'data'
_ROOFLINE_DIR = 'roofline'
_KERNELS_DIR = 'kernels'


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One thing the benchmark measures, in a worker process of its own.

  kind: 'pipeline' (variant: 'seed', 'seed_tf2' or 'optimized'; `op_determinism`: None
  for the runners' setting, --deterministic, else on or off) or 'train' (runner:
  'graph', 'eager' or 'fit'; `switches`: boolean fields of the runner's config turned
  on; `compute_only` serves one batch from memory instead of the pipeline; `backend`:
  Keras 3's backend the port runs on).
  """
  name: str
  label: str
  kind: str
  variant: str = None
  runner: str = None
  switches: tuple = ()
  compute_only: bool = False
  op_determinism: bool = None
  backend: str = 'tensorflow'


# In the order they run: the pipelines, then each loop beside its compute-only bound.
MEASUREMENTS = (
    # The seed's era had no op determinism; make_dataset runs as in the runners (under
    # op determinism by default), and once more without it: what determinism costs the
    # runners' pipeline (TF 2.21 could run its parse map sequentially under determinism,
    # which its label checks make stateful; measured on 2 CPU cores at 224 px: 2930 images/s
    # without determinism, 2860 with it, and half that with a sequential map: it stays
    # parallel).
    Measurement('pipeline_seed', "seed's op order", 'pipeline', variant='seed',
                op_determinism=False),
    Measurement('pipeline_seed_tf2', "seed's op order, TF 2 rewrites", 'pipeline',
                variant='seed_tf2', op_determinism=False),
    Measurement('pipeline_optimized', 'data.make_dataset', 'pipeline', variant='optimized'),
    Measurement('pipeline_optimized_nondeterministic', 'make_dataset, determinism off',
                'pipeline', variant='optimized', op_determinism=False),
    Measurement('graph', 'graph (TF1 Session)', 'train', runner='graph'),
    Measurement('graph_compute_only', 'graph, compute only', 'train', runner='graph',
                compute_only=True),
    Measurement('eager', 'eager custom', 'train', runner='eager'),
    Measurement('eager_compute_only', 'eager custom, compute only', 'train', runner='eager',
                compute_only=True),
    Measurement('fit', 'fit', 'train', runner='fit'),
    Measurement('fit_compute_only', 'fit, compute only', 'train', runner='fit',
                compute_only=True),
    Measurement('eager_tf1_adam', 'eager custom --tf1_adam', 'train', runner='eager',
                switches=('tf1_adam',)),
    Measurement('fit_tf1_adam', 'fit --tf1_adam', 'train', runner='fit',
                switches=('tf1_adam',)),
    Measurement('eager_jit', 'eager custom --jit_compile', 'train', runner='eager',
                switches=('jit_compile',)),
    Measurement('jax', 'JAX custom (jax.jit)', 'train', runner='eager', backend='jax'),
    Measurement('jax_compute_only', 'JAX custom, compute only', 'train', runner='eager',
                backend='jax', compute_only=True),
    Measurement('jax_fit', 'JAX fit', 'train', runner='fit', backend='jax'),
)
MEASUREMENT_NAMES = tuple(m.name for m in MEASUREMENTS)
# The runner whose config the roofline's FLOP count builds the model from.
_FLOPS_RUNNER = MEASUREMENTS[MEASUREMENT_NAMES.index('eager')]


def selected_measurements(names):
  """The Measurements named in `names` (None or empty: all, the JAX port's where JAX is
  installed), in running order."""
  if not names:
    if process.keras_backend_installed('jax'):
      return MEASUREMENTS
    logging.warning("the JAX port's measurements are left out: JAX is not installed (pip "
                    "install 'tf1compat[jax]')")
    return tuple(m for m in MEASUREMENTS if m.backend != 'jax')
  unknown = sorted(set(names) - set(MEASUREMENT_NAMES))
  if unknown:
    raise errors.UsageError(f'--measurements: unknown {", ".join(unknown)}; choose from '
                            f'{",".join(MEASUREMENT_NAMES)}')
  chosen = tuple(m for m in MEASUREMENTS if m.name in names)
  if any(m.backend == 'jax' for m in chosen):
    process.check_keras_backend('jax')
  return chosen


def _run_worker(work_dir, spec):
  """Runs one worker on `spec` in `work_dir`; returns its result dict.

  Its output goes to work_dir/worker.log. A usage error of the worker (exit 2, e.g. a
  bad --data_dir) becomes this process's UsageError with the worker's own message.
  """
  os.makedirs(work_dir, exist_ok=True)
  spec_path = os.path.join(work_dir, _SPEC_JSON)
  result_path = os.path.join(work_dir, _RESULT_JSON)
  if os.path.exists(result_path):
    os.remove(result_path)
  atomic.atomic_write_json(spec_path, {**spec, 'result': result_path})
  env = process.child_env()
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  log_path = os.path.join(work_dir, _LOG_FILE)
  with open(log_path, 'w') as log:
    code = subprocess.run([sys.executable, '-m', _WORKER_MODULE, spec_path], stdout=log,
                          stderr=subprocess.STDOUT, env=env, check=False).returncode
  if code == 0:
    with open(result_path) as f:
      return json.load(f)
  with open(log_path, errors='replace') as f:
    lines = [line.rstrip() for line in f if line.strip()]
  if code == errors.EXIT_USAGE and lines:
    raise errors.UsageError(lines[-1].split(': ', 1)[-1])
  tail = '\n'.join(lines[-20:])
  raise RuntimeError(f'benchmark worker {spec["kind"]} failed (exit {code}); log: '
                     f'{log_path}\n{tail}')


def cpu_snapshot():
  """(monotonic time, busy CPU seconds of the machine or None, CPU seconds of this process
  and of its waited-for children)."""
  try:
    with open('/proc/stat') as f:
      fields = [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    busy = None
  else:
    # user nice system idle iowait irq softirq steal: all but idle and iowait is busy.
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf('SC_CLK_TCK')
  return time.monotonic(), busy, sum(os.times()[:4])


def other_cores(before, after):
  """Cores that other processes kept busy, on average, between two cpu_snapshot()s.

  The figures are only as good as the machine is quiet: this says how quiet it was.
  None where /proc/stat is unavailable.
  """
  if before[1] is None or after[1] is None or after[0] <= before[0]:
    return None
  others = (after[1] - before[1]) - (after[2] - before[2])
  return max(0.0, others) / (after[0] - before[0])


def train_spec(settings, data, measurement, model_dir):
  """The worker spec of a training measurement (see benchmark_workers): its runner, and
  the config.GraphConfig or config.EagerConfig that runner runs with, JSON-ready.

  `settings` is the config.BenchmarkConfig, `data` the data worker's result.
  """
  fields = dict(
      data_dir=data['data_dir'], model_dir=model_dir, overwrite=True,
      num_classes=data['num_classes'],
      allow_num_classes_mismatch=data['allow_num_classes_mismatch'],
      image_size=settings.image_size,
      batch_size=settings.batch_size, seed=settings.seed,
      shuffle_buffer=settings.shuffle_buffer, epochs=1, steps_per_epoch=settings.total_steps,
      # No snapshot but the last step's, no checkpoint but the epoch end's, no progress
      # line: the timed steps do nothing a plain training step would not.
      snapshot_steps=(), checkpoint_every=settings.total_steps + 1,
      log_every=settings.total_steps + 1, deterministic=settings.deterministic,
      model=settings.model, on_bad_record=settings.on_bad_record,
      **{name: True for name in measurement.switches})
  if measurement.runner == 'graph':
    runner_config = config.GraphConfig(**fields)
  else:
    runner_config = config.EagerConfig(
        loop='fit' if measurement.runner == 'fit' else 'custom', backend=measurement.backend,
        **fields)
  return {'kind': 'train', 'runner': measurement.runner,
          'compute_only': measurement.compute_only,
          'config': config.manifest_flags(runner_config)}


def step_windows(seconds, settings):
  """images/s of each repetition: `steps` consecutive steps after the warm-up."""
  needed = settings.total_steps
  if len(seconds) < needed:
    raise RuntimeError(f'steps.csv holds {len(seconds)} steps, {needed} expected')
  timed = seconds[settings.warmup_steps:needed]
  return [settings.batch_size * settings.steps / sum(timed[i:i + settings.steps])
          for i in range(0, len(timed), settings.steps)]


def _measure_training(settings, data, measurement, work_dir):
  """One round of a training measurement: its windows' images/s and what else it showed."""
  model_dir = os.path.join(work_dir, 'run')
  result = _run_worker(work_dir, train_spec(settings, data, measurement, model_dir))
  seconds = [float(s) for s in runlog.read_csv(os.path.join(model_dir, run_files.STEPS_CSV))
             ['seconds']]
  manifest = runlog.read_manifest(model_dir)
  return {
      'rates': step_windows(seconds, settings),
      'peak_rss_mb': result['peak_rss_mb'],
      'timed_step_seconds': seconds[settings.warmup_steps:settings.total_steps],
      'warmup_step_seconds': seconds[:settings.warmup_steps],
      'runner': measurement.runner,
      'runner_args': [f'--{name}' for name in measurement.switches],
      'compute_only': measurement.compute_only,
      'jit_compile': manifest.get('jit_compile', False),
      'device': manifest.get('device'), 'versions': manifest.get('versions'),
      'run_dir': model_dir,
  }


def _profile_kernels(settings, data, measurement, work_dir):
  """A training measurement's loop run once more under TensorFlow's profiler (warm-up and
  one window, untimed): kernels.op_time_by_kernel of its timed steps."""
  logdir = os.path.join(work_dir, 'profile')
  if os.path.isdir(logdir):
    shutil.rmtree(logdir)
  spec = train_spec(dataclasses.replace(settings, repetitions=1), data, measurement,
                    os.path.join(work_dir, 'run'))
  spec['profile'] = {'logdir': logdir, 'skip_steps': settings.warmup_steps,
                     'steps': settings.steps}
  return _run_worker(work_dir, spec)['kernels']


def _measure_pipeline(settings, data, measurement, work_dir):
  """One round of a pipeline measurement: its windows' images/s and peak memory."""
  result = _run_worker(work_dir, {
      'kind': 'pipeline', 'variant': measurement.variant, 'files': data['files'],
      'image_size': settings.image_size, 'num_classes': data['num_classes'],
      'batch_size': settings.batch_size, 'seed': settings.seed,
      'shuffle_buffer': settings.shuffle_buffer, 'batches': settings.pipeline_batches,
      'repetitions': settings.repetitions,
      'op_determinism': (settings.deterministic if measurement.op_determinism is None
                         else measurement.op_determinism)})
  images = settings.batch_size * settings.pipeline_batches
  return {
      'rates': [images / s for s in result['window_seconds']],
      'op_determinism': result['op_determinism'],
      'peak_rss_mb': result['peak_rss_mb'],
      'first_batch_seconds': result['first_batch_seconds'],
      'baseline_rss_mb': result['baseline_rss_mb'],
  }


def _measure_roofline(settings, data, count_flops, work_dir):
  """One round of the roofline: the matmul peak's windows and, with `count_flops`, the
  FLOPs of the runners' model (see roofline.py)."""
  model = None
  if count_flops:
    model = train_spec(settings, data, _FLOPS_RUNNER, os.path.join(work_dir, 'run'))['config']
  return _run_worker(work_dir, {'kind': 'roofline', 'repetitions': settings.repetitions,
                                'model': model})


def _timed(measure, *args):
  """`measure(*args)`'s result, with the cores other processes kept busy meanwhile and
  its wall time."""
  before = cpu_snapshot()
  measured = measure(*args)
  after = cpu_snapshot()
  measured['other_load_cores'] = other_cores(before, after)
  measured['wall_seconds'] = after[0] - before[0]
  return measured


def check_outputs(settings, output_dir, json_path):
  """Refuses, before anything is measured, an --output_dir or a --json where the benchmark
  must not write (folders.check_output): among the data, the cache or the package; an
  --output_dir holding anything but the benchmark's own folders (run() replaces what they
  hold) and figures, or in use by another benchmark; a --json file that is not a
  benchmark's figures. Then holds --output_dir's lock until this process ends."""
  folders.check_output(output_dir, '--output_dir', folder=True, data_dirs=[settings.data_dir])
  own = {_DATA_DIR, _ROOFLINE_DIR, _KERNELS_DIR, *MEASUREMENT_NAMES}
  # A --json may have gone there too.
  foreign = sorted(name for name in set(run_files.content(output_dir)) - own
                   if not benchmark_figures.is_figures_file(os.path.join(output_dir, name)))
  if foreign:
    raise errors.UsageError(f'--output_dir={output_dir} holds files the benchmark did not write '
                            f'({", ".join(foreign[:3])}); choose another --output_dir')
  if json_path:
    folders.check_output(json_path, '--json', folder=False, data_dirs=[settings.data_dir],
                         replaceable=benchmark_figures.is_figures_file)
  # run() replaces its folders' content: a second benchmark into the same folder would
  # replace the first one's runs under it.
  folders.lock_folder(output_dir, '--output_dir')


def run(settings, output_dir, measurement_names=None):
  """Runs the measurements named in `measurement_names` (None or empty: all); returns the
  figures (JSON-ready).

  `settings` is a config.BenchmarkConfig; each measurement's run directories and worker
  log go under `output_dir`.
  """
  started = time.time()
  measurements = selected_measurements(measurement_names)
  os.makedirs(output_dir, exist_ok=True)
  logging.info('preparing the benchmark data')
  data = _run_worker(os.path.join(output_dir, _DATA_DIR), {
      'kind': 'data', 'data_dir': settings.data_dir, 'num_classes': settings.num_classes,
      'records': settings.records, 'seed': settings.seed,
      'allow_num_classes_mismatch': settings.allow_num_classes_mismatch,
      'on_bad_record': settings.on_bad_record,
      'train_only_dir': os.path.join(output_dir, _DATA_DIR, 'train_only')})
  if settings.pipeline_batches is None:
    settings = dataclasses.replace(
        settings, pipeline_batches=-(-data['records'] // settings.batch_size))
  pipelines = [m.name for m in measurements if m.kind == 'pipeline']
  if data['bad_records'] and pipelines:
    # The pipelines are timed as written, on every record; only the runners skip.
    raise errors.UsageError(
        f'--data_dir={settings.data_dir}: {data["bad_records"]} bad record(s); the pipeline '
        f'measurements ({", ".join(pipelines)}) need clean records: fix them, or leave '
        'those measurements out of --measurements')
  rounds = {m.name: [] for m in measurements}
  roofline_rounds = []
  trains = any(m.kind == 'train' for m in measurements)
  for round_index in range(1, settings.rounds + 1):
    if trains:
      logging.info('round %d/%d: measuring the roofline', round_index, settings.rounds)
      roofline_rounds.append(_timed(_measure_roofline, settings, data, round_index == 1,
                                    os.path.join(output_dir, _ROOFLINE_DIR)))
    for index, measurement in enumerate(measurements, start=1):
      logging.info('round %d/%d: measuring %s (%d/%d)', round_index, settings.rounds,
                   measurement.name, index, len(measurements))
      measure = _measure_pipeline if measurement.kind == 'pipeline' else _measure_training
      measured = _timed(measure, settings, data, measurement,
                        os.path.join(output_dir, measurement.name))
      rounds[measurement.name].append(measured)
      logging.info('%s: %s images/s', measurement.name,
                   ' '.join(f'{rate:.1f}' for rate in measured['rates']))
  profiled = {}
  if settings.kernels:
    for measurement in (m for m in measurements if m.name in benchmark_figures.LOOPS):
      logging.info('profiling %s: which kernels it runs', measurement.name)
      profiled[measurement.name] = _profile_kernels(
          settings, data, measurement, os.path.join(output_dir, _KERNELS_DIR, measurement.name))
  results = {m.name: benchmark_figures.pool_rounds(m.label, rounds[m.name])
             for m in measurements}
  figures = benchmark_figures.ratios(results)
  figures.update(benchmark_figures.roofline_figures(roofline_rounds, results))
  figures.update({
      'device': benchmark_figures.device_block(results),
      'settings': {**dataclasses.asdict(settings), 'num_classes': data['num_classes'],
                   'data_dir': data['data_dir'], 'records': data['records']},
      'measurements': results,
      'kernels': profiled,
      'wall_seconds': round(time.time() - started, 1),
  })
  figures['targets'] = benchmark_figures.check_targets(figures)
  return figures
