"""bin/check_parity end to end: matched runners pass, each catalogued pitfall fails and is named.

The runs share one output folder per model kind, so that check_parity reuses the runner
whose arguments did not change (as it does for users) and the suite stays short. One
fixture makes every check of those folders, each folder's in order and the three folders
at once (2 cores: each runner spends most of its time starting TensorFlow on one); the
tests read what each check left.
"""

import functools
import json
import os
import shutil

import numpy as np
import pytest

from conftest import REPO, TINY_IMAGE_SIZE, at_once, run_entry
from tf1compat.judge import harness
from tf1compat.judge import parity
from tf1compat.judge import pitfalls
from tf1compat.judge import runner_jobs
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import run_files

TINY = [f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=2',
        '--steps_per_epoch=6', '--shuffle_buffer=64', '--snapshot_steps=0,1,2,5']
KINDS = {'plain': [], 'batch_norm': ['--batch_norm'], 'dropout': ['--dropout=0.3'],
         # The rate halves after step 6 (the run's middle): Momentum's forms part from step 8.
         'momentum': ['--optimizer=momentum', '--lr_schedule=piecewise']}
# In an order where each case retrains few runners: the port-side cases of a folder
# reuse its legacy run and control.
PITFALL_CASES = [
    ('adam_epsilon', 'plain'),
    ('double_softmax', 'plain'),
    ('from_logits_lost', 'plain'),
    ('accuracy_metric_class', 'plain'),
    ('metrics_never_reset', 'plain'),
    ('skip_update_ops', 'batch_norm'),
    ('model_call_wiring', 'batch_norm'),
    ('no_learning_phase', 'batch_norm'),
    ('keep_prob_as_rate', 'dropout'),
    ('no_learning_phase', 'dropout'),
    ('momentum_rate_change', 'momentum'),
]
# Opt-in (pytest -m matrix, beside the false-alarm matrix, which checks every pitfall on
# every case): the cases whose evidence another default case shows too (a config
# difference; BatchNorm's moving statistics), and the dropout folder, which trains a legacy
# run and a control of its own for them.
OPT_IN_CASES = [('double_softmax', 'plain'), ('no_learning_phase', 'batch_norm'),
                ('keep_prob_as_rate', 'dropout'), ('no_learning_phase', 'dropout')]
DEFAULT_CASES = [case for case in PITFALL_CASES if case not in OPT_IN_CASES]
# Where the replay of step 1 finds each case part: (stage, first item outside), the item
# named by hand from the seed's ConvNet. The cases of mistakes that act outside one step,
# or hide in Dropout masks, are checked with --nolocalize (their replays would cost the
# suite a minute; docs/localization.md has them measured).
WHERE = {
    ('adam_epsilon', 'plain'): ('update', 'conv1/kernel'),
    ('double_softmax', 'plain'): ('forward', 'logits'),
    ('from_logits_lost', 'plain'): ('loss', 'data'),
    ('skip_update_ops', 'batch_norm'): ('state', 'bn1/moving_mean'),
    ('model_call_wiring', 'batch_norm'): ('state', 'bn1/moving_mean'),
    ('no_learning_phase', 'batch_norm'): ('forward', 'bn1'),
    ('no_learning_phase', 'dropout'): ('forward', 'dropout'),
    # Replayed at the update before the first step apart, from the snapshot of step 5.
    ('momentum_rate_change', 'momentum'): ('update', 'conv1/kernel'),
}
# A port with a mistake no catalogue holds (tests/team_model.py): conv3 activates with ELU.
# It runs in the plain folder after the port-side pitfalls, beside their legacy run.
UNCATALOGUED = ('uncatalogued', 'plain')
UNCATALOGUED_ARGS = ('--port_flags=--model=team_model:convnet_conv3_elu',)
TEAM_ENV = {'PYTHONPATH': os.pathsep.join([os.path.join(REPO, 'tests'), REPO,
                                           os.environ.get('PYTHONPATH', '')])}


def _check(tiny_data_dir, output_dir, *args, env=None):
  result = run_entry('check_parity', f'--data_dir={tiny_data_dir}', f'--output_dir={output_dir}',
                     *TINY, *args, env=env)
  report = None
  if os.path.exists(os.path.join(output_dir, 'parity.json')):
    with open(os.path.join(output_dir, 'parity.json')) as f:
      report = json.load(f)
  return result, report


def _copy_without_weights(output_dir, copy):
  """The folder as it is now, its reports, logs and event files (later checks replace them)."""
  shutil.copytree(output_dir, copy, ignore=shutil.ignore_patterns(
      'checkpoints', 'weights', 'export', '*.keras', '*.npz'))
  return str(copy)


def _ulp_distances(out, step):
  """{variable: the distinct distances in ulps between the legacy run's weights and its
  per-step control's at snapshot `step`, over the non-zero ones; 'zeros kept': whether
  every zero stayed zero}."""
  runs = [run_files.snapshot_path(os.path.join(out, name), step)
          for name in ('graph', runner_jobs.PER_STEP_CONTROL)]
  with np.load(runs[0]) as reference, np.load(runs[1]) as nudged:
    distances = {'zeros kept': all(np.all(nudged[k][reference[k] == 0] == 0)
                                   for k in reference.files)}
    for key in reference.files:
      a, b = reference[key], nudged[key]
      ulps = np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32))
      distances[key] = sorted(set(ulps[a != 0].tolist()))
  return distances


def _plain_checks(tiny_data_dir, out, base):
  done = {'matched': _check(tiny_data_dir, out, '--with_fit')}
  done['matched_folder'] = _copy_without_weights(out, base / 'plain_matched')
  # Rerun with --localize: the matched pairs' replays, which the pitfalls' checks reuse.
  done['rerun'] = _check(tiny_data_dir, out, '--with_fit', '--localize')
  done['rerun_folder'] = _copy_without_weights(out, base / 'plain_rerun')
  # compare_runs --localize on the same runs, into the same folder: it reuses the replays.
  runs = [os.path.join(out, name) for name in ('graph', 'eager', 'fit')]
  done['compare_localized'] = run_entry('compare_runs', *runs,
                                        f'--control={os.path.join(out, "control")}',
                                        f'--output_dir={out}', '--localize')
  return done


def _batch_norm_checks(tiny_data_dir, out, base):
  """A port that sums in another order (another intra-op thread count) against the
  folder's legacy run and control, before the pitfalls replace them."""
  done = {'batch_norm': _check(tiny_data_dir, out, '--batch_norm')}
  with open(os.path.join(out, harness.STATE_JSON)) as f:
    port_args = [a for a in json.load(f)['eager'] if not a.startswith('--model_dir=')]
  other = str(base / 'eager_other_rounding')
  threads = {'TF_NUM_INTRAOP_THREADS': str(runner_jobs.control_threads())}
  trained = run_entry('train_eager', *port_args, f'--model_dir={other}', env=threads)
  report_dir = base / 'other_rounding_report'
  compared = run_entry('compare_runs', os.path.join(out, 'graph'), other,
                       f'--control={os.path.join(out, "control")}', f'--output_dir={report_dir}')
  done['other_rounding'] = (trained, compared, report_dir)
  return done


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  return tmp_path_factory.mktemp('check_parity')


@pytest.fixture(scope='module')
def output_dirs(base):
  return {kind: str(base / kind) for kind in KINDS}


@pytest.fixture(scope='module')
def checks(tiny_data_dir, base, output_dirs):
  """{step: what it left}: the plain folder's matched check with --with_fit ('matched')
  and its rerun with --localize ('rerun'), each as (CompletedProcess, parity.json or
  None), with a copy of the folder after each ('matched_folder', 'rerun_folder'); the
  batch_norm folder's matched check ('batch_norm') and the port with other rounding
  ('other_rounding'); then every (pitfall, kind) of DEFAULT_CASES in its kind's folder,
  with --overwrite: the folder holds the runs of the previous case, which check_parity
  does not replace unasked; UNCATALOGUED after from_logits_lost."""
  first = {'plain': _plain_checks, 'batch_norm': _batch_norm_checks,
           'momentum': lambda data, out, _: {'momentum': _check(data, out, *KINDS['momentum'])}}

  def folder(kind):
    done = first[kind](tiny_data_dir, output_dirs[kind], base) if kind in first else {}
    for pitfall, case_kind in DEFAULT_CASES:
      if case_kind == kind:
        localize = [] if (pitfall, kind) in WHERE else ['--nolocalize']
        done[pitfall, kind] = _check(tiny_data_dir, output_dirs[kind], f'--pitfall={pitfall}',
                                     *KINDS[kind], '--overwrite', *localize)
      if kind == 'plain' and (pitfall, case_kind) == ('from_logits_lost', 'plain'):
        done[UNCATALOGUED] = _check(tiny_data_dir, output_dirs[kind], *UNCATALOGUED_ARGS,
                                    '--overwrite', env=TEAM_ENV)
      if (pitfall, case_kind, kind) == ('accuracy_metric_class', 'plain', 'plain'):
        # Its FAIL rests on numbers (the curves): the other controls ran beside the
        # folder's legacy run, which is the matched one (the mistake is the port's).
        done['per_step_nudges'] = _ulp_distances(output_dirs[kind], step=1)
    return done

  steps = {}
  kinds = [kind for kind in KINDS if kind in first or any(k == kind for _, k in DEFAULT_CASES)]
  for done in at_once(*(functools.partial(folder, kind) for kind in kinds)):
    steps.update(done)
  return steps


@pytest.fixture(scope='module')
def opt_in_checks(tiny_data_dir, output_dirs, checks):
  """{(pitfall, kind): (CompletedProcess, parity.json)} of OPT_IN_CASES, in the folders
  `checks` left (their legacy runs reused; the dropout folder's made here)."""
  del checks  # Made first: its folders' legacy runs and controls.

  def folder(kind):
    return {(pitfall, kind): _check(tiny_data_dir, output_dirs[kind], f'--pitfall={pitfall}',
                                    *KINDS[kind], '--overwrite',
                                    *([] if (pitfall, kind) in WHERE else ['--nolocalize']))
            for pitfall, case_kind in OPT_IN_CASES if case_kind == kind}

  done = {}
  for made in at_once(*(functools.partial(folder, kind)
                        for kind in dict.fromkeys(kind for _, kind in OPT_IN_CASES))):
    done.update(made)
  return done


def test_matched_runners_pass(checks, output_dirs):
  result, report = checks['matched']
  folder = checks['matched_folder']
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'VERDICT: PASS' in result.stdout
  for name in ('parity.md', 'parity.json', 'parity.png'):
    assert os.path.getsize(os.path.join(folder, name)) > 0
  assert report['verdict'] == 'PASS'
  assert [r['runner'] for r in report['runs']] == ['graph', 'eager', 'fit']
  # Calibrated by the control run, which is no pair of its own.
  assert report['controls'] == [os.path.join(output_dirs['plain'], 'control')]
  assert report['calibration']['loss_horizon'] >= 1
  tolerances = parity.Tolerances()
  for pair in report['pairs']:
    assert pair['tiers']['step']['judged']
    assert pair['step_tier']['calibrated']
    assert pair['envelope_ratio'] <= tolerances.envelope_multiple
    assert pair['weight_tier']['common_steps'] == [0, 1, 2, 5, 12]
    assert isinstance(pair['bit_identical'], bool)  # reported, never required
  assert 'x envelope' in result.stdout and 'calibrated by control' in result.stdout
  # Where the runs computed, for a GPU host whose runners fell back to the CPU.
  assert 'device: CPU (every run)' in result.stdout
  # The console is for people: phases and the table; TensorFlow's lines are in the logs.
  assert len(result.stdout.splitlines()) < 25, result.stdout
  assert 'cuda' not in result.stdout.lower() and 'WARNING' not in result.stdout
  for name in ('graph', 'control', 'eager', 'fit'):
    with open(os.path.join(folder, name, 'runner.log')) as f:
      assert 'done:' in f.read()


def test_rerun_reuses_complete_runs(checks):
  result, report = checks['rerun']
  assert result.returncode == 0
  assert result.stdout.count('reusing the complete run') == 4
  assert report['verdict'] == 'PASS'


def test_a_matched_pair_localizes_nothing(checks):
  """--localize on a PASS: the replays of step 1 of the custom loop and of fit are inside
  the control's envelope at every item, the batch included."""
  result, report = checks['rerun']
  for pair in report['pairs']:
    where = pair['where']
    assert where['judged'] and where['calibrated'] and where['step'] == 1, where
    assert where['first'] is None, where['summary']
    stages = where['stages']
    # Every layer of the seed's ConvNet, both loss parts and the total, every variable.
    assert [row['name'] for row in stages['forward']['rows']] == [
        'conv1', 'conv2', 'conv3', 'conv4', 'pool', 'logits']
    assert [row['name'] for row in stages['loss']['rows']] == ['data', 'regularization', 'total']
    assert len(stages['gradients']['rows']) == len(stages['update']['rows']) == 10
    assert stages['input']['rows'][0]['difference'] == 0  # one seeded pipeline
  assert result.stdout.count('where: every stage of step 1 is inside the envelope') == 2
  with open(os.path.join(checks['rerun_folder'], 'parity.md')) as f:
    assert '### Where the codes part' in f.read()


def test_output_folder_is_a_tensorboard_logdir(checks):
  """TensorBoard's own loader finds every runner's scalars and the comparison series,
  which hold parity.json's numbers."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import plugin_event_multiplexer
  from tensorboard.util import tensor_util
  out = checks['rerun_folder']
  multiplexer = plugin_event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(out)
  multiplexer.Reload()
  runs = multiplexer.Runs()
  comparison = ('comparison/eager', 'comparison/fit', 'comparison/control', 'comparison/limit')
  assert set(runs) == {'graph', 'control', 'eager', 'fit', *comparison}
  for name in ('graph', 'control', 'eager', 'fit'):
    assert {'train/batch_loss', 'train/mean_loss', 'train/accuracy', 'epoch/train_loss',
            'epoch/train_accuracy', 'epoch/val_loss', 'epoch/val_accuracy'} <= set(
                runs[name]['tensors']), name
    assert len(multiplexer.Tensors(name, 'train/batch_loss')) == 12
  for name in comparison:
    assert set(runs[name]['tensors']) == {'divergence/loss', 'divergence/weights'}, name
  with open(os.path.join(out, 'parity.json')) as f:
    report = json.load(f)

  def series(run):
    return [float(tensor_util.make_ndarray(e.tensor_proto))
            for e in multiplexer.Tensors(run, 'divergence/loss')]

  steps = report['pairs'][0]['step_tier']
  np.testing.assert_allclose(series('comparison/eager')[:steps['steps']],
                             steps['relative_difference'], rtol=1e-6, atol=1e-12)
  envelope = np.array(report['calibration']['loss'])
  np.testing.assert_allclose(series('comparison/control'), envelope, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(series('comparison/limit'),
                             10 * np.maximum(envelope, 2.0 ** -23), rtol=1e-6)


def test_correct_port_with_other_rounding_passes(checks):
  """A port that sums in another order (another intra-op thread count) is correct but
  not bit-identical: it passes, within the envelope."""
  result, _ = checks['batch_norm']
  assert result.returncode == 0, result.stdout[-3000:]
  trained, compared, report_dir = checks['other_rounding']
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert compared.returncode == 0, compared.stdout
  with open(report_dir / 'parity.json') as f:
    pair = json.load(f)['pairs'][0]
  assert pair['tiers']['step']['judged'] and pair['step_tier']['calibrated']
  if pair['bit_identical']:
    pytest.skip('this CPU sums the same way with another thread count')
  assert pair['step_tier']['max_relative_difference'] > 0
  assert pair['envelope_ratio'] <= parity.Tolerances().envelope_multiple


@pytest.mark.parametrize('pitfall,kind', DEFAULT_CASES)
def test_each_pitfall_fails_and_is_named_first(checks, pitfall, kind):
  _assert_named_first(*checks[pitfall, kind], pitfall, kind)


@pytest.mark.matrix
@pytest.mark.parametrize('pitfall,kind', OPT_IN_CASES)
def test_each_opt_in_pitfall_fails_and_is_named_first(opt_in_checks, pitfall, kind):
  _assert_named_first(*opt_in_checks[pitfall, kind], pitfall, kind)


def _assert_named_first(result, report, pitfall, kind):
  assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'VERDICT: FAIL' in result.stdout
  assert report['pitfall_injected'] == pitfall
  assert report['pitfalls'][0] == pitfall
  assert f'pitfall {pitfall}:' in result.stdout
  # Named where a number decides, it stands at least 10x above what correct runs show.
  first = [p for pair in report['pairs'] for p in pair['pitfalls']][0]
  assert first['margin'] is None or first['margin'] >= 10, first
  assert first['evidence'] and first['fix'] == pitfalls.PITFALLS[pitfall].fix
  assert first['judged_by'] in pitfalls.PITFALLS[pitfall].judged_by
  # A FAIL localizes where inside the replayed first step the codes part.
  if (pitfall, kind) not in WHERE:
    assert not any('where' in pair for pair in report['pairs'])  # --nolocalize
    return
  [where] = [pair['where'] for pair in report['pairs'] if pair['verdict'] == 'FAIL']
  assert where['judged'] and where['calibrated'], where
  assert (where['first']['stage'], where['first']['name']) == WHERE[pitfall, kind], (
      where['summary'])
  assert where['first']['difference'] > where['first']['limit']
  assert f'where: {where["summary"]}' in result.stdout
  assert {p['name']: p['verdict'] for p in where['pitfalls']}[pitfall] == 'agrees', (
      where['pitfalls'])


def test_compare_runs_localizes_runs_of_our_runners(checks):
  result = checks['compare_localized']
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert result.stdout.count('where: every stage of step 1 is inside the envelope') == 2
  assert result.stdout.count('reusing its replay of step 1') == 4


def test_adam_epsilon_parts_the_update_with_equal_gradients(checks):
  where = checks['adam_epsilon', 'plain'][1]['pairs'][0]['where']
  stages = where['stages']
  assert stages['forward']['outside'] == stages['loss']['outside'] == []
  assert stages['gradients']['outside'] == []
  # The epsilon matters most where gradients are small: every variable's update moves.
  assert len(stages['update']['outside']) == 10


def test_every_optimizer_state_is_snapshot_and_a_later_step_is_replayed(checks, output_dirs):
  """Momentum under a piecewise rate: the matched port is TF1's kernel on Keras'
  accumulator (bit for bit); Keras' SGD parts once the rate has changed, and the replay
  that localizes it starts from a snapshot after step 1, each runner's optimizer state
  loaded (the accumulators are the same name in both)."""
  result, report = checks['momentum']
  assert result.returncode == 0, result.stdout[-3000:]
  assert report['pairs'][0]['bit_identical']
  _, report = checks['momentum_rate_change', 'momentum']
  pair = report['pairs'][0]
  # The replayed step is the first at the halved rate: global step 7, past the boundary 6.
  assert pair['where']['step'] == 8
  out = output_dirs['momentum']
  for runner in ('graph', 'eager'):
    state = run_files.load_optimizer_state(run_files.optimizer_state_path(
        os.path.join(out, runner), 5))
    assert state['step'] == 5
    assert 'slot/accum/conv1/kernel' in state


def test_skipped_update_ops_part_the_state_with_equal_updates(checks):
  for case in (('skip_update_ops', 'batch_norm'), ('model_call_wiring', 'batch_norm')):
    stages = checks[case][1]['pairs'][0]['where']['stages']
    assert stages['update']['outside'] == [], case
    assert sorted(stages['state']['outside']) == sorted(
        f'bn{i}/{name}' for i in range(1, 5) for name in ('moving_mean', 'moving_variance'))


def test_an_uncatalogued_mistake_fails_and_is_localized(checks):
  """A port whose conv3 activates with ELU: no catalogued pitfall, and the localization
  names conv3, the two convolutions before it inside."""
  result, report = checks[UNCATALOGUED]
  assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
  assert report['pitfalls'] == []
  assert 'no catalogued pitfall fits the evidence' in result.stdout
  where = report['pairs'][0]['where']
  assert (where['first']['stage'], where['first']['name']) == ('forward', 'conv3')
  assert where['stages']['forward']['outside'][0] == 'conv3'
  assert 'the 2 layer output(s) before it are inside' in where['summary']
  assert where['pitfalls'] == []
  # Another model is a config difference: no control can change that, none more ran.
  assert 'the FAIL rests on numbers alone' not in result.stdout
  assert [os.path.basename(path) for path in report['controls']] == ['control']


def test_a_fail_on_numbers_alone_asks_for_the_other_controls(checks):
  """accuracy_metric_class FAILs on the curves alone: before it stands, the per-step and
  the kernels control run, and the widest of the three judges."""
  result, report = checks['accuracy_metric_class', 'plain']
  assert result.stdout.count('the FAIL rests on numbers alone') == 2
  out = os.path.dirname(report['controls'][0])
  assert report['controls'] == [os.path.join(out, name) for name in (
      'control', runner_jobs.PER_STEP_CONTROL, runner_jobs.KERNELS_CONTROL)]
  assert ('controls graph:control, graph:control_per_step, graph:control_kernels (the '
          'widest at each step)') in result.stdout
  with open(os.path.join(out, runner_jobs.KERNELS_CONTROL, 'run.json')) as f:
    kernels = json.load(f)['settings']['onednn']
  with open(os.path.join(out, 'graph', 'run.json')) as f:
    assert kernels != json.load(f)['settings']['onednn']


def test_the_per_step_control_moves_every_weight_by_one_ulp(checks):
  """After step 1 (numpy's bits as the oracle): the legacy run's weights, each non-zero
  one moved by exactly one ulp, every zero kept."""
  distances = checks['per_step_nudges']
  assert distances.pop('zeros kept')
  assert len(distances) == 10
  assert all(found == [1] for found in distances.values()), distances


def test_pitfall_that_needs_layer_updates_is_a_usage_error(tiny_data_dir, tmp_path):
  result, _ = _check(tiny_data_dir, str(tmp_path / 'out'), '--pitfall=skip_update_ops')
  assert result.returncode == 2
  assert '--batch_norm' in result.stderr
  assert 'Traceback' not in result.stderr


def test_port_strategy_and_precision_reach_the_port_only():
  cfg = config.CheckParityConfig(epsilon=None, pitfall=None, with_fit=True, exact=True,
                                 strategy='mirrored', cpu_devices=2, mixed_precision=True,
                                 calibrate=True, dropout=0.0, seed=0)
  args = {job.name: job.args for job in runner_jobs.jobs(cfg)}
  port = ('--strategy=mirrored', '--cpu_devices=2', '--mixed_precision')
  for name in ('eager', 'fit'):
    assert set(port) <= set(args[name]), args[name]
  assert not set(port) & set(args['graph'])
  # The control is the reference again, under another reduction order.
  assert args['control'][:len(args['graph'])] == args['graph']
  assert args['control'][len(args['graph']):] == ('--nodeterministic',)


def test_every_runner_gets_the_given_epsilon_even_zero():
  """--epsilon=0 is an epsilon, not "unset" (which means the legacy 1e-8)."""
  for given, passed in ((0.0, '--epsilon=0.0'), (None, '--epsilon=1e-08')):
    cfg = config.CheckParityConfig(epsilon=given, with_fit=True)
    for job in runner_jobs.jobs(cfg):
      assert passed in job.args, (given, job)
  jobs = runner_jobs.jobs(config.CheckParityConfig(pitfall='adam_epsilon'))
  assert [job.name for job in jobs if '--epsilon=1e-08' not in job.args] == ['eager']


def test_keep_prob_as_rate_gives_the_port_one_minus_the_rate():
  cfg = config.CheckParityConfig(pitfall='keep_prob_as_rate', dropout=0.3, with_fit=True)
  args = {job.name: job.args for job in runner_jobs.jobs(cfg)}
  for name in ('eager', 'fit'):
    # After the forwarded --dropout=0.3 (absl: the last value wins): 1 - 0.3.
    assert args[name][-1] == '--dropout=0.7', args[name]
  assert not any(a.startswith('--dropout=') for a in args['graph'] + args['control'])
  runner_jobs.check_pitfall_requirements(cfg)
  for dropout, message in ((0.5, 'which every runner has already'), (0.0, '--dropout=0.3')):
    with pytest.raises(errors.UsageError, match=message):
      runner_jobs.check_pitfall_requirements(config.CheckParityConfig(
          pitfall='keep_prob_as_rate', dropout=dropout))


def test_a_pitfall_made_in_model_fit_checks_model_fit():
  """Without --with_fit the fit loop takes the custom loop's place as the port."""
  jobs = runner_jobs.jobs(config.CheckParityConfig(pitfall='accuracy_metric_class'))
  assert [job.name for job in jobs] == ['graph', 'control', 'fit']
  assert '--fit_accuracy=Accuracy' in jobs[2].args and '--loop=fit' in jobs[2].args
  jobs = runner_jobs.jobs(config.CheckParityConfig(pitfall='accuracy_metric_class', with_fit=True))
  assert [job.name for job in jobs if '--fit_accuracy=Accuracy' in job.args] == ['fit']
  assert [job.name for job in jobs] == ['graph', 'control', 'eager', 'fit']


def test_a_refused_replacement_names_the_flags_the_user_changed():
  """Not what check_parity derives from them (the initial weights' file), and a switch
  recorded as --noNAME reads off, not as a flag of its own."""
  old = ['--nobatch_norm', '--learning_rate=0.001', '--init_weights=runs/a.npz',
         '--epsilon=1e-08']
  new = ['--batch_norm', '--learning_rate=0.001', '--init_weights=runs/b.npz',
         '--epsilon=1e-08']
  assert harness._changed_arguments(old, new) == ['--batch_norm was off, now on']
  derived_only = ['--nobatch_norm', '--learning_rate=0.001', '--init_weights=runs/c.npz',
                  '--epsilon=1e-08']
  assert harness._changed_arguments(old, derived_only) == [
      '--init_weights was runs/a.npz, now runs/c.npz']
