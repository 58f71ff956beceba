"""The JAX port's state outside its jitted step: the running metrics kept on the host, and
its checkpoints, `ckpt-N.state.npz` (every variable, the step, the metrics) beside a
`tf.train.Checkpoint` of the data iterator (`ckpt-N`), which train/eager/backend.py keeps in
one `tf.train.Checkpoint`.
"""

import glob
import os
import zipfile

import numpy as np
import tensorflow as tf

from tf1compat.runs import run_files
from tf1compat.train import checkpoints


class RunningMean:
  """keras.metrics.Mean's arithmetic on the host: a float32 total and count."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.total = np.float32(0.0)
    self.count = np.float32(0.0)

  def add(self, total, count):
    self.total = np.float32(self.total + np.float32(total))
    self.count = np.float32(self.count + np.float32(count))

  def result(self):
    return float(self.total / self.count) if self.count else 0.0


class Checkpoints:
  """The run's checkpoints in `directory`: the iterator's, each with its state beside it."""

  def __init__(self, directory, iterator):
    self._checkpoint = tf.train.Checkpoint(iterator=iterator)
    self._manager = tf.train.CheckpointManager(self._checkpoint, directory,
                                               max_to_keep=checkpoints.CHECKPOINTS_KEPT)

  def save(self, step, state):
    """Writes checkpoint `step` with `state` ({name: array}); returns its path."""
    suffix = run_files.CHECKPOINT_STATE_SUFFIX
    directory = self._manager.directory
    # The state first: a kill between the two leaves a state no checkpoint names yet.
    run_files.save_weights(os.path.join(directory, f'ckpt-{step}{suffix}'), state)
    path = self._manager.save(checkpoint_number=step)
    # The manager removed its oldest checkpoint: its state goes with it.
    kept = {os.path.basename(p) for p in self._manager.checkpoints}
    for state_file in glob.glob(os.path.join(directory, f'ckpt-*{suffix}')):
      if os.path.basename(state_file)[:-len(suffix)] not in kept:
        os.remove(state_file)
    return path

  def restore_newest(self, names, load):
    """Restores the newest checkpoint whose iterator and state (exactly the arrays `names`)
    load, the state through `load(state)`; returns its path, or None without one
    (checkpoints.restore_newest: a damaged one falls back to the one before)."""
    def restore(path):
      state_path = path + run_files.CHECKPOINT_STATE_SUFFIX
      try:
        with np.load(state_path) as data:
          state = {name: data[name] for name in data.files}
      except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f'{state_path}: {e}') from e
      if set(state) != set(names):
        raise ValueError(f'{state_path} holds another model or optimizer')
      self._checkpoint.restore(path).assert_existing_objects_matched()
      load(state)

    return checkpoints.restore_newest(self._manager.directory, restore)
