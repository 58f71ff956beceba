"""What a recorded loop computes with: the RunConfig whose fields go into run.json, the
defaults each framework fills in, and the versions and device read from the loop's process.

recorder.RunRecorder writes a run from it; recorder.RunConfig is this class. Imports
neither TensorFlow nor absl: the versions and the device are read from the modules the
loop's process imported.
"""

import dataclasses
import sys
from typing import Optional

try:
  from importlib import metadata
except ImportError:  # Python 3.7: a TensorFlow 1.15 loop's environment
  metadata = None

from tf1compat.runs import config as tf1compat_config
from tf1compat.runs import errors
from tf1compat.runs import optimizers
from tf1compat.runs import run_files
from tf1compat.runs import runlog

# The kernels a loop of each framework computes with unless it says otherwise: a TF1 loop
# TF1's AdamOptimizer (fused ApplyAdam) and fused BatchNorm, a Keras 3 loop Keras' own;
# and whose optimizer defaults (optimizers.DEFAULTS) fill in what it leaves out.
FRAMEWORK_DEFAULTS = {
    'tf1': {'adam_kernel': runlog.ADAM_TF1_FUSED,
            'batch_norm_variance': runlog.BN_VARIANCE_BESSEL, 'optimizers': 'tf1'},
    'keras3': {'adam_kernel': runlog.ADAM_KERAS,
               'batch_norm_variance': runlog.BN_VARIANCE_BIASED, 'optimizers': 'keras'},
}
# A port on tf-keras (Keras 2) computes with Keras' own kernels too.
FRAMEWORK_DEFAULTS['tf_keras'] = FRAMEWORK_DEFAULTS['keras3']
_KNOWN_KERNELS = {'adam_kernel': (runlog.ADAM_TF1_FUSED, runlog.ADAM_KERAS),
                  'batch_norm_variance': (runlog.BN_VARIANCE_BESSEL, runlog.BN_VARIANCE_BIASED)}
_OPTIMIZER_FIELDS = ('beta_1', 'beta_2', 'epsilon')
@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What a loop computes with: run.json's fields that the config lint compares.

  `framework` is 'tf1' (a Session loop with tf.compat.v1.train's optimizers), 'keras3'
  (a TF2 port with keras.optimizers) or 'tf_keras' (a port still on Keras 2); it sets
  the defaults of what the optimizer leaves out (optimizers.DEFAULTS: Adam's epsilon 1e-8
  or Keras' 1e-7, RMSProp's mean square starting at one or at zero...) and of the kernels
  the run computes with,
  `adam_kernel` (runlog.ADAM_TF1_FUSED or ADAM_KERAS) and `batch_norm_variance`
  (runlog.BN_VARIANCE_BESSEL or BN_VARIANCE_BIASED), which tell compare_runs what
  rounding differences to expect. `optimizer` is the class name (its algorithm,
  optimizers.algorithm_of, unless `algorithm` says it); `hyperparameters` the
  algorithm's values besides the learning rate, Adam's betas and the epsilon
  (optimizers.FIELDS). Read the optimizer's values from the optimizer
  itself (optimizer_fields) and a Keras model's from the model (keras_model_fields):
  declared values say what the code was meant to do, not what it does.

  The data: `data_fingerprint` (data_fingerprint()) or a free-text `data_id`, one of
  them required. `image_size`: the input's side or size (an image model's; with
  BatchNorm, compare_runs predicts its moving-variance factor from it). `batch_norm`,
  `dropout`, `steps_per_epoch` and `shuffle_buffer` are compared like our runners'
  flags. A field left None is one the loop does not know: compare_runs compares a field
  only where both runs record it.
  `init_weights`: the initial-weights file both loops start from (its sha256 is
  recorded). `snapshot_steps`: the steps snapshot_due() says yes to. `extra`: the
  loop's own settings, recorded in run.json's flags block and not compared.
  """
  framework: str
  batch_size: Optional[int] = None
  optimizer: str = 'adam'
  learning_rate: Optional[float] = 0.001
  beta_1: Optional[float] = None
  beta_2: Optional[float] = None
  epsilon: Optional[float] = None
  algorithm: Optional[str] = None
  hyperparameters: dict = dataclasses.field(default_factory=dict)
  loss: Optional[str] = 'softmax_cross_entropy'
  from_logits: Optional[bool] = True
  final_activation: Optional[str] = 'none'
  image_size: Optional[int] = None
  num_classes: Optional[int] = None
  seed: Optional[int] = None
  deterministic: Optional[bool] = None
  adam_kernel: Optional[str] = None
  batch_norm_variance: Optional[str] = None
  batch_norm: Optional[bool] = None
  dropout: Optional[float] = None
  steps_per_epoch: Optional[int] = None
  shuffle_buffer: Optional[int] = None
  data_fingerprint: Optional[str] = None
  data_id: Optional[str] = None
  init_weights: Optional[str] = None
  snapshot_steps: tuple = tf1compat_config.DEFAULT_SNAPSHOT_STEPS
  device: Optional[str] = None
  extra: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.framework not in FRAMEWORK_DEFAULTS:
      raise errors.UsageError(f'RunConfig(framework={self.framework!r}): give one of '
                              f'{", ".join(FRAMEWORK_DEFAULTS)}')
    # Frozen: the defaults are filled in once, as the run records them, each only for an
    # optimizer that has it.
    framework = FRAMEWORK_DEFAULTS[self.framework]
    algorithm = self.algorithm or optimizers.algorithm_of(self.optimizer)
    object.__setattr__(self, 'algorithm', algorithm)
    values = optimizers.DEFAULTS[framework['optimizers']].get(algorithm, {})
    for name in _OPTIMIZER_FIELDS:
      if getattr(self, name) is None and name in values:
        object.__setattr__(self, name, values[name])
    object.__setattr__(self, 'hyperparameters', {
        **{name: value for name, value in values.items() if name not in _OPTIMIZER_FIELDS},
        **self.hyperparameters})
    for name in _KNOWN_KERNELS:
      if getattr(self, name) is None and (name != 'adam_kernel' or algorithm == 'adam'):
        object.__setattr__(self, name, framework[name])
    for name, known in _KNOWN_KERNELS.items():
      if getattr(self, name) not in (*known, *([None] if name == 'adam_kernel' else [])):
        raise errors.UsageError(f'RunConfig({name}={getattr(self, name)!r}): give one of '
                                f'{", ".join(known)} (runlog)')
    if not (self.data_fingerprint or self.data_id):
      raise errors.UsageError('RunConfig needs data_fingerprint (recorder.data_fingerprint) or a '
                              'data_id: the config lint compares the data of two runs')
    if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
      raise errors.UsageError(f'RunConfig(steps_per_epoch={self.steps_per_epoch}): give at '
                              'least 1, or None to end epochs with record_epoch()')
    object.__setattr__(self, 'snapshot_steps', tuple(int(s) for s in self.snapshot_steps))

  def flags(self):
    """run.json's flags block: every field, JSON-ready."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in sorted(dataclasses.asdict(self).items())}

  def manifest(self):
    """The run.json fields our runners write at start (runlog.MANIFEST_FIELDS)."""
    return runlog.start_fields(
        versions=_versions(self.framework), device=self.device or _device(),
        kernels={'adam': self.adam_kernel, 'batch_norm_variance': self.batch_norm_variance},
        optimizer={'name': self.optimizer, 'algorithm': self.algorithm,
                   'learning_rate': self.learning_rate, 'beta_1': self.beta_1,
                   'beta_2': self.beta_2, 'epsilon': self.epsilon, **self.hyperparameters},
        loss=self.loss, from_logits=self.from_logits, final_activation=self.final_activation,
        batch_size=self.batch_size, image_size=self.image_size, seed=self.seed,
        deterministic=self.deterministic,
        data={'fingerprint': self.data_fingerprint or self.data_id, 'data_id': self.data_id,
              'num_classes': self.num_classes},
        init_weights_sha256=(run_files.file_sha256(self.init_weights) if self.init_weights
                             else None))


def _module_version(name):
  module = sys.modules.get(name)
  if getattr(module, '__version__', None):
    return module.__version__
  if metadata is None:
    return None
  try:
    return metadata.version(name.replace('_', '-'))
  except metadata.PackageNotFoundError:
    return None


def _versions(framework):
  # The loop's process has imported its TensorFlow and Keras: their versions are the
  # ones it ran with (the installed ones otherwise, read without importing them).
  tf_version = _module_version('tensorflow')
  if tf_version is None:
    return runlog.versions(None, None, None)
  if framework == 'keras3':
    return runlog.versions(tf_version, runlog.KERAS_3, _module_version('keras'))
  if framework == 'tf_keras':
    return runlog.versions(tf_version, runlog.KERAS_TF_KERAS, _module_version('tf_keras'))
  if tf_version and tf_version.startswith('1.'):
    # TensorFlow 1.x: the Keras of a TF1 loop is the one bundled as tf.keras.
    bundled = getattr(sys.modules.get('tensorflow'), 'keras', None)
    return runlog.versions(tf_version, runlog.KERAS_BUNDLED,
                           getattr(bundled, '__version__', None))
  return runlog.versions(tf_version, runlog.KERAS_TF_KERAS, _module_version('tf_keras'))


def _device():
  """'CPU' or 'GPU (name)' as TensorFlow sees it where the loop imported it, else 'unknown'."""
  tf = sys.modules.get('tensorflow')
  config = getattr(tf, 'config', None)
  # TensorFlow 1.15 has it under config.experimental only.
  lister = getattr(config, 'list_physical_devices', None) or getattr(
      getattr(config, 'experimental', None), 'list_physical_devices', None)
  if lister is None:
    return 'unknown'
  gpus = lister('GPU')
  if not gpus:
    return 'CPU'
  details = getattr(config.experimental, 'get_device_details', lambda device: {})(gpus[0])
  count = f' x{len(gpus)}' if len(gpus) > 1 else ''
  return f'GPU ({details.get("device_name", gpus[0].name)}){count}'
