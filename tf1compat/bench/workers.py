"""bin/benchmark's workers, one measurement per process: benchmark.py starts each as
`python -m tf1compat.commands.benchmark_worker SPEC_JSON`, which calls `run(spec)`.

The spec is a JSON object; its 'kind' picks the worker, 'result' names the JSON file the
worker writes its result to:

- {'kind': 'data', 'data_dir', 'num_classes', 'records', 'seed', 'on_bad_record',
  'train_only_dir'}: resolves the data once; result {'data_dir', 'files', 'num_classes',
  'records', 'bad_records'};
- {'kind': 'pipeline', 'variant' ('seed', 'seed_tf2' or 'optimized'), 'files',
  'image_size', 'num_classes', 'batch_size', 'seed', 'shuffle_buffer', 'batches',
  'repetitions'}: times one input pipeline; result {'first_batch_seconds',
  'window_seconds', 'peak_rss_mb', 'baseline_rss_mb'};
- {'kind': 'train', 'runner' ('graph', 'eager' or 'fit'), 'compute_only', 'config',
  'profile'}: runs train/graph's, train/eager's or (config 'backend' jax) train/jax's
  `backend.run` with the
  config.GraphConfig or config.EagerConfig whose every field 'config' holds
  (config.manifest_flags of it); result {'peak_rss_mb'}; with 'profile'
  ({'logdir', 'skip_steps', 'steps'}) under TensorFlow's profiler, and the result's
  'kernels' holds kernels.op_time_by_kernel of its trace;
- {'kind': 'roofline', 'repetitions', 'model'}: times the device's matmul peak
  (roofline.measure_peak) and, where 'model' holds an eager runner's config, counts
  the FLOPs of that runner's model; result {'peak', 'flops' (or None)}.

This module imports no TensorFlow at import time: each worker sets its process up
(legacy Keras and TF1 behaviour for the graph runner, Keras 3 otherwise) before
TensorFlow is first imported, inside the worker's function.
"""

import contextlib
import functools
import os
import time


from tf1compat.bench import kernels
from tf1compat.data import data_folder
from tf1compat.runs import config
from tf1compat.runtime import process
from tf1compat.train import ports

# The benchmark's synthetic records use 10 of the seed's Caltech256 classes.
SYNTHETIC_CLASSES = 10
# Batches read after the shuffle buffer has filled and before timing, so that parallel
# maps and prefetching have reached their steady state.
PIPELINE_WARMUP_BATCHES = 5


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
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  dataset = tf.data.Dataset.from_tensor_slices(sorted(files))
  dataset = dataset.shuffle(len(files), seed=seed + pipeline.FILE_SHUFFLE_SEED_OFFSET)
  dataset = dataset.flat_map(tf.data.TFRecordDataset)
  dataset = dataset.map(lambda record: tf.io.parse_single_example(record, pipeline.FEATURES))
  dataset = dataset.map(lambda sample: (sample['image'], sample['label']))
  dataset = dataset.map(lambda image, label: (tf.io.decode_jpeg(image, channels=3), label))
  dataset = dataset.map(lambda image, label: (
      tf.image.resize_with_pad(image, image_size, image_size), label))
  dataset = dataset.map(lambda image, label: (tf.image.per_image_standardization(image), label))
  dataset = dataset.map(lambda image, label: (image, tf.one_hot(label, num_classes)))
  dataset = dataset.shuffle(shuffle_buffer, seed=seed + pipeline.RECORD_SHUFFLE_SEED_OFFSET)
  dataset = dataset.repeat().batch(batch_size)
  options = tf.data.Options()
  options.experimental_optimization.map_parallelization = not sequential
  return dataset.with_options(options)


def _data_worker(spec):
  """Resolves the data: the user's training files, or the cached synthetic dataset.

  The user's training files are linked into a folder of their own, so that the runners
  find no validation files and spend no time evaluating. The records go through the
  runners' own pre-flight check (`data_check.check_data_dir`) with the run's on_bad_record.
  """
  process.use_keras3()
  from tf1compat.data import data_check  # pylint: disable=g-import-not-at-top
  if spec['data_dir']:
    info = data_folder.read_dataset_json(spec['data_dir']) or {}
    num_classes = spec['num_classes'] or info.get('num_classes')
    train_files = data_folder.find_files(spec['data_dir'], 'train')
    data_dir = spec['train_only_dir']
    os.makedirs(data_dir, exist_ok=True)
    for old in os.listdir(data_dir):
      os.remove(os.path.join(data_dir, old))
    for index, path in enumerate(train_files):
      os.symlink(os.path.abspath(path), os.path.join(data_dir, f'train-{index:05d}.tfrecord'))
    allow_mismatch = spec['allow_num_classes_mismatch']
  else:
    data_dir = _synthetic_data_dir(spec['records'], spec['seed'])
    num_classes = spec['num_classes'] or config.CALTECH256_CLASSES
    # The seed's 257-class head on the 10 synthetic classes: what the benchmark times.
    allow_mismatch = True
  checked = data_check.check_data_dir(data_dir, num_classes, spec['on_bad_record'],
                                      allow_mismatch)
  return {'data_dir': data_dir, 'files': list(checked.train_files),
          'allow_num_classes_mismatch': allow_mismatch,
          'num_classes': checked.num_classes,
          'records': checked.train_check.good_records,
          'bad_records': len(checked.train_check.bad)}


def _synthetic_data_dir(num_records, seed):
  """A synthetic dataset of at least `num_records` training records, written once.

  Cached beside the embedded dataset (records.cached_synthetic), so an interrupted or
  concurrent benchmark never reads a half-written one.
  """
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  per_class = -(-num_records // SYNTHETIC_CLASSES)
  return records.cached_synthetic(
      f'benchmark-v{records.SYNTHETIC_VERSION}-{per_class * SYNTHETIC_CLASSES}-seed{seed}',
      num_classes=SYNTHETIC_CLASSES, train_per_class=per_class, val_per_class=0, num_shards=8,
      seed=seed)


def _pipeline_worker(spec):
  """Times one pipeline variant: batches per second after its shuffle buffer filled."""
  process.use_keras3()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  if spec['op_determinism']:
    # As the runners do before they build their pipelines (--deterministic).
    tf.config.experimental.enable_op_determinism()
  baseline = _status_mb('VmRSS')
  build = {'seed': seed_pipeline,
           'seed_tf2': lambda files, **kwargs: seed_pipeline(files, sequential=False, **kwargs),
           'optimized': pipeline.make_dataset}[spec['variant']]
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
          'peak_rss_mb': _status_mb('VmHWM'), 'baseline_rss_mb': baseline,
          'op_determinism': bool(spec['op_determinism'])}


def config_from_spec(spec):
  """The runner's config of a train spec: a config.GraphConfig (runner 'graph') or
  config.EagerConfig of the spec's 'config' fields, JSON's lists back to tuples."""
  config_class = config.GraphConfig if spec['runner'] == 'graph' else config.EagerConfig
  return config_class(**{name: tuple(value) if isinstance(value, list) else value
                         for name, value in spec['config'].items()})


def one_batch_in_memory(dataset, training):
  """The compute-only dataset hook: the first batch of the real training pipeline, then
  that batch from memory forever (the runner's own step and bookkeeping without the
  pipeline's work); validation pipelines untouched."""
  return dataset.take(1).cache().repeat() if training else dataset


def _train_worker(spec):
  """Runs a runner as its command would, optionally on one batch held in memory."""
  cfg = config_from_spec(spec)
  # The runners' own process setup, before TensorFlow is imported.
  process.set_cpu_kernels(cfg.onednn)
  if spec['runner'] == 'graph':
    process.use_legacy_keras()
    from tf1compat.train.graph import backend  # pylint: disable=g-import-not-at-top
  else:
    process.use_keras3(cfg.backend)
    backend = ports.port_backend(cfg.backend)
  profile = spec.get('profile')
  with kernels.profiling(profile['logdir']) if profile else contextlib.nullcontext():
    backend.run(cfg, dataset_hook=one_batch_in_memory if spec['compute_only'] else None)
  result = {'peak_rss_mb': _status_mb('VmHWM')}
  if profile:
    result['kernels'] = kernels.op_time_by_kernel(profile['logdir'], profile['skip_steps'],
                                                  profile['steps'])
  return result


def _model_flops(cfg):
  """The FLOPs per image of the eager runner's model on `cfg`: the layer walk, with
  TensorFlow's own count of the traced forward pass and step beside it."""
  import keras  # pylint: disable=g-import-not-at-top
  from tf1compat.bench import roofline  # pylint: disable=g-import-not-at-top
  from tf1compat.train.eager import model_fn  # pylint: disable=g-import-not-at-top
  model = model_fn.build_model(cfg, cfg.num_classes)
  flops = roofline.layer_flops(keras, model)
  flops['tensorflow'] = roofline.tensorflow_flops(
      model, functools.partial(model_fn.per_example_loss, cfg.loss), cfg.image_size,
      cfg.num_classes)
  flops['convention'] = roofline.CONVENTION
  return flops


def _roofline_worker(spec):
  """The device's matmul peak, timed first in a fresh process; then, with a model
  config, the FLOPs of that model."""
  process.use_keras3()
  from tf1compat.bench import roofline  # pylint: disable=g-import-not-at-top
  peak = roofline.measure_peak(spec['repetitions'])
  model = spec['model'] and config_from_spec({'runner': 'eager', 'config': spec['model']})
  return {'peak': peak, 'flops': _model_flops(model) if model else None}


_WORKERS = {'data': _data_worker, 'pipeline': _pipeline_worker, 'train': _train_worker,
            'roofline': _roofline_worker}


def run(spec):
  """Runs the worker the spec's 'kind' names; its result (a JSON-able dict)."""
  return _WORKERS[spec['kind']](spec)
