"""bin/train_eager (issue 4): the custom tf.function loop and model.fit, end to end.

Every run is a subprocess on the tiny synthetic dataset (Keras 3 never shares the test
process). Runs are module-scoped and shared between assertions, and those that do not
depend on each other train at once: each costs seconds of TensorFlow start-up on a
2-core machine.
"""

import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import (REPO, TINY, TINY_IMAGE_SIZE, at_once, read_run_csv, read_snapshot,
                      run_entry, run_python, tiny_run_flags)
from tf1compat.runs import atomic
from tf1compat.runs import run_files
from tf1compat.runs import runlog

EPSILON = '1e-07'
COMPARED_STEPS = 10
# tiny_run_flags: 2 epochs of 6 steps, snapshots after 0, 1, 2, 5 and the last step.
EPOCHS, STEPS_PER_EPOCH = 2, 6
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


def train_eager(*args, expect=0, env=None):
  """Runs bin/train_eager and checks its exit code; returns the CompletedProcess."""
  proc = run_entry('train_eager', *args, env=env)
  assert proc.returncode == expect, f'exit {proc.returncode}:\n{proc.stderr[-4000:]}'
  return proc


def last_line(stderr):
  return stderr.strip().splitlines()[-1]


def mark_interrupted(model_dir):
  manifest = runlog.read_manifest(model_dir)
  manifest['status'] = runlog.STATUS_INTERRUPTED
  atomic.atomic_write_json(os.path.join(model_dir, run_files.RUN_JSON), manifest)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp('eager')


@pytest.fixture(scope='module')
def init_weights(tiny_data_dir, workdir):
  """One initial-weights file, written by --save_init_weights."""
  path = str(workdir / 'init.npz')
  model_dir = workdir / 'never_created'
  train_eager(*tiny_run_flags(tiny_data_dir, model_dir, f'--save_init_weights={path}'))
  assert not model_dir.exists()
  return path


@pytest.fixture(scope='module')
def loop_args(tiny_data_dir, init_weights):
  """The full command line of a loop's run into `model_dir` (same start for both)."""
  def args(loop, model_dir, *extra):
    return tiny_run_flags(tiny_data_dir, model_dir, f'--loop={loop}',
                          f'--init_weights={init_weights}', f'--adam_epsilon={EPSILON}',
                          '--checkpoint_every=3', *extra)
  return args


@pytest.fixture(scope='module')
def runs(loop_args, workdir):
  """{'custom': run dir, 'fit': run dir}: both loops, same init weights and epsilon; and
  'jit' and 'bfloat16': the custom loop's first 2 steps with --jit_compile, with
  --mixed_bfloat16."""
  args = {loop: loop_args(loop, str(workdir / loop)) for loop in ('custom', 'fit')}
  for name, switch in (('jit', '--jit_compile'), ('bfloat16', '--mixed_bfloat16')):
    args[name] = loop_args('custom', str(workdir / name), switch, '--epochs=1',
                           '--steps_per_epoch=2')
  at_once(*(functools.partial(train_eager, *flags) for flags in args.values()))
  return {name: str(workdir / name) for name in args}


def test_save_init_weights_writes_every_model_weight(init_weights):
  with np.load(init_weights) as npz:
    shapes = {key: npz[key].shape for key in npz.files}
  assert shapes['conv1/kernel'] == (3, 3, 3, 64)
  assert shapes['logits/kernel'] == (256, TINY['num_classes'])
  assert len(shapes) == 10  # 4 conv + logits, kernel and bias each.


@pytest.mark.parametrize('loop,runner', [('custom', 'eager'), ('fit', 'fit')])
def test_loop_writes_a_complete_run_directory(runs, init_weights, loop, runner):
  model_dir = runs[loop]
  manifest = runlog.read_manifest(model_dir)
  assert manifest['runner'] == runner
  assert manifest['status'] == runlog.STATUS_COMPLETE
  assert manifest['global_step'] == TOTAL_STEPS
  assert manifest['optimizer'] == {'name': 'keras.optimizers.Adam', 'algorithm': 'adam',
                                   'learning_rate': 0.001, 'beta_1': 0.9, 'beta_2': 0.999,
                                   'epsilon': 1e-7, 'schedule': None}
  assert manifest['versions']['keras'].startswith('3.')
  assert manifest['flags']['loop'] == loop
  assert manifest['init_weights_sha256'] == run_files.file_sha256(init_weights)
  assert manifest['kernels']['batch_norm_variance'] == 'biased'
  # The settings that change the numbers (numerics.py), as the process ran.
  assert manifest['settings']['tf32'] is True and manifest['settings']['op_determinism'] is True
  assert manifest['settings']['intra_op_threads'] == 0
  assert set(manifest['final_metrics']) == {'train_loss', 'train_accuracy', 'val_loss',
                                            'val_accuracy'}

  steps = read_run_csv(model_dir)
  assert list(steps) == list(runlog.STEP_COLUMNS)
  np.testing.assert_array_equal(steps['step'], np.arange(1, TOTAL_STEPS + 1))
  assert np.all(np.isfinite(steps['loss']))
  epochs = read_run_csv(model_dir, run_files.EPOCHS_CSV)
  assert list(epochs) == list(runlog.EPOCH_COLUMNS)
  np.testing.assert_array_equal(epochs['epoch'], [1, 2])
  assert np.all(np.isfinite(epochs['val_loss']))
  # Loss falls: the second epoch's mean below the first's, the last batches below the first.
  assert epochs['train_loss'][1] < epochs['train_loss'][0]
  assert steps['loss'][-3:].mean() < steps['loss'][:3].mean()

  assert run_files.snapshot_steps_in(model_dir) == [0, 1, 2, 5, TOTAL_STEPS]
  with np.load(init_weights) as npz:
    for key, value in read_snapshot(model_dir, 0).items():
      np.testing.assert_array_equal(value, npz[key])
  names = os.listdir(model_dir)
  assert any(name.startswith('events.') for name in names)
  assert os.path.exists(os.path.join(model_dir, 'export', 'saved_model.pb'))
  assert os.path.exists(os.path.join(model_dir, 'model.keras'))
  assert os.listdir(os.path.join(model_dir, run_files.CHECKPOINTS_DIR))


def test_custom_and_fit_train_alike_from_the_same_start(runs):
  custom, fit = read_run_csv(runs['custom']), read_run_csv(runs['fit'])
  # The first loss is computed on the initial weights: the same number in both loops.
  np.testing.assert_allclose(fit['loss'][0], custom['loss'][0], rtol=1e-7)
  n = COMPARED_STEPS
  relative = np.abs(fit['loss'][:n] - custom['loss'][:n]) / np.abs(custom['loss'][:n])
  assert relative.max() <= 1e-5, relative
  np.testing.assert_allclose(fit['mean_loss'], custom['mean_loss'], rtol=1e-6)
  np.testing.assert_allclose(fit['accuracy'], custom['accuracy'], rtol=1e-6)
  np.testing.assert_array_equal(fit['batch_accuracy'], custom['batch_accuracy'])
  for step in (5, TOTAL_STEPS):
    expected = read_snapshot(runs['custom'], step)
    for key, value in read_snapshot(runs['fit'], step).items():
      np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-7, err_msg=key)
  custom_epochs = read_run_csv(runs['custom'], run_files.EPOCHS_CSV)
  fit_epochs = read_run_csv(runs['fit'], run_files.EPOCHS_CSV)
  for name in ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy'):
    np.testing.assert_allclose(fit_epochs[name], custom_epochs[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize('loop', ['custom', 'fit'])
def test_running_metrics_are_reset_every_epoch(runs, loop):
  steps = read_run_csv(runs[loop])
  epochs = read_run_csv(runs[loop], run_files.EPOCHS_CSV)
  for epoch in (1, 2):
    rows = steps['epoch'] == epoch
    k = np.arange(1, STEPS_PER_EPOCH + 1)
    np.testing.assert_allclose(steps['mean_loss'][rows], np.cumsum(steps['loss'][rows]) / k,
                               rtol=1e-5)
    np.testing.assert_allclose(steps['accuracy'][rows],
                               np.cumsum(steps['batch_accuracy'][rows]) / k, rtol=1e-5)
    assert epochs['train_loss'][epoch - 1] == steps['mean_loss'][rows][-1]
    assert epochs['train_accuracy'][epoch - 1] == steps['accuracy'][rows][-1]
  # Batch accuracies are multiples of 1/batch (fit's are recovered from running means).
  scaled = steps['batch_accuracy'] * 8
  np.testing.assert_array_equal(scaled, np.round(scaled))


def test_jit_compile_gives_the_same_first_step_loss(runs):
  model_dir = runs['jit']
  assert runlog.read_manifest(model_dir)['jit_compile'] is True
  jit, plain = read_run_csv(model_dir)['loss'], read_run_csv(runs['custom'])['loss']
  np.testing.assert_allclose(jit[:2], plain[:2], rtol=1e-6)


def test_mixed_bfloat16_computes_in_bfloat16_without_loss_scaling(runs):
  model_dir = runs['bfloat16']
  manifest = runlog.read_manifest(model_dir)
  assert manifest['dtype_policy'] == 'mixed_bfloat16'
  bfloat16, plain = read_run_csv(model_dir)['loss'], read_run_csv(runs['custom'])['loss']
  # The same weights and batch; bfloat16 keeps 8 significant bits (2**-8 = 0.4% apart per
  # rounding), so the losses agree to about a percent and are not the float32 ones.
  np.testing.assert_allclose(bfloat16[0], plain[0], rtol=0.02)
  assert bfloat16[0] != plain[0]
  assert all(value.dtype == np.float32 for value in read_snapshot(model_dir, 2).values())


def test_rerun_of_a_complete_run_is_refused(runs, loop_args):
  proc = train_eager(*loop_args('custom', runs['custom']), expect=2)
  assert 'Traceback' not in proc.stderr
  line = last_line(proc.stderr)
  assert line.startswith('train_eager: ')
  assert 'complete eager run' in line and '--overwrite' in line


@pytest.fixture(scope='module')
def resumed_runs(runs, loop_args, workdir):
  """{loop: (run dir, CompletedProcess)}: copies of both loops' runs, rewound as if
  interrupted, then rerun (at once).

  'custom' is rewound to its step-3 checkpoint: the rerun must redo steps 4..12 exactly
  as the first run did. 'fit' is back at the end of epoch 1: BackupAndRestore keeps the
  previous epoch's state as *.bkp (double_checkpoint), made current here.
  """
  dirs = {loop: str(workdir / f'{loop}_resumed') for loop in ('custom', 'fit')}
  for loop, model_dir in dirs.items():
    shutil.copytree(runs[loop], model_dir)
    mark_interrupted(model_dir)
  with open(os.path.join(dirs['custom'], run_files.CHECKPOINTS_DIR, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n')
  backup = os.path.join(dirs['fit'], run_files.CHECKPOINTS_DIR, 'backup')
  for name in ('latest.weights.h5', 'training_metadata.json'):
    os.replace(os.path.join(backup, name + '.bkp'), os.path.join(backup, name))
  procs = at_once(*(functools.partial(train_eager, *loop_args(loop, model_dir))
                    for loop, model_dir in dirs.items()))
  return {loop: (dirs[loop], proc) for loop, proc in zip(dirs, procs)}


def test_custom_loop_resumes_mid_epoch_on_the_same_batches(runs, resumed_runs):
  model_dir, proc = resumed_runs['custom']
  assert 'resuming' in proc.stderr
  assert runlog.read_manifest(model_dir)['status'] == runlog.STATUS_COMPLETE
  original, resumed = read_run_csv(runs['custom']), read_run_csv(model_dir)
  for name in runlog.STEP_COLUMNS[:-1]:  # all but seconds
    np.testing.assert_array_equal(resumed[name], original[name], err_msg=name)
  original_epochs = read_run_csv(runs['custom'], run_files.EPOCHS_CSV)
  resumed_epochs = read_run_csv(model_dir, run_files.EPOCHS_CSV)
  for name in runlog.EPOCH_COLUMNS[:-1]:
    np.testing.assert_array_equal(resumed_epochs[name], original_epochs[name], err_msg=name)
  expected = read_snapshot(runs['custom'], TOTAL_STEPS)
  for key, value in read_snapshot(model_dir, TOTAL_STEPS).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_fit_resumes_at_the_last_epoch_end(runs, resumed_runs):
  model_dir, proc = resumed_runs['fit']
  assert f'from step {STEPS_PER_EPOCH}' in proc.stderr
  original, resumed = read_run_csv(runs['fit']), read_run_csv(model_dir)
  for name in runlog.STEP_COLUMNS[:-1]:
    np.testing.assert_array_equal(resumed[name], original[name], err_msg=name)
  expected = read_snapshot(runs['fit'], TOTAL_STEPS)
  for key, value in read_snapshot(model_dir, TOTAL_STEPS).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)


@pytest.fixture(scope='module')
def fit_nan_run(tiny_data_dir, workdir):
  """(CompletedProcess, the folder it ran in) of model.fit started without --model_dir,
  whose loss overflows: Adam moves every weight by about the learning rate, and 1e30
  overflows at step 2."""
  cwd = workdir / 'fit_nan'
  cwd.mkdir()
  args = [arg for arg in tiny_run_flags(tiny_data_dir, 'unused') if '--model_dir' not in arg]
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'bin', 'train_eager'), '--loop=fit',
                         '--learning_rate=1e30', *args], cwd=cwd, capture_output=True,
                        text=True, check=False)
  return proc, cwd


def test_nan_loss_in_fit_exits_3_and_marks_the_run_failed(fit_nan_run):
  proc, cwd = fit_nan_run
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert 'loss is nan at step 2' in last_line(proc.stderr)
  (run_dir,) = (cwd / 'runs').iterdir()
  assert runlog.read_manifest(str(run_dir))['status'] == runlog.STATUS_FAILED


def test_fit_without_model_dir_writes_runs_fit(fit_nan_run):
  """Every runner's default run directory is runs/<runner>, followed by the flags set
  otherwise than their defaults: fit's is not the custom loop's runs/eager."""
  proc, cwd = fit_nan_run
  assert proc.returncode == 3, proc.stderr[-2000:]
  (run_dir,) = (cwd / 'runs').iterdir()
  assert run_dir.name.startswith('fit-batch_size-8+data_dir-')
  assert runlog.read_manifest(str(run_dir))['runner'] == 'fit'


def test_label_out_of_range_is_a_usage_error(tiny_data_dir, workdir):
  proc = train_eager(*tiny_run_flags(tiny_data_dir, str(workdir / 'labels'),
                                     '--num_classes=2', '--allow_num_classes_mismatch'),
                     expect=2)
  assert 'Traceback' not in proc.stderr
  line = last_line(proc.stderr)
  assert f'--data_dir={tiny_data_dir}' in line and 'label out of range [0, 2)' in line


def test_mixed_precision_smoke_ignores_legacy_keras_env(tiny_data_dir, workdir):
  model_dir = str(workdir / 'mixed')
  proc = train_eager(*tiny_run_flags(tiny_data_dir, model_dir, '--mixed_precision',
                                     '--epochs=1', '--steps_per_epoch=2'),
                     env={'TF_USE_LEGACY_KERAS': '1'})
  assert 'TF_USE_LEGACY_KERAS=1 ignored' in proc.stderr
  manifest = runlog.read_manifest(model_dir)
  assert manifest['dtype_policy'] == 'mixed_float16'
  assert manifest['versions']['keras'].startswith('3.')
  assert np.all(np.isfinite(read_run_csv(model_dir)['loss']))
  assert all(value.dtype == np.float32 for value in read_snapshot(model_dir, 2).values())


def test_a_keras3_process_starts_without_matplotlib_and_a_team_module_still_imports_it():
  """process.use_keras3 keeps Keras' image-gallery helpers from loading matplotlib (half a
  CPU-second of every eager runner's start), and nothing else loses it."""
  proc = run_python('import sys\n'
                    'from tf1compat.runtime import process\n'
                    'process.use_keras3()\n'
                    'print("tensorflow" in sys.modules, "matplotlib" in sys.modules)\n'
                    'import matplotlib.pyplot\n'
                    'print(matplotlib.pyplot.__name__)\n')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['True', 'False', 'matplotlib.pyplot']


_BN_LAYERS = r'''
import json, sys
import numpy as np
import keras
from tf1compat.train import tf1_kernels

x = np.load(sys.argv[1])
out = {}
for name, cls in (('tf1', tf1_kernels.TF1BatchNormalization),
                  ('keras', keras.layers.BatchNormalization)):
  layer = cls(name='bn1')
  train = np.asarray(layer(x, training=True))
  infer = np.asarray(layer(x, training=False))
  out[name] = {'moving_mean': np.asarray(layer.moving_mean).tolist(),
               'moving_variance': np.asarray(layer.moving_variance).tolist(),
               'train': train.tolist(), 'infer': infer.tolist(),
               'momentum': layer.momentum, 'epsilon': layer.epsilon}
print(json.dumps(out))
'''


def test_tf1_bn_variance_matches_the_numpy_oracle(tmp_path):
  batch = np.random.default_rng(0).normal(1.0, 2.0, size=(8, 5, 5, 4)).astype(np.float32)
  np.save(tmp_path / 'x.npy', batch)
  proc = run_python(_BN_LAYERS, str(tmp_path / 'x.npy'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  layers = json.loads(proc.stdout.strip().splitlines()[-1])
  x = batch.astype(np.float64)
  n = 8 * 5 * 5
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # var: the biased one
  momentum, epsilon = layers['tf1']['momentum'], layers['tf1']['epsilon']
  normalized = (x - mean) / np.sqrt(var + epsilon)
  for name, variance_update in (('tf1', var * n / (n - 1)), ('keras', var)):
    layer = layers[name]
    moving_mean = (1 - momentum) * mean
    moving_variance = momentum * 1.0 + (1 - momentum) * variance_update
    np.testing.assert_allclose(layer['moving_mean'], moving_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer['moving_variance'], moving_variance, rtol=1e-6)
    # Training normalizes with the biased batch variance in both; inference uses the
    # moving statistics.
    np.testing.assert_allclose(layer['train'], normalized, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        layer['infer'], (x - moving_mean) / np.sqrt(moving_variance + epsilon),
        rtol=1e-4, atol=1e-5)
  assert not np.allclose(layers['tf1']['moving_variance'], layers['keras']['moving_variance'],
                         rtol=1e-7, atol=0)


_GRAPH_MODEL_LOADS = r'''
import json, os, sys
os.environ['TF_USE_LEGACY_KERAS'] = '1'
import numpy as np
import tensorflow as tf
tf.compat.v1.disable_v2_behavior()
from tf1compat.train.models import convnet
from tf1compat.train.models import keras_facts

net = convnet.build_model(tf.keras, num_classes=int(sys.argv[2]), image_size=int(sys.argv[3]),
                        batch_norm=True)
with np.load(sys.argv[1]) as npz:
  weights = {key: npz[key] for key in npz.files}
items = keras_facts.weight_items(net)
shapes = {key: v.shape.as_list() for key, v in items}
net.set_weights([weights[key] for key, _ in items])
loaded = all(np.array_equal(value, weights[key])
             for (key, _), value in zip(items, net.get_weights()))
print(json.dumps({'keras': tf.keras.__name__, 'shapes': shapes, 'loaded': loaded}))
'''


def test_snapshot_loads_into_the_graph_runners_model(tiny_data_dir, workdir):
  model_dir = str(workdir / 'bn')
  train_eager(*tiny_run_flags(tiny_data_dir, model_dir, '--batch_norm', '--tf1_bn_variance',
                              '--epochs=1', '--steps_per_epoch=2'))
  assert runlog.read_manifest(model_dir)['kernels']['batch_norm_variance'] == 'bessel_corrected'
  eager = read_snapshot(model_dir, 2)
  proc = run_python(_GRAPH_MODEL_LOADS, run_files.snapshot_path(model_dir, 2),
                    str(TINY['num_classes']), str(TINY_IMAGE_SIZE))
  assert proc.returncode == 0, proc.stderr[-3000:]
  graph = json.loads(proc.stdout.strip().splitlines()[-1])
  assert graph['keras'].startswith('tf_keras')  # the graph runner's Keras 2
  assert graph['shapes'] == {key: list(value.shape) for key, value in eager.items()}
  assert 'bn4/moving_variance' in graph['shapes']
  assert graph['loaded']
