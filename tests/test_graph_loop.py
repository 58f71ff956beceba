"""bin/train_graph end to end: subprocess runs on the tiny dataset, checked with numpy.

Each run costs a TensorFlow import and a graph build, so the runs are a module fixture
shared by the tests that read them, trained two or more at a time. Runs last 2 epochs of
6 steps (tiny_run_flags).
"""

import functools
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import at_once, read_run_csv, read_snapshot, run_entry
from conftest import tiny_run_flags
from tf1compat.runs import run_files
from tf1compat.runs import runlog

STEPS_PER_EPOCH = 6
TOTAL_STEPS = 12
SNAPSHOTS = [0, 1, 2, 5, TOTAL_STEPS]
METRIC_COLUMNS = ('loss', 'batch_accuracy', 'mean_loss', 'accuracy')
BN_STATS = [f'bn{i}/{name}' for i in range(1, 5) for name in ('moving_mean', 'moving_variance')]
# --checkpoint_every=4 adds mid-epoch checkpoints at steps 4 and 8 (steps 6 and 12 end epochs).
BATCH_NORM_FLAGS = ('--batch_norm', '--checkpoint_every=4')


def _train(data_dir, model_dir, *extra):
  result = run_entry('train_graph', *tiny_run_flags(data_dir, model_dir, *extra))
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir


def _running_mean(values, since):
  """Mean of values[since[i]..i] for each i: the oracle of a running metric."""
  return np.array([np.mean(values[since[i]:i + 1]) for i in range(len(values))])


def _epoch_starts(n, steps_per_epoch):
  return [i - i % steps_per_epoch for i in range(n)]


@pytest.fixture(scope='module')
def run_dirs(tmp_path_factory):
  return tmp_path_factory.mktemp('graph_runs')


@pytest.fixture(scope='module')
def runs(tiny_data_dir, run_dirs, graph_init_weights):
  """{name: run directory} of every run the tests read, trained at once."""
  dropout = ('--dropout=0.5', f'--init_weights={graph_init_weights}')
  flags = {
      # The correct loop, with BatchNormalization so that update ops matter.
      'base': BATCH_NORM_FLAGS,
      # The seed's loop: metrics never reset, BatchNormalization updates not run.
      'mistakes': ('--batch_norm', '--update_ops=false', '--reset_metrics=never'),
      'model_call': ('--batch_norm', '--wiring=model_call'),
      # Two runs with the same flags and one that does not feed the learning phase.
      'dropout_a': dropout,
      'dropout_b': dropout,
      'dropout_no_phase': (*dropout, '--feed_learning_phase=false'),
  }
  return dict(zip(flags, at_once(*(
      functools.partial(_train, tiny_data_dir, str(run_dirs / name), *extra)
      for name, extra in flags.items()))))


@pytest.fixture(scope='module')
def base_run(runs):
  return runs['base']


@pytest.fixture(scope='module')
def dropout_runs(runs):
  return runs['dropout_a'], runs['dropout_b'], runs['dropout_no_phase']


def test_short_run_completes_with_a_well_formed_run_directory(base_run):
  manifest = runlog.read_manifest(base_run)
  assert manifest['status'] == runlog.STATUS_COMPLETE
  assert manifest['runner'] == 'graph'
  assert manifest['global_step'] == TOTAL_STEPS
  assert manifest['optimizer']['name'] == 'tf.compat.v1.train.AdamOptimizer'
  assert manifest['optimizer']['epsilon'] == 1e-8
  assert manifest['flags']['epsilon'] is None
  # The optimizer's state beside the weights: Adam's slots of every trained weight, its
  # beta powers and the step.
  state = run_files.load_optimizer_state(run_files.optimizer_state_path(base_run, 2))
  weights = run_files.load_weights(run_files.snapshot_path(base_run, 2))
  assert state['step'] == 2
  assert state['scalar/beta_1_power'] == pytest.approx(0.9 ** 3)
  assert {key for key in state if key.startswith('slot/m/')} == {
      f'slot/m/{key}' for key in weights if not key.endswith(('moving_mean', 'moving_variance'))}
  assert manifest['settings']['tf32'] is True and manifest['settings']['op_determinism'] is True
  assert manifest['graph']['update_ops_in_train_op'] == 8  # 2 per BatchNormalization layer
  assert manifest['versions']['keras'].startswith('2.')
  assert manifest['data']['num_classes'] == 4

  steps = read_run_csv(base_run)
  assert list(steps) == list(runlog.STEP_COLUMNS)
  np.testing.assert_array_equal(steps['step'], np.arange(1, TOTAL_STEPS + 1))
  np.testing.assert_array_equal(steps['epoch'], np.repeat([1, 2], STEPS_PER_EPOCH))
  for column in METRIC_COLUMNS:
    assert np.all(np.isfinite(steps[column])), column
  epochs = read_run_csv(base_run, run_files.EPOCHS_CSV)
  assert list(epochs) == list(runlog.EPOCH_COLUMNS)
  np.testing.assert_array_equal(epochs['epoch'], [1, 2])
  assert np.all(np.isfinite(epochs['val_loss']))
  assert np.all((epochs['val_accuracy'] >= 0) & (epochs['val_accuracy'] <= 1))
  assert manifest['final_metrics']['val_loss'] == epochs['val_loss'][-1]
  # Loss falls: the second epoch's mean training loss is below the first's.
  assert epochs['train_loss'][1] < epochs['train_loss'][0]

  assert run_files.snapshot_steps_in(base_run) == SNAPSHOTS
  weights = read_snapshot(base_run, 0)
  assert {'conv1/kernel', 'bn4/moving_variance', 'logits/bias'} <= set(weights)
  assert weights['logits/kernel'].shape == (256, 4)
  checkpoints = os.path.join(base_run, run_files.CHECKPOINTS_DIR)
  assert tf.train.latest_checkpoint(checkpoints).endswith(f'model.ckpt-{TOTAL_STEPS}')
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(base_run))
  assert os.path.exists(os.path.join(base_run, run_files.EXPORT_DIR, 'saved_model.pb'))


def test_events_hold_the_per_step_scalars(base_run):
  losses = {}
  for name in os.listdir(base_run):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(base_run, name)):
        for value in event.summary.value:
          if value.tag == 'train/batch_loss':
            losses[event.step] = value.simple_value
  steps = read_run_csv(base_run)
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  np.testing.assert_array_equal([losses[s] for s in sorted(losses)],
                                steps['loss'].astype(np.float32))


def test_export_serves_the_trained_weights(base_run):
  export_dir = os.path.join(base_run, run_files.EXPORT_DIR)
  final = read_snapshot(base_run, TOTAL_STEPS)
  reader = tf.train.load_checkpoint(os.path.join(export_dir, 'variables', 'variables'))
  for key, value in final.items():
    np.testing.assert_array_equal(reader.get_tensor(key), value, err_msg=key)
  serve = tf.saved_model.load(export_dir).signatures['serving_default']
  outputs = serve(images=tf.zeros([2, 32, 32, 3]))
  assert outputs['outputs'].shape == (2, 4)
  assert outputs['classes'].shape == (2,)


def test_running_metrics_reset_at_each_epoch(base_run):
  steps = read_run_csv(base_run)
  since = _epoch_starts(TOTAL_STEPS, STEPS_PER_EPOCH)
  np.testing.assert_allclose(steps['mean_loss'], _running_mean(steps['loss'], since), rtol=1e-6)
  np.testing.assert_allclose(steps['accuracy'], _running_mean(steps['batch_accuracy'], since),
                             rtol=1e-6)
  epochs = read_run_csv(base_run, run_files.EPOCHS_CSV)
  per_epoch = steps['loss'].reshape(2, STEPS_PER_EPOCH).mean(axis=1)
  np.testing.assert_allclose(epochs['train_loss'], per_epoch, rtol=1e-6)


def test_running_metrics_never_reset_average_since_step_one(runs):
  mistakes_run = runs['mistakes']
  steps = read_run_csv(mistakes_run)
  since = [0] * TOTAL_STEPS
  np.testing.assert_allclose(steps['mean_loss'], _running_mean(steps['loss'], since), rtol=1e-6)
  np.testing.assert_allclose(steps['accuracy'], _running_mean(steps['batch_accuracy'], since),
                             rtol=1e-6)
  # What the user is shown for epoch 2 is then not epoch 2's mean.
  epoch2 = steps['loss'][STEPS_PER_EPOCH:].mean()
  mistakes_epochs = read_run_csv(mistakes_run, run_files.EPOCHS_CSV)
  assert not np.isclose(mistakes_epochs['train_loss'][1], epoch2, rtol=1e-6)


def test_batch_norm_statistics_move_with_update_ops(base_run):
  first, last = read_snapshot(base_run, 0), read_snapshot(base_run, TOTAL_STEPS)
  for key in BN_STATS:
    assert not np.allclose(first[key], last[key]), key


@pytest.mark.parametrize('which', ['mistakes', 'model_call'])
def test_batch_norm_statistics_stay_without_update_ops(which, runs):
  model_dir = runs[which]
  first, last = read_snapshot(model_dir, 0), read_snapshot(model_dir, TOTAL_STEPS)
  for key in BN_STATS:
    np.testing.assert_array_equal(first[key], last[key], err_msg=key)
    initial = 0.0 if key.endswith('moving_mean') else 1.0
    np.testing.assert_array_equal(last[key], initial, err_msg=key)
  manifest = runlog.read_manifest(model_dir)
  assert manifest['graph']['update_ops_in_train_op'] == 0
  # The weights did train: only the statistics stayed.
  assert not np.array_equal(first['conv1/kernel'], last['conv1/kernel'])


def test_feeding_the_learning_phase_changes_the_dropout_loss(dropout_runs):
  fed, _, not_fed = dropout_runs
  fed_steps, not_fed_steps = read_run_csv(fed), read_run_csv(not_fed)
  # Same initial weights and same first batch: only the Dropout masks differ.
  np.testing.assert_array_equal(read_snapshot(fed, 0)['logits/kernel'],
                                read_snapshot(not_fed, 0)['logits/kernel'])
  assert fed_steps['loss'][0] != not_fed_steps['loss'][0]
  assert not np.any(fed_steps['loss'] == not_fed_steps['loss'])
  assert runlog.read_manifest(not_fed)['graph']['learning_phase_fed'] is False
  # Fed masks come from a stateful random op that checkpoints do not hold.
  assert runlog.read_manifest(fed)['graph']['exact_resume'] is False
  assert runlog.read_manifest(not_fed)['graph']['exact_resume'] is True


def test_init_weights_and_same_flags_reproduce_the_run_bit_for_bit(dropout_runs,
                                                                   graph_init_weights):
  first, second, _ = dropout_runs
  initial = run_files.load_weights(graph_init_weights)
  for model_dir in dropout_runs:
    step0 = read_snapshot(model_dir, 0)
    assert set(step0) == set(initial)
    for key, value in initial.items():
      np.testing.assert_array_equal(step0[key], value, err_msg=key)
    assert runlog.read_manifest(model_dir)['init_weights_sha256'] == run_files.file_sha256(
        graph_init_weights)
  a, b = read_run_csv(first), read_run_csv(second)
  assert a['loss'][0] == b['loss'][0]
  for column in METRIC_COLUMNS:
    np.testing.assert_array_equal(a[column], b[column], err_msg=column)
  a, b = read_run_csv(first, run_files.EPOCHS_CSV), read_run_csv(second, run_files.EPOCHS_CSV)
  for column in ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy'):
    np.testing.assert_array_equal(a[column], b[column], err_msg=column)
  last_a, last_b = read_snapshot(first, TOTAL_STEPS), read_snapshot(second, TOTAL_STEPS)
  for key in last_a:
    np.testing.assert_array_equal(last_a[key], last_b[key], err_msg=key)


def test_a_complete_run_is_not_overwritten(tiny_data_dir, base_run):
  before = runlog.read_manifest(base_run)
  result = run_entry('train_graph', *tiny_run_flags(tiny_data_dir, base_run, *BATCH_NORM_FLAGS))
  assert result.returncode == 2
  message = result.stderr.strip().splitlines()[-1]
  assert 'complete graph run' in message and '--overwrite' in message
  assert 'Traceback' not in result.stderr
  assert runlog.read_manifest(base_run) == before


def test_an_interrupted_run_resumes_exactly(tiny_data_dir, base_run, run_dirs):
  """A copy of the base run cut back to its mid-epoch checkpoint at step 8 finishes alike."""
  model_dir = str(run_dirs / 'resumed')
  shutil.copytree(base_run, model_dir)
  checkpoints = os.path.join(model_dir, run_files.CHECKPOINTS_DIR)
  for name in os.listdir(checkpoints):
    if name.startswith(f'model.ckpt-{TOTAL_STEPS}.'):
      os.remove(os.path.join(checkpoints, name))
  with open(os.path.join(checkpoints, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "model.ckpt-8"\nall_model_checkpoint_paths: "model.ckpt-8"\n')
  shutil.rmtree(os.path.join(model_dir, run_files.EXPORT_DIR))
  manifest = runlog.read_manifest(model_dir)
  manifest.update(status=runlog.STATUS_INTERRUPTED, global_step=8)
  with open(os.path.join(model_dir, run_files.RUN_JSON), 'w') as f:
    json.dump(manifest, f)

  _train(tiny_data_dir, model_dir, *BATCH_NORM_FLAGS)

  assert runlog.read_manifest(model_dir)['status'] == runlog.STATUS_COMPLETE
  resumed, original = read_run_csv(model_dir), read_run_csv(base_run)
  np.testing.assert_array_equal(resumed['step'], np.arange(1, TOTAL_STEPS + 1))
  # Weights, Adam slots, BatchNorm statistics, the iterator's position and the running
  # metrics of the half-done epoch all come back from the checkpoint.
  for column in METRIC_COLUMNS:
    np.testing.assert_array_equal(resumed[column], original[column], err_msg=column)
  resumed = read_run_csv(model_dir, run_files.EPOCHS_CSV)
  original = read_run_csv(base_run, run_files.EPOCHS_CSV)
  for column in ('train_loss', 'val_loss'):
    np.testing.assert_array_equal(resumed[column], original[column])
  last_resumed = read_snapshot(model_dir, TOTAL_STEPS)
  last_original = read_snapshot(base_run, TOTAL_STEPS)
  for key in last_original:
    np.testing.assert_array_equal(last_resumed[key], last_original[key], err_msg=key)


def test_a_label_out_of_range_is_a_usage_error(tiny_data_dir, run_dirs):
  model_dir = str(run_dirs / 'bad_labels')
  result = run_entry('train_graph', *tiny_run_flags(tiny_data_dir, model_dir, '--num_classes=3',
                                                    '--allow_num_classes_mismatch'))
  assert result.returncode == 2, result.stderr[-3000:]
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith('train_graph: --data_dir=')
  assert 'label out of range [0, 3)' in message
  assert 'Traceback' not in result.stderr
  # The pre-flight check of the records finds it before the run directory is made.
  assert not os.path.exists(model_dir)


def test_require_gpu_without_a_gpu_is_a_usage_error(tiny_data_dir, run_dirs):
  """--require_gpu stops a job that would silently train on the CPU (here GPUs are
  hidden, as a driver mismatch hides them), with one line."""
  model_dir = str(run_dirs / 'no_gpu')
  result = run_entry('train_graph', *tiny_run_flags(tiny_data_dir, model_dir, '--require_gpu'),
                     env={'CUDA_VISIBLE_DEVICES': ''})
  assert result.returncode == 2, result.stderr[-3000:]
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith('train_graph: --require_gpu: TensorFlow sees no GPU here')
  assert not os.path.exists(model_dir)


def test_save_init_weights_writes_the_model_weights(graph_init_weights):
  weights = run_files.load_weights(graph_init_weights)
  assert weights['conv1/kernel'].shape == (3, 3, 3, 64)
  assert weights['logits/kernel'].shape == (256, 4)
  assert not any(key.startswith('bn') for key in weights)
