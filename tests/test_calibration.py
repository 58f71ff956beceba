"""Calibrated tolerances on hand-made run directories, with numpy as the oracle."""

import numpy as np
import pytest

from test_parity import EPOCHS, STEPS_PER_EPOCH, _losses, make_run
from tf1compat.judge import calibration
from tf1compat.judge import parity
from tf1compat.judge import report as parity_report
from tf1compat.runs import errors
from tf1compat.runs import nudge

N = EPOCHS * STEPS_PER_EPOCH
# A control that parts from the reference like a chaotic float run: 1e-7 at step 1,
# ten times more every step, so it passes the 1e-3 horizon level after step 5.
CONTROL_DRIFT = 1e-7 * 10.0 ** np.arange(N)
# The port with TF1's kernels: no framework difference, so the step tier is judged.
EXACT_PORT = {'tf1_adam': True, 'tf1_bn_variance': True}


def _runs(tmp_path, port_drift):
  losses = _losses()
  reference = make_run(str(tmp_path / 'reference'), losses=losses)
  control = make_run(str(tmp_path / 'control'), losses=losses * (1 + CONTROL_DRIFT),
                     manifest_extra={'init_weights_sha256': 'nudged'})
  port = make_run(str(tmp_path / 'port'), runner='eager', losses=losses * (1 + port_drift),
                  flags_extra=EXACT_PORT)
  return reference, control, port


def test_nudge_moves_every_nonzero_float_by_one_ulp():
  rng = np.random.default_rng(0)
  weights = {'conv1/kernel': rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
             'conv1/bias': np.zeros(4, np.float32),
             'steps': np.arange(3, dtype=np.int64)}
  weights['conv1/kernel'][0, 0, 0, 0] = 0.0
  nudged = nudge.nudge_weights(weights)
  kernel, moved = weights['conv1/kernel'], nudged['conv1/kernel']
  assert moved.dtype == np.float32
  nonzero = kernel != 0
  np.testing.assert_array_equal(np.abs(moved - kernel)[nonzero], np.spacing(
      np.minimum(np.abs(kernel), np.abs(moved)))[nonzero])
  assert moved[0, 0, 0, 0] == 0.0
  assert (moved[nonzero] > kernel[nonzero]).mean() == pytest.approx(0.5, abs=0.2)
  np.testing.assert_array_equal(nudged['conv1/bias'], weights['conv1/bias'])
  np.testing.assert_array_equal(nudged['steps'], weights['steps'])
  again = nudge.nudge_weights(weights)
  np.testing.assert_array_equal(again['conv1/kernel'], moved)


def test_variable_difference_is_norm_based():
  a = np.array([1e-8, -2e-8, 3.0], np.float32)
  b = np.array([-1e-8, 2e-8, 3.0], np.float32)
  expected = np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(a.astype(np.float64))
  assert calibration.variable_difference(a, b) == pytest.approx(expected)
  assert calibration.variable_difference(np.zeros(3), np.zeros(3)) == 0.0


def test_envelope_horizon_and_limits_match_numpy(tmp_path):
  reference, control, port = _runs(tmp_path, 0.5 * CONTROL_DRIFT)
  report = parity.compare([reference, port], parity.Tolerances(), controls=[control])
  envelope = report['calibration']
  losses = _losses()
  control_rel = np.abs(losses * (1 + CONTROL_DRIFT) - losses) / losses
  np.testing.assert_allclose(envelope['loss'], np.maximum.accumulate(control_rel), rtol=1e-9)
  # 1e-3 is first exceeded at step 6 (1e-2): steps 1-5 are judged.
  assert envelope['loss_horizon'] == 5
  steps = report['pairs'][0]['step_tier']
  assert steps['steps'] == 5
  expected_limit = 10 * np.maximum(np.maximum.accumulate(control_rel[:5]),
                                   calibration.ROUNDING_FLOOR)
  np.testing.assert_allclose(steps['limit'], expected_limit, rtol=1e-9)
  assert report['pairs'][0]['envelope_ratio'] == pytest.approx(0.5, rel=1e-6)
  assert report['verdict'] == 'PASS'
  assert report['pairs'][0]['tiers']['step']['judged']
  assert not report['pairs'][0]['bit_identical']


def test_a_port_past_the_envelope_fails_before_the_horizon_only(tmp_path):
  drift = np.zeros(N)
  drift[2] = 20 * CONTROL_DRIFT[2]      # step 3: 20x the control, inside the horizon
  reference, control, port = _runs(tmp_path, drift)
  pair = parity.compare([reference, port], parity.Tolerances(), controls=[control])['pairs'][0]
  assert pair['verdict'] == 'FAIL'
  assert pair['step_tier']['first_step_over'] == 3
  assert pair['envelope_ratio'] == pytest.approx(20, rel=1e-6)
  late = np.zeros(N)
  late[6] = 20 * CONTROL_DRIFT[6]       # step 7: past the horizon, the curves decide
  reference, control, port = _runs(tmp_path / 'late', late)
  assert parity.compare([reference, port], parity.Tolerances(),
                        controls=[control])['verdict'] == 'PASS'


def test_the_widest_of_two_controls_judges(tmp_path):
  """A port that forks where one control did not is judged against the other, which
  forked too (calibration.widest: the larger envelope at every step, horizons anew)."""
  fork = np.zeros(N)
  fork[2:] = 5e-4 * 10.0 ** np.arange(N - 2)     # a jump at step 3, then chaos
  reference, once, port = _runs(tmp_path, fork)
  per_step = make_run(str(tmp_path / 'per_step'), losses=_losses() * (1 + 0.5 * fork),
                      flags_extra={'nudge_seed': 1})
  alone = parity.compare([reference, port], parity.Tolerances(), controls=[once])
  assert alone['verdict'] == 'FAIL' and parity.rests_on_numbers(alone)
  both = parity.compare([reference, port], parity.Tolerances(), controls=[once, per_step])
  assert both['verdict'] == 'PASS'
  assert both['controls'] == [once, per_step]
  losses = _losses()
  expected = np.maximum.accumulate(np.maximum(CONTROL_DRIFT, 0.5 * fork) * losses / losses)
  np.testing.assert_allclose(both['calibration']['loss'], expected, rtol=1e-9)
  # The per-step control passes 1e-3 at step 4 (5e-3), before the first one (step 6).
  assert both['calibration']['loss_horizon'] == 3
  assert both['pairs'][0]['envelope_ratio'] == pytest.approx(2, rel=1e-6)
  lines = parity_report.summary_lines(both)
  assert any('controls graph:control, graph:per_step (the widest at each step)' in line
             for line in lines), lines


def test_only_a_fail_on_numbers_alone_asks_for_another_control(tmp_path):
  reference, control, port = _runs(tmp_path, np.zeros(N))
  report = parity.compare([reference, port], parity.Tolerances(), controls=[control])
  assert report['verdict'] == 'PASS' and not parity.rests_on_numbers(report)
  other = make_run(str(tmp_path / 'other'), runner='eager', epsilon=1e-7, losses=_losses(),
                   flags_extra=EXACT_PORT)
  report = parity.compare([reference, other], parity.Tolerances(), controls=[control])
  assert report['verdict'] == 'FAIL'
  assert not report['pairs'][0]['tiers']['config']['passed']
  assert not parity.rests_on_numbers(report)  # the math differs: no control can change that
  uncalibrated = parity.compare([reference, port], parity.Tolerances())
  assert not parity.rests_on_numbers(uncalibrated)


def test_a_bit_identical_control_leaves_the_rounding_floor(tmp_path):
  losses = _losses()
  reference = make_run(str(tmp_path / 'reference'), losses=losses)
  control = make_run(str(tmp_path / 'control'), losses=losses)
  port = make_run(str(tmp_path / 'port'), runner='eager',
                  losses=losses * (1 + 5 * calibration.ROUNDING_FLOOR), flags_extra=EXACT_PORT)
  report = parity.compare([reference, port], parity.Tolerances(), controls=[control])
  assert report['verdict'] == 'PASS'
  assert report['pairs'][0]['envelope_ratio'] == pytest.approx(5, rel=1e-3)


def test_a_control_of_another_run_is_refused(tmp_path):
  reference, _, port = _runs(tmp_path, np.zeros(N))
  other = make_run(str(tmp_path / 'other'), epsilon=1e-7)
  with pytest.raises(errors.UsageError, match='not a control of'):
    parity.compare([reference, port], parity.Tolerances(), controls=[other])


def test_report_shows_the_calibration(tmp_path):
  reference, control, port = _runs(tmp_path, 0.5 * CONTROL_DRIFT)
  report = parity.compare([reference, port], parity.Tolerances(), controls=[control])
  lines = parity_report.summary_lines(report)
  assert 'x envelope' in lines[0]
  assert '0.5x' in lines[1]
  assert 'judged up to step 5' in lines[-3]
  assert lines[-2] == 'device: unknown (every run)'
  paths = parity_report.write_report(report, str(tmp_path / 'out'))
  with open(paths['md']) as f:
    text = f.read()
  assert 'control loss divergence' in text and 'Bit for bit identical: no' in text


def test_dropout_that_never_acted_is_named(tmp_path):
  """The control draws other Dropout masks: a first batch loss equal to the reference's
  says the reference's Dropout never applied in training."""
  losses = _losses()
  dropout = {'dropout': 0.3, 'feed_learning_phase': False}
  reference = make_run(str(tmp_path / 'reference'), losses=losses, flags_extra=dropout)
  inactive = make_run(str(tmp_path / 'inactive'), losses=losses * (1 + CONTROL_DRIFT),
                      flags_extra={**dropout, 'dropout_seed': 1})
  port = make_run(str(tmp_path / 'port'), runner='eager', losses=losses,
                  flags_extra={'dropout': 0.3, **EXACT_PORT})
  report = parity.compare([reference, port], parity.Tolerances(), controls=[inactive])
  assert report['verdict'] == 'FAIL'
  assert report['pitfalls'][0] == 'no_learning_phase'
  state = report['pairs'][0]['semantics_tier']['reference_dropout']
  assert not state['active'] and state['control_first_step_difference'] == pytest.approx(1e-7)
  masks = np.r_[4e-3, np.full(N - 1, 1e-2)]
  active = make_run(str(tmp_path / 'active'), losses=losses * (1 + masks),
                    flags_extra={**dropout, 'dropout_seed': 1})
  pair = parity.compare([reference, port], parity.Tolerances(), controls=[active])['pairs'][0]
  assert pair['semantics_tier']['reference_dropout']['active']
  assert 'no_learning_phase' not in [p['name'] for p in pair['pitfalls']]


def test_a_per_step_nudge_draws_anew_at_every_step_and_the_same_on_a_rerun():
  weights = {'w': np.linspace(-1, 1, 101, dtype=np.float32), 'step': np.array([3])}
  step_1, step_2 = (nudge.nudge_weights(weights, (nudge.NUDGE_SEED, step)) for step in (1, 2))
  again = nudge.nudge_weights(weights, (nudge.NUDGE_SEED, 1))
  np.testing.assert_array_equal(step_1['w'], again['w'])
  assert not np.array_equal(step_1['w'] > weights['w'], step_2['w'] > weights['w'])
  up, down = np.nextafter(weights['w'], np.inf), np.nextafter(weights['w'], -np.inf)
  for nudged in (step_1, step_2):
    one_ulp = (nudged['w'] == up) | (nudged['w'] == down)
    np.testing.assert_array_equal(one_ulp, weights['w'] != 0)
    np.testing.assert_array_equal(nudged['step'], weights['step'])
