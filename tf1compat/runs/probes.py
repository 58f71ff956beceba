"""One training step recorded stage by stage: the probe that localize.py compares.

A probe holds what one step computed, in the order the step computes it:

    input      the batch (images, labels) the runner's own pipeline gives for the step
    forward    every layer's output, in the model's layer order
    loss       its data part, its regularization part and the total
    gradients  every trainable variable's gradient
    update     every trainable variable's change by the optimizer's step
    state      every other variable's change by the step (BatchNorm moving statistics)

Our runners write one by replaying their run's first step (`train_graph` /
`train_eager --replay_out`, train/replay_mode.py); a team's loop writes one with
`RunRecorder.probe`, whose update and state stages localize.py takes from the
snapshots around the step. One .npz: the arrays under "STAGE/NAME" and a JSON `meta`
entry (the order of each stage, the layers' kinds, the runner). TensorFlow-free.
"""

import dataclasses
import json
import os

import numpy as np

from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import user_files

STAGES = ('input', 'forward', 'loss', 'gradients', 'update', 'state')
# The loss stage's items, in the order the step builds them: where the parts are known,
# the first part outside names what differs (the total follows from them).
LOSS_PARTS = ('data', 'regularization', 'total')
META = 'meta'


@dataclasses.dataclass
class Probe:
  """A loaded probe: `stages` maps each stage to {name: array} in the step's order."""
  path: str
  meta: dict
  stages: dict

  def items(self, stage):
    """{name: array} of `stage` ({} when the probe lacks it)."""
    return self.stages.get(stage, {})


def save(path, stages, meta):
  """Writes the probe {stage: {name: array}} (STAGES, each in the step's order) with the
  JSON-ready `meta` to `path`, atomically."""
  unknown = set(stages) - set(STAGES)
  if unknown:
    raise ValueError(f'a probe has no stage {", ".join(sorted(unknown))} (probes.STAGES)')
  arrays = {f'{stage}/{name}': np.asarray(value)
            for stage, items in stages.items() for name, value in items.items()}
  meta = {**meta, 'order': {stage: [str(name) for name in items]
                            for stage, items in stages.items()}}
  arrays[META] = np.array(json.dumps(meta, sort_keys=True))
  run_files.save_weights(path, arrays)


def load(path):
  """The Probe at `path`; raises errors.UsageError for a missing or damaged file."""
  fix = 'write it again (replay or RunRecorder.probe)'
  arrays = user_files.load_npz(path, '', fix)
  try:
    meta = json.loads(str(arrays[META]))
    stages = {stage: {name: arrays[f'{stage}/{name}'] for name in names}
              for stage, names in meta['order'].items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise errors.UsageError(f'{path}: not a probe ({type(e).__name__}: {e}); {fix}') from e
  return Probe(path, meta, stages)


def layer_kinds(layer):
  """The class names of `layer` and its bases up to Keras' Layer, for meta's layer_kinds:
  a port's subclass (TF1BatchNormalization) is still a BatchNormalization."""
  names = []
  for cls in type(layer).__mro__:
    names.append(cls.__name__)
    if cls.__name__ == 'Layer':
      break
  return names


def path_in(run_dir, step):
  """Where a recorded loop's probe of `step` lies in its run directory."""
  return os.path.join(run_dir, run_files.PROBE_DIR, f'step-{step:06d}.npz')


def recorded(run_dir):
  """The path of the probe a recorded loop wrote into `run_dir` (RunRecorder.probe), or
  None when it wrote none."""
  folder = os.path.join(run_dir, run_files.PROBE_DIR)
  names = sorted(name for name in os.listdir(folder) if name.endswith('.npz')) if (
      os.path.isdir(folder)) else []
  return os.path.join(folder, names[0]) if names else None
