"""The process settings that change a run's numbers, applied and recorded by both runners.

On a GPU, results depend on settings a CPU never shows: TF32 (on by default for float32
matmuls and convolutions on Ampere and later), op determinism, XLA, the dtype policy;
on a CPU, oneDNN's kernels and the intra-op thread count change the summation order.
A legacy run and its port that differ in one of these differ in their numbers without
a pitfall or a framework difference behind it: run.json records them all ('settings'),
and the config lint names a mismatch (tiers.py). Imports TensorFlow.
"""

import os

import tensorflow as tf
from tensorflow.python.framework import config as tf_config
from tensorflow.python.util import _pywrap_util_port

def apply_tf32(mode):
  """Sets TF32 execution as --tf32 says; 'default' leaves TensorFlow's choice."""
  if mode != 'default':
    tf.config.experimental.enable_tensor_float_32_execution(mode == 'on')


def _gpu_details():
  gpus = tf.config.list_physical_devices('GPU')
  if not gpus:
    return {}
  details = tf.config.experimental.get_device_details(gpus[0])
  capability = details.get('compute_capability')
  build = tf.sysconfig.get_build_info()
  return {'gpu': details.get('device_name', gpus[0].name),
          'compute_capability': '.'.join(map(str, capability)) if capability else None,
          'cuda_version': build.get('cuda_version'), 'cudnn_version': build.get('cudnn_version')}


def settings():
  """run.json's 'settings' block: what this process computes with, besides the runner's
  own jit_compile and dtype_policy (top-level fields of run.json).

  Thread counts are TensorFlow's configuration (0: one per core), or the
  TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS the process was started with.
  """
  return {
      'tf32': bool(tf.config.experimental.tensor_float_32_execution_enabled()),
      'op_determinism': bool(tf_config.is_op_determinism_enabled()),
      'onednn': bool(_pywrap_util_port.IsMklEnabled()),
      'intra_op_threads': int(os.environ.get(
          'TF_NUM_INTRAOP_THREADS', tf.config.threading.get_intra_op_parallelism_threads())),
      'inter_op_threads': int(os.environ.get(
          'TF_NUM_INTEROP_THREADS', tf.config.threading.get_inter_op_parallelism_threads())),
      **_gpu_details(),
  }
