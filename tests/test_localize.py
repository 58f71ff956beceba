"""localize.py on hand-made probes: the first item outside the control's envelope is where
two codes part, and the catalogue's expectations agree or disagree with it. TensorFlow-free
and in-process (the runners' replays are checked end to end in test_check_parity)."""

import json

import numpy as np
import pytest

from conftest import run_entry
from tf1compat.judge import calibration
from tf1compat.judge import localize
from tf1compat.judge import parity
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import probes
from tf1compat.runs import recorder
from tf1compat.runs import run_files
from tf1compat.train import replay_mode

LAYERS = ('conv', 'bn', 'logits')
KINDS = {'conv': ['Conv2D', 'Layer'], 'bn': ['BatchNormalization', 'Layer'],
         'logits': ['Dense', 'Layer']}
TOL = parity.Tolerances()


def _stages(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'input': {'images': rng.normal(size=(4, 3)), 'labels': np.eye(4)[:, :2]},
      'forward': {name: rng.normal(size=(4, 5)) for name in LAYERS},
      'loss': {'data': np.float64(1.3), 'regularization': np.float64(0.2),
               'total': np.float64(1.5)},
      'gradients': {'conv/kernel': rng.normal(size=(3, 5)), 'logits/kernel': rng.normal(size=5)},
      'update': {'conv/kernel': rng.normal(size=(3, 5)), 'logits/kernel': rng.normal(size=5)},
      'state': {'bn/moving_mean': rng.normal(size=5)},
  }


def _nudged(stages, relative):
  """`stages` with every float moved by about `relative` of itself (a control's rounding)."""
  return {stage: {name: np.asarray(value) * (1 + relative) for name, value in items.items()}
          for stage, items in stages.items()}


def _probe(tmp_path, name, stages):
  path = str(tmp_path / f'{name}.npz')
  probes.save(path, stages, {'step': 1, 'layer_kinds': KINDS, 'output_layer': 'logits',
                             'learning_rate': 0.001})
  return probes.load(path)


@pytest.fixture
def three(tmp_path):
  """(reference, control, other factory): the control 1e-6 apart from the reference."""
  reference = _stages()
  made = {'reference': _probe(tmp_path, 'reference', reference),
          'control': _probe(tmp_path, 'control', _nudged(reference, 1e-6))}

  def other(change):
    stages = _nudged(reference, 2e-6)
    change(stages)
    return _probe(tmp_path, 'other', stages)

  return made['reference'], made['control'], other


def test_a_matched_pair_localizes_nothing(three):
  reference, control, other = three
  where = localize.localize_pair(reference, other(lambda s: None), control, TOL)
  assert where['first'] is None and where['then'] == []
  assert where['items'] == 2 + 3 + 3 + 2 + 2 + 1
  assert 'inside the envelope' in where['summary']


def test_the_first_layer_outside_is_named_with_the_sizes(three):
  reference, control, other = three

  def change(stages):
    stages['forward']['bn'] = stages['forward']['bn'] * 1.5
    stages['forward']['logits'] = stages['forward']['logits'] + 1
    stages['loss']['data'] = stages['loss']['data'] + 0.1
    stages['loss']['total'] = stages['loss']['total'] + 0.1

  where = localize.localize_pair(reference, other(change), control, TOL)
  first = where['first']
  assert (first['stage'], first['name']) == ('forward', 'bn')
  # ||0.5 x|| / ||1.5 x|| = 1/3 (besides the other's own 2e-6); the control's 1e-6.
  assert first['difference'] == pytest.approx(1 / 3, rel=1e-5)
  assert first['control'] == pytest.approx(1e-6, rel=1e-3)
  assert first['limit'] == pytest.approx(TOL.envelope_multiple * first['control'])
  assert where['stages']['forward']['outside'] == ['bn', 'logits']
  assert '`bn` (BatchNormalization)' in where['summary']
  assert 'the 1 layer output(s) before it are inside' in where['summary']
  assert where['then'][0].startswith('loss (2 of 3 loss parts: data, total)')


def test_a_loss_part_update_and_state_are_told_apart(three):
  reference, control, other = three

  def regularization(stages):
    stages['loss']['regularization'] = np.float64(0.0)
    stages['loss']['total'] = stages['loss']['data']

  where = localize.localize_pair(reference, other(regularization), control, TOL)
  assert (where['first']['stage'], where['first']['name']) == ('loss', 'regularization')
  assert 'its regularization part differs 1 (0.2 vs 0)' in where['summary']

  def update(stages):
    stages['update']['logits/kernel'] = stages['update']['logits/kernel'] * 1.01

  where = localize.localize_pair(reference, other(update), control, TOL)
  assert (where['first']['stage'], where['first']['name']) == ('update', 'logits/kernel')
  assert where['stages']['gradients']['outside'] == []

  def state(stages):
    stages['state']['bn/moving_mean'] = stages['state']['bn/moving_mean'] * 10

  where = localize.localize_pair(reference, other(state), control, TOL)
  assert (where['first']['stage'], where['first']['name']) == ('state', 'bn/moving_mean')


def test_gradients_scaled_by_one_factor_are_named_so(three):
  reference, control, other = three

  def halve(stages):
    for name in stages['gradients']:
      stages['gradients'][name] = stages['gradients'][name] * 0.5

  where = localize.localize_pair(reference, other(halve), control, TOL)
  assert where['first']['stage'] == 'gradients'
  assert where['factor'] == pytest.approx(0.5, rel=1e-5)
  assert 'times 0.5 (1/2)' in where['summary']


def test_without_a_control_the_fixed_tolerance_judges(three):
  reference, _, other = three
  where = localize.localize_pair(reference, other(lambda s: None), None, TOL)
  assert not where['calibrated'] and where['first'] is None
  assert all(row['limit'] == TOL.step_rtol for row in where['stages']['forward']['rows'])


def test_a_floor_keeps_a_bit_identical_control_from_failing_rounding(tmp_path):
  reference = _stages()
  same = _probe(tmp_path, 'reference', reference)
  control = _probe(tmp_path, 'control', reference)
  other = _probe(tmp_path, 'other', _nudged(reference, 2 ** -23))
  where = localize.localize_pair(same, other, control, TOL)
  assert where['first'] is None
  row = where['stages']['forward']['rows'][0]
  assert row['control'] == 0 and row['limit'] == TOL.envelope_multiple * calibration.ROUNDING_FLOOR


@pytest.mark.parametrize('pitfall,change,verdict', [
    ('adam_epsilon', 'update', 'agrees'),
    ('double_softmax', 'logits', 'agrees'),
    ('no_learning_phase', 'bn', 'agrees'),
    ('no_learning_phase', 'logits', 'disagrees'),
    ('regularization_dropped', 'regularization', 'agrees'),
    ('from_logits_lost', 'regularization', 'disagrees'),
    ('skip_update_ops', 'update', 'disagrees'),
    ('skip_update_ops', 'state_after_bn', 'downstream'),
    ('metrics_never_reset', None, 'agrees'),
    ('metrics_never_reset', 'update', 'disagrees'),
    ('adam_epsilon', None, 'unconfirmed'),
])
def test_the_catalogue_agrees_or_disagrees(three, pitfall, change, verdict):
  reference, control, other = three
  where_changed = {'update': ('update', 'conv/kernel'), 'logits': ('forward', 'logits'),
                   'bn': ('forward', 'bn'), 'regularization': ('loss', 'regularization')}

  def make(stages):
    if change == 'state_after_bn':
      stages['forward']['bn'] = stages['forward']['bn'] * 2
      stages['state']['bn/moving_mean'] = stages['state']['bn/moving_mean'] * 2
    elif change:
      stage, name = where_changed[change]
      stages[stage][name] = np.asarray(stages[stage][name]) * 2

  where = localize.localize_pair(reference, other(make), control, TOL)
  [entry] = localize.agreement([{'name': pitfall}], where, reference)
  assert entry['verdict'] == verdict, (entry, where['summary'])
  assert entry['note'].startswith(pitfall)


def test_a_recorded_probe_takes_update_and_state_from_the_snapshots(tmp_path):
  config = recorder.RunConfig(framework='keras3', batch_size=2, data_id='hand-made',
                              epsilon=1e-8, steps_per_epoch=1)
  weights = {'dense/kernel': np.ones((2, 2), np.float32), 'bn/moving_mean': np.zeros(2)}
  after = {'dense/kernel': weights['dense/kernel'] - 0.01, 'bn/moving_mean': np.ones(2) / 10}
  with recorder.RunRecorder(str(tmp_path / 'run'), config) as rec:
    rec.snapshot(0, weights)
    with pytest.raises(errors.UsageError, match='probe a step recorded or the one about to be'):
      rec.probe(2, batch=(np.ones((2, 2)), np.eye(2)), outputs={'dense': np.ones(2)},
                gradients={'dense/kernel': np.ones((2, 2))}, loss=0.5)
    rec.probe(1, batch=(np.ones((2, 2)), np.eye(2)), outputs={'dense': np.ones((2, 2))},
              gradients={'dense/kernel': np.full((2, 2), 0.3)}, loss=0.5)
    rec.record_step(0.5, 1.0)
    rec.snapshot(1, after)
    rec.record_epoch()
    rec.finish()
  path = probes.recorded(rec.model_dir)
  assert path == probes.path_in(rec.model_dir, 1)
  probe = localize.load(path, rec.model_dir)
  np.testing.assert_allclose(probe.items('update')['dense/kernel'], np.full((2, 2), -0.01),
                             rtol=1e-6)
  np.testing.assert_allclose(probe.items('state')['bn/moving_mean'], np.ones(2) / 10)
  assert list(probe.items('loss')) == ['total']
  # A rerun over it replaces the probe with the rest of what the run wrote.
  assert run_files.written_by_a_run(rec.model_dir, run_files.PROBE_DIR)


def test_replay_refuses_runs_it_cannot_replay(tmp_path):
  run_dir = tmp_path / 'run'
  replay_cfg = config.ReplayConfig(model_dir=str(run_dir), output=str(tmp_path / 'out.npz'))
  with pytest.raises(errors.UsageError, match='no run.json'):
    replay_mode.run_config(config.GraphConfig, replay_cfg, ('graph',))
  run_dir.mkdir()
  manifest = {'runner': 'eager', 'status': 'complete', 'flags': {}, 'replicas': 2}
  (run_dir / run_files.RUN_JSON).write_text(json.dumps(manifest))
  with pytest.raises(errors.UsageError, match='holds a eager run; replay it with train_eager'):
    replay_mode.run_config(config.GraphConfig, replay_cfg, ('graph',))
  with pytest.raises(errors.UsageError, match='over 2 replicas'):
    replay_mode.run_config(config.EagerConfig, replay_cfg, ('eager', 'fit'))
  inside = config.ReplayConfig(model_dir=str(run_dir), output=str(run_dir / 'probe.npz'))
  with pytest.raises(errors.UsageError, match='a run directory this command reads'):
    replay_mode.run_config(config.EagerConfig, inside, ('eager', 'fit'))


def test_what_dropout_masks_feed_is_reported_not_judged(tmp_path):
  """Two codes that draw their own masks: past the first Dropout layer nothing is
  comparable item by item; the Dropout layer's own output still is."""
  kinds = {'pool': ['GlobalAveragePooling2D', 'Layer'], 'dropout': ['Dropout', 'Layer'],
           'logits': ['Dense', 'Layer']}
  stages = _stages()
  stages['forward'] = {name: np.ones((4, 5)) for name in kinds}
  path = str(tmp_path / 'reference.npz')
  probes.save(path, stages, {'step': 1, 'layer_kinds': kinds})
  reference = probes.load(path)
  excluded = localize.excluded_items({'dropout_masks': {}}, reference)
  assert ('forward', 'logits') in excluded and ('forward', 'dropout') not in excluded
  assert {('loss', 'data'), ('gradients', 'conv/kernel'), ('update', 'logits/kernel')} <= excluded
  # The BatchNorm before the Dropout layer keeps its state judged.
  assert ('state', 'bn/moving_mean') not in excluded
  assert localize.excluded_items({}, reference) == set()


def test_the_replay_mode_takes_the_runs_own_flags():
  for script, args, message in (
      ('train_graph', ['--replay_out=x.npz', '--epochs=3'], 'leave out --epochs'),
      ('train_eager', ['--replay_batch=x.npz'],
       '--replay_batch, --replay_step and --replay_start apply to a replay')):
    result = run_entry(script, *args)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert message in line
