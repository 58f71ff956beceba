"""A team's own job recorded the way teams instrument training: a SessionRunHook in a
MonitoredTrainingSession job (tf.compat.v1 on this TensorFlow), a Keras Callback in its
Keras 3 port trained with model.fit on the legacy job's recorded batches; a plain
Session loop and a custom loop with their one-line wrappers. The model has a dict of
non-image features, two heads, a summed loss and no accuracy. Each job runs as its own
subprocess: graph mode and Keras 3 never share a process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAS_JAX
from conftest import REPO
from conftest import read_run_csv
from conftest import run_entry
from conftest import requires_jax
from conftest import run_python
from tf1compat.runs import batch_record
from tf1compat.runs import errors
from tf1compat.runs import optimizers
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runs import team_models

EXAMPLES = os.path.join(REPO, 'examples')
STEPS = 30
SHORT = {'tf1_monitored_job.py': (f'--steps={STEPS}', '--steps_per_epoch=10'),
         'keras_fit_port.py': ('--epochs=3', '--steps_per_epoch=10')}


def _job(script, model_dir, *args, env=()):
  return subprocess.Popen(
      [sys.executable, os.path.join(EXAMPLES, script), *SHORT[script],
       f'--model_dir={model_dir}', *args],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'PYTHONPATH': REPO, **dict(env)})


def _finished(*procs):
  for proc in procs:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output


@pytest.fixture(scope='module')
def jobs(tmp_path_factory):
  """{name: run directory}: the legacy job, then side by side its control (one ulp
  apart at the start), its port, the port with Keras' Adam epsilon and, where JAX is
  installed, the same port on Keras 3's JAX backend."""
  base = tmp_path_factory.mktemp('own_job')
  paths = {name: str(base / name)
           for name in ('tf1', 'control', 'port', 'adam_epsilon', 'jax_port')}
  _finished(_job('tf1_monitored_job.py', paths['tf1']))
  control_start = team_models.control_start(run_files.snapshot_path(paths['tf1'], 0),
                                            str(base / 'control_start.npz'))
  _finished(
      _job('tf1_monitored_job.py', paths['control'], f'--start_weights={control_start}'),
      _job('keras_fit_port.py', paths['port'], f'--legacy_dir={paths["tf1"]}'),
      _job('keras_fit_port.py', paths['adam_epsilon'], f'--legacy_dir={paths["tf1"]}',
           '--mistake=adam_epsilon'),
      *([_job('keras_fit_port.py', paths['jax_port'], f'--legacy_dir={paths["tf1"]}',
              env={'KERAS_BACKEND': 'jax'})] if HAS_JAX else []))
  return paths


def _compare(jobs, out, *names):
  result = run_entry('compare_runs', *(jobs[name] for name in names),
                     f'--control={jobs["control"]}', f'--output_dir={out}')
  with open(os.path.join(out, 'parity.json')) as f:
    return result, json.load(f)


def test_the_port_trained_on_the_legacy_jobs_batches_bit_for_bit(jobs):
  legacy = list(batch_record.stored_batches(jobs['tf1']))
  port = list(batch_record.stored_batches(jobs['port']))
  assert len(legacy) == len(port) == STEPS
  for (step, features, labels), (port_step, port_features, port_labels) in zip(legacy, port):
    assert step == port_step
    assert sorted(features) == ['category', 'numeric'] and sorted(labels) == [
        'clicked', 'price']
    for mine, theirs in ((features, port_features), (labels, port_labels)):
      for name in mine:
        assert mine[name].dtype == theirs[name].dtype
        np.testing.assert_array_equal(mine[name], theirs[name])
  assert batch_record.read_digests(jobs['port']) == batch_record.read_digests(jobs['tf1'])
  # Not one batch again and again: the legacy pipeline shuffled, the port took them in order.
  assert len(set(batch_record.read_digests(jobs['tf1']).values())) == STEPS


def test_the_hook_reads_the_job_off_its_graph_and_invents_nothing(jobs):
  manifest = runlog.read_manifest(jobs['tf1'])
  assert manifest['status'] == runlog.STATUS_COMPLETE and manifest['global_step'] == STEPS
  assert manifest['optimizer'] == {'name': 'AdamOptimizer', 'algorithm': 'adam',
                                   'learning_rate': 0.01, 'beta_1': 0.9, 'beta_2': 0.999,
                                   'epsilon': 1e-8}
  assert manifest['flags']['extra']['optimizer_slots'] == ['m', 'v']
  assert manifest['batch_size'] == 32
  # An image classifier's fields: none, not made up.
  for field in ('image_size', 'from_logits', 'final_activation', 'loss'):
    assert manifest[field] is None, field
  assert manifest['data']['num_classes'] is None
  steps = read_run_csv(jobs['tf1'])
  assert np.all(np.isnan(steps['batch_accuracy'])) and np.all(np.isnan(steps['accuracy']))
  assert np.all(steps['learning_rate'] == np.float32(0.01))
  snapshot = team_models.load_weights(run_files.snapshot_path(jobs['tf1'], 0))
  assert sorted(snapshot) == sorted(f'{layer}/{name}' for layer in ('hidden', 'price', 'clicked')
                                    for name in ('kernel', 'bias'))
  assert run_files.snapshot_steps_in(jobs['tf1'])[-1] == STEPS
  # Step 1's probe: the layers named by the job, the gradients the train op applied.
  probe = np.load(os.path.join(jobs['tf1'], run_files.PROBE_DIR, 'step-000001.npz'))
  assert {'input/numeric', 'input/category', 'input/labels/price', 'forward/hidden',
          'gradients/hidden/kernel'} <= set(probe.files)


def test_the_port_starts_from_the_legacy_jobs_weights(jobs):
  legacy = team_models.load_weights(run_files.snapshot_path(jobs['tf1'], 0))
  port = team_models.load_weights(run_files.snapshot_path(jobs['port'], 0))
  assert sorted(legacy) == sorted(port)
  for name in legacy:
    np.testing.assert_array_equal(legacy[name], port[name])
  first = [read_run_csv(jobs[name])['loss'][0] for name in ('tf1', 'port')]
  assert first[1] == pytest.approx(first[0], rel=1e-6)


def test_the_port_passes_with_a_control(jobs, tmp_path):
  result, report = _compare(jobs, str(tmp_path), 'tf1', 'port')
  assert result.returncode == 0, result.stdout + result.stderr
  assert report['verdict'] == 'PASS' and report['calibration'] is not None
  pair = report['pairs'][0]
  assert pair['inputs']['compared_steps'] == STEPS
  assert pair['inputs']['first_differing_step'] is None
  assert 'the same input at every one of 30 steps' in result.stdout


@requires_jax
def test_a_port_on_jax_is_recorded_by_the_same_callback_on_the_same_batches(jobs, tmp_path):
  """keras_fit_port.py on Keras 3's JAX backend, whose fit takes a batch from a first
  iterator of the watched dataset before it trains on a second."""
  result, report = _compare(jobs, str(tmp_path / 'jax'), 'tf1', 'jax_port')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert f'the same input at every one of {STEPS} steps' in result.stdout
  assert batch_record.read_digests(jobs['jax_port']) == batch_record.read_digests(jobs['tf1'])
  assert report['verdict'] == 'PASS'


def test_the_port_with_keras_adam_epsilon_fails_and_is_named(jobs, tmp_path):
  result, report = _compare(jobs, str(tmp_path), 'tf1', 'adam_epsilon')
  assert result.returncode == 1, result.stdout + result.stderr
  assert report['verdict'] == 'FAIL'
  assert report['pairs'][0]['pitfalls'][0]['name'] == 'adam_epsilon', report['pairs'][0]['pitfalls']


_SESSION_LOOP = r'''
import os, sys
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import numpy as np
import tensorflow as tf
from tf1compat import session_hook
tf.compat.v1.disable_v2_behavior()
tf.compat.v1.set_random_seed(0)
x = tf.compat.v1.placeholder(tf.float32, [None, 3])
y = tf.compat.v1.placeholder(tf.float32, [None, 1])
w = tf.compat.v1.get_variable('w', [3, 1])
loss = tf.reduce_mean(tf.square(tf.matmul(x, w) - y))
train_op = tf.compat.v1.train.MomentumOptimizer(0.05, 0.9, use_nesterov=True).minimize(loss)
rng = np.random.default_rng(0)
with tf.compat.v1.Session() as plain:
  plain.run(tf.compat.v1.global_variables_initializer())
  hook = session_hook.recording_hook(sys.argv[1], loss, features=x, labels=y,
                                     steps_per_epoch=4)
  with session_hook.RecordedSession(plain, hook) as sess:
    for step in range(8):
      xs = rng.normal(size=(5, 3)).astype(np.float32)
      _, value = sess.run([train_op, loss], {x: xs, y: xs.sum(1, keepdims=True)})
      print(repr(float(value)))
'''


def _recorded_loop(script, run_dir):
  """(the losses the loop `script` printed, its steps.csv, its run.json): the loop's own
  values are the oracle of what was recorded."""
  result = run_python(script, run_dir)
  assert result.returncode == 0, result.stderr
  fetched = [float(line) for line in result.stdout.split()]
  return fetched, read_run_csv(run_dir), runlog.read_manifest(run_dir)


def test_a_plain_session_loop_is_recorded_by_wrapping_its_session(tmp_path):
  run_dir = str(tmp_path / 'session')
  fetched, steps, manifest = _recorded_loop(_SESSION_LOOP, run_dir)
  assert steps['loss'].tolist() == fetched and steps['epoch'].tolist() == [1] * 4 + [2] * 4
  assert manifest['status'] == runlog.STATUS_COMPLETE
  assert manifest['optimizer']['name'] == 'MomentumOptimizer'
  assert manifest['optimizer']['learning_rate'] == 0.05
  assert manifest['optimizer']['beta_1'] is None and manifest['optimizer']['epsilon'] is None
  assert manifest['optimizer']['algorithm'] == 'momentum'
  assert manifest['optimizer']['momentum'] == 0.9 and manifest['optimizer']['nesterov'] is True
  assert manifest['optimizer']['momentum_accumulates'] == optimizers.GRADIENTS
  assert manifest['flags']['extra']['optimizer_slots'] == ['accum']
  assert len(batch_record.read_digests(run_dir)) == 8


_CUSTOM_LOOP = r'''
import os, sys
os.environ.pop('TF_USE_LEGACY_KERAS', None)
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import keras
import numpy as np
import tensorflow as tf
from tf1compat import keras_callback
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
optimizer = keras.optimizers.SGD(0.05)

@tf.function
def train_step(x, y):
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(model(x) - y))
  optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                model.trainable_variables))
  return loss

rng = np.random.default_rng(0)
with keras_callback.recording(sys.argv[1], model, optimizer) as rec:
  for step in range(6):
    xs = rng.normal(size=(5, 3)).astype(np.float32)
    loss = train_step(xs, xs.sum(1, keepdims=True))
    rec.record(loss, batch=(xs, xs.sum(1, keepdims=True)))
    print(repr(float(loss)))
'''


def test_a_custom_loop_is_recorded_by_one_context(tmp_path):
  run_dir = str(tmp_path / 'custom')
  fetched, steps, manifest = _recorded_loop(_CUSTOM_LOOP, run_dir)
  assert steps['loss'].tolist() == fetched
  assert manifest['status'] == runlog.STATUS_COMPLETE and manifest['global_step'] == 6
  assert manifest['optimizer']['name'] == 'SGD' and manifest['batch_size'] is None
  epochs = runlog.read_csv(os.path.join(run_dir, run_files.EPOCHS_CSV))
  assert epochs['epoch'].tolist() == [1]
  assert epochs['train_loss'][0] == pytest.approx(np.mean(fetched))


def test_the_batches_past_the_cap_are_hashed_not_stored(tmp_path):
  batch = {'x': np.arange(100, dtype=np.float32)}
  writer = batch_record.BatchWriter(str(tmp_path), stored_steps=5, max_bytes=1000)
  for step in range(1, 8):
    writer.add(step, {'x': batch['x'] + step}, np.array([step]))
  # One 400-byte float batch and its header fit under 1,000 bytes; none after the first that
  # did not.
  stored = batch_record.stored_steps(str(tmp_path))
  assert 1 <= len(stored) < 5 and stored == list(range(1, len(stored) + 1))
  assert len(batch_record.read_digests(str(tmp_path))) == 7
  assert [step for step, _, _ in batch_record.stored_batches(str(tmp_path))] == stored


def test_a_changed_batch_file_is_refused_by_its_digest(tmp_path):
  writer = batch_record.BatchWriter(str(tmp_path), stored_steps=2)
  for step in (1, 2):
    writer.add(step, {'x': np.full(4, step, np.float32)}, np.array([step]))
  path = batch_record.batch_path(str(tmp_path), 2)
  np.savez(path, **{'features/x': np.zeros(4, np.float32), 'labels': np.array([2])})
  with pytest.raises(errors.UsageError, match='step 2 does not match its digest'):
    list(batch_record.stored_batches(str(tmp_path)))


def test_a_run_without_stored_batches_is_one_clear_error(tmp_path):
  with pytest.raises(errors.UsageError, match='stores no batches'):
    list(batch_record.stored_batches(str(tmp_path)))
  writer = batch_record.BatchWriter(str(tmp_path), stored_steps=2)
  for step in (1, 2):
    writer.add(step, np.ones(2), None)
  with pytest.raises(errors.UsageError, match='stores the batches of 2 steps, not 3'):
    list(batch_record.stored_batches(str(tmp_path), steps=3))


_CHECKPOINTED_JOB = r'''
import os, sys
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import numpy as np
import tensorflow as tf
from tf1compat import session_hook
run_dir, checkpoint_dir, crash_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
tf.compat.v1.disable_v2_behavior()
tf.compat.v1.set_random_seed(0)
step = tf.compat.v1.train.get_or_create_global_step()
# The batch is a function of the step, so a resumed job reads what an unbroken one does.
x = tf.sin(tf.reshape(tf.cast(step, tf.float32) + tf.range(12.0), [4, 3]))
w = tf.compat.v1.get_variable('w', [3, 1])
loss = tf.reduce_mean(tf.square(tf.matmul(x, w) - 1.0))
train_op = tf.compat.v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step)
hook = session_hook.recording_hook(run_dir, loss, features=x, steps_per_epoch=2)
with tf.compat.v1.train.MonitoredTrainingSession(
    checkpoint_dir=checkpoint_dir, save_checkpoint_steps=2, save_summaries_steps=None,
    hooks=[tf.compat.v1.train.StopAtStepHook(last_step=8), hook]) as sess:
  runs = 0
  while not sess.should_stop():
    sess.run(train_op)
    runs += 1
    if runs == crash_after:
      sys.exit(3)  # the job dies: no end() for its hooks
'''


def test_a_job_restored_from_its_checkpoint_records_on_from_its_step(tmp_path):
  whole, broken = str(tmp_path / 'whole'), str(tmp_path / 'broken')
  # The same job run through, and dying after step 5 (its checkpoint: step 4), then rerun.
  whole_job = run_python(_CHECKPOINTED_JOB, whole, str(tmp_path / 'ckpt_whole'), '0')
  died = run_python(_CHECKPOINTED_JOB, broken, str(tmp_path / 'ckpt_broken'), '5')
  assert died.returncode == 3, died.stderr
  assert runlog.read_manifest(broken)['status'] == runlog.STATUS_RUNNING
  rerun = run_python(_CHECKPOINTED_JOB, broken, str(tmp_path / 'ckpt_broken'), '0')
  for result in (whole_job, rerun):
    assert result.returncode == 0, result.stderr
  steps = {name: read_run_csv(path) for name, path in (('whole', whole), ('broken', broken))}
  assert steps['broken']['step'].tolist() == list(range(1, 9))
  np.testing.assert_array_equal(steps['broken']['loss'], steps['whole']['loss'])
  assert batch_record.read_digests(broken) == batch_record.read_digests(whole)
  assert run_files.snapshot_steps_in(broken) == run_files.snapshot_steps_in(whole)
  assert runlog.read_manifest(broken)['status'] == runlog.STATUS_COMPLETE


_TF_KERAS_FIT = r'''
import os, sys
os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import numpy as np
import tensorflow as tf
import tf_keras
from tf1compat import keras_callback
tf_keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(24, 3)).astype(np.float32)
y = (x.sum(1) > 0).astype(np.int64)
model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
model.compile(tf_keras.optimizers.SGD(0.05),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
logits = model.predict(x[:8], verbose=0).astype(np.float64)
log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
print(repr(float(-log_softmax[np.arange(8), y[:8]].mean())))
print(repr(float(np.mean(logits.argmax(1) == y[:8]))))
callback = keras_callback.recording_callback(sys.argv[1], keras='tf_keras')
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
model.fit(callback.watch(dataset), epochs=2, callbacks=[callback], verbose=0)
'''


def test_a_tf_keras_port_is_recorded_by_the_same_callback(tmp_path):
  run_dir = str(tmp_path / 'tf_keras')
  result = run_python(_TF_KERAS_FIT, run_dir)
  assert result.returncode == 0, result.stderr
  manifest = runlog.read_manifest(run_dir)
  assert manifest['status'] == runlog.STATUS_COMPLETE and manifest['global_step'] == 6
  assert manifest['versions']['keras_implementation'] == runlog.KERAS_TF_KERAS
  steps = read_run_csv(run_dir)
  assert steps['epoch'].tolist() == [1, 1, 1, 2, 2, 2]
  # Step 1's loss and accuracy are the initial model's on the first batch, computed before
  # fit with numpy; every batch accuracy is a share of its 8 examples.
  first_loss, first_accuracy = map(float, result.stdout.split()[-2:])
  assert steps['loss'][0] == pytest.approx(first_loss, rel=1e-5)
  assert steps['batch_accuracy'][0] == first_accuracy
  np.testing.assert_array_equal(steps['batch_accuracy'] * 8, np.round(steps['batch_accuracy'] * 8))
  # The watched batches: the dataset's three, once per epoch, as fit consumed them.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(24, 3)).astype(np.float32)
  y = (x.sum(1) > 0).astype(np.int64)
  expected = [batch_record.batch_digest(batch_record.flatten(x[i:i + 8], y[i:i + 8]))
              for i in (0, 8, 16)]
  assert list(batch_record.read_digests(run_dir).values()) == expected * 2


_WATCHED = r'''
import json, os
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import numpy as np
import tensorflow as tf
from tf1compat import keras_callback
watch = keras_callback.BatchWatch()
out = {}
alone = tf.data.Dataset.from_tensor_slices({'a': np.arange(4.0), 'b': np.arange(4)}).batch(2)
element = next(iter(watch.watch(alone)))
features, labels = watch.pop()
out['alone'] = [sorted(element), features['a'].tolist(), labels]
# A watch of its own: tf.data may run ahead, and the first one's queue holds its second.
watch = keras_callback.BatchWatch()
weighted = tf.data.Dataset.from_tensor_slices((np.arange(4.0), np.arange(4), np.ones(4))).batch(2)
element = next(iter(watch.watch(weighted)))
features, labels = watch.pop()
out['weighted'] = [len(element), features.tolist(), labels.tolist()]
print(json.dumps(out))
'''


def test_the_watch_hands_on_each_element_as_it_came_and_keeps_its_batch():
  result = run_python(_WATCHED)
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.split('\n')[-2])
  # A lone dict stays a dict; a (features, labels, sample weights) element keeps its three
  # parts, and the weights are no part of the batch kept.
  assert out['alone'] == [['a', 'b'], [0.0, 1.0], None]
  assert out['weighted'] == [3, [0.0, 1.0], [0, 1]]
