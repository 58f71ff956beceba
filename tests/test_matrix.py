"""bin/parity_matrix: its cases as flag files, which pitfalls apply where, the merge of
what finished, and (opt-in) the whole matrix."""

import fcntl
import json
import os

import pytest

from conftest import run_entry
from tf1compat.judge import matrix
from tf1compat.judge import matrix_cases
from tf1compat.judge import matrix_jobs
from tf1compat.judge import run_reuse
from tf1compat.runs import atomic
from tf1compat.runs import errors


def _case(name):
  return next(case for case in matrix_cases.CASES if case.name == name)


def test_applicable_pitfalls_follow_the_model():
  # The port's mistakes first (the case's legacy run and control are reused by them).
  port = ['accuracy_metric_class', 'adam_epsilon', 'double_softmax', 'from_logits_lost']
  assert matrix_cases.applicable_pitfalls(_case('default')) == [*port, 'metrics_never_reset']
  assert matrix_cases.applicable_pitfalls(_case('batch_norm')) == [
      *port, 'metrics_never_reset', 'model_call_wiring', 'no_learning_phase',
      'skip_update_ops']
  assert matrix_cases.applicable_pitfalls(_case('dropout')) == [
      *port, 'keep_prob_as_rate', 'metrics_never_reset', 'no_learning_phase']
  assert 'keep_prob_as_rate' not in matrix_cases.applicable_pitfalls(_case('batch_norm'))


def test_markdown_shows_margins_misses_and_unfinished_cases():
  result = {'matched': [{'case': 'default', 'steps': 120, 'verdict': 'PASS', 'as_expected': True,
                         'envelope_ratio': 0.029, 'bit_identical': False, 'step_judged': True,
                         'curve_band_ratio': 0.1, 'loss_horizon': 19, 'weight_horizon': 2,
                         'seconds': 41.2}],
            'pitfalls': [{'case': 'default--adam_epsilon', 'pitfall': 'adam_epsilon',
                          'verdict': 'FAIL', 'as_expected': True, 'named_first': True,
                          'judged_by': 'config', 'margin': None, 'named': ['adam_epsilon'],
                          'where': 'update at conv1/kernel', 'where_ratio': 2500.0,
                          'where_agreement': 'agrees', 'seconds': 30},
                         {'case': 'default--no_learning_phase', 'pitfall': 'no_learning_phase',
                          'verdict': 'PASS', 'as_expected': False, 'named_first': False,
                          'judged_by': None, 'margin': None, 'named': [],
                          'where': 'not localized', 'where_ratio': None,
                          'where_agreement': None, 'seconds': 12}],
            'unfinished': [{'case': 'image_96', 'state': 'fault', 'exit_code': 4,
                            'meaning': 'internal or device fault',
                            'last_line': 'check_parity: eager | crashed'}],
            'cases': 4, 'finished': 3, 'complete': False, 'green': False}
  text = matrix.markdown(result)
  assert text.startswith('3 of 4 cases finished, 2 as expected; not as expected: '
                         'default--no_learning_phase; fault: image_96\n')
  assert '| default | 120 | PASS | 0.029 | no | judged | 19/2 | 0.1 | 41 |' in text
  assert ('| default--adam_epsilon | adam_epsilon | FAIL | yes | config | exact | '
          'update at conv1/kernel | 2.5e+03x | agrees | 30 |') in text
  assert '| no_learning_phase | PASS | no:  |' in text
  assert ('| image_96 | fault | 4 | internal or device fault | check_parity: eager \\| crashed |'
          in text)


def _write(folder, name, text):
  path = os.path.join(folder, name)
  with open(path, 'w') as f:
    f.write(text)
  return path


def test_case_files_read_as_absl_reads_them(tmp_path):
  folder = str(tmp_path)
  _write(folder, 'common.txt', '--image_size=32\n--pitfall=double_softmax\n')
  _write(folder, 'b_nested.flags', f'# a comment\n\n--flagfile={folder}/common.txt\n')
  _write(folder, 'a_matched.flags', '--seed=1\n// also a comment\n')
  cases = matrix_cases.read_cases(folder)
  assert [c.name for c in cases] == ['a_matched', 'b_nested']  # the index order
  assert cases[0].pitfall is None and cases[0].expected == 'PASS'
  assert cases[1].args == ('--image_size=32', '--pitfall=double_softmax')
  assert cases[1].expected == 'FAIL, double_softmax named first'
  # Comments and blank lines are not what a rerun compares.
  _write(folder, 'a_matched.flags', '--seed=1\n')
  assert matrix_cases.read_cases(folder)[0].digest == cases[0].digest


@pytest.mark.parametrize('name, text, message', [
    ('x.flags', 'seed=1\n', "line 1: 'seed=1' is not a flag"),
    ('x.flags', '--output_dir=/tmp/x\n', 'a case sets no --output_dir'),
    ('cases.flags', '--seed=1\n', 'a case is named by its file'),
    ('x.flags', '--flagfile=/no/such/file\n', '/no/such/file: No such file'),
])
def test_a_case_file_that_cannot_be_one_is_named(tmp_path, name, text, message):
  _write(str(tmp_path), name, text)
  with pytest.raises(errors.UsageError, match=message.replace('|', r'\|')):
    matrix_cases.read_cases(str(tmp_path))


def test_builtin_cases_written_as_files_and_rewritten(tmp_path):
  folder = str(tmp_path / 'cases')
  chosen = [_case('default'), _case('dropout')]
  written = matrix_cases.write_cases(folder, chosen, with_pitfalls=True)
  expected = ['default', *(f'default--{p}' for p in matrix_cases.applicable_pitfalls(chosen[0])),
              'dropout', *(f'dropout--{p}' for p in matrix_cases.applicable_pitfalls(chosen[1]))]
  assert [c.name for c in written] == sorted(expected)
  dropout = next(c for c in written if c.name == 'dropout--keep_prob_as_rate')
  assert dropout.args == ('--dropout=0.3', '--pitfall=keep_prob_as_rate')
  # Written again: the same files. Another selection or a team's file: refused, unless
  # it is the local run's own folder.
  assert matrix_cases.write_cases(folder, chosen, True) == written
  with pytest.raises(errors.UsageError, match='holds other case files'):
    matrix_cases.write_cases(folder, chosen[:1], False)
  assert [c.name for c in matrix_cases.write_cases(folder, chosen[:1], False, replace=True)] == [
      'default']
  _write(folder, 'ours.flags', '--seed=3\n')
  for replace in (False, True):
    with pytest.raises(errors.UsageError, match=r'\(ours.flags\); choose an empty folder'):
      matrix_cases.write_cases(folder, chosen, True, replace=replace)


def _record(root, case, **fields):
  os.makedirs(os.path.join(root, case.name), exist_ok=True)
  atomic.atomic_write_json(os.path.join(root, case.name, matrix_jobs.CASE_JSON),
                           {'digest': case.digest, **fields})


def test_merge_names_every_unfinished_state(tmp_path):
  root = str(tmp_path / 'root')
  cases = [matrix_cases.CaseFile(name, f'/cases/{name}.flags', (), None, 'd' + name)
           for name in ('fault', 'interrupted', 'stopped', 'changed', 'missing', 'running')]
  by_name = {c.name: c for c in cases}
  _record(root, by_name['fault'], exit_code=4, last_line='check_parity: eager crashed')
  _record(root, by_name['interrupted'], exit_code=143, last_line='interrupted')
  os.makedirs(os.path.join(root, 'stopped'))
  _record(root, by_name['changed'], exit_code=0)
  atomic.atomic_write_json(os.path.join(root, 'changed', matrix_jobs.CASE_JSON),
                           {'digest': 'another', 'exit_code': 0})
  os.makedirs(os.path.join(root, 'running'))
  with open(os.path.join(root, 'running', '.lock'), 'a+') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    result = matrix.merge(root, cases)
  states = {r['case']: (r['state'], r['exit_code'], r['last_line']) for r in result['unfinished']}
  assert states == {'fault': ('fault', 4, 'check_parity: eager crashed'),
                    'interrupted': ('interrupted', 143, 'interrupted'),
                    'stopped': ('stopped', None, None), 'changed': ('changed', None, None),
                    'missing': ('missing', None, None), 'running': ('running', None, None)}
  assert not result['complete'] and not result['green']
  with open(os.path.join(root, matrix.JSON)) as f:
    assert json.load(f) == result


def test_scheduler_index_and_its_errors():
  assert matrix_jobs.scheduler_index(None, {'SLURM_ARRAY_TASK_ID': '3'}) == (
      3, 'SLURM_ARRAY_TASK_ID')
  assert matrix_jobs.scheduler_index(None, {'JOB_COMPLETION_INDEX': '1',
                                            'SLURM_ARRAY_TASK_ID': '3'}) == (
      1, 'JOB_COMPLETION_INDEX')
  assert matrix_jobs.scheduler_index(2, {'JOB_COMPLETION_INDEX': '1'}) == (2, '--case_index')
  assert matrix_jobs.scheduler_index(None, {}) == (None, None)
  with pytest.raises(errors.UsageError, match='JOB_COMPLETION_INDEX=x is not a case index'):
    matrix_jobs.scheduler_index(None, {'JOB_COMPLETION_INDEX': 'x'})
  with pytest.raises(errors.UsageError, match=r'there are 2 cases .*--array=0-1'):
    matrix_jobs.pick(['a', 'b'], 2, 'SLURM_ARRAY_TASK_ID')


def test_a_run_is_copied_only_where_its_arguments_are_these(tmp_path):
  donor, own = str(tmp_path / 'donor'), str(tmp_path / 'own')
  run = os.path.join(donor, 'graph')
  os.makedirs(os.path.join(run, 'weights'))
  atomic.atomic_write_json(os.path.join(run, 'run.json'), {'status': 'complete'})
  _write(os.path.join(run, 'weights'), 'step-000000.npz', 'weights')
  _write(run, 'steps.csv', 'step\n1\n')
  theirs = [f'--model_dir={run}', f'--init_weights={donor}/init_weights-abc.npz', '--seed=0']
  atomic.atomic_write_json(os.path.join(donor, run_reuse.STATE_JSON), {'graph': theirs})
  ours = [f'--model_dir={own}/graph', f'--init_weights={own}/init_weights-abc.npz']
  donors = run_reuse.donor_folders([str(tmp_path)], own)
  assert donors == [donor]
  assert run_reuse.copy_run('graph', ours + ['--seed=1'], f'{own}/graph', donors) is None
  assert run_reuse.copy_run('graph', ours + ['--seed=0'], f'{own}/graph', donors) == donor
  # Snapshots are linked (no writer changes them in place); the CSVs, appended to, copied.
  linked = os.path.join(own, 'graph', 'weights', 'step-000000.npz')
  assert os.stat(linked).st_ino == os.stat(os.path.join(run, 'weights', 'step-000000.npz')).st_ino
  assert os.stat(os.path.join(own, 'graph', 'steps.csv')).st_ino != os.stat(
      os.path.join(run, 'steps.csv')).st_ino


def test_unknown_case_is_a_usage_error(tmp_path):
  result = run_entry('parity_matrix', '--cases=nope', f'--output_root={tmp_path}')
  assert result.returncode == 2
  assert ('--cases=nope is neither a built-in case nor a folder of case files'
          in result.stderr) and 'Traceback' not in result.stderr
  result = run_entry('parity_matrix', '--cases=default,nope')
  assert result.returncode == 2 and '--cases takes one folder of case files' in result.stderr
  result = run_entry('parity_matrix', '--cases=default', f'--output_root={tmp_path}',
                     env={'JOB_COMPLETION_INDEX': '0'})
  assert result.returncode == 2 and 'write the built-in matrix with' in result.stderr


@pytest.mark.matrix
def test_whole_matrix(tmp_path):
  """Opt-in (pytest -m matrix): every case PASSes matched, every pitfall FAILs, named
  first. About 40 minutes on 2 cores."""
  out = tmp_path / 'matrix'
  result = run_entry('parity_matrix', f'--output_root={out}', timeout=4 * 3600)
  assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
  with open(os.path.join(out, 'matrix.json')) as f:
    report = json.load(f)
  assert {r['case'] for r in report['matched']} == set(matrix_cases.CASE_NAMES)
  assert all(r['margin'] is None or r['margin'] >= 10 for r in report['pitfalls'])
