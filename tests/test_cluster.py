"""parity_matrix as a scheduler's jobs: one case per process by its index, a job killed
mid-run and rerun, the merge against a local run of the same cases."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from tf1compat.runs import runlog

# Small and quick: no control (fixed tolerances), no replay; checkpoints every 3 steps so
# that a killed runner has one to resume from.
BASE = ['--image_size=32', '--batch_size=8', '--epochs=2', '--steps_per_epoch=6',
        '--shuffle_buffer=64', '--snapshot_steps=0,1,2,5', '--nocalibrate', '--nolocalize',
        '--checkpoint_every=3']
# One matched port and three pitfalls, two of the port and one of the legacy loop. The
# file names give the index order (the scheduler's index counts in it).
CASES = {'a_matched': [], 'b_metrics_never_reset': ['--pitfall=metrics_never_reset'],
         'c_adam_epsilon': ['--pitfall=adam_epsilon'],
         'd_double_softmax': ['--pitfall=double_softmax']}
NAMES = sorted(CASES)


def _job(cases_dir, root, index=None, *args):
  """A parity_matrix process (its own session, as a scheduler's job is alone in its pod),
  with `index` as a Kubernetes Indexed Job gives it."""
  env = dict(os.environ)
  env.pop('SLURM_ARRAY_TASK_ID', None)
  env.pop('JOB_COMPLETION_INDEX', None)
  if index is not None:
    env['JOB_COMPLETION_INDEX'] = str(index)
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO, 'bin', 'parity_matrix'), f'--cases={cases_dir}',
       f'--output_root={root}', *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=env, start_new_session=True)


def _finish(process, timeout=600):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def _table(root):
  with open(os.path.join(root, 'matrix.json')) as f:
    result = json.load(f)
  rows = {r['case']: (r['verdict'], r['as_expected'], tuple(r.get('named', ())))
          for r in result['matched'] + result['pitfalls']}
  return result, rows


@pytest.fixture(scope='module')
def cases_dir(tiny_data_dir, tmp_path_factory):
  folder = tmp_path_factory.mktemp('cases')
  for name, args in CASES.items():
    (folder / f'{name}.flags').write_text(
        f'# {name}\n' + '\n'.join([f'--data_dir={tiny_data_dir}', *BASE, *args]) + '\n')
  return str(folder)


def _wait_for_rows(path, rows, process, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.exists(path) and runlog.count_rows(path) >= rows:
      return
    assert process.poll() is None, 'the job ended before it could be killed'
    time.sleep(0.2)
  raise AssertionError(f'{path} never had {rows} rows')


def test_jobs_by_index_killed_rerun_and_merged_equal_a_local_run(cases_dir, tmp_path):
  root = str(tmp_path / 'shared')
  # Two jobs at a time. The matched case is killed, the whole job (SIGKILL to its process
  # group, as a preempted pod or node loses every process), while its port trains.
  matched, legacy_pitfall = _job(cases_dir, root, 0), _job(cases_dir, root, 1)
  eager_steps = os.path.join(root, 'a_matched', 'eager', 'steps.csv')
  _wait_for_rows(eager_steps, 5, matched)
  os.killpg(matched.pid, signal.SIGKILL)
  assert _finish(matched)[0] == -signal.SIGKILL
  code, out, err = _finish(legacy_pitfall)
  assert code == 1, out[-2000:] + err[-2000:]  # the case's own code: a FAIL, as it should

  # Half finished: the merge names what is not, and is not green.
  merge = subprocess.run([sys.executable, os.path.join(REPO, 'bin', 'parity_matrix'),
                          '--merge', f'--output_root={root}'], capture_output=True, text=True,
                         check=False)
  assert merge.returncode == 1, merge.stderr[-2000:]
  result, rows = _table(root)
  assert not result['complete'] and not result['green']
  states = {r['case']: r['state'] for r in result['unfinished']}
  assert states == {'a_matched': 'stopped', **{name: 'missing' for name in NAMES[2:]}}
  assert 'missing: c_adam_epsilon, d_double_softmax' in merge.stdout
  assert set(rows) == {'b_metrics_never_reset'}

  # The rest, the killed case among them, two at a time.
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    codes = dict(zip(
        [0, *range(2, len(NAMES))],
        pool.map(lambda i: _finish(_job(cases_dir, root, i)), [0, *range(2, len(NAMES))])))
  assert codes[0][0] == 0, codes[0][1][-3000:] + codes[0][2][-3000:]
  assert all(codes[i][0] == 1 for i in range(2, len(NAMES))), codes
  # The port-side pitfalls copied the matched case's legacy run instead of training it.
  assert 'graph: copied the complete run' in codes[2][1]

  # The killed runner resumed from its checkpoint and holds every step once.
  log = open(os.path.join(root, 'a_matched', 'eager', 'runner.log')).read()
  assert 'resuming' in log
  assert runlog.read_csv(eager_steps)['step'].tolist() == list(range(1, 13))

  merge = subprocess.run([sys.executable, os.path.join(REPO, 'bin', 'parity_matrix'),
                          '--merge', f'--output_root={root}'], capture_output=True, text=True,
                         check=False)
  assert merge.returncode == 0, merge.stdout[-3000:]
  jobs_result, jobs_rows = _table(root)
  assert jobs_result['complete'] and jobs_result['green']
  assert sorted(jobs_rows) == NAMES  # each case once: none lost, none twice

  # A finished case's job answers from its record.
  code, out, _ = _finish(_job(cases_dir, root, 3))
  assert code == 1 and 'nothing to run' in out

  # The same cases run here, two at a time. A SIGTERM to the first process only (what a
  # scheduler sends) stops the cases running after a checkpoint and starts no other; the
  # rerun resumes. The table is the jobs' one.
  local_root = str(tmp_path / 'local')
  local = _job(cases_dir, local_root, None, '--parallel=2')
  _wait_for_rows(os.path.join(local_root, 'a_matched', 'eager', 'steps.csv'), 5, local)
  local.send_signal(signal.SIGTERM)
  code, out, err = _finish(local)
  assert code == 128 + signal.SIGTERM, out[-3000:] + err[-3000:]
  states = {r['case']: r['state'] for r in _table(local_root)[0]['unfinished']}
  assert states['a_matched'] == 'interrupted' and states['d_double_softmax'] == 'missing'
  code, out, err = _finish(_job(cases_dir, local_root, None, '--parallel=2'))
  assert code == 0, out[-3000:] + err[-3000:]
  assert f'[{len(NAMES)}/{len(NAMES)}]' in out
  assert _table(local_root)[1] == jobs_rows
