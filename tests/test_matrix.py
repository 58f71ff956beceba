"""bin/parity_matrix: which pitfalls apply where, its table, and (opt-in) the whole matrix."""

import json
import os

import pytest

from conftest import run_entry
from tf1compat.judge import matrix


def _case(name):
  return next(case for case in matrix.CASES if case.name == name)


def test_applicable_pitfalls_follow_the_model():
  # The port's mistakes first (the case's legacy run and control are reused by them).
  port = ['accuracy_metric_class', 'adam_epsilon', 'double_softmax', 'from_logits_lost']
  assert matrix.applicable_pitfalls(_case('default')) == [*port, 'metrics_never_reset']
  assert matrix.applicable_pitfalls(_case('batch_norm')) == [
      *port, 'metrics_never_reset', 'model_call_wiring', 'no_learning_phase',
      'skip_update_ops']
  assert matrix.applicable_pitfalls(_case('dropout')) == [
      *port, 'keep_prob_as_rate', 'metrics_never_reset', 'no_learning_phase']
  assert 'keep_prob_as_rate' not in matrix.applicable_pitfalls(_case('batch_norm'))


def test_markdown_shows_margins_and_misses():
  result = {'matched': [{'case': 'default', 'steps': 120, 'verdict': 'PASS',
                         'envelope_ratio': 0.029, 'bit_identical': False, 'step_judged': True,
                         'curve_band_ratio': 0.1, 'loss_horizon': 19, 'weight_horizon': 2}],
            'pitfalls': [{'case': 'default', 'pitfall': 'adam_epsilon', 'verdict': 'FAIL',
                          'named_first': True, 'judged_by': 'config', 'margin': None,
                          'named': ['adam_epsilon'], 'where': 'update at conv1/kernel',
                          'where_ratio': 2500.0, 'where_agreement': 'agrees'},
                         {'case': 'default', 'pitfall': 'no_learning_phase', 'verdict': 'PASS',
                          'named_first': False, 'judged_by': None, 'margin': None,
                          'named': [], 'where': 'not localized', 'where_ratio': None,
                          'where_agreement': None}],
            'passed': False}
  text = matrix.markdown(result)
  assert '| default | 120 | PASS | 0.029 | no | judged | 19/2 | 0.1 |' in text
  assert ('| default | adam_epsilon | FAIL | yes | config | exact | update at conv1/kernel | '
          '2.5e+03x | agrees |') in text
  assert '| no_learning_phase | PASS | no: ' in text


def test_unknown_case_is_a_usage_error():
  result = run_entry('parity_matrix', '--cases=nope')
  assert result.returncode == 2
  assert '--cases' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.matrix
def test_whole_matrix(tmp_path):
  """Opt-in (pytest -m matrix): every case PASSes matched, every pitfall FAILs, named
  first. About 40 minutes on 2 cores."""
  out = tmp_path / 'matrix'
  result = run_entry('parity_matrix', f'--output_dir={out}', timeout=4 * 3600)
  assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
  with open(os.path.join(out, 'matrix.json')) as f:
    report = json.load(f)
  assert {r['case'] for r in report['matched']} == set(matrix.CASE_NAMES)
  assert all(r['margin'] is None or r['margin'] >= 10 for r in report['pitfalls'])
