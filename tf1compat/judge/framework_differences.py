"""The frameworks' own differences: which ones two runs are expected to show, read from
their run.json (the kernels they computed with, Dropout masks, replicas, dtype policy,
TensorFlow 1.15), and what each is. They are expected, not mistakes: parity.py judges a
pair whose differences break step-wise comparison on its curves, and the report explains
each. TensorFlow-free.
"""

from tf1compat.judge import calibration
from tf1compat.runs import runlog
from tf1compat.train.models import convnet

FRAMEWORK_DIFFERENCES = {
    'adam_rounding': "Keras 3's Adam computes TF1's formula with separate ops and beta ** t, "
                     "TF1's AdamOptimizer with one fused kernel and beta-power accumulators: the "
                     'weights differ by an ulp after the first step, and Adam amplifies that '
                     'chaotically, so step-wise values part within a few steps; judged on the '
                     'curve tier. Remove it with train_eager --tf1_adam.',
    'optimizer_rounding': "TF1 applies its optimizers (RMSProp, Adagrad, Adadelta, FTRL, "
                          'gradient descent) with one fused kernel, Keras 3 the same formula '
                          'with separate ops: last-bit differences at every step, which the '
                          "step tier judges against the controls; a run's fast transition can "
                          'amplify them past the curve band (measured: RMSProp at '
                          "check_parity's defaults, val_loss 5.5% apart at epoch 3). Remove "
                          'it with train_eager --tf1_optimizer_kernel.',
    'bn_moving_variance': 'TF1 fused BatchNormalization updates the moving variance with the '
                          'Bessel-corrected batch variance (x n/(n-1)), Keras 3 with the biased '
                          'one, and the unfused Keras 3 ops round differently; judged on the '
                          'curve tier. Remove it with train_eager --tf1_bn_variance.',
    'dropout_masks': 'TF1 and Keras 3 draw different dropout masks from the same seed, and '
                     'an unseeded TF1 Dropout takes its op seed from the graph\'s op count, '
                     'which TensorFlow 1.15 and 2 do not share, so per-step losses cannot '
                     'match bit for bit; judged on the curve tier.',
    'replica_reduction': 'A run over several replicas sums the gradients (and BatchNorm '
                         'moments) of its replicas, in another order than one device sums the '
                         'batch: last-bit differences from the first update on, which Adam '
                         'amplifies over the steps; judged on the curve tier. Same global '
                         'batch, same batches: the first batch loss agrees to round-off.',
    'mixed_precision': 'A mixed_float16 or mixed_bfloat16 run computes in 16 bits (float16 '
                       'with loss scaling) what a float32 run computes in float32: expected '
                       'to differ from the first step on by 16-bit round-off; judged on the '
                       'curve tier.',
    'tf1_batch_norm': "TensorFlow 1.15's BatchNormalization kernels round the batch statistics "
                      "and their gradients otherwise than TensorFlow 2's, and no control of "
                      "the reference's stack rounds as they do; Adam turns a gradient near "
                      "zero into a step of the learning rate's size (measured on the tiny data "
                      "with --batch_norm: one update 36x apart from the three controls' after "
                      'step 1): the step tier is reported, the curves judge.',
    'tf1_rounding': 'TensorFlow 1.15 and TensorFlow 2 run the same graph through kernels that '
                    'round differently on the CPU: float32 reductions (Sum, Mean: the loss\'s '
                    'batch mean, global average pooling, per_image_standardization), the softmax '
                    'cross-entropy kernel and ApplyAdam, oneDNN on or off; with oneDNN on (TF '
                    "2's default on x86) also the fused convolutions and their input gradients. "
                    'Last-bit differences at every step, as a port with other kernels has: '
                    'the step tier judges them against the widest of the controls, the '
                    'per-step and the kernels control among them (docs/parity.md).',
    'xla_rounding': 'The JAX port runs each step as one program XLA compiled: its own CPU or '
                    'GPU kernels for the convolutions, the reductions (the batch mean, '
                    "BatchNorm's moments, the loss) and fused elementwise chains, and TF1's "
                    "optimizer and BatchNorm formulas written in keras.ops (the exact "
                    "switches) instead of TF1's kernels: last-bit differences at every step "
                    '(measured: batch losses a few ulps apart from the first step; with '
                    "BatchNorm at 64 px bn1's output 11x the one-ulp control's difference after "
                    'step 1, its moments summed in another order), as a port with other kernels '
                    'has; the step tier judges them against the widest of the controls, the '
                    'per-step control among them (docs/jax-port.md).',
}
# Differences after which step-wise values are no longer comparable.
STEP_BREAKING = frozenset({'adam_rounding', 'bn_moving_variance', 'tf1_batch_norm',
                           'dropout_masks', 'replica_reduction', 'mixed_precision'})
# run.json's kernels block (runlog.KERNELS): each kernel the runners name, and the ones
# they may have computed with.
KERNELS = {'adam': (runlog.ADAM_TF1_FUSED, runlog.TF1_FORMULA, runlog.ADAM_KERAS),
           'batch_norm_variance': (runlog.BN_VARIANCE_BESSEL, runlog.BN_VARIANCE_BIASED)}
# The JAX port's exact switches compute TF1's formula, not its kernel: what differs from
# TF1's kernel is XLA's rounding (xla_rounding), not the algorithm.
_ALGORITHM = {'adam': {runlog.TF1_FORMULA: runlog.ADAM_TF1_FUSED},
              'optimizer': {runlog.TF1_FORMULA: runlog.OPTIMIZER_TF1_FUSED}}


def batch_norm_layers(run):
  """How many BatchNormalization layers the run's model has: run.json's model_summary, or
  for older runs and recorded loops the seed's ConvNet's under the batch_norm flag."""
  summary = run.manifest.get('model_summary')
  if isinstance(summary, dict) and 'batch_norm_layers' in summary:
    return summary['batch_norm_layers']
  return len(convnet.CONV_FILTERS) if run.flag('batch_norm') else 0


def bessel_factor(run, layer_index):
  """n/(n-1) for the batch variance of bn<layer_index>: n = batch x height x width."""
  size = run.manifest.get('image_size') or run.flag('image_size')
  for _ in range(layer_index):
    size = (size - 3) // 2 + 1
  n = (run.manifest.get('batch_size') or run.flag('batch_size')) * size * size
  return n / (n - 1)


def kernels_problem(manifest):
  """What the run.json `manifest` lacks to say which kernels the run computed with, or None."""
  kernels = manifest.get(runlog.KERNELS)
  if not isinstance(kernels, dict):
    return f'no {runlog.KERNELS!r} block'
  algorithm = (manifest.get('optimizer') or {}).get('algorithm', 'adam')
  for name, known in KERNELS.items():
    if name == 'adam' and algorithm != 'adam' and kernels.get(name) is None:
      continue  # A run without Adam has no Adam kernel.
    if kernels.get(name) not in known:
      return f'{runlog.KERNELS}.{name} is {kernels.get(name)!r}, not one of {", ".join(known)}'
  return None


def _kernel(run, name):
  kernel = run.manifest[runlog.KERNELS].get(name)
  return _ALGORITHM.get(name, {}).get(kernel, kernel)


def keras_backend(run):
  """Keras 3's backend the run computed on: 'jax' for the JAX port, else None."""
  return (run.manifest.get('versions') or {}).get('keras_backend')


def known_differences(reference, other):
  """Framework differences these two runs are expected to show, by name, with details."""
  found = {}
  adam = [_kernel(run, 'adam') for run in (reference, other)]
  if None not in adam and adam[0] != adam[1]:
    found['adam_rounding'] = {}
  applied = [_kernel(run, 'optimizer') for run in (reference, other)]
  if None not in applied and applied[0] != applied[1]:
    found['optimizer_rounding'] = {'kernels': applied}
  if batch_norm_layers(reference) and batch_norm_layers(other) and (
      _kernel(reference, 'batch_norm_variance') != _kernel(other, 'batch_norm_variance')):
    # Predicted from the seed's ConvNet's geometry, which only it has; a recorded model
    # without an image size has none to predict from.
    found['bn_moving_variance'] = ({
        'predicted_factor_last_layer': bessel_factor(reference, len(convnet.CONV_FILTERS)),
        'predicted_factor_first_layer': bessel_factor(reference, 1)}
        if reference.flag('model') is None and (
            reference.manifest.get('image_size') or reference.flag('image_size')) else {})
  if (reference.flag('dropout') or 0) > 0 and (other.flag('dropout') or 0) > 0 and not (
      _same_dropout_masks(reference, other)):
    found['dropout_masks'] = {'rate': other.flag('dropout')}
  replicas = [run.manifest.get('replicas', 1) for run in (reference, other)]
  if replicas[0] != replicas[1]:
    found['replica_reduction'] = {'replicas': replicas,
                                  'strategies': [run.manifest.get('strategy', 'default')
                                                 for run in (reference, other)]}
  policies = [run.manifest.get('dtype_policy', 'float32') for run in (reference, other)]
  if policies[0] != policies[1]:
    found['mixed_precision'] = {'dtype_policies': policies}
  backends = [keras_backend(run) for run in (reference, other)]
  if backends[0] != backends[1]:
    found['xla_rounding'] = {'keras_backends': [b or 'tensorflow' for b in backends]}
  tf_versions = [str((run.manifest.get('versions') or {}).get('tensorflow')) for run in
                 (reference, other)]
  if [v.startswith('1.') for v in tf_versions].count(True) == 1:
    found['tf1_rounding'] = {'tensorflow': tf_versions}
    if batch_norm_layers(reference):
      found['tf1_batch_norm'] = {'batch_norm_layers': batch_norm_layers(reference)}
  return found


def _same_dropout_masks(reference, other):
  """Whether two runs draw the same Dropout masks: the graph runner on either TensorFlow
  (tf.nn.dropout's stateful kernel) with the same explicit --dropout_seed."""
  seeds = [run.flag('dropout_seed') for run in (reference, other)]
  return (reference.manifest.get('runner') == other.manifest.get('runner') == 'graph'
          and seeds[0] is not None and seeds[0] == seeds[1])


def measure_bn_variance(reference, other):
  """Max relative difference of the moving variances at the first common snapshot > 0."""
  common = [s for s in sorted(set(reference.snapshot_steps) & set(other.snapshot_steps)) if s]
  if not common:
    return None
  a, b = reference.snapshot(common[0]), other.snapshot(common[0])
  keys = [k for k in a if k.endswith('moving_variance')]
  return {'step': common[0],
          'max_relative_difference': max(calibration.variable_difference(a[k], b[k])
                                         for k in keys)}
