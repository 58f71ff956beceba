"""A team's own model (--model) and record schema (--features): tests/team_model.py, outside
the package, through both runners and check_parity; broken plug-ins end with exit 2.

One check_parity run (module fixture) carries the team's model and schema together; the
broken plug-ins stop before training, and the loading errors are checked in-process.
"""

import functools
import glob
import json
import os

import numpy as np
import pytest

from conftest import (REPO, TINY, TINY_IMAGE_SIZE, at_once, read_run_csv, read_snapshot,
                      run_entry)
from tf1compat.data import record_schema
from tf1compat.runs import runlog

TESTS = os.path.join(REPO, 'tests')
# The runners import the team's module from PYTHONPATH, as a team's would.
TEAM_ENV = {'PYTHONPATH': os.pathsep.join([TESTS, REPO, os.environ.get('PYTHONPATH', '')])}
RUN = [f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=1', '--steps_per_epoch=4',
       '--shuffle_buffer=64', '--snapshot_steps=0,1,2']
TEAM = ['--model=team_model:build', '--features=team_model:parse']
TEAM_KEYS = {'stem/kernel', 'stem_bn/gamma', 'stem_bn/beta', 'stem_bn/moving_mean',
             'stem_bn/moving_variance', 'block/kernel', 'block/bias', 'head/kernel',
             'head/bias'}


def _write_team_records(source_dir, out, pixels=False):
  """The tiny dataset's records in the team's schema (team_model): JPEG bytes, or decoded
  pixels, and classes numbered from 1."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import team_model  # pylint: disable=g-import-not-at-top
  os.makedirs(out)
  for path in sorted(glob.glob(os.path.join(source_dir, '*.tfrecord'))):
    with tf.io.TFRecordWriter(os.path.join(out, os.path.basename(path))) as writer:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        seed = tf.train.Example.FromString(record).features.feature
        image = seed['image'].bytes_list.value[0]
        feature = {team_model.CLASS: tf.train.Feature(int64_list=tf.train.Int64List(
            value=[seed['label'].int64_list.value[0] + 1]))}
        if pixels:
          decoded = tf.io.decode_image(image, channels=3, expand_animations=False).numpy()
          feature[team_model.PIXELS] = tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[decoded.tobytes()]))
          feature[team_model.SHAPE] = tf.train.Feature(
              int64_list=tf.train.Int64List(value=decoded.shape))
        else:
          feature[team_model.ENCODED] = tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[image]))
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
  with open(os.path.join(out, 'dataset.json'), 'w') as f:
    json.dump({'num_classes': TINY['num_classes']}, f)
  return out


@pytest.fixture(scope='module')
def team_data(tiny_data_dir, tmp_path_factory):
  base = tmp_path_factory.mktemp('team_data')
  return {'encoded': _write_team_records(tiny_data_dir, str(base / 'encoded')),
          'pixels': _write_team_records(tiny_data_dir, str(base / 'pixels'), pixels=True)}


@pytest.fixture(scope='module')
def parity_run(team_data, tmp_path_factory):
  """check_parity of the team's model on the team's records (uncalibrated: two runners)."""
  output_dir = str(tmp_path_factory.mktemp('team_parity'))
  result = run_entry('check_parity', f'--data_dir={team_data["encoded"]}',
                     f'--output_dir={output_dir}', '--nocalibrate', *RUN, *TEAM, env=TEAM_ENV)
  return result, output_dir


def test_team_model_and_schema_pass_check_parity(parity_run):
  result, output_dir = parity_run
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'VERDICT: PASS' in result.stdout
  with open(os.path.join(output_dir, 'parity.json')) as f:
    report = json.load(f)
  assert [run['runner'] for run in report['runs']] == ['graph', 'eager']
  for runner in ('graph', 'eager'):
    run_dir = os.path.join(output_dir, runner)
    assert set(read_snapshot(run_dir, 0)) == TEAM_KEYS
    flags = runlog.read_manifest(run_dir)['flags']
    assert (flags['model'], flags['features']) == ('team_model:build', 'team_model:parse')


def test_team_schema_first_batch_loss_agrees(parity_run):
  _, output_dir = parity_run
  graph, eager = (read_run_csv(os.path.join(output_dir, name)) for name in ('graph', 'eager'))
  # Same weights, same batch: the two frameworks' forward passes agree to float32 rounding
  # (bit for bit on some CPUs, not on every one: never required).
  np.testing.assert_allclose(eager['loss'][0], graph['loss'][0], rtol=1e-6)
  assert np.isfinite(graph['loss'][0])


@pytest.mark.parametrize('parser,variant', [('team_model:parse', 'encoded'),
                                            ('team_model:parse_pixels', 'pixels')])
def test_team_schema_batches_are_the_seed_schemas(tiny_data_dir, team_data, parser, variant):
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top

  def first_batch(data_dir, parse=None):
    files = sorted(glob.glob(os.path.join(data_dir, 'train-*.tfrecord')))
    dataset = pipeline.make_dataset(files, image_size=TINY_IMAGE_SIZE, num_classes=4,
                                    batch_size=8, shuffle_buffer=64, parse=parse)
    return [tensor.numpy() for tensor in next(iter(dataset))]

  seed_images, seed_labels = first_batch(tiny_data_dir)
  images, labels = first_batch(team_data[variant], record_schema.load_parser(parser))
  np.testing.assert_array_equal(images, seed_images)
  np.testing.assert_array_equal(labels, seed_labels)


@pytest.mark.parametrize('spec,fix', [
    ('no_such_team_module:build', "no module named 'no_such_team_module'; put the folder"),
    ('team_model:missing', "team_model has no 'missing'; name a function it defines"),
    ('team_model:NOT_CALLABLE', 'team_model.NOT_CALLABLE is not callable (it is of type int)'),
    ('team_model', 'name a function as package.module:function'),
])
def test_plugins_that_do_not_load_name_the_fix(spec, fix):
  with pytest.raises(record_schema.PluginError, match='^--model=' + spec) as caught:
    record_schema.load('model', spec)
  assert fix in str(caught.value)


def test_a_parser_that_returns_no_pair_is_refused():
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  with pytest.raises(record_schema.PluginError, match='returned a dict; return a pair'):
    pipeline.check_parser(record_schema.load_parser('team_model:parse_label_only'), 4)


def test_skip_leaves_out_what_the_team_parser_rejects(team_data, tmp_path):
  """The check reads the framing only; under skip the parser, decode and label range."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import team_model  # pylint: disable=g-import-not-at-top
  from tf1compat.data import data_check  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / 'data')
  os.makedirs(data_dir)
  path = os.path.join(data_dir, 'train-00000-of-00001.tfrecord')

  def example(image, label):
    return tf.train.Example(features=tf.train.Features(feature={
        team_model.ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        team_model.CLASS: tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))

  good = next(tf.data.TFRecordDataset(
      sorted(glob.glob(os.path.join(team_data['encoded'], 'train-*')))).as_numpy_iterator())
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(good)
    writer.write(example(b'\xff\xd8 not a jpeg', 1).SerializeToString())
    writer.write(example(tf.train.Example.FromString(good).features.feature[
        team_model.ENCODED].bytes_list.value[0], 9).SerializeToString())
  fail = data_check.check_data_dir(data_dir, 4, features='team_model:parse')
  assert fail.train_check.good_records == 3
  skip = data_check.check_data_dir(data_dir, 4, 'skip', features='team_model:parse')
  assert skip.train_check.good == ((path, (0,)),)
  reasons = [bad.reason for bad in skip.train_check.bad]
  assert all(r.startswith('--features=team_model:parse or the decode') for r in reasons)
  assert 'label out of range [0, 4)' in reasons[1]


def _one_line_exit_2(result, *expected):
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  for text in expected:
    assert text in lines[0], lines[0]


# (runner, --model) -> what its error line says
BROKEN_BUILDERS = {
    ('train_graph', 'no_such_team_module:build'):
        ("no module named 'no_such_team_module'", 'put the folder that holds '
         'no_such_team_module.py on PYTHONPATH'),
    ('train_eager', 'team_model:returns_layer'):
        ('returned a keras.src.layers.core.dense.Dense, not a Keras 3',
         'return keras.Model(inputs, outputs)'),
    ('train_graph', 'team_model:auto_named'):
        ('dense/kernel became dense_1/kernel when built again', 'pass the same explicit name='),
}


@pytest.fixture(scope='module')
def broken_builder_runs(tiny_data_dir, tmp_path_factory):
  """{case of BROKEN_BUILDERS: (CompletedProcess, its --model_dir)}, run at once."""
  root = tmp_path_factory.mktemp('broken_builders')
  model_dirs = {case: str(root / str(index) / 'run')
                for index, case in enumerate(BROKEN_BUILDERS)}
  procs = at_once(*(functools.partial(
      run_entry, runner, f'--data_dir={tiny_data_dir}', f'--model_dir={model_dirs[runner, spec]}',
      f'--model={spec}', *RUN, env=TEAM_ENV) for runner, spec in BROKEN_BUILDERS))
  return {case: (proc, model_dirs[case]) for case, proc in zip(BROKEN_BUILDERS, procs)}


@pytest.mark.parametrize('runner,spec', BROKEN_BUILDERS)
def test_broken_builders_end_with_one_line(broken_builder_runs, runner, spec):
  result, model_dir = broken_builder_runs[runner, spec]
  _one_line_exit_2(result, f'{runner}: --model={spec}: ', *BROKEN_BUILDERS[runner, spec])
  assert not os.path.exists(model_dir)


def test_names_that_differ_between_the_kerases_are_named(tiny_data_dir, tmp_path):
  """Stable in each process, different across them: shows when one loads the other's."""
  init = str(tmp_path / 'init.npz')
  common = [f'--data_dir={tiny_data_dir}', '--model=team_model:per_keras_names', *RUN]
  saved = run_entry('train_graph', *common, f'--save_init_weights={init}', env=TEAM_ENV)
  assert saved.returncode == 0, saved.stderr[-3000:]
  result = run_entry('train_eager', *common, f'--model_dir={tmp_path / "eager"}',
                     f'--init_weights={init}', env=TEAM_ENV)
  _one_line_exit_2(result, 'only the model has: head_keras/bias, head_keras/kernel',
                   'only the file has: head_tf_keras/bias, head_tf_keras/kernel',
                   'pass the same explicit name= to every layer that has weights')
