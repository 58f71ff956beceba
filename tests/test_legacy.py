"""The real legacy stack: the legacy loop on TensorFlow 1.15 / Python 3.7 as the migration
ladder's first rung, and the recorder installed alone.

The cheap tests run by default (no TensorFlow 1.15 needed). Those marked `legacy` need a
Python 3.7 and make TensorFlow 1.15's environment once per session (bin/legacy_env; about
a minute with pip's wheel cache warm, set TF1COMPAT_LEGACY_ENV=DIR to keep one across
sessions); without a Python 3.7 they skip, saying so.
"""

import ast
import functools
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_IMAGE_SIZE, at_once, read_run_csv, run_entry
from test_data import bad_records_dir
from test_parity import make_run
import test_optimizers
from tf1compat.judge import legacy_env
from tf1compat.judge import parity
from tf1compat.judge import runner_jobs
from tf1compat.judge import tiers
from tf1compat.runs import batch_record
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import probes
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runs import team_models

# Three passes through the tiny training set (64 records, 8 batches of 8 a pass): both
# TensorFlows read the same batches at every step, whatever the pass.
PASSES = 3
THREE_PASSES = [f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=3',
                '--steps_per_epoch=8', '--shuffle_buffer=64', '--snapshot_steps=0,1,2,5']
# The run of docs/legacy-stack.md's false alarms: 12 steps of the tiny data.
TWELVE_STEPS = [f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=2',
                '--steps_per_epoch=6', '--shuffle_buffer=64', '--snapshot_steps=0,1,2,5']
RECORDER_DIR = os.path.join(REPO, 'recorder')
TF215 = {'python': '3.12.1', 'numpy': '2.1.0', 'tensorflow': '2.21.0',
         'keras_implementation': runlog.KERAS_TF_KERAS, 'keras': '2.21.0'}
TF115 = {'python': '3.7.16', 'numpy': '1.18.5', 'tensorflow': '1.15.0',
         'keras_implementation': runlog.KERAS_BUNDLED, 'keras': '2.2.4-tf'}


# --- default: the lint, the ladder, the jobs, the recorder's distribution -------------------

def _stack_run(path, versions, fused, **kwargs):
  return make_run(path, manifest_extra={
      'versions': versions, 'model_summary': {'batch_norm_fused': fused}}, **kwargs)


def test_the_lint_reports_versions_and_names_a_changed_default_without_failing(tmp_path):
  reference, legacy = str(tmp_path / 'graph'), str(tmp_path / 'tf115')
  _stack_run(reference, TF215, [True])
  _stack_run(legacy, TF115, [False], weight_offsets={('conv1/kernel', 2): 1e-3})
  report = parity.compare([reference, legacy], parity.Tolerances())
  pair = report['pairs'][0]
  assert pair['tiers']['config']['passed'], pair['lint']
  assert [(d['field'], d['reference'], d['other']) for d in pair['lint']] == [
      ('BatchNorm fused kernel', [True], [False])]
  assert pair['lint'][0]['version_default'] and pair['lint'][0]['equivalent']
  versions = {v['field']: v for v in pair['versions']}
  assert versions['TensorFlow']['reference'] == '2.21.0'
  assert versions['TensorFlow']['other'] == '1.15.0' and not versions['TensorFlow']['same']
  assert versions['Keras implementation']['other'] == runlog.KERAS_BUNDLED
  # Same losses; the weights part at the first snapshot after the offset, conv1 first.
  assert pair['parting'] == {'loss_step': None, 'loss_difference': None, 'weight_step': 2,
                             'first_variable': 'conv1/kernel',
                             'weight_difference': pytest.approx(
                                 pair['weight_tier']['per_step'][2]['variables']
                                 ['conv1/kernel'])}
  rung = parity.ladder(report, legacy)[0]
  assert (rung['from'], rung['to']) == ('graph:tf115', 'graph:graph')
  assert rung['versions']['TensorFlow'] == ('1.15.0', '2.21.0')
  assert rung['parting']['weight_step'] == 2


def test_a_different_tensorflow_alone_is_not_a_lint_difference(tmp_path):
  reference, other = str(tmp_path / 'a'), str(tmp_path / 'b')
  _stack_run(reference, TF215, [True])
  _stack_run(other, TF115, [True])
  pair = parity.compare([reference, other], parity.Tolerances())['pairs'][0]
  assert pair['lint'] == [] and pair['verdict'] == 'PASS' and pair['bit_identical']
  assert pair['parting']['loss_step'] is None and pair['parting']['weight_step'] is None


def test_tf115_and_tf2_runs_are_compared_step_wise_over_every_pass(tmp_path):
  """Our runners' TF 1.15 and TF 2 runs read the same batches on every pass through the
  training records (32 here, batches of 8: 4 steps a pass): the step and weight tiers
  measure every step and judge it; their kernels' rounding (tf1_rounding) is named, and
  the controls of other kinds measure such rounding (docs/parity.md)."""
  losses = np.linspace(2.0, 1.0, 8)
  later = losses * np.where(np.arange(8) < 4, 1.0, 1.001)
  data = {'records': {'train': 32, 'val': 8}}

  def run(name, versions, run_losses, offset, batch_norm=False):
    return make_run(str(tmp_path / name), losses=run_losses,
                    weight_offsets={('logits/bias', 8): offset},
                    flags_extra={'batch_norm': batch_norm},
                    manifest_extra={'versions': versions, 'data': data})

  reference = run('graph', TF215, losses, 0.0)
  legacy = run('tf115', TF115, later, 1e-2)
  pair = parity.compare([reference, legacy], parity.Tolerances())['pairs'][0]
  assert list(pair['framework_differences']) == ['tf1_rounding']
  assert pair['step_tier']['steps'] == 8 and pair['weight_tier']['judged_steps'] == [0, 1, 2, 8]
  assert pair['tiers']['step']['judged'] and pair['step_tier']['first_step_over'] == 5
  assert pair['verdict'] == 'FAIL' and pair['parting']['loss_step'] == 5
  # The same pair on one TensorFlow: judged alike.
  same = run('graph_again', TF215, later, 1e-2)
  pair = parity.compare([reference, same], parity.Tolerances())['pairs'][0]
  assert 'tf1_rounding' not in pair['framework_differences']
  assert pair['verdict'] == 'FAIL' and pair['step_tier']['first_step_over'] == 5
  # With BatchNorm, TF 1.15's kernels round as no control does: reported, not judged.
  reference = run('graph_bn', TF215, losses, 0.0, batch_norm=True)
  legacy = run('tf115_bn', TF115, later, 1e-2, batch_norm=True)
  pair = parity.compare([reference, legacy], parity.Tolerances())['pairs'][0]
  assert list(pair['framework_differences']) == ['tf1_rounding', 'tf1_batch_norm']
  assert not pair['tiers']['step']['judged'] and pair['verdict'] == 'PASS'


def test_the_legacy_pitfall_goes_into_the_tf115_run_and_the_reference_stays_correct():
  cfg = config.CheckParityConfig(legacy_python='/envs/tf115/bin/python',
                                 pitfall='metrics_never_reset')
  jobs = {job.name: job for job in runner_jobs.jobs(cfg)}
  assert list(jobs) == ['graph', runner_jobs.CONTROL, runner_jobs.LEGACY, 'eager']
  assert '--reset_metrics=never' in jobs[runner_jobs.LEGACY].args
  assert jobs[runner_jobs.LEGACY].python == '/envs/tf115/bin/python'
  for name in ('graph', runner_jobs.CONTROL, 'eager'):
    assert '--reset_metrics=never' not in jobs[name].args and jobs[name].python is None
  # The first rung gets the legacy loop's own arguments: no port flag, the legacy epsilon.
  assert not set(runner_jobs.EXACT_PORT_ARGS) & set(jobs[runner_jobs.LEGACY].args)
  assert '--epsilon=1e-08' in jobs[runner_jobs.LEGACY].args
  without = {job.name: job for job in runner_jobs.jobs(config.CheckParityConfig(
      pitfall='metrics_never_reset'))}
  assert runner_jobs.LEGACY not in without and '--reset_metrics=never' in without['graph'].args


def test_with_dropout_both_legacy_runs_draw_seeded_masks_and_the_control_others():
  jobs = {job.name: job for job in runner_jobs.jobs(config.CheckParityConfig(
      legacy_python='/envs/tf115/bin/python', dropout=0.3, seed=5))}
  seeds = {name: [a for a in job.args if a.startswith('--dropout_seed=')]
           for name, job in jobs.items()}
  assert seeds['graph'] == seeds[runner_jobs.LEGACY] == ['--dropout_seed=5']
  assert seeds[runner_jobs.CONTROL][-1] == '--dropout_seed=6' and seeds['eager'] == []


def test_graph_runs_seeded_alike_draw_the_same_dropout_masks(tmp_path):
  dropout = {'dropout': 0.3, 'dropout_seed': 5}
  reference = make_run(str(tmp_path / 'graph'), flags_extra=dropout,
                       manifest_extra={'versions': TF215})
  legacy = make_run(str(tmp_path / 'tf115'), flags_extra=dropout,
                    manifest_extra={'versions': TF115})
  other_seed = make_run(str(tmp_path / 'tf115_unseeded'), manifest_extra={'versions': TF115},
                        flags_extra={'dropout': 0.3, 'dropout_seed': None})
  pairs = parity.compare([reference, legacy, other_seed], parity.Tolerances())['pairs']
  assert 'dropout_masks' not in pairs[0]['framework_differences']
  assert 'dropout_masks' in pairs[1]['framework_differences']


def _tf1compat_imports(path):
  """The tf1compat modules ('tf1compat.runs.runlog') and the other top-level packages the
  module at `path` imports."""
  with open(path) as f:
    tree = ast.parse(f.read())
  ours, others = set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'tf1compat':
      ours.update(f'{node.module}.{alias.name}' for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      others.add(node.module.split('.')[0])
    elif isinstance(node, ast.Import):
      others.update(alias.name.split('.')[0] for alias in node.names)
  return ours, others


def test_the_recorder_distribution_holds_all_it_imports_and_no_tensorflow_or_absl():
  with open(os.path.join(RECORDER_DIR, 'setup.py')) as f:
    tree = ast.parse(f.read())
  packages = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Assign) and node.targets[0].id == 'PACKAGES')
  assert packages == ('tf1compat', 'tf1compat.runs')
  runs_dir = os.path.join(REPO, 'tf1compat', 'runs')
  modules = {name[:-3] for name in os.listdir(runs_dir) if name.endswith('.py')}
  assert {'recorder', 'team_models'} <= modules
  for path in [os.path.join(REPO, 'tf1compat', '__init__.py'),
               *(os.path.join(runs_dir, f'{name}.py') for name in sorted(modules))]:
    ours, others = _tf1compat_imports(path)
    assert ours <= {f'tf1compat.runs.{name}' for name in modules}, (path, ours)
    assert not others & {'tensorflow', 'absl', 'keras', 'tf_keras', 'tqdm'}, (path, others)


def test_legacy_env_without_a_python37_is_one_line_and_exit_2(tmp_path):
  empty = tmp_path / 'no_python'
  empty.mkdir()
  result = run_entry('legacy_env', str(tmp_path / 'env'), env={
      'PATH': str(empty), 'PYENV_ROOT': str(empty), 'HOME': str(empty)})
  assert result.returncode == errors.EXIT_USAGE
  assert result.stderr.strip().splitlines() == [
      'legacy_env: no Python 3.7 found (python3.7 on PATH, or pyenv\'s under '
      '$(pyenv root)/versions/3.7.*); install one (pyenv install 3.7.16) or pass --python=PATH']
  assert not os.path.exists(tmp_path / 'env')
  with pytest.raises(errors.UsageError, match='no such interpreter'):
    legacy_env.check(str(tmp_path / 'missing' / 'python'))


# --- legacy: TensorFlow 1.15 on Python 3.7 --------------------------------------------------

@pytest.fixture(scope='session')
def python37():
  """The machine's Python 3.7 (skips where there is none)."""
  found = legacy_env.find_python37()
  if found is None:
    pytest.skip('no Python 3.7 on this host (python3.7 on PATH or pyenv\'s 3.7.*): the real '
                'legacy stack, TensorFlow 1.15, needs one')
  return found


@pytest.fixture(scope='session')
def legacy_python(python37, tmp_path_factory):
  """A Python 3.7 with TensorFlow 1.15, made by bin/legacy_env once per session (or the
  one in $TF1COMPAT_LEGACY_ENV, made there once)."""
  folder = os.environ.get('TF1COMPAT_LEGACY_ENV') or str(
      tmp_path_factory.getbasetemp() / 'legacy_env')
  result = run_entry('legacy_env', folder, f'--python={python37}', timeout=1800)
  assert result.returncode == 0, result.stdout + result.stderr
  return legacy_env.venv_python(folder)


def _batches_snippet(data_dir, out, batches, on_bad_record):
  """The first `batches` training batches in this stack, each with the fingerprints of its
  serialized records (farmhash, which both TensorFlows compute alike)."""
  return f"""
import numpy as np
from tf1compat.runtime import process
tf = process.use_legacy_keras()
from tf1compat.data import data_check
from tf1compat.data import pipeline
parse_example = pipeline.parse_example
pipeline.parse_example = lambda record, *args: (*parse_example(record, *args),
                                            tf.strings.to_hash_bucket_fast(record, 2**62))
spec = data_check.check_data_dir({data_dir!r}, None, {on_bad_record!r}, False)
dataset = pipeline.make_dataset(spec.train_files, image_size={TINY_IMAGE_SIZE}, batch_size=8,
                            num_classes=spec.num_classes, seed=3, shuffle_buffer=64,
                            skip=spec.skip('train'))
batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
with tf.compat.v1.Session() as sess:
  got = [sess.run(batch) for _ in range({batches})]
np.savez({out!r}, **{{name: np.stack([g[k] for g in got])
                     for k, name in enumerate(('images', 'labels', 'records'))}})
"""


def _batches_in_both_stacks(legacy_python, data_dir, tmp_path, batches, on_bad_record='fail'):
  """{'tf115': ..., 'here': ...}: the first `batches` training batches in each stack
  (_batches_snippet's arrays)."""
  outs = {}
  for name, python in (('tf115', legacy_python), ('here', sys.executable)):
    outs[name] = str(tmp_path / f'{name}.npz')
    env = {**os.environ, 'PYTHONPATH': legacy_env.source_path(str(tmp_path / 'src'))}
    done = subprocess.run(
        [python, '-c', _batches_snippet(data_dir, outs[name], batches, on_bad_record)],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
  out = {}
  for name, path in outs.items():
    with np.load(path) as npz:
      out[name] = {key: npz[key] for key in npz.files}
  return out


@pytest.mark.legacy
def test_tensorflow_115_reads_the_same_batches(legacy_python, tiny_data_dir, tmp_path):
  """The pipeline gives TF 1.15 the batches of this TensorFlow over three passes through
  the tiny training set (8 batches of 8 a pass): the same records in the same order with
  the same labels, bit for bit, the images equal up to per_image_standardization's float32
  rounding (its mean and deviation are reductions whose summation order differs between
  the two TensorFlows' Eigen)."""
  batches = PASSES * 8
  got = _batches_in_both_stacks(legacy_python, tiny_data_dir, tmp_path, batches)
  a, b = got['tf115'], got['here']
  assert a['images'].shape == (batches, 8, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
  np.testing.assert_array_equal(a['records'], b['records'])
  np.testing.assert_array_equal(a['labels'], b['labels'])
  # Every pass reads every record once, and the passes in other orders.
  passes = a['records'].reshape(PASSES, -1)
  assert [len(set(p)) for p in passes] == [64] * PASSES
  assert len({p.tobytes() for p in passes}) == PASSES
  # Standardized pixels are about unit-sized; float32 rounding of the image's mean and
  # deviation moves them by a few ulps of the mean (measured: at most 3.4e-6).
  np.testing.assert_allclose(a['images'], b['images'], rtol=0, atol=2e-5)


@pytest.mark.legacy
def test_tensorflow_115_skips_the_bad_records_this_tensorflow_skips(legacy_python,
                                                                    tiny_data_dir, tmp_path):
  """--on_bad_record=skip on TF 1.15: its check finds the bad records (tf.data's
  ignore_errors, through stacks), and the batches of three passes over the 67 good records
  are this TensorFlow's."""
  data_dir = bad_records_dir(tiny_data_dir, tmp_path / 'data')
  batches = PASSES * 67 // 8
  got = _batches_in_both_stacks(legacy_python, data_dir, tmp_path, batches, 'skip')
  np.testing.assert_array_equal(got['tf115']['records'], got['here']['records'])
  np.testing.assert_array_equal(got['tf115']['labels'], got['here']['labels'])
  assert len(set(got['here']['records'].ravel())) == 67


@pytest.fixture(scope='session')
def ladder_checks(legacy_python, tiny_data_dir, tmp_path_factory):
  """check_parity --legacy_python on the tiny data, matched and then with the seed's
  never-reset metrics in the TF 1.15 run (which retrains that run only)."""
  out = str(tmp_path_factory.mktemp('ladder'))
  done = {}
  for name, extra in (('matched', ('--localize',)),
                      ('metrics_never_reset', ('--pitfall=metrics_never_reset', '--overwrite'))):
    result = run_entry('check_parity', f'--data_dir={tiny_data_dir}', f'--output_dir={out}',
                       f'--legacy_python={legacy_python}', *THREE_PASSES, *extra)
    with open(os.path.join(out, 'parity.json')) as f:
      done[name] = (result, json.load(f))
  for name, extra in (('batch_norm', '--batch_norm'), ('dropout', '--dropout=0.3')):
    folder = str(tmp_path_factory.mktemp(f'ladder_{name}'))
    result = run_entry('check_parity', f'--data_dir={tiny_data_dir}', f'--output_dir={folder}',
                       f'--legacy_python={legacy_python}', *TWELVE_STEPS, extra)
    with open(os.path.join(folder, 'parity.json')) as f:
      done[name] = (result, json.load(f))
  return out, done


@pytest.mark.legacy
def test_the_ladder_passes_on_tiny_data(ladder_checks):
  out, done = ladder_checks
  result, report = done['matched']
  assert result.returncode == 0, result.stdout + result.stderr
  assert report['verdict'] == 'PASS'
  assert [(r['from'], r['to']) for r in report['ladder']] == [
      ('graph:tf115', 'graph:graph'), ('graph:graph', 'eager:eager')]
  assert 'migration ladder' in result.stdout and 'rung 1: graph:tf115 -> graph:graph' in (
      result.stdout)
  manifest = runlog.read_manifest(os.path.join(out, runner_jobs.LEGACY))
  assert manifest['versions']['tensorflow'] == '1.15.0'
  assert manifest['versions']['python'].startswith('3.7.')
  assert manifest['versions']['keras_implementation'] == runlog.KERAS_BUNDLED
  # TF1's own Keras, not the TF2 API TensorFlow 1.15 imports under an inherited
  # TF2_BEHAVIOR=1 (which TensorFlow 2 sets in this process).
  assert manifest['versions']['keras'] == '2.2.4-tf'
  assert manifest['versions']['numpy'].startswith('1.18.')
  reference = runlog.read_manifest(os.path.join(out, 'graph'))
  assert reference['init_weights_sha256'] == manifest['init_weights_sha256']
  assert reference['data'] == manifest['data']
  first_rung = next(p for p in report['pairs'] if p['other_label'] == 'graph:tf115')
  # The same batches on every pass: the step tier judges every step up to the horizon.
  assert list(first_rung['framework_differences']) == ['tf1_rounding']
  assert first_rung['tiers']['step']['judged']
  assert first_rung['step_tier']['steps'] == min(PASSES * 8,
                                                 report['calibration']['loss_horizon'])
  # The TF 1.15 run's first step replayed on TensorFlow 1.15 itself.
  assert first_rung['where']['judged'], first_rung['where']
  replays = os.path.join(out, 'localize')
  assert probes.load(os.path.join(replays, 'tf115.npz')).meta['tensorflow'] == '1.15.0'
  assert probes.load(os.path.join(replays, 'graph.npz')).meta['tensorflow'] == '2.21.0'


@pytest.mark.legacy
@pytest.mark.parametrize('name', ['batch_norm', 'dropout'])
def test_the_ladder_passes_with_batch_norm_and_with_dropout(ladder_checks, name):
  """The 12-step tiny runs that FAILed the first rung on its curves or steps before the
  batch order was one and the controls three kinds (docs/legacy-stack.md)."""
  result, report = ladder_checks[1][name]
  assert result.returncode == 0, result.stdout + result.stderr
  assert [rung['verdict'] for rung in report['ladder']] == ['PASS', 'PASS']


@pytest.mark.legacy
def test_a_pitfall_in_the_tf115_run_fails_and_is_named(ladder_checks):
  _, done = ladder_checks
  result, report = done['metrics_never_reset']
  assert result.returncode == errors.EXIT_PARITY_FAIL, result.stdout + result.stderr
  rung = report['ladder'][0]
  assert rung['from'] == 'graph:tf115' and rung['verdict'] == 'FAIL'
  legacy_pair = next(p for p in report['pairs'] if p['other_label'] == 'graph:tf115')
  assert legacy_pair['pitfalls'][0]['name'] == 'metrics_never_reset'
  assert report['ladder'][1]['verdict'] == 'PASS'  # the reference and the port stay matched


_RECORDED_LOOP = """
import sys
import numpy as np
from tf1compat.runs import recorder
config = recorder.RunConfig(framework='tf1', batch_size=8, image_size=8, num_classes=4,
                            seed=0, steps_per_epoch=3, snapshot_steps=(0, 2),
                            data_id='synthetic')
rng = np.random.RandomState(0)
weights = {'dense/kernel': rng.normal(size=(4, 4)).astype(np.float32)}
with recorder.RunRecorder(sys.argv[1], config) as rec:
  rec.snapshot(0, weights)
  for epoch in range(2):
    for _ in range(3):
      step = rec.record_step(2.0 - 0.1 * rec.step, 0.25)
      weights = {k: v * 0.99 for k, v in weights.items()}
      if rec.snapshot_due(step):
        rec.snapshot(step, weights)
    rec.record_epoch(val_loss=1.5, val_accuracy=0.5)
  rec.finish(weights)
loaded = sorted(m.split('.')[0] for m in sys.modules)
print(' '.join(sorted({m for m in loaded if m in ('absl', 'tensorflow', 'keras', 'tf_keras')})))
"""


@pytest.mark.legacy
def test_the_recorder_alone_on_python37_and_numpy_118(python37, tmp_path):
  """recorder/ installed by pip into a Python 3.7 that has numpy 1.18 and nothing else
  records a run that this Python's parity reads."""
  env_dir = str(tmp_path / 'recorder_env')
  subprocess.run([python37, '-m', 'venv', env_dir], check=True, timeout=300)
  python = legacy_env.venv_python(env_dir)
  for what in (['numpy==1.18.5'], [RECORDER_DIR]):
    done = subprocess.run([python, '-m', 'pip', 'install', '--quiet', *what],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
  run_dir = str(tmp_path / 'run')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run([python, '-c', _RECORDED_LOOP, run_dir], capture_output=True,
                        text=True, cwd=str(tmp_path), env=env, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == ''  # neither absl nor TensorFlow nor Keras was imported
  run = parity.load_run(run_dir)
  assert run.manifest['versions']['python'].startswith('3.7.')
  assert run.manifest['versions']['numpy'] == '1.18.5'
  assert run.manifest['versions']['tensorflow'] is None
  assert run.snapshot_steps == [0, 2, 6] and len(run.steps['loss']) == 6
  assert tiers.metric_semantics(run)['loss']['kind'] == tiers.METRICS_PER_EPOCH


@pytest.mark.legacy
def test_a_teams_session_loop_recorded_on_tensorflow_115_passes_against_tf_2(legacy_python,
                                                                             tmp_path):
  """examples/tf1_session_loop.py, recorded by the recorder, on TensorFlow 1.15 and on
  this TensorFlow from one start; compare_runs judges the first rung of a team's own loop
  (calibrated by the loop on this TensorFlow again, one ulp apart)."""
  examples = os.path.join(REPO, 'examples')
  source = legacy_env.source_path(str(tmp_path / 'src'))
  init = str(tmp_path / 'init.npz')

  def loop(python, name, start):
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join((source, examples))}
    done = subprocess.run(
        [python, os.path.join(examples, 'tf1_session_loop.py'), '--epochs=2',
         '--steps_per_epoch=8', f'--model_dir={tmp_path / name}', f'--init_weights={start}'],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return str(tmp_path / name)

  reference = loop(sys.executable, 'tf2', init)
  control = loop(sys.executable, 'control', team_models.control_start(init))
  legacy = loop(legacy_python, 'tf115', init)
  assert runlog.read_manifest(legacy)['versions']['tensorflow'] == '1.15.0'
  result = run_entry('compare_runs', reference, legacy, f'--control={control}',
                     f'--output_dir={tmp_path / "report"}')
  assert result.returncode == 0, result.stdout + result.stderr
  with open(tmp_path / 'report' / 'parity.json') as f:
    pair = json.load(f)['pairs'][0]
  assert pair['verdict'] == 'PASS' and pair['lint'] == []
  assert {v['field'] for v in pair['versions'] if not v['same']} >= {'TensorFlow', 'Python'}


# The Estimator job's and its port's run: 3 epochs of 20 steps (the examples' defaults).
ESTIMATOR_EPOCHS, ESTIMATOR_STEPS_PER_EPOCH = 3, 20


def _example_job(python, script, pythonpath, *args):
  """Starts examples/<script> with `python`, `pythonpath` importable; stdout and stderr in
  one pipe (_example_done reads it)."""
  return subprocess.Popen([python, os.path.join(REPO, 'examples', script), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, 'PYTHONPATH': pythonpath})


def _example_done(proc, returncode=0):
  """The output of a job _example_job started, once it exited with `returncode`."""
  output, _ = proc.communicate(timeout=600)
  assert proc.returncode == returncode, output[-3000:]
  return output


@pytest.mark.legacy
def test_a_teams_estimator_job_on_tensorflow_115_passes_against_its_keras_3_port(legacy_python,
                                                                                 tmp_path):
  """examples/tf1_estimator_job.py on TensorFlow 1.15, recorded by the session hook in its
  EstimatorSpec's training_hooks, and its control (one ulp apart at the start); the Keras 3
  port keras_fit_port.py on this TensorFlow, trained on the job's recorded batches:
  compare_runs PASSes the port, and FAILs it with Keras' Adam epsilon, naming it."""
  examples = os.path.join(REPO, 'examples')
  legacy_path = os.pathsep.join((legacy_env.source_path(str(tmp_path / 'src')), examples))
  here_path = os.pathsep.join((REPO, examples))
  runs = {name: str(tmp_path / name) for name in ('tf115', 'control', 'port', 'adam_epsilon')}
  steps = ESTIMATOR_EPOCHS * ESTIMATOR_STEPS_PER_EPOCH
  spe = f'--steps_per_epoch={ESTIMATOR_STEPS_PER_EPOCH}'

  def estimator_job(name, *args):
    return _example_job(legacy_python, 'tf1_estimator_job.py', legacy_path,
                        f'--model_dir={runs[name]}', f'--steps={steps}', spe, *args)

  def port(name, *args):
    return _example_job(sys.executable, 'keras_fit_port.py', here_path,
                        f'--model_dir={runs[name]}', f'--legacy_dir={runs["tf115"]}', spe,
                        f'--epochs={ESTIMATOR_EPOCHS}', *args)

  # The reference first (the others start from its weights or train on its batches);
  # meanwhile the job on this TensorFlow, which has no Estimator.
  reference = estimator_job('tf115')
  nowhere = str(tmp_path / 'tf2')
  here = _example_job(sys.executable, 'tf1_estimator_job.py', here_path,
                      f'--model_dir={nowhere}')
  output = _example_done(here, errors.EXIT_USAGE)
  assert re.match(r'tf1_estimator_job: TensorFlow 2\.\S+ has no tf\.estimator',
                  output.strip().splitlines()[-1]), output
  assert 'Traceback' not in output and not glob.glob(f'{nowhere}*')
  _example_done(reference)
  start = team_models.control_start(run_files.snapshot_path(runs['tf115'], 0),
                                    str(tmp_path / 'control_start.npz'))
  jobs = [estimator_job('control', f'--start_weights={start}'), port('port'),
          port('adam_epsilon', '--mistake=adam_epsilon')]
  for job in jobs:
    _example_done(job)

  manifest = runlog.read_manifest(runs['tf115'])
  assert manifest['versions']['tensorflow'] == '1.15.0' and manifest['status'] == 'complete'
  assert manifest['optimizer']['name'] == 'AdamOptimizer'
  assert manifest['optimizer']['epsilon'] == 1e-8
  # The Estimator's checkpoints went to a folder of their own beside the run.
  estimator_dirs = glob.glob(f'{runs["tf115"]}.estimator-*')
  assert len(estimator_dirs) == 1 and os.path.exists(os.path.join(estimator_dirs[0],
                                                                  'checkpoint'))
  assert not os.path.exists(os.path.join(runs['tf115'], 'checkpoint'))
  # Every run trained on the reference's batches, step for step.
  digests = batch_record.read_digests(runs['tf115'])
  assert sorted(digests) == list(range(1, steps + 1))
  for name in ('control', 'port', 'adam_epsilon'):
    assert batch_record.read_digests(runs[name]) == digests, name

  def compare(name):
    out = str(tmp_path / f'report_{name}')
    result = run_entry('compare_runs', runs['tf115'], runs[name],
                       f'--control={runs["control"]}', f'--output_dir={out}')
    with open(os.path.join(out, 'parity.json')) as f:
      return result, json.load(f)['pairs'][0]

  (matched, pair), (mistaken, mistaken_pair) = at_once(
      functools.partial(compare, 'port'), functools.partial(compare, 'adam_epsilon'))
  assert matched.returncode == 0, matched.stdout + matched.stderr
  assert pair['verdict'] == 'PASS' and pair['pitfalls'] == []
  assert pair['inputs']['compared_steps'] == steps and pair['inputs']['differing_steps'] == 0
  assert {v['field'] for v in pair['versions'] if not v['same']} >= {'TensorFlow', 'Python'}
  assert mistaken.returncode == errors.EXIT_PARITY_FAIL, mistaken.stdout + mistaken.stderr
  assert mistaken_pair['verdict'] == 'FAIL'
  assert mistaken_pair['pitfalls'][0]['name'] == 'adam_epsilon', mistaken_pair['pitfalls']


@pytest.mark.legacy
def test_the_hook_reads_rmsprop_and_its_schedule_alike_on_tensorflow_115(legacy_python, tmp_path):
  """The same TF1 job with RMSProp (mean square at one, epsilon 1e-10) under a piecewise
  schedule, hooked on TensorFlow 1.15 and on tf.compat.v1 here: the optimizer block, read
  off the graph's kernels, and every step's learning rate are the same."""
  source = legacy_env.source_path(str(tmp_path / 'src'))
  runs = {}
  for name, python in (('tf115', legacy_python), ('tf2', sys.executable)):
    runs[name] = str(tmp_path / name)
    done = subprocess.run([python, '-c', test_optimizers.RMSPROP_JOB, runs[name]],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, 'PYTHONPATH': source})
    assert done.returncode == 0, done.stderr[-3000:]
  manifests = {name: runlog.read_manifest(run) for name, run in runs.items()}
  assert manifests['tf115']['versions']['tensorflow'] == '1.15.0'
  optimizer = manifests['tf115']['optimizer']
  assert optimizer == manifests['tf2']['optimizer']
  assert (optimizer['algorithm'], optimizer['mean_square_start'], optimizer['epsilon']) == (
      'rmsprop', 1.0, 1e-10)
  rates = [read_run_csv(run)['learning_rate'] for run in runs.values()]
  np.testing.assert_array_equal(rates[0], rates[1])
  # The boundary step keeps the earlier rate (global step 10 is step 11).
  assert rates[0][10] == np.float32(0.01) and rates[0][11] == np.float32(0.005)
