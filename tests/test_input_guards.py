"""Issue 41, the input side: numeric flags, the files a user names, the legacy interpreter,
emptied shards, resumes with lost rows, runs on different data, make_records' entries and
signals, plug-ins that exit, and the temporary files of killed runs.

Every case runs the real entry points as subprocesses and checks the exit code, one line
on stderr without a traceback, and the sha256 of every file the user gave, before and
after. Most cases end before TensorFlow starts (flags, preflight); the two training runs
are tiny and share one module fixture.
"""

import functools
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
from PIL import Image
import pytest

from conftest import REPO, TINY_IMAGE_SIZE, at_once, read_run_csv, run_entry, run_python
from tf1compat.commands import flag_reference
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from test_parity import make_run
from test_run_guards import _one_line


def _digests(*paths):
  """{path: sha256} of every file at or below `paths`."""
  found = {}
  for top in paths:
    walked = [(top, [], [''])] if os.path.isfile(top) else os.walk(top)
    for root, _, names in walked:
      for name in names:
        path = os.path.join(root, name) if name else root
        with open(path, 'rb') as f:
          found[path] = hashlib.sha256(f.read()).hexdigest()
  return found


@pytest.fixture(scope='module')
def data(tiny_data_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('input') / 'data')
  shutil.copytree(tiny_data_dir, path)
  return path


def _preflight_flags(data_dir, root, *extra):
  """Flags that stop after the pre-flight check (--save_init_weights trains nothing)."""
  return [f'--data_dir={data_dir}', f'--model_dir={root}/run', f'--image_size={TINY_IMAGE_SIZE}',
          f'--save_init_weights={root}/init.npz', *extra]


# --- numeric flags: bounds and finiteness, every command ------------------------------

_SWEEP = """
import importlib, math, sys
from absl import flags
from tf1compat.runtime import process
importlib.import_module(f'{process.COMMANDS_PACKAGE}.{sys.argv[1]}').define_flags()
bad = []
ours = [flag for owner, defined in flags.FLAGS.flags_by_module_dict().items()
        if not owner.startswith('absl') for flag in defined]
for flag in ours:
  name = flag.name
  kind = type(flag.parser).__name__
  if kind == 'IntegerParser' and flag.parser.upper_bound is None:
    bad.append(f'--{name} has no upper bound')
  if kind == 'FloatParser':
    for value in ('nan', 'inf', '-inf'):
      try:
        flag.parse(value)
        flags.FLAGS.validate_all_flags()
        bad.append(f'--{name}={value} accepted')
      except flags.Error:
        pass
      finally:
        flags.FLAGS[name].unparse()
print(bad)
"""


def test_every_numeric_flag_of_every_command_is_bounded_and_finite():
  procs = at_once(*(functools.partial(run_python, _SWEEP, name)
                    for name in flag_reference.COMMANDS))
  for name, proc in zip(flag_reference.COMMANDS, procs):
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == '[]', (name, proc.stdout)


@pytest.mark.parametrize('script,flag,expected', [
    ('train_graph', '--seed=4294967296', 'not an integer in the range [0, 4294967295]'),
    ('train_eager', '--shuffle_buffer=99999999999999', 'not an integer in the range'),
    ('train_eager', '--learning_rate=nan', '--learning_rate takes a finite number'),
    ('check_parity', '--epsilon=inf', '--epsilon takes a finite number'),
    ('make_records', '--val_fraction=nan', '--val_fraction takes a finite number'),
    ('train_graph', '--adam_beta1=1', '--adam_beta1 must be below 1.0'),
    ('check_parity', '--adam_beta2=1', '--adam_beta2 must be below 1.0'),
])
def test_out_of_range_and_non_finite_flags_are_refused_at_parsing(script, flag, expected):
  _one_line(run_entry(script, flag), 2, expected)


@pytest.mark.parametrize('script,args,expected', [
    # absl took an empty value as the flag unset: the run trained on the embedded dataset,
    # or trained instead of writing the initial weights.
    ('train_graph', ['--data_dir='], '--data_dir= is empty'),
    ('train_eager', ['--save_init_weights='], '--save_init_weights= is empty'),
    ('make_records', ['--synthetic', '--output_dir= '], '--output_dir= is empty'),
    ('compare_runs', ['--control=', 'a', 'b'], '--control= is empty'),
    # An empty list read as "all": the whole benchmark started.
    ('benchmark', ['--measurements='], '--measurements= is empty'),
    # Written image by image, for hours.
    ('make_records', ['--synthetic', '--output_dir={tmp}/out', '--synthetic_classes=100000000'],
     'would hold more than 2,000,000 images'),
    # absl left them in argv, where they were ignored: `--overwrite false` overwrote.
    ('train_graph', ['--overwrite', 'false'], "unexpected arguments ['false']"),
    ('train_eager', ['data'], "unexpected arguments ['data']"),
    ('make_records', ['--synthetic', '--output_dir={tmp}/out', 'data'],
     "unexpected arguments ['data']"),
])
def test_an_empty_flag_value_or_a_stray_argument_is_one_line(script, args, expected, tmp_path):
  args = [arg.format(tmp=tmp_path) for arg in args]
  proc = run_entry(script, f'--model_dir={tmp_path}/run', *args) if script.startswith(
      'train') else run_entry(script, *args)
  _one_line(proc, 2, expected)
  assert not os.listdir(tmp_path)


def test_a_shuffle_buffer_and_batch_beyond_memory_are_refused_before_tensorflow(data, tmp_path):
  before = _digests(data)
  proc = run_entry('train_eager', *_preflight_flags(data, tmp_path, '--batch_size=100000',
                                                    '--image_size=4000'))
  _one_line(proc, 2, 'of memory this machine has available', '--batch_size')
  assert _digests(data) == before and not os.listdir(tmp_path)


# --- the files a user names --------------------------------------------------------

def _npz_cases(folder):
  """{case: path} of weight files that do not decode."""
  good = io.BytesIO()
  np.savez(good, a=np.zeros(3, np.float32))
  paths = {case: os.path.join(folder, f'{case}.npz') for case in
           ('empty', 'truncated', 'not_npy', 'npy', 'strings')}
  contents = {'empty': b'', 'truncated': good.getvalue()[:100]}
  for case, content in contents.items():
    with open(paths[case], 'wb') as f:
      f.write(content)
  with zipfile.ZipFile(paths['not_npy'], 'w') as z:
    z.writestr('a.txt', 'weights')
  with open(paths['npy'], 'wb') as f:
    np.save(f, np.zeros(3))
  np.savez(paths['strings'], a=np.array(['x']))
  return paths


def test_init_weights_that_do_not_decode_are_one_line(data, tmp_path):
  paths = _npz_cases(str(tmp_path))
  before = _digests(data, str(tmp_path))
  procs = at_once(*(functools.partial(run_entry, 'train_graph', *_preflight_flags(
      data, tmp_path / case, f'--init_weights={path}')) for case, path in paths.items()))
  expected = {'empty': 'empty (0 bytes)', 'truncated': 'cut off or damaged',
              'not_npy': "its member 'a.txt' is not a .npy array",
              'npy': 'a single .npy array', 'strings': 'not numbers'}
  for (case, path), proc in zip(paths.items(), procs):
    _one_line(proc, 2, path, expected[case])
  assert _digests(data, str(tmp_path)) == before


def test_a_truncated_step_0_snapshot_under_replay_out_is_one_line(tmp_path):
  run = make_run(str(tmp_path / 'run'), runner='graph')
  manifest_path = os.path.join(run, run_files.RUN_JSON)
  with open(manifest_path) as f:
    manifest = json.load(f)
  manifest['flags'] = {}
  with open(manifest_path, 'w') as f:
    json.dump(manifest, f)
  snapshot = run_files.snapshot_path(run, 0)
  with open(snapshot, 'r+b') as f:
    f.truncate(200)
  before = _digests(run)
  proc = run_entry('train_graph', f'--model_dir={run}', f'--replay_out={tmp_path}/out.npz')
  _one_line(proc, 2, snapshot, 'cut off or damaged')
  assert _digests(run) == before


def test_text_files_that_are_not_utf8_are_one_line(tmp_path):
  flagfile, weight_map = tmp_path / 'case.flags', tmp_path / 'map.txt'
  flagfile.write_bytes(b'--seed=1\n\xff\xfe\n')
  weight_map.write_bytes(b'conv1/(.*) -> \xff\\1\n')
  before = _digests(str(tmp_path))
  procs = at_once(*(functools.partial(run_entry, name, f'--flagfile={flagfile}')
                    for name in flag_reference.COMMANDS))
  for proc in procs:
    _one_line(proc, 2, f'--flagfile={flagfile}: not UTF-8 text')
  runs = [make_run(str(tmp_path / name)) for name in ('a', 'b')]
  proc = run_entry('compare_runs', f'--weight_map={runs[1]}={weight_map}', *runs)
  _one_line(proc, 2, f'weight map {weight_map}: not UTF-8 text')
  assert {p: d for p, d in _digests(str(tmp_path)).items() if p in before} == before


def test_dataset_json_and_emptied_shards_are_refused_before_tensorflow(data, tmp_path):
  huge, emptied = str(tmp_path / 'huge'), str(tmp_path / 'emptied')
  for folder in (huge, emptied):
    shutil.copytree(data, folder)
  with open(os.path.join(huge, 'dataset.json')) as f:
    info = json.load(f)
  info['num_classes'] = 10**30
  with open(os.path.join(huge, 'dataset.json'), 'w') as f:
    json.dump(info, f)
  open(os.path.join(emptied, 'val-00001-of-00002.tfrecord'), 'wb').close()
  before = _digests(huge, emptied)
  procs = at_once(*(functools.partial(run_entry, 'train_eager', *_preflight_flags(
      folder, tmp_path / f'{os.path.basename(folder)}-out')) for folder in (huge, emptied)))
  _one_line(procs[0], 2, 'num_classes is 1000000000000000000000000000000, not an integer in')
  _one_line(procs[1], 2, 'val-00001-of-00002.tfrecord is listed in dataset.json but empty')
  assert _digests(huge, emptied) == before


# --- the legacy interpreter --------------------------------------------------------

@pytest.mark.parametrize('make', ['folder', 'dangling_link', 'fifo'])
def test_a_shard_that_is_no_readable_file_is_one_line(make, data, tmp_path):
  copy = str(tmp_path / 'data')
  shutil.copytree(data, copy)
  before = _digests(copy)
  shard = os.path.join(copy, 'train-00009-of-00002.tfrecord')
  {'folder': os.mkdir, 'dangling_link': functools.partial(os.symlink, '/nonexistent'),
   'fifo': os.mkfifo}[make](shard)
  proc = run_entry('train_graph', *_preflight_flags(copy, tmp_path), timeout=60)
  _one_line(proc, 2, shard)
  (os.rmdir if make == 'folder' else os.remove)(shard)
  assert _digests(copy) == before


def test_legacy_python_that_is_not_python_or_not_executable(data, tmp_path):
  version_script, not_executable = tmp_path / 'python', tmp_path / 'noexec'
  version_script.write_text('#!/bin/sh\necho "Python 3.7.16"\n')
  version_script.chmod(0o755)
  not_executable.write_text('#!/bin/sh\n')
  not_executable.chmod(0o644)
  cases = {'/bin/true': 'ran but is not a Python interpreter',
           str(version_script): "it printed 'Python 3.7.16'",
           str(not_executable): 'is not executable'}
  procs = at_once(*(functools.partial(
      run_entry, 'check_parity', f'--data_dir={data}', f'--output_dir={tmp_path}/out',
      f'--legacy_python={python}') for python in cases))
  for (python, expected), proc in zip(cases.items(), procs):
    _one_line(proc, 2, f'--legacy_python={python}', expected)
  _one_line(run_entry('legacy_env', str(version_script)), 2, 'is a file, not a folder')
  assert not os.path.exists(tmp_path / 'out')


# --- two tiny runs: the shuffle buffer's cap, a resume with lost rows ----------------

@pytest.fixture(scope='module')
def buffer_runs(data, tmp_path_factory):
  """{buffer: model_dir} of two graph runs that differ only in --shuffle_buffer: the
  training record count (64) and 2e9 (capped to it)."""
  root = tmp_path_factory.mktemp('buffers')
  runs = {buffer: str(root / str(buffer)) for buffer in (64, 2000000000)}
  procs = at_once(*(functools.partial(
      run_entry, 'train_graph', f'--data_dir={data}', f'--model_dir={path}',
      f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=2', '--steps_per_epoch=3',
      f'--shuffle_buffer={buffer}', '--snapshot_steps=0', env={'TMPDIR': str(root)})
      for buffer, path in runs.items()))
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return runs


def test_a_shuffle_buffer_beyond_the_records_trains_the_same_batches(buffer_runs):
  losses = [read_run_csv(path)['loss'] for path in buffer_runs.values()]
  assert len(losses[0]) == 6 and np.array_equal(losses[0], losses[1])
  # Each runner's own temporary folder went with it.
  root = os.path.dirname(buffer_runs[64])
  assert not [name for name in os.listdir(root) if name.startswith('tf1compat-')]


def test_a_resume_with_rows_lost_before_its_checkpoint_is_refused(buffer_runs, tmp_path):
  run = str(tmp_path / 'run')
  shutil.copytree(buffer_runs[64], run)
  manifest = runlog.read_manifest(run)
  manifest['status'] = runlog.STATUS_INTERRUPTED
  with open(os.path.join(run, run_files.RUN_JSON), 'w') as f:
    json.dump(manifest, f)
  steps = os.path.join(run, run_files.STEPS_CSV)
  with open(steps) as f:
    lines = f.readlines()
  with open(steps, 'w') as f:
    f.writelines(lines[:3])
  before = _digests(steps, os.path.join(run, run_files.EPOCHS_CSV))
  proc = run_entry('train_graph', f'--data_dir={manifest["flags"]["data_dir"]}',
                   f'--model_dir={run}', f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8',
                   '--epochs=2', '--steps_per_epoch=3', '--shuffle_buffer=64',
                   '--snapshot_steps=0')
  # Found once the checkpoint is restored: the run's console is out by then, the line
  # comes last.
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'train_graph: {steps}: 2 step row(s) up to the checkpoint at step 6')
  assert 'rows were lost' in last and '--overwrite' in last
  assert _digests(steps, os.path.join(run, run_files.EPOCHS_CSV)) == before


# --- compare_runs on different data -------------------------------------------------

def test_runs_on_different_data_are_named_first_as_a_setup_problem(tmp_path):
  runs = [make_run(str(tmp_path / name), manifest_extra={'data': {
      'data_dir': f'/data/{name}', 'fingerprint': name * 16, 'records': {'train': records}}})
          for name, records in (('a', 64), ('b', 48))]
  proc = run_entry('compare_runs', f'--output_dir={tmp_path}/report', *runs)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  first = next(line for line in lines if line.startswith('  setup') or line.startswith('  pitfall'))
  assert first.startswith('  setup different_data: the runs trained on different data'), first
  assert 'no catalogued pitfall fits' not in proc.stdout


# --- make_records: entries, classes, signals; plug-ins that exit ----------------------

def _image_folder(root, classes):
  for number, name in enumerate(classes, start=1):
    folder = os.path.join(root, f'{number:03d}.{name}')
    os.makedirs(folder)
    for index in range(3):
      pixels = np.random.default_rng(index).integers(0, 255, (24, 24, 3), np.uint8)
      Image.fromarray(pixels).save(os.path.join(folder, f'{index}.jpg'))
  return root


def test_make_records_skips_a_fifo_and_refuses_one_class(tmp_path):
  images = _image_folder(str(tmp_path / 'images'), ('ant', 'bee'))
  os.mkfifo(os.path.join(images, '001.ant', 'pipe.jpg'))
  single = _image_folder(str(tmp_path / 'single'), ('ant',))
  before = _digests(single)
  fifo, one = at_once(
      functools.partial(run_entry, 'make_records', f'--image_dir={images}',
                        f'--output_dir={tmp_path}/out', timeout=120),
      functools.partial(run_entry, 'make_records', f'--image_dir={single}',
                        f'--output_dir={tmp_path}/one'))
  assert fifo.returncode == 0, fifo.stderr[-3000:]
  with open(tmp_path / 'out' / 'dataset.json') as f:
    summary = json.load(f)
  assert summary['skipped'] == [{'file': '001.ant/pipe.jpg',
                                 'reason': 'not a regular file (a FIFO, socket or device)'}]
  _one_line(one, 2, 'one class sub-folder (001.ant)')
  assert _digests(single) == before and not os.path.exists(tmp_path / 'one')


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_make_records_interrupted_is_one_line_and_leaves_nothing(signum, tmp_path):
  images = _image_folder(str(tmp_path / 'images'), ('ant', 'bee'))
  before = _digests(images)
  log_path = tmp_path / 'stderr'
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'bin', 'make_records'),
                             f'--image_dir={images}', f'--output_dir={tmp_path}/out'],
                            stdout=subprocess.DEVNULL, stderr=log)
    # In TensorFlow's import or the conversion: once the command catches SIGTERM, its own
    # handlers are in place (a fixed sleep sent the signal into Python's start on a busy
    # machine, where no handler of ours could answer).
    _wait_until_caught(proc.pid, signal.SIGTERM)
    proc.send_signal(signum)
    code = proc.wait(timeout=120)
  stderr = log_path.read_text()
  assert code == 128 + signum, stderr
  assert 'Traceback' not in stderr
  # Before the conversion starts the command's own handlers answer (rerun), during it
  # make_records' (nothing was half-written): one line either way.
  assert stderr.strip().splitlines()[-1].startswith(
      f'make_records: interrupted by {signal.Signals(signum).name}; ')
  assert _digests(images) == before
  assert sorted(os.listdir(tmp_path)) == ['images', 'stderr']


def _wait_until_caught(pid, signum, timeout=60):
  """Waits until process `pid` has a handler of its own for `signum` (SigCgt in
  /proc/PID/status)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with open(f'/proc/{pid}/status') as f:
      caught = next(int(line.split()[1], 16) for line in f if line.startswith('SigCgt:'))
    if caught & (1 << (signum - 1)):
      return
    time.sleep(0.05)
  raise AssertionError(f'process {pid} never caught signal {signum}')


@pytest.mark.parametrize('script,signum', [('train_eager', signal.SIGTERM),
                                           ('compare_runs', signal.SIGINT)])
def test_a_signal_before_the_work_starts_is_one_line(script, signum, tmp_path):
  # A --flagfile that is a FIFO holds the command inside its flag parsing, where a SIGTERM
  # was a silent death (-15) and a SIGINT a KeyboardInterrupt traceback.
  fifo = str(tmp_path / 'flags')
  os.mkfifo(fifo)
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'bin', script),
                           f'--flagfile={fifo}'], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  wchan = f'/proc/{proc.pid}/wchan'
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline and os.path.exists(wchan):
    with open(wchan) as f:
      if 'partner' in f.read():  # blocked opening the FIFO (wait_for_partner)
        break
    time.sleep(0.1)
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=60)
  _one_line(subprocess.CompletedProcess(proc.args, proc.returncode, '', stderr), 128 + signum,
            f'interrupted by {signal.Signals(signum).name}')
  assert sorted(os.listdir(tmp_path)) == ['flags']


def test_legacy_env_refuses_an_empty_folder_name_a_folder_under_a_file_and_not_python(tmp_path):
  # '' made the environment in the current folder; a folder under a file and a --python
  # that prints no version ended in exit 4.
  a_file = tmp_path / 'file'
  a_file.write_text('mine')
  procs = at_once(lambda: run_entry('legacy_env', ''),
                  lambda: run_entry('legacy_env', f'{a_file}/env', f'--python={sys.executable}'),
                  lambda: run_entry('legacy_env', f'{tmp_path}/env', '--python=/bin/true'))
  for proc, expected in zip(procs, ('legacy_env DIR', 'which is a file', 'not a Python 3.7')):
    _one_line(proc, 2, expected)
  assert sorted(os.listdir(tmp_path)) == ['file'] and a_file.read_text() == 'mine'


def test_a_copied_run_resumes_from_its_own_checkpoints(tmp_path):
  # The graph runner's Saver wrote absolute paths into the state file: a run directory
  # copied elsewhere restored the original's checkpoint, or none once it was gone.
  copy = tmp_path / 'copy' / 'checkpoints'
  copy.mkdir(parents=True)
  for name in ('model.ckpt-3.index', 'model.ckpt-6.index'):
    (copy / name).write_bytes(b'')
  (copy / 'checkpoint').write_text(
      'model_checkpoint_path: "/gone/run/checkpoints/model.ckpt-6"\n'
      'all_model_checkpoint_paths: "/gone/run/checkpoints/model.ckpt-3"\n'
      'all_model_checkpoint_paths: "/gone/run/checkpoints/model.ckpt-6"\n')
  proc = run_python('import sys; from tf1compat.train import checkpoints; '
                    'print(checkpoints.checkpoint_candidates(sys.argv[1]))', str(copy))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == str([f'{copy}/model.ckpt-6', f'{copy}/model.ckpt-3'])


def test_a_plugin_that_calls_sys_exit_is_one_line(data, tmp_path):
  (tmp_path / 'exiting.py').write_text('import sys\n\ndef build(keras, **shapes):\n'
                                       '  sys.exit(0)\n')
  proc = run_entry('train_graph', *_preflight_flags(data, tmp_path, '--model=exiting:build'),
                   env={'PYTHONPATH': f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}'})
  _one_line(proc, 2, '--model=exiting:build: the builder called sys.exit(0)')
