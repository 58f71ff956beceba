"""The bounded flag kinds every command's flags use: integers with an upper bound always,
finite floats, paths with `~` expanded (flags.py, tool_flags.py, replay_flags.py).
"""

import math
import os

from absl import flags

from tf1compat.runs import config

# A flag defined through these helpers is the calling module's own, as absl's --help and
# get_flags_for_module list it (absl names the module that calls DEFINE otherwise).
flags.disclaim_key_flags()


def define_integer(name, default, help_text, lower_bound, upper_bound=config.INT_MAX):
  """absl.flags.DEFINE_integer with an upper bound always (config.INT_MAX unless given)."""
  flags.DEFINE_integer(name, default, help_text, lower_bound=lower_bound,
                       upper_bound=upper_bound)


def define_float(name, default, help_text, lower_bound=None, upper_bound=None, below=None):
  """absl.flags.DEFINE_float that refuses NaN and infinity too: absl's bounds are
  comparisons, which NaN passes, and --learning_rate=nan trained to a NaN loss (exit 3).
  `below`: an exclusive upper bound, which absl's bounds cannot say."""
  flags.DEFINE_float(name, default, help_text, lower_bound=lower_bound,
                     upper_bound=upper_bound)
  flags.register_validator(name, lambda value: value is None or math.isfinite(value),
                           message=f'--{name} takes a finite number, not nan or inf')
  if below is not None:
    flags.register_validator(name, lambda value: value is None or value < below,
                             message=f'--{name} must be below {below}')


class _PathParser(flags.ArgumentParser):
  """A path as a shell user writes it: `~` and `~user` expanded (after `=` the shell leaves
  them, and `--legacy_python=~/envs/tf115/bin/python` named no interpreter)."""

  def parse(self, argument):
    return os.path.expanduser(argument)

  def flag_type(self):
    return 'path'


def define_path(name, default, help_text):
  """absl.flags.DEFINE_string for a file or folder path, with `~` expanded."""
  flags.DEFINE(_PathParser(), name, default, help_text, serializer=flags.ArgumentSerializer())


def expand_user(paths):
  """`paths` (command-line arguments or a multi flag's values, None for none) with `~`
  expanded as in define_path's flags."""
  return [os.path.expanduser(path) for path in paths or ()]


def register_int_list_validator(name):
  """Refuses a --`name` list that holds anything but non-negative integers."""
  def check(values):
    try:
      return all(int(v) >= 0 for v in values)
    except ValueError:
      return False
  flags.register_validator(name, check, message=f'--{name} takes non-negative integers '
                           'separated by commas, e.g. 0,1,2,5,10')
