"""The runners' replay mode (train/replay_mode.py) as flags: --replay_out and the flags
that go with it, and the config.ReplayConfig they make (train_graph, train_eager).
"""

import dataclasses

from tf1compat.commands import flag_kinds
from tf1compat.runs import config
from tf1compat.runs import errors


def define_replay_flags():
  """The runners' replay mode (train/replay_mode.py): config.ReplayConfig, with --model_dir."""
  flag_kinds.define_path(
      'replay_out', None,
      'Replay mode: run a training step (--replay_step) of the complete run in '
      '--model_dir once more, with its own flags, from its snapshot before it, '
      'and write what the step computes (every layer\'s output, the loss and '
      'its regularization part, the gradients, the update, the state) to this '
      '.npz; nothing of the run changes. check_parity and compare_runs '
      '--localize do it (docs/localization.md).')
  flag_kinds.define_path(
      'replay_batch', None,
      'Replay mode: compute on the batch of this replay (another run\'s '
      '--replay_out) instead of the pipeline\'s batch of the step.')
  flag_kinds.define_integer(
      'replay_step', 1,
      'Replay mode: the step to replay, from the latest snapshot before it that '
      'holds the optimizer\'s state, the steps between trained as the run trained '
      'them (1: from the step-0 snapshot).', lower_bound=1)
  flag_kinds.define_path(
      'replay_start', None,
      'Replay mode: start the step from the state another run\'s replay of the same '
      'step started from (its --replay_out; the files beside it), instead of this '
      'run\'s own snapshot.')


def replay_config(flag_values, runner_config):
  """config.ReplayConfig of a runner's replay mode, or None without --replay_out.

  Raises errors.UsageError for --replay_batch without --replay_out, and for a training flag
  given with it: a replay takes the run's own flags from its run.json.
  """
  if not flag_values.replay_out:
    if (flag_values.replay_batch or flag_values.replay_start
        or flag_values['replay_step'].present):
      raise errors.UsageError('--replay_batch, --replay_step and --replay_start apply to a '
                              'replay: add --replay_out=PATH')
    return None
  given = [name for name in (field.name for field in dataclasses.fields(runner_config))
           if name != 'model_dir' and flag_values[name].present]
  if given:
    raise errors.UsageError(f'--replay_out replays the run in --model_dir with its own flags; '
                            f'leave out --{given[0]}')
  return config.ReplayConfig(model_dir=flag_values.model_dir, output=flag_values.replay_out,
                             batch=flag_values.replay_batch, step=flag_values.replay_step,
                             start=flag_values.replay_start)
