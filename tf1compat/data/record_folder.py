"""make_records' output folder: what make_records wrote there, and the atomic move into place.

A conversion writes into a staging folder on the same file system and moves the complete
records into --output_dir at the end (`install`): a new folder in one rename; an existing
one, which may hold the user's other files, file by file behind INCOMPLETE_MARKER, replacing
only what make_records wrote there before (dataset.json lists its shards).
"""

import contextlib
import glob
import json
import os
import re
import shutil
import signal

from tf1compat.data import data_folder
from tf1compat.runs import folders

# What dataset.json says it is: written by bin/make_records.
DATASET_FORMAT = 'tf1compat-records/1'


# The temporary folders of run: beside a new --output_dir ('.NAME.make_records-PID'), or
# inside an existing one ('.make_records-PID'). A killed process leaves its own behind;
# the next run removes those whose process is gone.
_STAGING = re.compile(r'\.(?:.+\.)?make_records-(\d+)')
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _own_files(out_dir):
  """(the files make_records wrote in `out_dir`, the *.tfrecord files it did not).

  Its files are dataset.json and the shards that dataset.json lists; a dataset.json of
  an older version lists none, and its shards are those named as make_records names
  them. DataError for a dataset.json that make_records did not write.
  """
  json_path = os.path.join(out_dir, data_folder.DATASET_JSON)
  records_present = [os.path.basename(path) for path in glob_records(out_dir)]
  if not os.path.exists(json_path):
    ours = []
  else:
    try:
      with open(json_path) as f:
        info = json.load(f)
    except (OSError, ValueError):
      info = None
    if not isinstance(info, dict) or info.get('format') != DATASET_FORMAT:
      raise data_folder.DataError(
          f'--output_dir={out_dir}: its {data_folder.DATASET_JSON} was not written by '
          'bin/make_records; move it away or choose another folder')
    listed = info.get('files')
    shards = [name for name in records_present if data_folder.is_shard_name(name)
              and (not isinstance(listed, list) or name in listed)]
    # Named as make_records names its shards and listed are not enough: a file put there
    # under such a name (or listed by hand) is the user's. The shards are those it wrote
    # when they are exactly the records its fingerprint describes.
    if shards and data_folder.fingerprint(
        [os.path.join(out_dir, name) for name in shards]) != info.get('fingerprint'):
      raise data_folder.DataError(
          f'--output_dir={out_dir}: its records are not those its {data_folder.DATASET_JSON} '
          'describes (changed, added or removed since bin/make_records wrote them), and '
          '--overwrite deletes only what make_records wrote; move them away or choose another '
          'folder')
    ours = [data_folder.DATASET_JSON] + shards
  if os.path.exists(os.path.join(out_dir, data_folder.INCOMPLETE_MARKER)):
    ours += [data_folder.INCOMPLETE_MARKER] + [
        name for name in records_present if data_folder.is_shard_name(name) and name not in ours]
  return ours, [name for name in records_present if name not in ours]


def _remove_stale_staging(folder):
  """Removes the temporary folders of make_records processes that no longer run."""
  for name in os.listdir(folder):
    match = _STAGING.fullmatch(name)
    if not match or not os.path.isdir(os.path.join(folder, name)):
      continue
    try:
      os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    except OSError:
      pass  # alive, another user's


def check_output_dir(out_dir, overwrite, image_dir=None):
  """Refuses an --output_dir that make_records must not write into: a file, one among
  `image_dir` (the images it reads: its staging folder would read as a class), the cache
  or the package (folders.check_output), or a folder holding records it did not write;
  returns the names of the files it wrote there before (to replace)."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise data_folder.DataError(f'--output_dir={out_dir}: a file, not a folder; pass a folder '
                                '(it is created if missing)')
  folders.check_output(out_dir, '--output_dir', folder=True, data_dirs=[image_dir])
  if not os.path.isdir(out_dir):
    return []
  ours, foreign = _own_files(out_dir)
  if (ours or foreign) and not overwrite:
    raise data_folder.DataError(f'--output_dir={out_dir} already holds TFRecords or a '
                                f'{data_folder.DATASET_JSON}; pass --overwrite to replace them or '
                                'choose another folder')
  if foreign:
    raise data_folder.DataError(f'--output_dir={out_dir}: {foreign[0]} is not a record file '
                                'bin/make_records wrote there (its dataset.json does not list '
                                'it), and the runners would read it with the new shards; move it '
                                'away or choose another folder')
  return ours


@contextlib.contextmanager
def staging(out_dir):
  """Yields a new temporary folder on the file system of `out_dir`, removed at the end
  (with the folders made for it) unless it was moved into place."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  inside = os.path.isdir(out_dir)
  made = []
  try:
    if not inside:
      missing = parent
      while not os.path.exists(missing):
        made.append(missing)
        missing = os.path.dirname(missing)
      os.makedirs(parent, exist_ok=True)
    folder = out_dir if inside else parent
    _remove_stale_staging(folder)
    prefix = '.' if inside else f'.{os.path.basename(os.path.abspath(out_dir))}.'
    tmp = os.path.join(folder, f'{prefix}make_records-{os.getpid()}')
    os.mkdir(tmp)
  except OSError as e:
    for path in made:
      with contextlib.suppress(OSError):
        os.rmdir(path)
    raise data_folder.DataError(f'--output_dir={out_dir}: cannot write there ({e.strerror}); '
                                'choose a folder you can write to') from e
  try:
    yield tmp
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.isdir(out_dir):
      for path in made:
        with contextlib.suppress(OSError):
          os.rmdir(path)


def install(tmp, out_dir, old_files):
  """Moves the complete records in `tmp` to `out_dir`.

  A new folder is one rename: whole or absent. Into an existing folder (which may hold
  the user's other files) the files move one by one: INCOMPLETE_MARKER first, then the
  old records of make_records go, the new shards come and dataset.json comes last,
  then the marker goes. SIGINT and SIGTERM wait until the move is done; a SIGKILL or a
  crash in between leaves the marker, and the runners refuse the folder with a line that
  says to rerun make_records; nothing but what make_records wrote is ever removed.
  """
  # A signal now would leave the folder half-replaced (refused, but to be rerun): it
  # waits until the move is done (interrupts.signals_interrupt raises it then).
  blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
  try:
    _move(tmp, out_dir, old_files)
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _move(tmp, out_dir, old_files):
  """install's moves, with the signals blocked."""
  if not os.path.isdir(out_dir):
    os.rename(tmp, out_dir)
    return
  marker = os.path.join(out_dir, data_folder.INCOMPLETE_MARKER)
  with open(marker, 'w') as f:
    f.write('bin/make_records is replacing the records here; if it is not running, rerun it '
            'with --overwrite\n')
  # dataset.json first: from here on the folder reads as unfinished, marker or not.
  for name in sorted(old_files, key=lambda name: name != data_folder.DATASET_JSON):
    if name != data_folder.INCOMPLETE_MARKER:
      os.remove(os.path.join(out_dir, name))
  new_files = sorted(os.listdir(tmp), key=lambda name: name == data_folder.DATASET_JSON)
  for name in new_files:
    os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
  os.remove(marker)


def glob_records(folder):
  """Every *.tfrecord file directly in `folder`."""
  return sorted(glob.glob(os.path.join(folder, data_folder.ALL_PATTERN)))
