"""The one place where the legacy graph runner's two stacks differ.

The graph runner (train/graph/, train_graph) is one source for two stacks: TensorFlow
2.21 with `tf.compat.v1` and tf-keras 2.21 (Python 3.10 and up), and the real legacy
stack, TensorFlow 1.15 with its own bundled `tf.keras` (Keras 2.2.4-tf) on Python 3.7
and numpy 1.18 (check_parity --legacy_python, docs/legacy-stack.md). Everything the
training graph is built from exists in both under the same `tf.compat.v1` names; what
does not is here, and nowhere else:

- the input pipeline's parallel map, ignore_errors (the check of --on_bad_record=skip),
  its determinism option, the shuffle-and-repeat fusion TF 1.15 applies by default (it
  draws another batch order), AUTOTUNE, and the TF2 `resize_with_pad` (TF 1.15's own
  `tf.image.resize_image_with_pad` samples other pixel centres, so the data would
  differ: 1.15 runs TF2's op through tf.compat.v2);
- op determinism (TF 1.15 has only the TF_CUDNN_DETERMINISTIC variable, which its GPU
  build reads for cuDNN), TF32 (TF 1.15 predates it: off), the settings run.json records,
  the GPU's description;
- the Keras the model is built with and how run.json names it.

The eager runner (Keras 3) only ever runs on TensorFlow 2.21 and uses numerics.py
directly. Imports TensorFlow.
"""

import os

import tensorflow as tf

from tf1compat.runs import runlog

# TensorFlow 1.15 (the real legacy stack) rather than tf.compat.v1 on TensorFlow 2.
TF1 = tf.__version__.startswith('1.')

if TF1:
  from tensorflow.python import pywrap_tensorflow  # pylint: disable=g-import-not-at-top
else:
  from tf1compat.runtime import numerics  # pylint: disable=g-import-not-at-top

AUTOTUNE = tf.data.experimental.AUTOTUNE if TF1 else tf.data.AUTOTUNE
# TF2's resize (bilinear, half-pixel centres), the op both stacks' pipelines run.
resize_with_pad = tf.compat.v2.image.resize_with_pad if TF1 else tf.image.resize_with_pad


def parallel_map(dataset, function, num_parallel_calls):
  """`dataset.map` in parallel with the input's order kept (TF 1.15's map keeps it
  unless its options say otherwise, and has no `deterministic` argument)."""
  if TF1:
    return dataset.map(function, num_parallel_calls=num_parallel_calls)
  return dataset.map(function, num_parallel_calls=num_parallel_calls, deterministic=True)


def ignore_errors(dataset):
  """`dataset` without the elements whose computation fails (TF 1.15 has no
  Dataset.ignore_errors, only the tf.data.experimental transformation)."""
  if TF1:
    return dataset.apply(tf.data.experimental.ignore_errors())
  return dataset.ignore_errors()


def deterministic_options():
  """tf.data.Options that keep every element's order, and on TF 1.15 the order TF 2 draws.

  TF 1.15 fuses `shuffle(...).repeat()` into one ShuffleAndRepeat kernel by default, which
  seeds its first pass with the shuffle's own seeds; TF 2 (and TF 1.15 without that
  fusion) draws every pass's seeds from a generator seeded with them. With the fusion
  off, TF 1.15 reads the batches TF 2.21 reads on every pass, bit for bit
  (tests/test_legacy.py); with it, every batch differs (measured on 32 batches,
  docs/legacy-stack.md).
  """
  options = tf.data.Options()
  if TF1:
    options.experimental_deterministic = True
    options.experimental_optimization.shuffle_and_repeat_fusion = False
  else:
    options.deterministic = True
  return options


def graph_keras():
  """(run.json's name for the Keras `tf.keras` is in a graph-mode process, its version).

  Both are Keras 2 with Input(tensor=...), learning_phase() and model.updates; under
  TensorFlow 2 only once the process set TF_USE_LEGACY_KERAS=1 before importing
  TensorFlow (process.use_legacy_keras).
  """
  if TF1:
    return runlog.KERAS_BUNDLED, tf.keras.__version__
  import tf_keras  # pylint: disable=g-import-not-at-top
  return runlog.KERAS_TF_KERAS, tf_keras.__version__


def enable_op_determinism():
  """Op determinism for this process: TensorFlow 2's switch, or on TF 1.15 the
  TF_CUDNN_DETERMINISTIC variable (its GPU build reads it when it picks cuDNN's
  algorithms; its CPU kernels need none: a fixed thread count sums in a fixed order)."""
  if TF1:
    os.environ['TF_CUDNN_DETERMINISTIC'] = '1'
  else:
    tf.config.experimental.enable_op_determinism()


def apply_tf32(mode):
  """--tf32 as numerics.apply_tf32; TF 1.15 has no TF32 (it predates Ampere), so only
  'on' is refused there, by the caller's check (tf32_problem)."""
  if not TF1:
    numerics.apply_tf32(mode)


def tf32_problem(mode):
  """Why --tf32=`mode` cannot run on this stack (None when it can)."""
  if TF1 and mode == 'on':
    return '--tf32=on: TensorFlow 1.15 has no TensorFloat-32; use --tf32=default or off'
  return None


def settings():
  """run.json's settings block (numerics.settings; on TF 1.15 the same keys from what
  1.15 has: no TF32, determinism as TF_CUDNN_DETERMINISTIC says, MKL as oneDNN)."""
  if not TF1:
    return numerics.settings()
  out = {
      'tf32': False,
      'op_determinism': os.environ.get('TF_CUDNN_DETERMINISTIC') in ('1', 'true'),
      'onednn': bool(pywrap_tensorflow.IsMklEnabled()),
      'intra_op_threads': int(os.environ.get(
          'TF_NUM_INTRAOP_THREADS', tf.config.threading.get_intra_op_parallelism_threads())),
      'inter_op_threads': int(os.environ.get(
          'TF_NUM_INTEROP_THREADS', tf.config.threading.get_inter_op_parallelism_threads())),
  }
  gpus = tf.config.experimental.list_physical_devices('GPU')
  if gpus:
    out['gpu'] = gpus[0].name
  return out


def device_description():
  """What the run computes on: 'CPU', or 'GPU (name)' and ' xN' for N > 1."""
  if TF1:
    gpus = tf.config.experimental.list_physical_devices('GPU')
    name = gpus[0].name if gpus else None
  else:
    gpus = tf.config.list_physical_devices('GPU')
    name = (tf.config.experimental.get_device_details(gpus[0]).get('device_name', gpus[0].name)
            if gpus else None)
  if not gpus:
    return 'CPU'
  return f'GPU ({name})' + (f' x{len(gpus)}' if len(gpus) > 1 else '')
