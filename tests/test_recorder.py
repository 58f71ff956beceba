"""The recorder API and weight maps, TensorFlow-free: loops written in numpy, checked
against numpy, the files written and hand-computed values."""

import hashlib
import json
import math
import os

import numpy as np
import pytest

from conftest import read_run_csv
from conftest import read_snapshot
from conftest import run_entry
from conftest import run_python
from tf1compat.judge import parity
from tf1compat.runs import errors
from tf1compat.runs import recorder
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runs import team_models
from tf1compat.runs import weight_map

CLASSES, FEATURES, BATCH = 3, 5, 8
# The names two codes give the same two variables (a TF1 Session's and a Keras 3 port's).
TF1_NAMES = ('logits/kernel:0', 'logits/bias:0')
KERAS_NAMES = ('dense/kernel', 'dense/bias')
TF1_TO_KERAS = 'logits/(kernel|bias):0 -> dense/\\1'


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, FEATURES)).astype(np.float32)
  y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, 64)]
  return x, y


def _start():
  rng = np.random.default_rng(1)
  return [rng.normal(size=(FEATURES, CLASSES)).astype(np.float32) * 0.1,
          np.zeros(CLASSES, np.float32)]


def numpy_loop(model_dir, *, framework='tf1', names=TF1_NAMES, epsilon=1e-8, epochs=2,
               steps_per_epoch=4, reset_metrics=True, init_weights=None, frozen=None,
               **config):
  """A team's loop in numpy: softmax regression trained with Adam, recorded. `frozen`
  ({name: array}): more weights it snapshots. Returns the losses and batch accuracies
  it computed."""
  x, y = _data()
  kernel, bias = _start()
  moments = [[np.zeros_like(v), np.zeros_like(v)] for v in (kernel, bias)]
  run_config = recorder.RunConfig(
      framework=framework, batch_size=BATCH, epsilon=epsilon, image_size=FEATURES,
      num_classes=CLASSES, seed=0, steps_per_epoch=steps_per_epoch,
      data_fingerprint=recorder.data_fingerprint(x, y), init_weights=init_weights, **config)
  losses, accuracies, shown = [], [], []

  def weights(*values):
    return {**dict(zip(names, values)), **(frozen or {})}

  with recorder.RunRecorder(model_dir, run_config) as rec:
    rec.snapshot(0, weights(kernel, bias))
    for epoch in range(epochs):
      if reset_metrics or epoch == 0:
        shown = []
      for i in range(steps_per_epoch):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        logits = x[rows] @ kernel + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = float(-np.mean(np.sum(y[rows] * np.log(p), 1)))
        accuracy = float(np.mean(p.argmax(1) == y[rows].argmax(1)))
        grad = (p - y[rows]) / BATCH
        t = len(losses) + 1
        lr = 0.001 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        for value, g, m in ((kernel, x[rows].T @ grad, moments[0]),
                            (bias, grad.sum(0), moments[1])):
          m[0] = 0.9 * m[0] + 0.1 * g
          m[1] = 0.999 * m[1] + 0.001 * g * g
          value -= (lr * m[0] / (np.sqrt(m[1]) + epsilon)).astype(np.float32)
        losses.append(loss)
        accuracies.append(accuracy)
        shown.append((loss, accuracy))
        step = rec.record_step(loss, accuracy, mean_loss=np.mean([s[0] for s in shown]),
                               accuracy=np.mean([s[1] for s in shown]))
        if rec.snapshot_due(step):
          rec.snapshot(step, weights(kernel, bias))
      rec.record_epoch(val_loss=losses[-1], val_accuracy=accuracies[-1])
    rec.finish(weights(kernel, bias))
  return losses, accuracies


def _manifest(model_dir):
  with open(os.path.join(model_dir, run_files.RUN_JSON)) as f:
    return json.load(f)


def test_a_recorded_loop_writes_the_run_directory_contract(tmp_path):
  init = str(tmp_path / 'init.npz')
  np.savez(init, **dict(zip(TF1_NAMES, _start())))
  run = str(tmp_path / 'run')
  losses, accuracies = numpy_loop(run, init_weights=init, snapshot_steps=(0, 1, 5))
  steps = read_run_csv(run)
  assert steps['step'].tolist() == list(range(1, 9))
  assert steps['epoch'].tolist() == [1] * 4 + [2] * 4
  np.testing.assert_array_equal(steps['loss'], losses)
  np.testing.assert_array_equal(steps['batch_accuracy'], accuracies)
  epoch_mean = [np.mean(losses[:k]) for k in range(1, 5)] + [np.mean(losses[4:k])
                                                             for k in range(5, 9)]
  np.testing.assert_allclose(steps['mean_loss'], epoch_mean, rtol=1e-15)
  assert set(steps['learning_rate']) == {0.001}
  epochs = read_run_csv(run, run_files.EPOCHS_CSV)
  assert epochs['epoch'].tolist() == [1, 2]
  np.testing.assert_allclose(epochs['train_loss'], [epoch_mean[3], epoch_mean[7]])
  np.testing.assert_array_equal(epochs['val_loss'], [losses[3], losses[7]])
  # Step 0 is the start, the last step is saved by finish().
  assert run_files.snapshot_steps_in(run) == [0, 1, 5, 8]
  np.testing.assert_array_equal(read_snapshot(run, 0)['logits/kernel:0'], _start()[0])
  manifest = _manifest(run)
  assert manifest['status'] == runlog.STATUS_COMPLETE and manifest['global_step'] == 8
  assert manifest['runner'] == 'tf1'
  assert manifest[runlog.KERNELS] == {'adam': runlog.ADAM_TF1_FUSED,
                                      'batch_norm_variance': runlog.BN_VARIANCE_BESSEL}
  assert manifest['optimizer']['epsilon'] == 1e-8
  with open(init, 'rb') as f:
    assert manifest['init_weights_sha256'] == hashlib.sha256(f.read()).hexdigest()
  assert manifest['final_metrics']['train_loss'] == pytest.approx(epoch_mean[7])
  assert manifest['flags']['steps_per_epoch'] == 4
  assert set(manifest) <= set(runlog.MANIFEST_FIELDS) | {'updated'}


def test_framework_defaults_and_the_running_means_it_computes(tmp_path):
  config = recorder.RunConfig(framework='keras3', batch_size=4, data_id='my data v2')
  assert (config.epsilon, config.adam_kernel, config.batch_norm_variance) == (
      1e-7, runlog.ADAM_KERAS, runlog.BN_VARIANCE_BIASED)
  run = str(tmp_path / 'run')
  losses = [2.0, 1.0, 3.0, 0.5, 0.25]
  with recorder.RunRecorder(run, config) as rec:
    for loss in losses[:3]:
      rec.record_step(loss, 0.5)
    assert rec.record_epoch() == 1
    for loss in losses[3:]:
      rec.record_step(loss, 1.0)
    rec.record_epoch(val_loss=0.1)
    rec.finish()
  steps = read_run_csv(run)
  # Without shown running means, the means since each epoch's first step.
  assert steps['mean_loss'].tolist() == [2.0, 1.5, 2.0, 0.5, 0.375]
  assert steps['epoch'].tolist() == [1, 1, 1, 2, 2]
  epochs = read_run_csv(run, run_files.EPOCHS_CSV)
  assert epochs['train_loss'].tolist() == [2.0, 0.375]
  assert math.isnan(epochs['val_loss'][0]) and epochs['val_loss'][1] == 0.1
  assert _manifest(run)['data'] == {'fingerprint': 'my data v2', 'data_id': 'my data v2',
                                    'num_classes': None}


@pytest.mark.parametrize('misuse, message', [
    (lambda rec: rec.record_step(1.0, 0.5, step=2), 'record every training step once'),
    (lambda rec: rec.record_epoch(), 'no step recorded'),
    (lambda rec: rec.snapshot(3, {'w': np.zeros(2)}), 'snapshot holds the weights after'),
    (lambda rec: rec.finish(), 'at least one epoch'),
])
def test_misuse_is_a_usage_error_and_marks_the_run_failed(misuse, message, tmp_path):
  run = str(tmp_path / 'run')
  config = recorder.RunConfig(framework='tf1', batch_size=4, data_id='d')
  with pytest.raises(errors.UsageError, match=message):
    with recorder.RunRecorder(run, config) as rec:
      misuse(rec)
  assert _manifest(run)['status'] == runlog.STATUS_FAILED
  assert message in _manifest(run)['failure']


def test_snapshots_must_name_the_same_weights_and_epochs_end_on_their_steps(tmp_path):
  config = recorder.RunConfig(framework='tf1', batch_size=4, data_id='d', steps_per_epoch=2)
  rec = recorder.RunRecorder(str(tmp_path / 'run'), config)
  rec.snapshot(0, {'a': np.zeros(2), 'b': np.ones(1)})
  rec.record_step(1.0, 0.0)
  with pytest.raises(errors.UsageError, match=r"new: \['c'\], missing: \['b'\]"):
    rec.snapshot(1, {'a': np.zeros(2), 'c': np.ones(1)})
  with pytest.raises(errors.UsageError, match='inside an epoch of steps_per_epoch=2'):
    rec.record_epoch()


def test_a_nan_loss_marks_the_run_failed(tmp_path):
  run = str(tmp_path / 'run')
  with recorder.RunRecorder(run, recorder.RunConfig(framework='tf1', batch_size=4,
                                                    data_id='d')) as rec:
    rec.record_step(1.0, 0.0)
    with pytest.raises(errors.NumericFault, match='loss is nan at step 2'):
      rec.record_step(float('nan'), 0.0)
  manifest = _manifest(run)
  assert manifest['status'] == runlog.STATUS_FAILED and manifest['global_step'] == 1
  assert read_run_csv(run)['step'].tolist() == [1]


def test_a_loop_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
  config = recorder.RunConfig(framework='tf1', batch_size=4, data_id='d', steps_per_epoch=3)
  losses = [5.0, 4.0, 3.0, 2.5, 2.0, 1.5]

  def train(rec, first):
    for step in range(first, len(losses) + 1):
      rec.record_step(losses[step - 1], 0.5)
      if step % 3 == 0:
        rec.record_epoch()
    rec.finish()

  whole = str(tmp_path / 'whole')
  train(recorder.RunRecorder(whole, config), 1)
  killed = str(tmp_path / 'killed')
  rec = recorder.RunRecorder(killed, config)
  for loss in losses[:4]:  # the loop's checkpoint is of step 2; steps 3-4 are redone
    rec.record_step(loss, 0.5)
  with pytest.raises(errors.UsageError, match='start at 0'):
    recorder.RunRecorder(str(tmp_path / 'new'), config, start_step=2)
  train(recorder.RunRecorder(killed, config, start_step=2), 3)
  for name in (run_files.STEPS_CSV, run_files.EPOCHS_CSV):
    a, b = read_run_csv(whole, name), read_run_csv(killed, name)
    for column in set(a) - {'seconds'}:
      np.testing.assert_array_equal(a[column], b[column], err_msg=f'{name} {column}')


class _Variable:
  """Shaped like a Keras 3 variable (path) or a TF1 one (name, load)."""

  def __init__(self, name, path=None, value=None):
    self.name, self.path, self.value = name, path, value

  def load(self, value, session):
    del session
    self.value = value


class _Model:
  """Shaped like a Keras model: weights, get_weights, set_weights."""
  name = 'model'

  def __init__(self):
    self.weights = [_Variable('kernel', 'seq/dense/kernel', np.ones((2, 2))),
                    _Variable('bias', 'seq/dense/bias', np.zeros(2))]

  def get_weights(self):
    return [v.value for v in self.weights]

  def set_weights(self, values):
    for variable, value in zip(self.weights, values):
      variable.value = value


class _Session:
  """Shaped like a TF1 Session over a graph's variable collections."""

  def __init__(self, trainable, others):
    self.graph = self
    self.collections = {'trainable_variables': trainable, 'variables': trainable + others}

  def get_collection(self, key):
    return self.collections.get(key, [])

  def run(self, fetches):
    return [v.value for v in fetches]


def test_weights_helpers_with_objects_shaped_like_keras_and_tf1():
  model = _Model()
  assert list(team_models.keras_weights(model)) == ['seq/dense/kernel', 'seq/dense/bias']
  team_models.set_keras_weights(model, {'seq/dense/bias': np.full(2, 7.0),
                                        'seq/dense/kernel': np.eye(2)})
  assert model.weights[1].value.tolist() == [7.0, 7.0]
  with pytest.raises(errors.UsageError, match='variables without a weight: seq/dense/bias; '
                     'weights of no variable: bias:0; load'):
    team_models.set_keras_weights(model, {'seq/dense/kernel': np.eye(2), 'bias:0': np.zeros(2)})
  session = _Session([_Variable('dense/kernel:0', value=np.zeros(3))],
                     [_Variable('bn/moving_mean:0', value=np.ones(1)),
                      _Variable('dense/kernel/Adam:0', value=np.ones(3))])
  team_models.assign_session_weights(session, {'dense/kernel': np.arange(3.0),
                                               'bn/moving_mean': np.full(1, 5.0)})
  # TF's output index dropped; BatchNorm's statistics in, the optimizer's slots out.
  weights = team_models.session_weights(session)
  assert {k: v.tolist() for k, v in weights.items()} == {'dense/kernel': [0.0, 1.0, 2.0],
                                                         'bn/moving_mean': [5.0]}
  with pytest.raises(errors.UsageError, match='weights of no variable: dense/kernel:0; load'):
    team_models.assign_session_weights(session, {**weights, 'dense/kernel:0': 2})


def test_batch_norm_runs_must_snapshot_the_moving_statistics(tmp_path):
  # A model of any inputs may have BatchNorm: no image size is asked for.
  config = recorder.RunConfig(framework='tf1', batch_size=4, data_id='d', batch_norm=True)
  rec = recorder.RunRecorder(str(tmp_path / 'run'), config)
  with pytest.raises(errors.UsageError, match='holds no BatchNorm moving_variance'):
    rec.snapshot(0, {'conv/kernel': np.ones(2)})
  rec.snapshot(0, {'conv/kernel': np.ones(2), 'bn/moving_variance': np.ones(2)})


def test_optimizer_fields_read_what_the_optimizer_really_has():
  class AdamOptimizer:  # tf.compat.v1.train.AdamOptimizer keeps its arguments so
    _lr, _beta1, _beta2, _epsilon = 0.001, 0.9, 0.999, 1e-8

  class Adam:  # Keras: float32 values read back as float64
    def get_config(self):
      return {'name': 'adam', 'learning_rate': float(np.float32(0.001)), 'beta_1': 0.9,
              'beta_2': 0.999, 'epsilon': 1e-7, 'amsgrad': False}

  tf1, keras = team_models.optimizer_fields(AdamOptimizer()), team_models.optimizer_fields(Adam())
  assert tf1 == {'optimizer': 'AdamOptimizer', 'algorithm': 'adam', 'learning_rate': 0.001,
                 'beta_1': 0.9, 'beta_2': 0.999, 'epsilon': 1e-8}
  assert keras['learning_rate'] == 0.001 and keras['epsilon'] == 1e-7


def test_control_start_moves_every_nonzero_weight_by_one_ulp(tmp_path):
  init = str(tmp_path / 'init.npz')
  start = {'k': np.array([1.0, -3.5, 0.0, 1e-30], np.float32), 'n': np.arange(3)}
  team_models.save_weights(init, start)
  control = team_models.control_start(init)
  assert control == str(tmp_path / 'init-ulp.npz')
  nudged = team_models.load_weights(control)
  k = start['k']
  up, down = np.nextafter(k, np.float32(np.inf)), np.nextafter(k, np.float32(-np.inf))
  assert np.all(np.where(k == 0, nudged['k'] == 0, (nudged['k'] == up) | (nudged['k'] == down)))
  assert nudged['n'].tolist() == [0, 1, 2]


def test_two_recorded_loops_compare_through_a_weight_map(tmp_path):
  legacy, port = str(tmp_path / 'legacy'), str(tmp_path / 'port')
  numpy_loop(legacy)
  numpy_loop(port, framework='keras3', names=KERAS_NAMES)
  maps = {legacy: weight_map.WeightMap.load(TF1_TO_KERAS)}
  report = parity.compare([legacy, port], parity.Tolerances(), weight_maps=maps)
  pair = report['pairs'][0]
  assert report['verdict'] == 'PASS' and pair['bit_identical']
  assert 'adam_rounding' in pair['framework_differences']
  assert pair['weight_tier']['common_steps'] == [0, 1, 2, 5, 8]
  # Without the map the names differ and the starts look different.
  unmapped = parity.compare([legacy, port], parity.Tolerances())
  assert unmapped['pitfalls'][0] == 'different_start'


def test_mistakes_of_a_recorded_port_are_named(tmp_path):
  legacy = str(tmp_path / 'legacy')
  numpy_loop(legacy, framework='keras3', names=KERAS_NAMES)
  for name, kwargs in (('adam_epsilon', {'epsilon': 1e-7}),
                       ('metrics_never_reset', {'reset_metrics': False})):
    port = str(tmp_path / name)
    numpy_loop(port, framework='keras3', names=KERAS_NAMES, **kwargs)
    report = parity.compare([legacy, port], parity.Tolerances())
    assert report['verdict'] == 'FAIL'
    assert report['pitfalls'][0] == name


def test_weight_map_rules():
  rules = weight_map.WeightMap.parse(
      '# TF1 -> Keras 3\n\n'
      'hidden/(?P<var>kernel|bias):0 -> seq/dense/\\g<var>\n'
      'logits/(.*):0 -> seq/dense_1/\\1\n'
      '(.*) -> \\1\n', 'm.map')
  assert len(rules.rules) == 3
  assert rules.rename('hidden/kernel:0') == 'seq/dense/kernel'
  assert rules.rename('logits/bias:0') == 'seq/dense_1/bias'
  # The first rule that matches the whole key wins; the catch-all keeps the rest.
  assert rules.rename('hidden/kernel:0/Adam') == 'hidden/kernel:0/Adam'
  inline = weight_map.WeightMap.load('a -> b; (c)x -> \\1')
  assert inline.apply({'a': 1, 'cx': 2}, 'run') == {'b': 1, 'c': 2}
  strict = weight_map.WeightMap.load(TF1_TO_KERAS)
  with pytest.raises(errors.UsageError, match=r'no rule matches 2 weight\(s\) of run: a, b;'):
    strict.rename_all(['logits/bias:0', 'a', 'b'], 'run')
  with pytest.raises(errors.UsageError, match='x and y of run both become z'):
    weight_map.WeightMap.load('.* -> z').rename_all(['x', 'y'], 'run')


@pytest.mark.parametrize('text, message', [
    ('hidden/kernel:0 dense/kernel', 'is not a rule "PATTERN -> REPLACEMENT"'),
    ('hidden/(kernel -> dense/\\1', 'is not a regular expression'),
    ('hidden/(kernel):0 -> dense/\\2', 'refers to group 2'),
    ('(?P<a>x) -> \\g<b>', 'refers to group b'),
    ('# only a comment\n', 'holds no rules'),
])
def test_malformed_weight_maps(text, message, tmp_path):
  path = tmp_path / 'bad.map'
  path.write_text(text)
  with pytest.raises(errors.UsageError, match=message):
    weight_map.WeightMap.load(str(path))


def test_maps_for_runs():
  maps = weight_map.maps_for_runs(['a/=x -> y'], ['a', 'b'], controls=['c'])
  assert set(maps) == {'a', 'c'} and maps['c'] is maps['a']
  for specs, message in ((['a'], 'give RUN_DIR=MAP'), (['z=x -> y'], 'none of the runs'),
                         (['a=x -> y', 'a=y -> x'], 'names a twice'),
                         (['a=missing.map'], 'no such file')):
    with pytest.raises(errors.UsageError, match=message):
      weight_map.maps_for_runs(specs, ['a', 'b'])


def _one_line_error(result):
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
  return lines[0]


def test_compare_runs_with_bad_weight_maps_ends_with_one_line(tmp_path):
  legacy, port = str(tmp_path / 'legacy'), str(tmp_path / 'port')
  numpy_loop(legacy, frozen={'extra/v:0': np.ones(2)})
  numpy_loop(port, framework='keras3', names=KERAS_NAMES, frozen={'extra/v': np.ones(2)})
  out = f'--output_dir={tmp_path / "out"}'
  line = _one_line_error(run_entry('compare_runs', legacy, port, out,
                                   f'--weight_map={legacy}={TF1_TO_KERAS}'))
  assert 'no rule matches 1 weight(s)' in line and 'extra/v:0' in line
  assert 'add rules for them' in line
  # Every key matched, one left without a counterpart in the first run.
  line = _one_line_error(run_entry('compare_runs', legacy, port, out,
                                   f'--weight_map={port}=(.*) -> \\1'))
  assert 'weights unmatched after the maps' in line
  assert f'{port} has dense/bias, dense/kernel, extra/v that {legacy} lacks' in line
  bad = tmp_path / 'bad.map'
  bad.write_text('logits/(kernel|bias):0 => dense/\\1\n')
  line = _one_line_error(run_entry('compare_runs', legacy, port, out,
                                   f'--weight_map={legacy}={bad}'))
  assert f'weight map {bad}, line 1' in line and 'is not a rule' in line


def test_the_recorder_needs_no_tensorflow(tmp_path):
  """TensorFlow and both Kerases made unimportable: the recorder imports, records a run
  and compare_runs' library judges it."""
  code = '''
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):
      raise ImportError(f'{name} is blocked')
sys.meta_path.insert(0, Blocker())
import numpy as np
from tf1compat.judge import parity
from tf1compat.runs import recorder
runs = []
for name in ('a', 'b'):
  run = sys.argv[1] + '/' + name
  config = recorder.RunConfig(framework='tf1', batch_size=2, data_id='d')
  with recorder.RunRecorder(run, config) as rec:
    rec.snapshot(0, {'w': np.ones(2)})
    for loss in (1.0, 0.5):
      rec.record_step(loss, 0.5)
    rec.record_epoch()
    rec.finish({'w': np.zeros(2)})
  runs.append(run)
print(parity.compare(runs, parity.Tolerances())['verdict'])
print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')))
'''
  result = run_python(code, str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert result.stdout.split('\n')[:2] == ['PASS', '[]']
