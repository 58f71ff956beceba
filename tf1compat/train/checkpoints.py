"""Checkpoints both runners keep, and the newest one that loads.

The runners write their framework's own checkpoints (a tf.compat.v1.train.Saver, a
tf.train.CheckpointManager); this is what they share: how many are kept, and which one a
rerun restores when the latest is damaged or missing.
"""

import glob
import os

from absl import logging
import tensorflow as tf

from tf1compat.runs import errors

# Checkpoints kept by both runners: TF's own default (Saver and CheckpointManager alike).
# Resuming needs only the latest; the earlier ones let a run be rewound, e.g. to check
# that a resume redoes the same steps.
CHECKPOINTS_KEPT = 5


def _checkpoint_step(path):
  """The step in a checkpoint's name (model.ckpt-12, ckpt-12), or -1."""
  number = path.rsplit('-', 1)[-1]
  return int(number) if number.isdigit() else -1


def checkpoint_candidates(checkpoint_dir):
  """The checkpoints a run in `checkpoint_dir` may resume from, newest first.

  The latest is the one the `checkpoint` state file names; then the older ones, those
  it lists and those in the folder (a resumed Saver lists only its own), by step.
  Without a readable state file: every checkpoint in the folder, by step.
  """
  try:
    state = tf.train.get_checkpoint_state(checkpoint_dir)
  except ValueError:  # a state file that names no latest checkpoint
    state = None
  on_disk = {path[:-len('.index')] for path in glob.glob(os.path.join(checkpoint_dir, '*.index'))}
  if state is None:
    if on_disk:
      logging.warning('%s: the checkpoint state file is missing or damaged; looking for '
                      'checkpoints by name', checkpoint_dir)
    return sorted(on_disk, key=_checkpoint_step, reverse=True)
  # Checkpoints live in the folder itself: a state file written with absolute paths (the
  # graph runner's before it saved relative ones) names the folder the run was made in,
  # which for a copied run directory is another run's, or gone.
  latest = _here(checkpoint_dir, state.model_checkpoint_path)
  older = (on_disk | {_here(checkpoint_dir, path)
                      for path in state.all_model_checkpoint_paths}) - {latest}
  return [latest] + sorted((path for path in older
                            if _checkpoint_step(path) < _checkpoint_step(latest)),
                           key=_checkpoint_step, reverse=True)


def _here(checkpoint_dir, path):
  """The checkpoint `path` as a file of `checkpoint_dir`."""
  return os.path.join(checkpoint_dir, os.path.basename(path))


def restore_newest(checkpoint_dir, restore):
  """Restores the newest checkpoint of `checkpoint_dir` that loads, with `restore(path)`;
  returns its path, or None when there is none.

  A damaged or missing checkpoint (a full disk, a copy cut short, deleted files) is
  skipped with a warning and the one before it restored: the run redoes the steps
  since. Raises errors.UsageError when none loads.
  """
  candidates = checkpoint_candidates(checkpoint_dir)
  for path in candidates:
    try:
      restore(path)
    # OpError: a file missing or unreadable; IndexError and RuntimeError: the checkpoint
    # reader's C++ errors (a data file cut short); ValueError: the Saver finds no such
    # checkpoint; AssertionError: a checkpoint that does not hold the run's objects.
    except (tf.errors.OpError, IndexError, RuntimeError, ValueError, AssertionError) as e:
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      logging.warning('checkpoint %s is damaged or missing (%s); falling back to the one '
                      'before it', path, reason)
      continue
    if path != candidates[0]:
      logging.warning('resuming from the previous checkpoint %s: the latest, %s, cannot be '
                      'restored', path, candidates[0])
    return path
  if candidates:
    raise errors.UsageError(
        f'{checkpoint_dir}: none of its {len(candidates)} checkpoint(s) can be restored (the '
        f'latest is {candidates[0]}); pass --overwrite to train the run again, or use '
        'another --model_dir')
  return None
