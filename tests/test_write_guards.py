"""Issue 41, the write side: no command writes among what it reads or over a file tf1compat
did not write, --overwrite deletes only what the project's own files say it wrote, and a
write the disk refuses (read-only, full) is one line naming the folder, exit 2.

Every case runs the real entry points as subprocesses and checks the exit code, the one
line on stderr without a traceback, and the sha256 of every user file before and after.
Most cases stop before TensorFlow starts (0.2 s a process); the runs they need are
conftest's `references`, trained once per session.
"""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, at_once, run_entry, tiny_run_flags
from tf1compat.bench import benchmark
from tf1compat.bench import benchmark_figures
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import runlog

# A small synthetic conversion: 2 classes, 8 training and 2 validation records, 1 shard each.
SMALL = ('--synthetic', '--synthetic_classes=2', '--synthetic_train_per_class=4',
         '--synthetic_val_per_class=1', '--num_shards=1')
# What a process sets its file-size limit to before it runs an entry point: the disk is
# full for any file that grows past it (RLIMIT_FSIZE binds root too).
_LIMITED = ('import os, resource, sys; n = int(sys.argv[1]); '
            'resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); '
            'os.execv(sys.argv[2], sys.argv[2:])')
# Bigger than run.json, smaller than a weight snapshot (1.6 MB).
_FULL_AT = 200_000


def _digest(folder):
  """{path relative to `folder`: sha256} of every file below `folder`."""
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return found


def _one_line(proc, *substrings, last=False):
  """Asserts exit 2, no traceback, and one line on stderr holding `substrings` (`last`: the
  last line, where the run had started and its console went out before it)."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert last or len(lines) == 1, proc.stderr[-3000:]
  for text in substrings:
    assert text in lines[-1], lines[-1]
  return lines[-1]


def _entry(prefix, name, *args):
  """Runs bin/<name> with `args` behind the command `prefix` (which execs what follows)."""
  return subprocess.run([*prefix, sys.executable, os.path.join(REPO, 'bin', name), *args],
                        capture_output=True, text=True, timeout=600, check=False)


# The command prefix of a process whose disk is full past _FULL_AT bytes a file.
_FULL_DISK = (sys.executable, '-c', _LIMITED, str(_FULL_AT))


@pytest.fixture(scope='module')
def data(tiny_data_dir, tmp_path_factory):
  """A copy of the tiny dataset, and the digest of its files."""
  path = str(tmp_path_factory.mktemp('write_guards') / 'data')
  shutil.copytree(tiny_data_dir, path)
  return path, _digest(path)


# --- 1. benchmark: --json and --output_dir --------------------------------------------------

def test_benchmark_never_writes_into_the_data_or_over_a_file_it_did_not_write(data, tmp_path):
  path, digest = data
  (tmp_path / 'mine.json').write_text('{"my": "notes"}')
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'notes.txt').write_text('mine')
  mine = _digest(str(tmp_path))
  cases = (
      ((f'--json={path}/dataset.json',), f'--json={path}/dataset.json lies inside the data'),
      ((f'--output_dir={path}',), f'--output_dir={path} is the data folder'),
      ((f'--json={tmp_path}/mine.json', f'--output_dir={tmp_path}/new'),
       f'--json={tmp_path}/mine.json already exists; move it away'),
      ((f'--output_dir={tmp_path}/out',), 'holds files the benchmark did not write (notes.txt)'),
  )
  procs = at_once(*(functools.partial(run_entry, 'benchmark', f'--data_dir={path}', *args)
                    for args, _ in cases))
  for proc, (_, expected) in zip(procs, cases):
    _one_line(proc, expected)
  assert _digest(path) == digest and _digest(str(tmp_path)) == mine


def test_benchmark_json_replaces_a_benchmarks_figures_only(tmp_path):
  figures, other = tmp_path / 'figures.json', tmp_path / 'other.json'
  figures.write_text(json.dumps({'device': {}, 'settings': {}, 'measurements': {}}))
  other.write_text(json.dumps({'settings': {}}))
  assert benchmark_figures.is_figures_file(str(figures))
  assert not benchmark_figures.is_figures_file(str(other))
  # Figures written into --output_dir do not make it foreign to the next benchmark.
  other.unlink()
  benchmark.check_outputs(config.BenchmarkConfig(), str(tmp_path), str(figures))


# --- 2, 4. make_records: the image folder, and the records it did not write -----------------

def test_make_records_never_writes_into_the_image_folder_it_reads(tmp_path):
  images = tmp_path / 'images'
  for label in ('001.zero', '002.one'):
    (images / label).mkdir(parents=True)
    (images / label / 'a.jpg').write_bytes(b'not even an image')
  before = _digest(str(images))
  cases = ((images, 'is the data folder'), (images / 'records', 'lies inside the data folder'),
           (tmp_path, 'contains the data folder'))
  procs = at_once(*(functools.partial(run_entry, 'make_records', f'--image_dir={images}',
                                      f'--output_dir={out}') for out, _ in cases))
  for proc, (out, relation) in zip(procs, cases):
    _one_line(proc, f'--output_dir={out} {relation}', 'choose a --output_dir outside it')
  assert _digest(str(images)) == before
  assert sorted(os.listdir(tmp_path)) == ['images']


def test_make_records_overwrite_never_deletes_records_it_did_not_write(tiny_data_dir, tmp_path):
  # A user's shard, named as make_records names them and listed in dataset.json by hand;
  # and one of make_records' own shards replaced by the user's records.
  listed, replaced = tmp_path / 'listed', tmp_path / 'replaced'
  for folder in (listed, replaced):
    shutil.copytree(tiny_data_dir, folder)
  shutil.copy(listed / 'train-00000-of-00002.tfrecord', listed / 'train-00002-of-00003.tfrecord')
  info = json.loads((listed / 'dataset.json').read_text())
  info['files'].append('train-00002-of-00003.tfrecord')
  (listed / 'dataset.json').write_text(json.dumps(info))
  shutil.copy(replaced / 'train-00000-of-00002.tfrecord', replaced / 'val-00000-of-00002.tfrecord')
  before = _digest(str(tmp_path))
  procs = at_once(*(functools.partial(run_entry, 'make_records', *SMALL, f'--output_dir={folder}',
                                      '--overwrite') for folder in (listed, replaced)))
  for proc, folder in zip(procs, (listed, replaced)):
    _one_line(proc, f'--output_dir={folder}: its records are not those its dataset.json '
              'describes', '--overwrite deletes only what make_records wrote')
  assert _digest(str(tmp_path)) == before


# --- 3. --overwrite of a run directory --------------------------------------------------------

def test_the_runs_writers_name_every_file_of_a_run_directory(references):
  for runner in ('graph', 'eager', 'fit'):
    run = references(runner)
    assert not [path for name in run_files.content(
        run) for path in run_files.foreign_below(run, name)]


def test_overwrite_never_deletes_a_users_file_inside_a_run_directory(data, references, tmp_path):
  path, digest = data
  cases = {'graph': 'weights/notes.txt', 'eager': 'export/assets/vocab.txt',
           'fit': 'checkpoints/backup/mine.h5'}
  runs = {}
  for runner, mine in cases.items():
    runs[runner] = str(tmp_path / runner)
    shutil.copytree(references(runner), runs[runner])
    os.makedirs(os.path.dirname(os.path.join(runs[runner], mine)), exist_ok=True)
    with open(os.path.join(runs[runner], mine), 'w') as f:
      f.write('the user\'s own file')
  before = _digest(str(tmp_path))
  scripts = {'graph': ('train_graph',), 'eager': ('train_eager',),
             'fit': ('train_eager', '--loop=fit')}
  procs = at_once(*(functools.partial(run_entry, scripts[runner][0],
                                      *tiny_run_flags(path, runs[runner], *scripts[runner][1:],
                                                      '--overwrite'))
                    for runner in cases))
  for proc, (runner, mine) in zip(procs, cases.items()):
    _one_line(proc, f'--model_dir={runs[runner]} holds files no tf1compat run wrote ({mine})',
              'nothing was deleted')
  assert _digest(str(tmp_path)) == before and _digest(path) == digest


# --- 5. --save_init_weights ------------------------------------------------------------------

def test_save_init_weights_replaces_no_file_and_names_an_npz(data, tmp_path):
  path, digest = data
  (tmp_path / 'trained.npz').write_bytes(b'a team\'s trained weights')
  (tmp_path / 'folder.npz').mkdir()
  before = _digest(str(tmp_path))
  cases = ((tmp_path / 'trained.npz', 'already exists; pass --overwrite to replace it'),
           (tmp_path / 'init.txt', 'name a .npz file'),
           (tmp_path / 'folder.npz', 'is not a file; name the file to write'))
  procs = at_once(*(functools.partial(run_entry, 'train_graph', *tiny_run_flags(
      path, str(tmp_path / 'run'), f'--save_init_weights={target}')) for target, _ in cases))
  for proc, (target, expected) in zip(procs, cases):
    _one_line(proc, f'--save_init_weights={target}', expected)
  assert _digest(str(tmp_path)) == before and _digest(path) == digest


# --- 7, 16. compare_runs' report, paths under a file or not UTF-8 ---------------------------

def test_compare_runs_never_writes_into_a_run_it_compares_or_over_a_file(references, tmp_path):
  run = str(tmp_path / 'graph')
  shutil.copytree(references('graph'), run)
  (tmp_path / 'report.md').write_text('my report')
  before = _digest(str(tmp_path))
  cases = ((run, f'--output_dir={run} is {run}, a run directory this command reads'),
           (os.path.join(run, 'report'), 'lies inside'),
           (str(tmp_path / 'report.md'), 'is a file, not a folder'))
  procs = at_once(*(functools.partial(run_entry, 'compare_runs', run, run,
                                      f'--output_dir={out}') for out, _ in cases))
  for proc, (_, expected) in zip(procs, cases):
    _one_line(proc, expected)
  assert _digest(str(tmp_path)) == before


def test_a_path_under_a_file_or_not_utf8_is_refused_before_anything_is_written(data, tmp_path):
  path, digest = data
  (tmp_path / 'file').write_text('mine')
  under = str(tmp_path / 'file' / 'run')
  not_utf8 = os.fsencode(str(tmp_path / 'run')) + b'\xff'
  procs = at_once(
      functools.partial(run_entry, 'train_graph', *tiny_run_flags(path, under)),
      functools.partial(run_entry, 'check_parity', f'--data_dir={path}', f'--output_dir={under}'),
      functools.partial(_entry, (), 'train_eager', f'--data_dir={path}',
                        b'--model_dir=' + not_utf8))
  _one_line(procs[0], f'--model_dir={under} lies under {tmp_path / "file"}, which is a file')
  _one_line(procs[1], f'--output_dir={under} lies under')
  _one_line(procs[2], 'run\\xff is not UTF-8', 'choose a --model_dir whose name is UTF-8')
  assert os.listdir(tmp_path) == ['file'] and _digest(path) == digest


# --- 11. a read-only folder --------------------------------------------------------------------

def _read_only(folder):
  """The command prefix under which `folder` is read-only (root ignores a folder's mode:
  a read-only tmpfs over it, in a mount namespace of its own), or None where neither works."""
  os.makedirs(folder)
  if os.geteuid() != 0:
    os.chmod(folder, 0o555)
    return ()
  prefix = ('unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', folder)
  try:
    probe = subprocess.run([*prefix, 'true'], capture_output=True, check=False)
  except OSError:
    return None
  return prefix if probe.returncode == 0 else None


def test_a_read_only_folder_is_one_line_in_every_command(data, references, tmp_path):
  path, digest = data
  read_only = str(tmp_path / 'ro')
  prefix = _read_only(read_only)
  if prefix is None:
    pytest.skip('no way to make a folder read-only here (unshare -m or a non-root user)')
  run = references('graph')
  trained = _digest(run)
  cases = {
      '--model_dir': ('train_graph', *tiny_run_flags(path, f'{read_only}/run')),
      '--save_init_weights': ('train_eager', *tiny_run_flags(
          path, str(tmp_path / 'run'), f'--save_init_weights={read_only}/init.npz')),
      '--replay_out': ('train_graph', f'--model_dir={run}', f'--replay_out={read_only}/r.npz'),
      '--output_dir': ('compare_runs', run, run, f'--output_dir={read_only}/report'),
      'check_parity': ('check_parity', f'--data_dir={path}', f'--output_dir={read_only}'),
  }
  procs = at_once(*(functools.partial(_entry, prefix, *args) for args in cases.values()))
  for proc, flag in zip(procs, cases):
    flag = '--output_dir' if flag == 'check_parity' else flag
    _one_line(proc, f'{flag}=', f'cannot write into {read_only} (read-only or no permission)')
  assert _digest(run) == trained and _digest(path) == digest
  assert not os.path.exists(tmp_path / 'run')


# --- 12. a full disk ---------------------------------------------------------------------------

def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_no_temporary(data, tmp_path):
  path, digest = data
  model_dir, parity_dir = tmp_path / 'run', tmp_path / 'parity'
  run, parity = at_once(
      functools.partial(_entry, _FULL_DISK, 'train_graph', *tiny_run_flags(path, str(model_dir))),
      # Its first runner writes the initial weights (--save_init_weights) and meets the limit.
      functools.partial(_entry, _FULL_DISK, 'check_parity', f'--data_dir={path}',
                        f'--output_dir={parity_dir}', '--image_size=32'))
  _one_line(run, f'cannot write into {model_dir / "weights"}: File too large', last=True)
  assert runlog.read_manifest(str(model_dir))['status'] == 'failed'
  assert not os.listdir(model_dir / 'weights')
  # The runner's own line, through check_parity's: exit 2, never a fault.
  _one_line(parity, 'init runner: ', f'cannot write into {parity_dir}: File too large',
            last=True)
  assert not [name for name in os.listdir(parity_dir) if name.endswith('.npz')]
  assert _digest(path) == digest


@pytest.mark.parametrize('message, folder', [
    # What TensorFlow's file system and HDF5 raised when a checkpoint met the limit.
    ('{{function_node __wrapped__SaveV2}} /r/checkpoints/ckpt-6_temp/part-00000-of-00001.data-'
     '00000-of-00001.tempstate1513; File too large [Op:SaveV2]', '/r/checkpoints/ckpt-6_temp'),
    ("Can't synchronously write data (file write failed: filename = '/r/checkpoints/backup/"
     "latest.weights.h5', errno = 28, error message = 'No space left on device')",
     '/r/checkpoints/backup'),
])
def test_a_write_the_disk_refused_inside_tensorflow_names_the_folder(message, folder):
  tensorflow_error = type('ResourceExhaustedError', (Exception,),
                          {'__module__': 'tensorflow.python.framework.errors_impl'})
  for error in (tensorflow_error(message), OSError(message)):
    refused = errors.write_refused(error)
    assert isinstance(refused, errors.UsageError)
    assert str(refused).startswith(f'cannot write into {folder}: ')
  assert errors.write_refused(ValueError(message)) is None
  assert errors.write_refused(tensorflow_error('Graph execution error: shapes differ')) is None
