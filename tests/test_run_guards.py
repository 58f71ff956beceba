"""Issue 15, the run-directory side: nothing of the user's is written into or deleted,
two processes never share a run directory, and what a run reads back is whole.

Every case runs the real entry points as subprocesses and checks the exit code, the one
line on stderr, that the data folder is byte for byte what it was (sha256 of every file),
and that the run directories hold each step and epoch exactly once. Most cases stop
before training; the uninterrupted runs they compare with are conftest's `references`,
trained once per session.
"""

import csv
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tf1compat
from conftest import (EPOCHS, KILL_FLAGS, REPO, STEPS_PER_EPOCH, TOTAL_STEPS, at_once, csv_rows,
                      run_entry, signal_after, tiny_run_flags)
# test_reliability's check that a resumed run ends as conftest's `references` do, bit for bit.
from test_reliability import RUNNERS, _assert_same_run


def _digest(folder, skip=()):
  """{path relative to `folder`: sha256 of its bytes} of every file below `folder`."""
  digests = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if name in skip:
        continue
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return digests


def _numbers(model_dir, name, column):
  """The `column` of every row of the CSV `name` in `model_dir`, as ints."""
  with open(os.path.join(model_dir, name), newline='') as f:
    return [int(row[column]) for row in csv.DictReader(f)]


def _assert_whole(model_dir, steps=TOTAL_STEPS, epochs=EPOCHS):
  """The run in `model_dir` is complete and holds each step and epoch exactly once."""
  with open(os.path.join(model_dir, 'run.json')) as f:
    manifest = json.load(f)
  assert manifest['status'] == 'complete' and manifest['global_step'] == steps
  assert _numbers(model_dir, 'steps.csv', 'step') == list(range(1, steps + 1))
  assert _numbers(model_dir, 'epochs.csv', 'epoch') == list(range(1, epochs + 1))


def _one_line(proc, code, *substrings):
  """Asserts exit `code` and one line on stderr holding `substrings`; returns the line."""
  assert proc.returncode == code, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  for text in substrings:
    assert text in lines[0], lines[0]
  return lines[0]


class Data:
  """A copy of the tiny dataset and the digest of its files when the module started."""

  def __init__(self, path):
    self.path = path
    self.digest = _digest(path)

  def intact(self):
    return _digest(self.path) == self.digest


@pytest.fixture(scope='module')
def data(tiny_data_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('guarded') / 'data')
  shutil.copytree(tiny_data_dir, path)
  return Data(path)


def _flags(data, model_dir, *extra):
  """The flags of test_reliability's reference runs (2 epochs of 8 steps, a checkpoint
  every 3) on the guarded copy of the data."""
  return tiny_run_flags(data.path, model_dir, *KILL_FLAGS, *extra)


# --- 15.1 a run directory never among the data, the cache or the code --------------------

def _placements(data):
  cache = os.environ['TF1COMPAT_CACHE']
  package = os.path.dirname(os.path.abspath(tf1compat.__file__))
  return {
      # The case: --overwrite on the data folder deleted the training data.
      'is_the_data': ('train_graph', data.path, ('--overwrite',), 'is the data folder'),
      'inside_the_data': ('train_eager', os.path.join(data.path, 'runs'), (),
                          'lies inside the data folder'),
      'contains_the_data': ('train_graph', os.path.dirname(data.path), ('--overwrite',),
                            'contains the data folder'),
      'inside_the_cache': ('train_eager', os.path.join(cache, 'runs'), (),
                           'lies inside the dataset cache'),
      # Inside one of its wings, not only at its top.
      'inside_the_package': ('train_graph', os.path.join(package, 'train', 'runs'),
                             ('--overwrite',), 'lies inside the tf1compat package'),
  }


@pytest.fixture(scope='module')
def placement_runs(data):
  """{case of _placements: (CompletedProcess, whether its --model_dir existed before)},
  every case run at once."""
  placements = _placements(data)
  existed = {case: os.path.exists(model_dir) for case, (_, model_dir, _, _) in placements.items()}
  procs = at_once(*(functools.partial(run_entry, script, *_flags(data, model_dir, *extra))
                    for script, model_dir, extra, _ in placements.values()))
  return {case: (proc, existed[case]) for case, proc in zip(placements, procs)}


@pytest.mark.parametrize('case', ['is_the_data', 'inside_the_data', 'contains_the_data',
                                  'inside_the_cache', 'inside_the_package'])
def test_a_run_directory_among_the_data_cache_or_code_is_refused(case, data, placement_runs):
  _, model_dir, _, relation = _placements(data)[case]
  proc, existed = placement_runs[case]
  _one_line(proc, 2, f'--model_dir={model_dir} {relation}', 'choose a --model_dir outside it')
  assert data.intact()
  assert os.path.exists(model_dir) == existed


def test_reports_and_initial_weights_are_never_written_among_the_data(
    data, references, tiny_data_dir, tmp_path):
  for output_dir, relation in ((data.path, 'is'), (os.path.join(data.path, 'out'), 'lies inside')):
    proc = run_entry('check_parity', f'--data_dir={data.path}', f'--output_dir={output_dir}')
    _one_line(proc, 2, f'--output_dir={output_dir} {relation} the data folder')
  # compare_runs reads the data folder from the runs' run.json: the reference runs' own.
  run, trained_on = references('graph'), _digest(tiny_data_dir)
  proc = run_entry('compare_runs', run, run, f'--output_dir={tiny_data_dir}')
  _one_line(proc, 2, f'--output_dir={tiny_data_dir} is the data folder')
  assert _digest(tiny_data_dir) == trained_on
  init = os.path.join(data.path, 'init.npz')
  proc = run_entry('train_graph', *_flags(data, str(tmp_path / 'run'),
                                          f'--save_init_weights={init}'))
  _one_line(proc, 2, f'--save_init_weights={init} lies inside the data folder')
  assert data.intact()
  assert not os.path.exists(os.path.join(data.path, 'out'))


def test_overwrite_leaves_a_folder_that_holds_anything_else_alone(data, tmp_path):
  model_dir = tmp_path / 'mine'
  model_dir.mkdir()
  (model_dir / 'notes.txt').write_text('my notes')
  (model_dir / 'steps.csv').write_text('step\n1\n')
  before = _digest(str(model_dir))
  proc = run_entry('train_graph', *_flags(data, str(model_dir), '--overwrite'))
  _one_line(proc, 2, f'--model_dir={model_dir} holds files no tf1compat run wrote (notes.txt)',
            'nothing was deleted')
  assert _digest(str(model_dir), skip=('.lock',)) == before
  assert data.intact()


# --- 15.2 one process per run directory -----------------------------------------------------

def test_two_runs_at_once_one_trains_the_other_names_it_and_a_sigkill_leaves_no_lock(
    data, tmp_path):
  model_dir = str(tmp_path / 'run')
  # Long enough to be killed mid-run (at step 60; 140 steps, about a second, to spare):
  # checkpoints every 20 steps.
  steps = 200
  args = tiny_run_flags(data.path, model_dir, '--epochs=1', f'--steps_per_epoch={steps}',
                        '--checkpoint_every=20', f'--log_every={steps}')
  command = [sys.executable, os.path.join(REPO, 'bin', 'train_graph'), *args]
  logs = [tmp_path / f'stderr{k}.txt' for k in range(2)]
  procs = []
  for path in logs:
    with open(path, 'w') as log:
      procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
  steps_csv = os.path.join(model_dir, 'steps.csv')
  try:
    deadline = time.monotonic() + 300
    # Both started at once: the one that is refused ends while the other trains on.
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
      time.sleep(0.01)
    loser = next(k for k, p in enumerate(procs) if p.poll() is not None)
    winner = 1 - loser
    while time.monotonic() < deadline and csv_rows(steps_csv) < 60:
      time.sleep(0.005)
    assert procs[winner].poll() is None, 'the run ended before it could be killed'
    procs[winner].send_signal(signal.SIGKILL)
    assert procs[winner].wait(timeout=60) == -signal.SIGKILL
  finally:
    for proc in procs:
      if proc.poll() is None:  # a failed assertion above: no process left behind
        proc.kill()
  killed_at = csv_rows(steps_csv)
  loser_proc = subprocess.CompletedProcess(command, procs[loser].returncode, '',
                                           logs[loser].read_text())
  _one_line(loser_proc, 2, f'--model_dir={model_dir} is in use by another process '
            f'(pid {procs[winner].pid})', 'wait for it to end')

  # The kernel dropped the dead holder's lock: the next run resumes at a checkpoint.
  proc = run_entry('train_graph', *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'in use' not in proc.stderr
  assert f'resuming {model_dir} from step ' in proc.stderr
  resumed = int(proc.stderr.split(f'resuming {model_dir} from step ')[1].split()[0])
  assert killed_at - 20 <= resumed <= killed_at and resumed % 20 == 0, (resumed, killed_at)
  _assert_whole(model_dir, steps=steps, epochs=1)
  assert data.intact()


@pytest.mark.parametrize('command', ['check_parity', 'benchmark'])
def test_a_command_takes_the_lock_of_its_output_folder(command, data, tmp_path):
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  with open(output_dir / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write(f'{os.getpid()}\n')
    lock.flush()
    proc = run_entry(command, f'--data_dir={data.path}', f'--output_dir={output_dir}')
  _one_line(proc, 2, f'--output_dir={output_dir} is in use by another process '
            f'(pid {os.getpid()})')
  assert os.listdir(output_dir) == ['.lock']
  assert data.intact()


# --- 15.3 check_parity does not replace a run unasked -------------------------------------

CHECK_FLAGS = ('--image_size=32', '--batch_size=8', '--epochs=2', '--steps_per_epoch=6',
               '--shuffle_buffer=64', '--snapshot_steps=0,1,2,5', '--nocalibrate')


def test_check_parity_refuses_to_replace_a_run_whose_arguments_changed(data, tmp_path):
  output_dir = str(tmp_path / 'out')
  common = (f'--data_dir={data.path}', f'--output_dir={output_dir}', *CHECK_FLAGS)
  # A first run into an empty folder needs no --overwrite.
  first = run_entry('check_parity', *common)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  runs = _digest(output_dir, skip=('.lock',))

  changed = run_entry('check_parity', *common, '--learning_rate=0.002')
  _one_line(changed, 2, f'--output_dir={output_dir}: its graph run was made with other '
            'arguments (--learning_rate was 0.001, now 0.002', '--overwrite',
            'another --output_dir')
  assert _digest(output_dir, skip=('.lock',)) == runs

  again = run_entry('check_parity', *common)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('reusing the complete run') == 2
  for name in ('graph', 'eager'):
    _assert_whole(os.path.join(output_dir, name), steps=12, epochs=2)
  assert data.intact()

  # A port with other arguments whose runner refuses its folder (a file no run wrote)
  # leaves the complete run of the earlier arguments there, and check_parity.json must
  # keep saying so: a rerun then refuses to replace it, instead of reusing it as a run of
  # the new arguments (a false verdict).
  foreign = os.path.join(output_dir, 'eager', 'notes.txt')
  with open(foreign, 'w') as f:
    f.write('mine')
  other = ('--port_flags=--nodeterministic',)
  refused = run_entry('check_parity', *common, *other, '--overwrite')
  _one_line(refused, 2, 'eager runner:', 'notes.txt', 'nothing was deleted')
  os.remove(foreign)
  rerun = run_entry('check_parity', *common, *other)
  _one_line(rerun, 2, f'--output_dir={output_dir}: its eager run was made with other arguments',
            '--overwrite')
  assert 'reusing the complete run in ' + os.path.join(output_dir, 'eager') not in rerun.stdout


# --- 15.4 initial weights must be finite -----------------------------------------------------

@pytest.fixture(scope='module')
def nan_init(graph_init_weights, tmp_path_factory):
  """(an .npz of initial weights with one NaN, the key that holds it)."""
  root = tmp_path_factory.mktemp('init')
  with np.load(graph_init_weights) as npz:
    weights = {key: npz[key] for key in npz.files}
  key = sorted(weights)[0]
  weights[key].flat[0] = np.nan
  bad = str(root / 'bad.npz')
  np.savez(bad, **weights)
  return bad, key


@pytest.mark.parametrize('script', ['train_eager', 'check_parity'])
def test_initial_weights_with_nan_are_refused_before_training(script, nan_init, data, tmp_path):
  path, key = nan_init
  before = _digest(os.path.dirname(path))
  model_dir = tmp_path / 'run'
  if script == 'check_parity':
    args = (f'--data_dir={data.path}', f'--output_dir={model_dir}', *CHECK_FLAGS)
  else:
    args = _flags(data, str(model_dir))
  proc = run_entry(script, *args, f'--init_weights={path}')
  _one_line(proc, 2, f'{path}: {key} holds 1 NaN or Inf value(s)')
  assert not model_dir.exists()
  assert _digest(os.path.dirname(path)) == before
  assert data.intact()


# --- 15.5 compare_runs compares whole runs only ---------------------------------------------

def _cut_steps(model_dir):
  path = os.path.join(model_dir, 'steps.csv')
  with open(path) as f:
    lines = f.readlines()
  with open(path, 'w') as f:
    f.writelines(lines[:6])  # the header and steps 1 to 5 of 16


def _repeat_a_step(model_dir):
  path = os.path.join(model_dir, 'steps.csv')
  with open(path) as f:
    lines = f.readlines()
  with open(path, 'w') as f:
    f.writelines(lines[:4] + [lines[3]] + lines[4:])  # step 3 twice


def _drop_an_epoch(model_dir):
  path = os.path.join(model_dir, 'epochs.csv')
  with open(path) as f:
    lines = f.readlines()
  with open(path, 'w') as f:
    f.writelines(lines[:2])


def _drop_a_snapshot(model_dir):
  os.remove(os.path.join(model_dir, 'weights', 'step-000005.npz'))


@pytest.mark.parametrize('damage,expected', [
    (_cut_steps, f'steps.csv holds 5 rows for {TOTAL_STEPS} steps (step 6 is the first missing)'),
    (_repeat_a_step, 'steps.csv holds step 3 more than once'),
    (_drop_an_epoch, 'epochs.csv holds 1 rows for 2 epochs (epoch 2 is the first missing)'),
    (_drop_a_snapshot, 'weights/step-000005.npz is missing'),
])
def test_compare_runs_refuses_a_complete_run_whose_records_are_not(damage, expected, references,
                                                                   tmp_path):
  whole = references('graph')
  proc = run_entry('compare_runs', whole, whole, f'--output_dir={tmp_path / "whole"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  cut = str(tmp_path / 'cut')
  shutil.copytree(whole, cut)
  damage(cut)
  proc = run_entry('compare_runs', whole, cut, f'--output_dir={tmp_path / "report"}')
  _one_line(proc, 2, f'{cut}: an incomplete run: run.json says complete at step {TOTAL_STEPS}',
            expected, 'rerun its command with --overwrite')
  assert not (tmp_path / 'report').exists()


def _garble_a_loss(model_dir):
  path = os.path.join(model_dir, 'steps.csv')
  with open(path) as f:
    lines = f.readlines()
  lines[2] = lines[2].replace(lines[2].split(',')[2], 'garbage', 1)
  with open(path, 'w') as f:
    f.writelines(lines)


def _garble_a_snapshot(model_dir):
  with open(os.path.join(model_dir, 'weights', 'step-000002.npz'), 'wb') as f:
    f.write(b'not an npz')


@pytest.mark.parametrize('damage,damaged,what', [
    (_garble_a_loss, 'steps.csv', ' is damaged'),
    (_garble_a_snapshot, 'weights/step-000002.npz', ': not an .npz file')])
def test_compare_runs_names_a_damaged_file_of_a_run(damage, damaged, what, references,
                                                    tmp_path):
  damaged_run = str(tmp_path / 'damaged')
  shutil.copytree(references('graph'), damaged_run)
  damage(damaged_run)
  proc = run_entry('compare_runs', references('graph'), damaged_run,
                   f'--output_dir={tmp_path / "report"}')
  _one_line(proc, 2, f'{os.path.join(damaged_run, damaged)}{what}',
            "rerun the run's command with --overwrite")
  assert not (tmp_path / 'report').exists()


# --- 15.6 a damaged run.json or latest checkpoint --------------------------------------------

def test_a_damaged_run_json_is_named_and_overwrite_replaces_only_the_run(data, references,
                                                                         tmp_path):
  model_dir = str(tmp_path / 'run')
  shutil.copytree(references('graph'), model_dir)
  with open(os.path.join(model_dir, 'run.json'), 'w') as f:
    f.write('{"runner": "gra')  # cut off, as by a full disk
  with open(os.path.join(model_dir, 'runner.log'), 'w') as f:
    f.write('the log check_parity keeps\n')
  before = _digest(model_dir, skip=('.lock',))
  proc = run_entry('train_graph', *_flags(data, model_dir))
  _one_line(proc, 2, f'{os.path.join(model_dir, "run.json")}: not JSON', '--overwrite',
            'another --model_dir')
  assert _digest(model_dir, skip=('.lock',)) == before

  proc = run_entry('train_graph', *_flags(data, model_dir, '--overwrite'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  _assert_whole(model_dir)
  with open(os.path.join(model_dir, 'runner.log')) as f:
    assert f.read() == 'the log check_parity keeps\n'
  assert data.intact()


def _checkpoint_state(model_dir):
  """(latest checkpoint prefix, the ones listed before it) from the `checkpoint` file."""
  with open(os.path.join(model_dir, 'checkpoints', 'checkpoint')) as f:
    entries = [line.split(': ', 1) for line in f.read().splitlines()]
  latest = next(json.loads(v) for k, v in entries if k == 'model_checkpoint_path')
  listed = [json.loads(v) for k, v in entries if k == 'all_model_checkpoint_paths']
  return latest, [p for p in listed if p != latest]


def _remove_files(prefix):
  for name in os.listdir(os.path.dirname(prefix)):
    if name.startswith(os.path.basename(prefix) + '.'):
      os.remove(os.path.join(os.path.dirname(prefix), name))


def _truncate_data(prefix):
  folder = os.path.dirname(prefix)
  for name in os.listdir(folder):
    if name.startswith(os.path.basename(prefix) + '.data-'):
      with open(os.path.join(folder, name), 'r+b') as f:
        f.truncate(100)


@pytest.mark.parametrize('runner,damage', [('graph', _remove_files), ('eager', _truncate_data)])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(runner, damage, references,
                                                                  data, tmp_path):
  """Killed in its second epoch, the latest checkpoint then lost (graph) or cut short
  (eager): the rerun says so, resumes from the one before and ends as a run never
  interrupted, bit for bit."""
  script, *extra = RUNNERS[runner]
  model_dir = str(tmp_path / 'run')
  args = _flags(data, model_dir, *extra)
  log = str(tmp_path / 'stderr.txt')
  code = signal_after(script, args, model_dir, STEPS_PER_EPOCH + 3, signal.SIGKILL, log)
  assert code == -signal.SIGKILL
  latest, older = _checkpoint_state(model_dir)
  damage(os.path.join(model_dir, 'checkpoints', latest))
  previous = max(older, key=lambda p: int(p.rsplit('-', 1)[1]))

  proc = run_entry(script, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert f'checkpoint {os.path.join(model_dir, "checkpoints", latest)} is damaged or missing' in (
      proc.stderr)
  assert f'resuming {model_dir} from step {int(previous.rsplit("-", 1)[1])}' in proc.stderr
  _assert_same_run(model_dir, references(runner))
  _assert_whole(model_dir)
  assert data.intact()
