"""bin/benchmark (issue 7): input-pipeline and training throughput, side by side.

One invocation measures, on the same data and flags:

1. the input pipeline alone, images/s and peak memory: the seed's op order (sequential
   maps, then a shuffle of decoded float images; also as TF 2's default rewrites
   parallelize it) versus `data.make_dataset`;
2. training throughput after warm-up: the graph loop, the eager custom loop and
   `model.fit`, each with Keras' Adam and with `--tf1_adam`, and each loop's compute-only
   bound: the same runner, the same step, fed one batch held in memory;
3. the eager custom loop with `--jit_compile`;
4. the device it ran on.

Every measurement runs in a subprocess of its own (this module run as a worker), so its
peak memory is its own, and graph mode and Keras 3 never share a process. Training
measurements run the real runners (`graph_loop.run`, `eager_loop.run`) for one epoch of
`warmup_steps + repetitions * steps` steps and read the per-step seconds of their
steps.csv: the batch fetch, the step and the host sync of the values shown, as each
runner times them. A repetition is a window of `steps` consecutive steps after the
warm-up; at 224 pixels on 2 CPU cores, starting a process and tracing its step costs
more than the steps timed, so the windows share one process per measurement. Figures
are medians over the repetitions, with their min and max.

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
`--rounds=N` runs the whole sequence N times in fresh processes and pools the windows,
so that a slow phase spreads over all measurements instead of biasing one ratio.

The compute-only bound of a loop is that loop with the training dataset replaced by
its first batch, computed once by the real pipeline and then served from memory
(`take(1).cache().repeat()`): everything but the pipeline's work. `loop_over_compute_only`
compares each loop with its own bound, so it measures what the pipeline costs the loop.

This module imports no TensorFlow at import time: the orchestrator only starts workers,
and each worker sets its process up (legacy Keras and TF1 behaviour for the graph
runner, Keras 3 otherwise) before TensorFlow is first imported.
"""

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import logging

from tf1compat import cli
from tf1compat import process
from tf1compat import runlog

# Classes of the model when the benchmark writes its own data: the seed's Caltech256
# head (its synthetic records use 10 of them).
SEED_NUM_CLASSES = 257
SYNTHETIC_CLASSES = 10
# Batches read after the shuffle buffer has filled and before timing, so that parallel
# maps and prefetching have reached their steady state.
PIPELINE_WARMUP_BATCHES = 5
# Other processes busy on more than this many cores, on average, during a measurement
# make its figures noisy enough to say so.
NOISY_OTHER_CORES = 0.1
# Workers run this module by name (not __name__, which is '__main__' in a worker).
_WORKER_MODULE = 'tf1compat.benchmark'
_RESULT_JSON = 'result.json'
_SPEC_JSON = 'spec.json'
_LOG_FILE = 'worker.log'
# The seed's shuffles are unseeded; seeded here for repeatable runs, with distinct offsets
# so that the file-order and record shuffles do not draw the same stream (as in data.py).
_SEED_FILE_SHUFFLE_OFFSET = 1
_SEED_RECORD_SHUFFLE_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One thing the benchmark measures, in a worker process of its own.

  kind: 'pipeline' (variant: 'seed', 'seed_tf2' or 'optimized') or 'train' (runner: 'graph',
  'eager' or 'fit', with extra runner `args`; `compute_only` serves one batch from
  memory instead of the pipeline).
  """
  name: str
  label: str
  kind: str
  variant: str = None
  runner: str = None
  args: tuple = ()
  compute_only: bool = False


# In the order they run: the pipelines, then each loop beside its compute-only bound.
MEASUREMENTS = (
    Measurement('pipeline_seed', "seed's op order", 'pipeline', variant='seed'),
    Measurement('pipeline_seed_tf2', "seed's op order, TF 2 rewrites", 'pipeline',
                variant='seed_tf2'),
    Measurement('pipeline_optimized', 'data.make_dataset', 'pipeline', variant='optimized'),
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
                args=('--tf1_adam',)),
    Measurement('fit_tf1_adam', 'fit --tf1_adam', 'train', runner='fit',
                args=('--tf1_adam',)),
    Measurement('eager_jit', 'eager custom --jit_compile', 'train', runner='eager',
                args=('--jit_compile',)),
)
MEASUREMENT_NAMES = tuple(m.name for m in MEASUREMENTS)
LOOPS = ('graph', 'eager', 'fit')


@dataclasses.dataclass(frozen=True)
class Target:
  """One of the issue's targets: the figure at `key` (dotted into nested dicts) >= `minimum`."""
  key: str
  minimum: float
  label: str


TARGETS = (
    Target('eager_over_graph', 1.0, 'eager custom / graph'),
    Target('eager_tf1_adam_over_graph', 1.0, 'eager custom --tf1_adam / graph'),
    Target('fit_over_graph', 0.95, 'fit / graph'),
    Target('fit_tf1_adam_over_graph', 0.95, 'fit --tf1_adam / graph'),
    Target('loop_over_compute_only.graph', 0.9, 'graph / its compute-only bound'),
    Target('loop_over_compute_only.eager', 0.9, 'eager custom / its compute-only bound'),
    Target('loop_over_compute_only.fit', 0.9, 'fit / its compute-only bound'),
    Target('pipeline_speedup', 1.35, "make_dataset / seed's pipeline, images/s"),
    Target('pipeline_memory_ratio', 5.0, "seed's pipeline / make_dataset, peak memory"),
)

# Ratios without a target, shown for what they explain.
_INFO_RATIOS = (
    ('jit_over_eager', 'eager custom --jit_compile / eager custom'),
    ('compute_only_eager_over_graph', 'compute only: eager custom / graph'),
    ('compute_only_fit_over_graph', 'compute only: fit / graph'),
    ('pipeline_speedup_over_tf2_seed', "make_dataset / seed's pipeline, TF 2 rewrites"),
)


# ----------------------------------------------------------------------------------------
# Orchestration (no TensorFlow in this process).


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every measurement shares, from the flags."""
  image_size: int
  batch_size: int
  seed: int
  shuffle_buffer: int
  steps: int
  warmup_steps: int
  repetitions: int
  pipeline_batches: int  # None: one pass over the training records
  records: int
  deterministic: bool
  rounds: int = 1
  on_bad_record: str = 'fail'
  data_dir: str = None
  num_classes: int = None

  @property
  def total_steps(self):
    return self.warmup_steps + self.repetitions * self.steps


def settings_from_flags(flags_obj):
  """The Settings of bin/benchmark's flags."""
  return Settings(image_size=flags_obj.image_size, batch_size=flags_obj.batch_size,
                  seed=flags_obj.seed, shuffle_buffer=flags_obj.shuffle_buffer,
                  steps=flags_obj.steps, warmup_steps=flags_obj.warmup_steps,
                  repetitions=flags_obj.repetitions,
                  pipeline_batches=flags_obj.pipeline_batches, records=flags_obj.records,
                  deterministic=flags_obj.deterministic, rounds=flags_obj.rounds,
                  on_bad_record=flags_obj.on_bad_record,
                  data_dir=flags_obj.data_dir, num_classes=flags_obj.num_classes)


def selected_measurements(names):
  """The Measurements named in `names` (None or empty: all), in running order."""
  if not names:
    return MEASUREMENTS
  unknown = sorted(set(names) - set(MEASUREMENT_NAMES))
  if unknown:
    raise cli.UsageError(f'--measurements: unknown {", ".join(unknown)}; choose from '
                         f'{",".join(MEASUREMENT_NAMES)}')
  return tuple(m for m in MEASUREMENTS if m.name in names)


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
  runlog.atomic_write_json(spec_path, {**spec, 'result': result_path})
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
  if code == cli.EXIT_USAGE and lines:
    raise cli.UsageError(lines[-1].split(': ', 1)[-1])
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


def _summary(values):
  """{'median', 'min', 'max', 'repetitions'} of a list of figures."""
  return {'median': statistics.median(values), 'min': min(values), 'max': max(values),
          'repetitions': list(values)}


def _runner_args(settings, data, measurement, model_dir):
  """The runner flags of a training measurement."""
  args = [f'--data_dir={data["data_dir"]}', f'--model_dir={model_dir}', '--overwrite',
          f'--num_classes={data["num_classes"]}', f'--image_size={settings.image_size}',
          f'--batch_size={settings.batch_size}', f'--seed={settings.seed}',
          f'--shuffle_buffer={settings.shuffle_buffer}', '--epochs=1',
          f'--steps_per_epoch={settings.total_steps}',
          # No snapshot but the last step's, no checkpoint but the epoch end's, no
          # progress line: the timed steps do nothing a plain training step would not.
          '--snapshot_steps=', f'--checkpoint_every={settings.total_steps + 1}',
          f'--log_every={settings.total_steps + 1}',
          '--deterministic' if settings.deterministic else '--nodeterministic',
          f'--on_bad_record={settings.on_bad_record}']
  if measurement.runner != 'graph':
    args.append(f'--loop={"fit" if measurement.runner == "fit" else "custom"}')
  return args + list(measurement.args)


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
  result = _run_worker(work_dir, {
      'kind': 'train', 'runner': measurement.runner, 'compute_only': measurement.compute_only,
      'args': _runner_args(settings, data, measurement, model_dir)})
  seconds = [float(s) for s in runlog.read_csv(os.path.join(model_dir, runlog.STEPS_CSV))
             ['seconds']]
  manifest = runlog.read_manifest(model_dir)
  return {
      'rates': step_windows(seconds, settings),
      'peak_rss_mb': result['peak_rss_mb'],
      'timed_step_seconds': seconds[settings.warmup_steps:settings.total_steps],
      'warmup_step_seconds': seconds[:settings.warmup_steps],
      'runner': measurement.runner, 'runner_args': list(measurement.args),
      'compute_only': measurement.compute_only,
      'jit_compile': manifest.get('jit_compile', False),
      'device': manifest.get('device'), 'versions': manifest.get('versions'),
      'run_dir': model_dir,
  }


def _measure_pipeline(settings, data, measurement, work_dir):
  """One round of a pipeline measurement: its windows' images/s and peak memory."""
  result = _run_worker(work_dir, {
      'kind': 'pipeline', 'variant': measurement.variant, 'files': data['files'],
      'image_size': settings.image_size, 'num_classes': data['num_classes'],
      'batch_size': settings.batch_size, 'seed': settings.seed,
      'shuffle_buffer': settings.shuffle_buffer, 'batches': settings.pipeline_batches,
      'repetitions': settings.repetitions})
  images = settings.batch_size * settings.pipeline_batches
  return {
      'rates': [images / s for s in result['window_seconds']],
      'peak_rss_mb': result['peak_rss_mb'],
      'first_batch_seconds': result['first_batch_seconds'],
      'baseline_rss_mb': result['baseline_rss_mb'],
  }


def pool_rounds(label, rounds):
  """One measurement's result from its rounds: every window counts as a repetition.

  Peak memory and the load of other processes are the worst round's; the fields of
  the last round (run directory, device) stand for all.
  """
  pooled = dict(rounds[-1])
  del pooled['rates']
  pooled['label'] = label
  pooled['images_per_second'] = _summary([rate for r in rounds for rate in r['rates']])
  pooled['peak_rss_mb'] = max(r['peak_rss_mb'] for r in rounds)
  pooled['wall_seconds'] = sum(r['wall_seconds'] for r in rounds)
  loads = [r['other_load_cores'] for r in rounds if r['other_load_cores'] is not None]
  pooled['other_load_cores'] = max(loads) if loads else None
  if 'timed_step_seconds' in pooled:
    pooled['timed_step_seconds'] = [t for r in rounds for t in r['timed_step_seconds']]
    pooled['median_step_seconds'] = statistics.median(pooled['timed_step_seconds'])
  return pooled


def _ratio(results, numerator, denominator, key='images_per_second'):
  if numerator not in results or denominator not in results:
    return None
  top, bottom = results[numerator][key], results[denominator][key]
  if isinstance(top, dict):
    top, bottom = top['median'], bottom['median']
  return top / bottom


def ratios(results):
  """The issue's ratios from {measurement name: result}; None where one side is missing."""
  return {
      'eager_over_graph': _ratio(results, 'eager', 'graph'),
      'eager_tf1_adam_over_graph': _ratio(results, 'eager_tf1_adam', 'graph'),
      'fit_over_graph': _ratio(results, 'fit', 'graph'),
      'fit_tf1_adam_over_graph': _ratio(results, 'fit_tf1_adam', 'graph'),
      'jit_over_eager': _ratio(results, 'eager_jit', 'eager'),
      'compute_only_eager_over_graph': _ratio(results, 'eager_compute_only',
                                              'graph_compute_only'),
      'compute_only_fit_over_graph': _ratio(results, 'fit_compute_only', 'graph_compute_only'),
      'loop_over_compute_only': {loop: _ratio(results, loop, f'{loop}_compute_only')
                                 for loop in LOOPS},
      'pipeline_speedup': _ratio(results, 'pipeline_optimized', 'pipeline_seed'),
      'pipeline_speedup_over_tf2_seed': _ratio(results, 'pipeline_optimized',
                                               'pipeline_seed_tf2'),
      # Lower is better for memory: the seed's peak over the optimized one.
      'pipeline_memory_ratio': _ratio(results, 'pipeline_seed', 'pipeline_optimized',
                                      key='peak_rss_mb'),
  }


def _lookup(figures, dotted):
  value = figures
  for part in dotted.split('.'):
    value = value.get(part) if isinstance(value, dict) else None
  return value


def check_targets(figures):
  """{target key: {'value', 'minimum', 'met'}} for the targets whose figure exists."""
  out = {}
  for target in TARGETS:
    value = _lookup(figures, target.key)
    if value is not None:
      out[target.key] = {'label': target.label, 'value': value, 'minimum': target.minimum,
                         'met': value >= target.minimum}
  return out


def cpu_description():
  """'<model name>, N cores' of this machine (the cores this process may run on)."""
  model_name = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model_name = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return f'{model_name}, {cores} cores', cores


def device_block(results):
  """The device the training ran on (the runners' manifests say CPU or GPU) and the host."""
  cpu, cores = cpu_description()
  accelerator, versions = 'CPU', {}
  for result in results.values():
    if result.get('device'):
      accelerator = result['device']
      manifest_versions = dict(result.get('versions') or {})
      # The graph runner's 'keras' is tf-keras (Keras 2), the eager runner's Keras 3.
      keras_version = manifest_versions.pop('keras', None)
      versions.update(manifest_versions)
      versions['tf_keras' if result['runner'] == 'graph' else 'keras'] = keras_version
  description = f'CPU ({cpu})' if accelerator == 'CPU' else f'{accelerator}; host CPU {cpu}'
  return {'description': description, 'accelerator': accelerator, 'cpu': cpu,
          'cpu_cores': cores, 'versions': versions}


def run(flags_obj):
  """bin/benchmark: runs the selected measurements; returns the figures (JSON-ready)."""
  started = time.time()
  settings = settings_from_flags(flags_obj)
  measurements = selected_measurements(flags_obj.measurements)
  output_dir = flags_obj.output_dir
  os.makedirs(output_dir, exist_ok=True)
  logging.info('preparing the benchmark data')
  data = _run_worker(os.path.join(output_dir, 'data'), {
      'kind': 'data', 'data_dir': settings.data_dir, 'num_classes': settings.num_classes,
      'records': settings.records, 'seed': settings.seed,
      'on_bad_record': settings.on_bad_record,
      'train_only_dir': os.path.join(output_dir, 'data', 'train_only')})
  if settings.pipeline_batches is None:
    settings = dataclasses.replace(
        settings, pipeline_batches=-(-data['records'] // settings.batch_size))
  pipelines = [m.name for m in measurements if m.kind == 'pipeline']
  if data['bad_records'] and pipelines:
    # The pipelines are timed as written, on every record; only the runners skip.
    raise cli.UsageError(
        f'--data_dir={settings.data_dir}: {data["bad_records"]} bad record(s); the pipeline '
        f'measurements ({", ".join(pipelines)}) need clean records: fix them, or leave '
        'those measurements out of --measurements')
  rounds = {m.name: [] for m in measurements}
  for round_index in range(1, settings.rounds + 1):
    for index, measurement in enumerate(measurements, start=1):
      logging.info('round %d/%d: measuring %s (%d/%d)', round_index, settings.rounds,
                   measurement.name, index, len(measurements))
      measure = _measure_pipeline if measurement.kind == 'pipeline' else _measure_training
      before = cpu_snapshot()
      measured = measure(settings, data, measurement,
                         os.path.join(output_dir, measurement.name))
      after = cpu_snapshot()
      measured['other_load_cores'] = other_cores(before, after)
      measured['wall_seconds'] = after[0] - before[0]
      rounds[measurement.name].append(measured)
      logging.info('%s: %s images/s', measurement.name,
                   ' '.join(f'{rate:.1f}' for rate in measured['rates']))
  results = {m.name: pool_rounds(m.label, rounds[m.name]) for m in measurements}
  figures = ratios(results)
  figures.update({
      'device': device_block(results),
      'settings': {**dataclasses.asdict(settings), 'num_classes': data['num_classes'],
                   'data_dir': data['data_dir'], 'records': data['records']},
      'measurements': results,
      'wall_seconds': round(time.time() - started, 1),
  })
  figures['targets'] = check_targets(figures)
  return figures


def _format_rate(summary):
  return f'{summary["median"]:8.1f} [{summary["min"]:.1f} - {summary["max"]:.1f}]'


def _row(result, bound=None):
  others = result.get('other_load_cores')
  line = (f'  {result["label"]:30}{_format_rate(result["images_per_second"]):>28}'
          f'{result["peak_rss_mb"]:>10.0f}{"" if others is None else f"{others:.2f}":>8}')
  if bound is not None:
    line += f'{result["images_per_second"]["median"] / bound["images_per_second"]["median"]:>9.2f}'
  return line


def format_table(figures):
  """The figures as a plain-text table: measurements, then ratios and targets.

  'others' is the number of cores other processes kept busy during a measurement.
  """
  settings, results = figures['settings'], figures['measurements']
  versions = figures['device']['versions']
  lines = [
      f'tf1compat benchmark: image {settings["image_size"]}, batch {settings["batch_size"]}, '
      f'{settings["num_classes"]} classes, {settings["records"]} records, shuffle buffer '
      f'{settings["shuffle_buffer"]}',
      f'device: {figures["device"]["description"]}',
      'versions: ' + ', '.join(f'{k} {v}' for k, v in sorted(versions.items())),
      f'{settings["repetitions"]} repetitions x {settings["rounds"]} round(s), median '
      f'[min - max]; pipelines: '
      f'{settings["pipeline_batches"]} batches each after the shuffle buffer filled; '
      f'training: {settings["steps"]} steps each after {settings["warmup_steps"]} warm-up steps',
      '',
      f'{"input pipeline alone":32}{"images/s":>28}{"peak MB":>10}{"others":>8}',
  ]
  lines += [_row(r) for name, r in results.items() if name.startswith('pipeline_')]
  lines += ['', f'{"training":32}{"images/s":>28}{"peak MB":>10}{"others":>8}{"/ bound":>9}']
  lines += [_row(r, results.get(f'{name}_compute_only')) for name, r in results.items()
            if not name.startswith('pipeline_')]
  lines += ['', 'ratios of medians']
  lines += [f'  {label:46}{figures[key]:6.2f}' for key, label in _INFO_RATIOS
            if figures.get(key) is not None]
  for target in figures['targets'].values():
    lines.append(f'  {target["label"]:46}{target["value"]:6.2f}   target >= '
                 f'{target["minimum"]:<5} {"met" if target["met"] else "MISSED"}')
  noisy = {name: r['other_load_cores'] for name, r in results.items()
           if (r.get('other_load_cores') or 0) > NOISY_OTHER_CORES}
  if noisy:
    lines += ['', f'WARNING: other processes kept up to {max(noisy.values()):.2f} cores busy '
              f'during {", ".join(noisy)}; those figures are noisy, rerun on a quiet machine']
  lines.append(f'\nwall time {figures["wall_seconds"]:.0f} s')
  return '\n'.join(lines)


def write_json(path, figures):
  """Writes the figures to `path` atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  runlog.atomic_write_json(path, figures)


# ----------------------------------------------------------------------------------------
# Workers: `python -m tf1compat.benchmark SPEC_JSON`, one measurement per process.
# TensorFlow is imported inside these functions, after the process is set up.


def _status_mb(field):
  """A memory figure of this process from /proc/self/status (VmHWM: peak RSS), in MB."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f'/proc/self/status has no {field}')


def seed_pipeline(files, *, image_size, num_classes, batch_size, seed=0, shuffle_buffer=10000,
                  sequential=True):
  """The seed's input pipeline in its op order, for measuring it against make_dataset.

  Maps written one by one without `num_parallel_calls` (parse, select, decode, resize,
  standardize, one-hot), then the shuffle of decoded float images, repeat, batch, no
  prefetch. `sequential` runs the maps one element at a time, as the TF1 of the seed's
  era did; TF 2's default `map_parallelization` rewrite would otherwise run them in
  parallel behind the code's back (`sequential=False` measures that). The shuffles are
  seeded here so that runs are repeatable.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf1compat import data  # pylint: disable=g-import-not-at-top
  dataset = tf.data.Dataset.from_tensor_slices(sorted(files))
  dataset = dataset.shuffle(len(files), seed=seed + _SEED_FILE_SHUFFLE_OFFSET)
  dataset = dataset.flat_map(tf.data.TFRecordDataset)
  dataset = dataset.map(lambda record: tf.io.parse_single_example(record, data.FEATURES))
  dataset = dataset.map(lambda sample: (sample['image'], sample['label']))
  dataset = dataset.map(lambda image, label: (tf.io.decode_jpeg(image, channels=3), label))
  dataset = dataset.map(lambda image, label: (
      tf.image.resize_with_pad(image, image_size, image_size), label))
  dataset = dataset.map(lambda image, label: (tf.image.per_image_standardization(image), label))
  dataset = dataset.map(lambda image, label: (image, tf.one_hot(label, num_classes)))
  dataset = dataset.shuffle(shuffle_buffer, seed=seed + _SEED_RECORD_SHUFFLE_OFFSET)
  dataset = dataset.repeat().batch(batch_size)
  options = tf.data.Options()
  options.experimental_optimization.map_parallelization = not sequential
  return dataset.with_options(options)


def _data_worker(spec):
  """Resolves the data: the user's training files, or the cached synthetic dataset.

  The user's training files are linked into a folder of their own, so that the runners
  find no validation files and spend no time evaluating. The records go through the
  runners' own pre-flight check (`data.describe`) with the run's --on_bad_record.
  """
  process.use_keras3()
  from tf1compat import data  # pylint: disable=g-import-not-at-top
  if spec['data_dir']:
    info = data.read_dataset_json(spec['data_dir']) or {}
    num_classes = spec['num_classes'] or info.get('num_classes')
    train_files = data.find_files(spec['data_dir'], 'train')
    data_dir = spec['train_only_dir']
    os.makedirs(data_dir, exist_ok=True)
    for old in os.listdir(data_dir):
      os.remove(os.path.join(data_dir, old))
    for index, path in enumerate(train_files):
      os.symlink(os.path.abspath(path), os.path.join(data_dir, f'train-{index:05d}.tfrecord'))
  else:
    data_dir = _synthetic_data_dir(spec['records'], spec['seed'])
    num_classes = spec['num_classes'] or SEED_NUM_CLASSES
  described = data.describe(data_dir, num_classes, spec['on_bad_record'])
  return {'data_dir': data_dir, 'files': list(described.train_files),
          'num_classes': described.num_classes,
          'records': described.train_check.good_records,
          'bad_records': len(described.train_check.bad)}


def _synthetic_data_dir(num_records, seed):
  """A synthetic dataset of at least `num_records` training records, written once.

  Cached beside the embedded dataset (records.cached_synthetic), so an interrupted or
  concurrent benchmark never reads a half-written one.
  """
  from tf1compat import records  # pylint: disable=g-import-not-at-top
  per_class = -(-num_records // SYNTHETIC_CLASSES)
  return records.cached_synthetic(
      f'benchmark-v{records.SYNTHETIC_VERSION}-{per_class * SYNTHETIC_CLASSES}-seed{seed}',
      num_classes=SYNTHETIC_CLASSES, train_per_class=per_class, val_per_class=0, num_shards=8,
      seed=seed)


def _pipeline_worker(spec):
  """Times one pipeline variant: batches per second after its shuffle buffer filled."""
  process.use_keras3()
  from tf1compat import data  # pylint: disable=g-import-not-at-top
  baseline = _status_mb('VmRSS')
  build = {'seed': seed_pipeline,
           'seed_tf2': lambda files, **kwargs: seed_pipeline(files, sequential=False, **kwargs),
           'optimized': data.make_dataset}[spec['variant']]
  dataset = build(spec['files'], image_size=spec['image_size'],
                  num_classes=spec['num_classes'], batch_size=spec['batch_size'],
                  seed=spec['seed'], shuffle_buffer=spec['shuffle_buffer'])
  iterator = iter(dataset)
  started = time.perf_counter()
  next(iterator)  # The shuffle buffer fills before the first batch comes out.
  first_batch_seconds = time.perf_counter() - started
  for _ in range(PIPELINE_WARMUP_BATCHES):
    next(iterator)
  window_seconds = []
  for _ in range(spec['repetitions']):
    started = time.perf_counter()
    for _ in range(spec['batches']):
      next(iterator)
    window_seconds.append(time.perf_counter() - started)
  return {'first_batch_seconds': first_batch_seconds, 'window_seconds': window_seconds,
          'peak_rss_mb': _status_mb('VmHWM'), 'baseline_rss_mb': baseline}


def _train_worker(spec):
  """Runs a runner as its bin/ script would, optionally on one batch held in memory."""
  # The runners' own process setup, before TensorFlow is imported.
  if spec['runner'] == 'graph':
    process.use_legacy_keras()
    from tf1compat import graph_loop as loop  # pylint: disable=g-import-not-at-top
  else:
    process.use_keras3()
    from tf1compat import eager_loop as loop  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tf1compat import data  # pylint: disable=g-import-not-at-top
  from tf1compat import flags as tf1compat_flags  # pylint: disable=g-import-not-at-top
  tf1compat_flags.define_data_flags()
  tf1compat_flags.define_training_flags(spec['runner'])
  if spec['runner'] == 'graph':
    tf1compat_flags.define_graph_flags()
  else:
    tf1compat_flags.define_eager_flags()
  flags.FLAGS(['benchmark-worker', *spec['args']])
  if spec['compute_only']:
    make_dataset = data.make_dataset

    def one_batch_in_memory(files, **kwargs):
      dataset = make_dataset(files, **kwargs)
      if not kwargs.get('training', True):
        return dataset
      # The first batch of the real pipeline, then that batch from memory forever: the
      # runner's own step and bookkeeping, without the pipeline's work.
      return dataset.take(1).cache().repeat()

    data.make_dataset = one_batch_in_memory
  loop.run(flags.FLAGS)
  return {'peak_rss_mb': _status_mb('VmHWM')}


_WORKERS = {'data': _data_worker, 'pipeline': _pipeline_worker, 'train': _train_worker}


def worker_main(spec_path):
  """Runs the worker a spec file names and writes its result beside it; exit code."""
  with open(spec_path) as f:
    spec = json.load(f)
  # The runners' progress and timing lines, with time stamps, for the worker's log.
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  try:
    result = _WORKERS[spec['kind']](spec)
  except cli.UsageError as e:
    cli.fail(cli.EXIT_USAGE, e)
  runlog.atomic_write_json(spec['result'], result)
  return cli.EXIT_OK


if __name__ == '__main__':
  cli.quiet_tensorflow_logs()
  sys.exit(worker_main(sys.argv[1]))
