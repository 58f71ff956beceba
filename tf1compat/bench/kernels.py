"""Which kernels a training loop ran and how long each took, from TensorFlow's profiler.

A Session and a tf.function may run one model through other kernels: after Grappler and
oneDNN's rewrites a convolution can be `Conv2D`, `_FusedConv2D`, `_MklNativeFusedConv2D`,
its bias gradient a `BiasAddGrad` or folded into `_MklNativeConv2DBackpropFilterWithBias`
(measured on TensorFlow 2.21 with oneDNN on: the Session keeps the separate `BiasAddGrad`,
the tf.function of a Keras 3 layer folds it), Adam one `ApplyAdam` or some fifty small
ops. The profiler names every op it ran as `node name:kernel type` on the executor's
threads, with its duration; this module turns that into op time per step by kernel type,
so that two loops on one machine can be compared kernel by kernel.

TensorFlow is imported inside the functions: the worker that calls them has set its process
up first (bench/workers.py).
"""

import collections
import contextlib
import glob
import os
import re

# Ops run on the executors' inter-op threads, named so on every stack measured (TF 2.21:
# a Session's and a tf.function's alike); the input pipeline's threads, the caller's
# thread (the eager runtime's own events) and the intra-op pool's are not the step's ops.
_OP_THREADS = 'tf_Compute'
# An op is 'node name:kernel type'; the profiler's own events on those threads
# (ExecutorState::Process, ThreadpoolListener::Record) are not.
_NOT_AN_OP = '::'
_KERNEL_TYPE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*$')
# A function call's event spans the ops of the function's body, which are counted
# themselves.
_FUNCTION_CALL = re.compile(r'__inference_|(Stateful)?PartitionedCall$')


@contextlib.contextmanager
def profiling(logdir):
  """TensorFlow's profiler on for the block (host threads only), its trace in `logdir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.profiler.experimental.start(
      logdir, options=tf.profiler.experimental.ProfilerOptions(device_tracer_level=0))
  try:
    yield
  finally:
    tf.profiler.experimental.stop()


def _op_events(logdir):
  """(node name, kernel type, seconds) of every op the trace in `logdir` holds, in the
  order each executor thread ran them."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True))
  if not paths:
    raise RuntimeError(f'the profiler wrote no trace under {logdir}')
  space = xplane_pb2.XSpace()
  with open(paths[-1], 'rb') as f:
    space.ParseFromString(f.read())
  events = []
  for plane in space.planes:
    names = plane.event_metadata
    for line in plane.lines:
      if not line.name.startswith(_OP_THREADS):
        continue
      for event in sorted(line.events, key=lambda e: e.offset_ps):
        name = names[event.metadata_id].name
        node, _, kernel = name.rpartition(':')
        if (node and _NOT_AN_OP not in name and _KERNEL_TYPE.match(kernel)
            and not _FUNCTION_CALL.match(kernel)):
          events.append((node, kernel, event.duration_ps * 1e-12))
  return events


def op_time_by_kernel(logdir, skip_steps, steps):
  """{kernel type: {'per_step': ops of it per step, 'ms_per_step': their op time per step}}
  of the trace in `logdir`, over the last `steps` steps of a run of `skip_steps` + `steps`.

  A step runs each node of its graph once, so dropping every node's first `skip_steps`
  runs drops the warm-up steps (tracing, oneDNN creating its primitives) and the ops that
  ran once (initialization, the final checkpoint). Ops of two threads may overlap: the
  times add up to op time, not to the step's wall time.
  """
  seen = collections.Counter()
  count = collections.Counter()
  seconds = collections.Counter()
  for node, kernel, duration in _op_events(logdir):
    seen[node] += 1
    if seen[node] > skip_steps:
      count[kernel] += 1
      seconds[kernel] += duration
  return {kernel: {'per_step': count[kernel] / steps,
                   'ms_per_step': 1e3 * seconds[kernel] / steps}
          for kernel in sorted(count, key=lambda k: -seconds[k])}
