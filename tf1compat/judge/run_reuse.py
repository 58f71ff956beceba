"""check_parity --reuse_from: a runner's complete run that another check made with this
check's arguments, copied into this check's folder instead of trained again.

A matrix checks one model many times: matched, then once per pitfall, each check in a
folder of its own (one case per job on a cluster). A pitfall of the port changes the
port's arguments only, so the legacy run and its controls are the matched check's; a
pitfall of the legacy loop leaves the port's. Each check keeps a whole copy of what it
compared (its folder stands alone: another case rerun with --overwrite leaves it intact),
but the weight snapshots and checkpoints, which writers only ever replace by rename or
delete, are hard links: the matrix's pitfall checks would otherwise copy 80 MB each.
"""

import os
import shutil

from tf1compat.runs import atomic
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runs import user_files

# check_parity's record of each runner's arguments (in its --output_dir).
STATE_JSON = 'check_parity.json'
# Files no writer changes in place: hard links serve (runner.log, the CSVs and the event
# files are appended to, so they are copied).
_LINKED_SUFFIXES = ('.npz',)
_LINKED_FOLDERS = ('checkpoints',)


def donor_folders(given, output_dir):
  """The check_parity folders of `given` (each a check's folder, or a folder of them)
  other than `output_dir`, in name order."""
  own = os.path.realpath(output_dir)
  found = []
  for folder in given:
    candidates = [folder]
    if not os.path.exists(os.path.join(folder, STATE_JSON)) and os.path.isdir(folder):
      candidates = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    found += [c for c in candidates if os.path.isfile(os.path.join(c, STATE_JSON))
              and os.path.realpath(c) != own]
  return found


def _recorded(donor):
  return user_files.read_json_object(os.path.join(donor, STATE_JSON)) or {}


def _rebased(args, job_name, output_dir):
  """`args` recorded in another folder, with that folder's path (read off its
  --model_dir) replaced by `output_dir`'s: what they would be here."""
  suffix = os.sep + job_name
  theirs = next((arg[len('--model_dir='):] for arg in args if arg.startswith('--model_dir=')
                 and arg.endswith(suffix)), None)
  if theirs is None:
    return None
  prefix = theirs[:-len(suffix)] + os.sep
  return [arg.replace(prefix, output_dir.rstrip(os.sep) + os.sep) for arg in args]


def _complete(model_dir):
  manifest = user_files.read_json_object(os.path.join(model_dir, run_files.RUN_JSON)) or {}
  return manifest.get('status') == runlog.STATUS_COMPLETE


def _copy_function(run_dir):
  """shutil.copytree's copy function for the run in `run_dir`: hard links for the files
  no writer changes in place, copies for the rest."""
  def link_or_copy(source, target):
    parts = os.path.relpath(source, run_dir).split(os.sep)
    if source.endswith(_LINKED_SUFFIXES) or parts[0] in _LINKED_FOLDERS:
      try:
        os.link(source, target)
        return target
      except OSError:  # another file system, or one without hard links
        pass
    return shutil.copy2(source, target)
  return link_or_copy


class _Rerun(Exception):
  """The donor's run changed while it was copied."""


def copy_run(job_name, recorded, model_dir, donors):
  """Copies into `model_dir` (absent, or without a run's content) the complete run of
  `job_name` that one of `donors` made with the arguments that are `recorded` here;
  returns that donor's folder, or None where none did."""
  output_dir = os.path.dirname(model_dir)
  for donor in donors:
    theirs = _recorded(donor).get(job_name)
    source = os.path.join(donor, job_name)
    if not theirs or _rebased(theirs, job_name, output_dir) != recorded:
      continue
    if not _complete(source):
      continue
    try:
      with atomic.atomic_path(model_dir) as tmp:
        shutil.copytree(source, tmp, copy_function=_copy_function(source), symlinks=True,
                        ignore=shutil.ignore_patterns('.lock'))
        # The donor may have been rerun meanwhile: keep the copy only if it still holds
        # the complete run of these arguments.
        if _recorded(donor).get(job_name) != theirs or not _complete(tmp):
          raise _Rerun()
    except _Rerun:
      continue
    return donor
  return None


def link_file(source, path):
  """Puts the file `source` at `path`, atomically: a hard link where `source` is one that
  no writer changes in place (a .npz), else a copy."""
  with atomic.atomic_path(path) as tmp:
    _copy_function(os.path.dirname(source))(source, tmp)


def copy_file(path, donors):
  """Links `path` (a file whose name is its content's digest, the initial weights) from
  the first of `donors` that holds a file of its name; returns that donor or None."""
  if os.path.exists(path):
    return None
  for donor in donors:
    source = os.path.join(donor, os.path.basename(path))
    if os.path.isfile(source):
      link_file(source, path)
      return donor
  return None
