"""tf.distribute for the TF2 port: the strategy of a run, who writes, what each replica reads.

`--strategy=default` is one device and no distribution at all, the port as it always
was. `--strategy=mirrored` is MirroredStrategy over the local GPUs (or `--devices`;
without GPUs, the logical CPUs of `--cpu_devices`). `--strategy=multi_worker` is
MultiWorkerMirroredStrategy over the cluster of `TF_CONFIG`: every worker runs the
same command with its own `TF_CONFIG`.

Every replica of a step reads its slice of the same global batch the single-device
pipeline yields, in the same order (`distribute_dataset`), so a distributed run trains
on exactly the batches of a one-device run of the same global `--batch_size`.

Only the chief (TF_CONFIG's `chief`, else worker 0) writes the run directory. The
others write theirs to a scratch folder that is removed at exit (their checkpoint and
SavedModel writes take part in collective operations, so they must happen) and resume
from the chief's checkpoints: MODEL_DIR must be on storage every worker sees.

`setup` must run before TensorFlow runs its first operation: logical devices and the
multi-worker runtime can only be configured before that.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import tempfile

from absl import logging
import keras
import tensorflow as tf

from tf1compat.data import pipeline
from tf1compat.runs import errors

TF_CONFIG = 'TF_CONFIG'


@dataclasses.dataclass(frozen=True)
class Task:
  """This process's place in the cluster of TF_CONFIG."""
  task_type: str
  task_id: int
  num_workers: int  # the chief included
  has_chief: bool

  @property
  def is_chief(self):
    """The chief task, or worker 0 in a cluster without one."""
    if self.has_chief:
      return self.task_type == 'chief'
    return self.task_id == 0


def read_tf_config(environ=None):
  """The Task of TF_CONFIG in `environ` (default os.environ); errors.UsageError if unusable."""
  environ = os.environ if environ is None else environ
  raw = environ.get(TF_CONFIG)
  fix = ('set TF_CONFIG to \'{"cluster": {"worker": ["host0:port", "host1:port"]}, '
         '"task": {"type": "worker", "index": 0}}\', the index differing per worker')
  if not raw:
    raise errors.UsageError(f'--strategy=multi_worker needs the cluster in {TF_CONFIG}: {fix}')
  try:
    config = json.loads(raw)
    cluster, task = config['cluster'], config['task']
    task_type, task_id = task['type'], int(task['index'])
    members = {kind: list(cluster.get(kind, [])) for kind in ('chief', 'worker')}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise errors.UsageError(f'{TF_CONFIG} is not a cluster description ({e!r}): {fix}') from e
  if task_type not in members or not 0 <= task_id < len(members[task_type]):
    raise errors.UsageError(f'{TF_CONFIG}: task {task_type}:{task_id} is not in its cluster '
                            f'{members}; only chief and worker tasks train')
  if len(members['chief']) > 1:
    raise errors.UsageError(f'{TF_CONFIG}: a cluster has at most one chief')
  return Task(task_type, task_id, len(members['chief']) + len(members['worker']),
              bool(members['chief']))


@dataclasses.dataclass
class Distribution:
  """The strategy of a run and this process's role in it."""
  name: str
  strategy: tf.distribute.Strategy
  devices: tuple
  task: Task = None

  @property
  def replicas(self):
    return self.strategy.num_replicas_in_sync

  @property
  def workers(self):
    return self.task.num_workers if self.task else 1

  @property
  def distributed(self):
    return self.name != 'default'

  @property
  def is_chief(self):
    return self.task is None or self.task.is_chief

  def manifest(self):
    """The run.json fields that say how the run was distributed."""
    return {'strategy': self.name, 'replicas': self.replicas, 'workers': self.workers,
            'devices': list(self.devices)}


def _device_name(name):
  name = name.strip()
  if not name.startswith('/'):
    name = f'/device:{name}'
  return name.upper().replace('/DEVICE:', '/device:')


def _split_cpu(count):
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def _mirrored_devices(cfg):
  local = [d.name for d in tf.config.list_logical_devices()]
  if cfg.devices:
    wanted = [_device_name(d) for d in cfg.devices]
    known = {_device_name(name.split('device:')[-1]) for name in local}
    missing = [d for d in wanted if d not in known]
    if missing:
      raise errors.UsageError(f'--devices: {", ".join(missing)} not found on this host; it has '
                              f'{", ".join(sorted(known))}')
    return tuple(wanted)
  gpus = [d.name for d in tf.config.list_logical_devices('GPU')]
  return tuple(gpus or [d.name for d in tf.config.list_logical_devices('CPU')])


def check_batch(distribution, batch_size):
  """Raises errors.UsageError unless `batch_size` (global) splits evenly over the replicas."""
  if batch_size % distribution.replicas:
    raise errors.UsageError(
        f'--batch_size={batch_size} is the global batch and must split evenly over the '
        f'{distribution.replicas} replicas of --strategy={distribution.name}; use a multiple '
        f'of {distribution.replicas}')


def setup(cfg):
  """Creates the run's Distribution; must precede every other TensorFlow operation."""
  name = cfg.strategy
  if cfg.cpu_devices > 1:
    _split_cpu(cfg.cpu_devices)
  if name == 'default':
    return Distribution(name, tf.distribute.get_strategy(), ())
  if name == 'mirrored':
    devices = _mirrored_devices(cfg)
    if len(devices) == 1:
      logging.warning('--strategy=mirrored found one device (%s): nothing to mirror; name '
                      'more with --devices, or --cpu_devices=N without GPUs', devices[0])
    return Distribution(name, tf.distribute.MirroredStrategy(devices=list(devices)), devices)
  task = read_tf_config()
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  devices = tuple(strategy.extended.worker_devices)
  return Distribution(name, strategy, devices, task)


def distribute_dataset(distribution, make_dataset, global_batch):
  """The distributed form of `make_dataset()`, a pipeline of global batches.

  Each worker runs the whole pipeline and keeps its rows of every global batch, which
  its replicas split in order: replica r of the run reads rows [r*b, (r+1)*b) of each
  global batch, b = global_batch / replicas. The batches and their order are those of
  the single-device run, whatever the number of workers and devices (tf.data's own
  auto-sharding would give each worker other files instead).
  """
  strategy = distribution.strategy
  per_replica = global_batch // distribution.replicas

  def worker_dataset(context):
    per_worker = per_replica * (distribution.replicas // context.num_input_pipelines)
    start = context.input_pipeline_id * per_worker

    def rows(images, labels):
      return images[start:start + per_worker], labels[start:start + per_worker]

    dataset = make_dataset().map(rows).rebatch(per_replica)
    options = tf.data.Options()
    # This worker already holds only its rows: tf.data must not shard them again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)

  return strategy.distribute_datasets_from_function(worker_dataset)


def fresh_distributed_dataset(distribution, make_dataset, global_batch):
  """`distribute_dataset(...)`, built anew for every iterator made from it
  (pipeline.fresh_each_iteration). The object stays of tf.distribute's own class (a
  subclass of it), which is what fit accepts."""
  return pipeline.fresh_each_iteration(
      lambda: distribute_dataset(distribution, make_dataset, global_batch))


class AgreedSignals:
  """The view of an interrupts.SignalCatcher that all workers of a cluster share.

  A signal reaches one worker, or each at its own moment; a worker that stopped on its
  own would leave the others waiting in a collective operation. Every training step
  sums the workers' `local_flag()` over the cluster and hands the sum to `agree`;
  `caught` is its verdict as of the last step, the same on every worker after the same
  step, so all of them checkpoint that step and stop.
  """

  def __init__(self, signals):
    self._signals = signals
    self._agreed = False

  def local_flag(self):
    """1.0 when this worker caught a signal, else 0.0."""
    return 1.0 if self._signals.caught else 0.0

  def agree(self, flags_summed):
    """Takes the step's sum of `local_flag()` over all replicas."""
    self._agreed = flags_summed > 0

  @property
  def caught(self):
    return self._agreed

  @property
  def signum(self):
    """This worker's signal; SIGTERM on a worker stopped by another's."""
    return self._signals.signum or signal.SIGTERM


class AgreedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """A LossScaleOptimizer whose replicas agree on whether a step's gradients are finite.

  Keras 3.15's LossScaleOptimizer decides on the first replica's own gradients, before
  the inner optimizer sums them over the replicas (its comment assumes they are summed
  already): a float16 overflow on another replica alone is summed into the update,
  and the weights turn NaN. Here every replica learns whether any replica's gradients
  are non-finite (an all-reduce of one flag); if so, all of them hand NaN gradients on,
  so the first replica's check skips the step and halves the loss scale, as a single
  device would.
  """

  def apply(self, grads, trainable_variables=None):
    replicas = tf.distribute.get_replica_context()
    if replicas is not None and replicas.num_replicas_in_sync > 1:
      local = tf.cast(tf.logical_not(self.check_finite(grads)), tf.float32)
      any_non_finite = replicas.all_reduce(tf.distribute.ReduceOp.SUM, local) > 0
      poison = tf.where(any_non_finite, float('nan'), 0.0)
      grads = [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
    return super().apply(grads, trainable_variables)


@contextlib.contextmanager
def writable_model_dir(distribution, model_dir):
  """The folder this process writes its run directory to: MODEL_DIR on the chief, a scratch
  folder (removed on exit) on the other workers."""
  if distribution.is_chief:
    yield model_dir
    return
  scratch = tempfile.mkdtemp(
      prefix=f'tf1compat-{distribution.task.task_type}{distribution.task.task_id}-')
  try:
    yield scratch
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
