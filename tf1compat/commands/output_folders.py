"""Where a command writes when its folder flag (--output_dir, --model_dir) is not given: one
folder per exploration.

The defaults' folder is the flag's default (runs/check_parity); a run with other flags gets
that name followed by what differs from the defaults (runs/check_parity-batch_norm,
runs/check_parity-pitfall-metrics_never_reset), so that the commands of the docs, followed
one after another, never meet in one folder with other arguments, and a command run again
reuses its own. A folder given explicitly keeps the guard: another command's runs there are
replaced only with --overwrite.
"""

import hashlib
import os
import re

from absl import flags

from tf1compat.commands import cli

# The longest name a folder gets from its flags; past it, a readable start and a digest.
_MAX_NAME = 60
_DIGEST = 8


def _text(flag):
  """The flag's value, short and safe in a folder name: a spec's function, a path's last
  part, a list joined by dots."""
  value = flag.value
  if isinstance(value, (list, tuple)):
    value = '.'.join(map(str, value))
  value = str(value)
  if ':' in value:
    value = value.rsplit(':', 1)[1]
  value = os.path.basename(value.rstrip('/')) or value
  return re.sub(r'[^A-Za-z0-9._]+', '_', value)


def exploration_name(flag_values, left_out):
  """The flags set to other than their defaults, as a folder's name ('' for none): `name`
  or `noname` for a switch, `name-value` for the rest, sorted, joined by '+', and a digest
  of the values where one was shortened or the name grew long."""
  parts, given, shortened = [], [], False
  for flag in cli.own_flags(flag_values):
    if flag.name in left_out or not flag.present or flag.value == flag.default:
      continue
    given.append(f'{flag.name}={flag.value!r}')
    if flag.boolean:
      parts.append(flag.name if flag.value else f'no{flag.name}')
    else:
      text = _text(flag)
      shortened |= text != str(flag.value)
      parts.append(f'{flag.name}-{text}')
  name = '+'.join(parts)
  # Shortened values could meet (data/x and other/x both read x): a digest of them all
  # then ends the name, as it does past _MAX_NAME.
  if not shortened and len(name) <= _MAX_NAME:
    return name
  # The whole flags that fit, then the digest.
  kept = []
  while parts and len('+'.join([*kept, parts[0]])) + 1 + _DIGEST <= _MAX_NAME:
    kept.append(parts.pop(0))
  return '+'.join([*kept, hashlib.sha256('+'.join(given).encode()).hexdigest()[:_DIGEST]])


def resolve(folder_flag, left_out, default=None, flag_values=flags.FLAGS):
  """The folder the command writes: --`folder_flag` where given, else `default` (None: the
  flag's) followed by exploration_name; `left_out`: the flags that change neither the runs
  nor their numbers."""
  flag = flag_values[folder_flag]
  if flag.present or flag.value != flag.default:
    return flag.value
  default = default or flag.default
  name = exploration_name(flag_values, {folder_flag, *left_out})
  return f'{default}-{name}' if name else default
