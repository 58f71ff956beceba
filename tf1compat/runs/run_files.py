"""The run-directory contract: the files every runner writes and compare_runs reads.

    MODEL_DIR/run.json                 manifest, written atomically
    MODEL_DIR/steps.csv                one row per training step
    MODEL_DIR/epochs.csv               one row per epoch
    MODEL_DIR/weights/step-NNNNNN.npz  all weights after that step (0 = initial)
    MODEL_DIR/probe/step-NNNNNN.npz    what a recorded loop's step computed (probes.py)
    MODEL_DIR/checkpoints/             framework checkpoints (the runners' own)
    MODEL_DIR/events.*                 TensorBoard scalars (the runners' own)
    MODEL_DIR/export/                  SavedModel (the runners' own)
    MODEL_DIR/runner.log               the runner's whole output, when check_parity ran it
    MODEL_DIR/.lock                    the lock of the process writing it (folders.lock_folder)

Here: their names, which of a folder's files a run wrote (what --overwrite may delete and
nothing else), and the weight snapshots; runlog.py writes and reads run.json and the CSV
files. TensorFlow-free.
"""

import hashlib
import os
import re

import numpy as np

from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import user_files

RUN_JSON = 'run.json'
STEPS_CSV = 'steps.csv'
EPOCHS_CSV = 'epochs.csv'
WEIGHTS_DIR = 'weights'
# A recorded loop's probes (RunRecorder.probe; probes.py reads and writes them).
PROBE_DIR = 'probe'
# A recorded loop's input batches: their digests and the first steps' arrays
# (batch_record.py).
BATCHES_DIR = 'batches'
CHECKPOINTS_DIR = 'checkpoints'
# Beside the JAX port's iterator checkpoint ckpt-N: the state it resumes with (an .npz).
CHECKPOINT_STATE_SUFFIX = '.state.npz'
EXPORT_DIR = 'export'
KERAS_FILE = 'model.keras'
# Written by whoever started the runner (check_parity), not by the runner: a run
# directory holding only this file is still empty, and --overwrite keeps it.
RUNNER_LOG = 'runner.log'
_NOT_CONTENT = frozenset({RUNNER_LOG, folders.LOCK_FILE})
# What a runner writes into its run directory, by kind: --overwrite deletes these names
# (and the temporaries of atomic writes) and nothing else.
_OWN_FILES = frozenset({RUN_JSON, STEPS_CSV, EPOCHS_CSV, KERAS_FILE})
# TensorBoard's event files (tf.compat.v1.summary.FileWriter and tf.summary alike).
_EVENTS_NAME = re.compile(r'events\.out\.tfevents\..+')
# What the writers of each of those folders name the files below it (the path under the
# folder, '/'-separated): weight snapshots and the optimizer's state beside them, and
# probes; TensorFlow's checkpoints (a Saver's model.ckpt-N, a CheckpointManager's ckpt-N,
# the JAX port's state beside it), their state file, the temporaries of a save in
# progress, and model.fit's backup; a SavedModel. Only these, and the temporaries of
# atomic writes, are a run's: --overwrite deletes no other file there.
_STEP_FILE = re.compile(r'step-\d+\.npz')
_CHECKPOINT_PART = r'(?:\.index|\.meta|\.data-\d{5}-of-\d{5})(?:\.tempstate\d+)?'
_OWN_BELOW = {
    WEIGHTS_DIR: re.compile(r'(?:step|optimizer)-\d+\.npz'),
    PROBE_DIR: _STEP_FILE,
    BATCHES_DIR: re.compile(r'step-\d+\.npz|digests\.csv'),
    CHECKPOINTS_DIR: re.compile(
        r'checkpoint(?:\.tmp\w+)?'
        rf'|(?:model\.)?ckpt-\d+{_CHECKPOINT_PART}|ckpt-\d+\.state\.npz'
        rf'|(?:model\.)?ckpt-\d+_temp\w*/part-\d{{5}}-of-\d{{5}}{_CHECKPOINT_PART}'
        r'|backup/(?:latest\.weights\.h5|training_metadata\.json)(?:\.bkp)?'),
    EXPORT_DIR: re.compile(r'saved_model\.pb|fingerprint\.pb|keras_metadata\.pb'
                           r'|variables/variables(?:\.index|\.data-\d{5}-of-\d{5})'),
}

# Weight snapshot file names; the temporary files save_weights renames start with '.'.
_SNAPSHOT_NAME = re.compile(r'step-(\d+)\.npz')


def content(folder):
  """The names in `folder` other than runner.log and the lock ([] when it does not exist)."""
  if not os.path.isdir(folder):
    return []
  return [name for name in os.listdir(folder) if name not in _NOT_CONTENT]


def written_by_a_run(folder, name):
  """Whether `name` in `folder` is something a runner writes into a run directory (what
  --overwrite may delete): its files by kind, event files and temporaries, and its
  folders when all below them is what their writers name so (_OWN_BELOW). A link is
  never ours."""
  return not foreign_below(folder, name)


def foreign_below(folder, name):
  """What of `name` in the run directory `folder` no runner wrote: [] when it all is a
  run's (written_by_a_run), else the paths relative to `folder` that are not."""
  path = os.path.join(folder, name)
  if os.path.islink(path):
    return [name]
  if name in _OWN_BELOW and os.path.isdir(path):
    foreign = []
    for root, dirs, files in os.walk(path):
      for entry in dirs + files:
        entry_path = os.path.join(root, entry)
        below = os.path.relpath(entry_path, path).replace(os.sep, '/')
        # A folder below is the run's when all below it is (a link never).
        ours = (not os.path.islink(entry_path) and (
            entry in dirs or _OWN_BELOW[name].fullmatch(below)
            or atomic.TEMPORARY_NAME.fullmatch(entry)))
        if not ours:
          foreign.append(f'{name}/{below}')
    return sorted(foreign)
  if name in _OWN_FILES or _EVENTS_NAME.fullmatch(name):
    return [] if os.path.isfile(path) else [name]
  return [] if atomic.TEMPORARY_NAME.fullmatch(name) else [name]


def refuse_foreign(model_dir, overwrite):
  """Raises errors.UsageError when `model_dir` holds anything a run does not write
  (foreign_below), which --overwrite (`overwrite`) never deletes."""
  foreign = sorted(path for name in content(model_dir) for path in foreign_below(model_dir, name))
  if foreign:
    listed = ', '.join(foreign[:3]) + (', ...' if len(foreign) > 3 else '')
    deleted = 'nothing was deleted' if overwrite else 'neither would --overwrite delete them'
    raise errors.UsageError(
        f'--model_dir={model_dir} holds files no tf1compat run wrote ({listed}), and {deleted}; '
        'move them away or choose another --model_dir')


def file_sha256(path):
  """sha256 hex digest of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def snapshot_path(model_dir, step):
  """Path of the weight snapshot taken after `step`."""
  return os.path.join(model_dir, WEIGHTS_DIR, f'step-{step:06d}.npz')


def optimizer_state_path(model_dir, step):
  """Path of the optimizer state (its slots, in optimizers.SLOTS' names, and its step)
  after `step`, beside the weight snapshot."""
  return os.path.join(model_dir, WEIGHTS_DIR, f'optimizer-{step:06d}.npz')


def snapshot_steps_in(model_dir):
  """Steps that have a weight snapshot in `model_dir`, sorted."""
  return steps_in(os.path.join(model_dir, WEIGHTS_DIR))


def steps_in(folder):
  """The steps of the step-NNNNNN.npz files in `folder`, sorted."""
  if not os.path.isdir(folder):
    return []
  steps = []
  for name in os.listdir(folder):
    match = _SNAPSHOT_NAME.fullmatch(name)
    if match:
      steps.append(int(match.group(1)))
  return sorted(steps)


def save_weights(path, weights):
  """Writes {key: array} as .npz atomically (`atomic_path`)."""
  # Into an open file: given a name, numpy appends .npz where it is missing and writes
  # beside the temporary that atomic_path removes on an error.
  with atomic.atomic_path(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **weights)


def load_optimizer_state(path):
  """An optimizer state .npz as {'step': int, 'slot/NAME/KEY': array, 'scalar/NAME':
  array}; errors.UsageError where it is not one."""
  state = user_files.load_npz(path, '', 'rerun the run to write its snapshots again')
  if 'step' not in state:
    raise errors.UsageError(f'{path}: no optimizer state (no step); rerun the run to write '
                            'its snapshots again')
  return {**state, 'step': int(state['step'])}


def load_weights(path, expected_shapes=None):
  """Reads a weights .npz as {key: array}, checked against {key: shape} when given.

  Raises errors.UsageError naming the file and the first mismatch (missing or extra
  key, wrong shape) or the first variable holding a NaN or Inf, so a file from a
  different model never loads half-way and a run never starts from non-finite weights.
  """
  if not os.path.exists(path):
    raise errors.UsageError(f'{path}: no such weights file (write one with --save_init_weights)')
  weights = user_files.load_npz(path, '', 'write the weights again (--save_init_weights '
                                'writes a run\'s initial weights)')
  for key, value in weights.items():
    if value.dtype.kind not in 'biufc':
      raise errors.UsageError(f'{path}: {key} holds {value.dtype} values, not numbers; write '
                              'the weights again as numeric arrays')
  if expected_shapes is not None:
    missing = sorted(set(expected_shapes) - set(weights))
    extra = sorted(set(weights) - set(expected_shapes))
    if missing or extra:
      raise errors.UsageError(
          f'{path}: weights do not fit this model (missing {missing[:3]}, unexpected '
          f'{extra[:3]}); check --batch_norm, --dropout and --num_classes')
    for key, shape in expected_shapes.items():
      if tuple(weights[key].shape) != tuple(shape):
        raise errors.UsageError(
            f'{path}: {key} has shape {tuple(weights[key].shape)}, the model expects '
            f'{tuple(shape)}; check --num_classes and the model flags')
  for key, value in weights.items():
    finite = np.isfinite(value) if value.dtype.kind in 'fc' else True
    if not np.all(finite):
      raise errors.UsageError(
          f'{path}: {key} holds {np.size(value) - np.count_nonzero(finite)} NaN or Inf '
          'value(s); a run cannot train from them: write finite initial weights (e.g. with '
          '--save_init_weights)')
  return weights
