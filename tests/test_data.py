"""make_dataset: identical batches in graph and eager mode, bad records skipped or not."""

import functools
import os
import shutil

import numpy as np
import pytest

from conftest import TINY_IMAGE_SIZE, at_once, run_python
from tf1compat.data import data_folder

# Iterates the first batches of make_dataset and saves them; argv: mode, data_dir, out,
# number of batches, --on_bad_record.
DUMP_BATCHES = r'''
import os, sys
import numpy as np
mode, data_dir, out, num_batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
on_bad_record = sys.argv[5]
if mode == 'graph':
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
import tensorflow as tf
if mode == 'graph':
  tf.compat.v1.disable_v2_behavior()
  tf.compat.v1.set_random_seed(7)
else:
  tf.random.set_seed(7)
from tf1compat.data import data_check
from tf1compat.data import pipeline
spec = data_check.check_data_dir(data_dir, 4, on_bad_record)
dataset = pipeline.make_dataset(spec.train_files, image_size=%(size)d, num_classes=4, batch_size=8,
                            seed=7, shuffle_buffer=20, skip=spec.skip('train'))
batches = {}
if mode == 'graph':
  features, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
  with tf.compat.v1.Session() as sess:
    for i in range(num_batches):
      batches['x%%d' %% i], batches['y%%d' %% i] = sess.run([features, labels])
else:
  for i, (x, y) in enumerate(dataset.take(num_batches)):
    batches['x%%d' %% i], batches['y%%d' %% i] = x.numpy(), y.numpy()
np.savez(out, **batches)
''' % {'size': TINY_IMAGE_SIZE}


def _dump_both_modes(data_dir, tmp_path, num_batches, on_bad_record='fail'):
  modes = ('graph', 'eager')
  outs = {mode: str(tmp_path / f'{mode}.npz') for mode in modes}
  results = at_once(*(functools.partial(run_python, DUMP_BATCHES, mode, data_dir, outs[mode],
                                        str(num_batches), on_bad_record) for mode in modes))
  for result in results:
    assert result.returncode == 0, result.stderr
  return {mode: np.load(outs[mode]) for mode in modes}


def test_graph_and_eager_batches_are_identical(tiny_data_dir, tmp_path):
  # 20 batches of 8: the whole first pass, and across the 64-record epoch boundary twice,
  # where the reshuffle after `repeat` must match too.
  num_batches = 20
  outputs = _dump_both_modes(tiny_data_dir, tmp_path, num_batches)
  graph, eager = outputs['graph'], outputs['eager']
  assert sorted(graph.files) == sorted(eager.files)
  assert len(graph.files) == 2 * num_batches
  for key in graph.files:
    np.testing.assert_array_equal(graph[key], eager[key], err_msg=key)
  first = graph['x0']
  assert first.shape == (8, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
  assert first.dtype == np.float32
  # per_image_standardization: every image has mean 0 and unit variance.
  np.testing.assert_allclose(first.reshape(8, -1).mean(axis=1), 0, atol=1e-4)
  np.testing.assert_allclose(first.reshape(8, -1).std(axis=1), 1, atol=1e-3)
  np.testing.assert_array_equal(graph['y0'].sum(axis=1), np.ones(8))


def test_batches_differ_across_seeds_and_cover_all_records(tiny_data_dir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  files = data_folder.find_files(tiny_data_dir, 'train')

  def labels(seed):
    """The labels of the first three passes through the 64 records, a pass a row."""
    dataset = pipeline.make_dataset(files, image_size=TINY_IMAGE_SIZE, num_classes=4,
                                    batch_size=64, seed=seed, shuffle_buffer=64)
    return np.stack([y.numpy().argmax(axis=1) for _, y in dataset.take(3)])

  passes = labels(0)
  # A shuffle buffer as large as the data gives each record exactly once per pass, and
  # each pass another order.
  for one_pass in passes:
    np.testing.assert_array_equal(np.bincount(one_pass, minlength=4), [16, 16, 16, 16])
  assert len({one_pass.tobytes() for one_pass in passes}) == 3
  assert not np.array_equal(passes[0], labels(1)[0])
  del tf


def test_validation_pipeline_reads_every_record_once_in_order(tiny_data_dir):
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  files = data_folder.find_files(tiny_data_dir, 'val')
  dataset = pipeline.make_dataset(files, image_size=TINY_IMAGE_SIZE, num_classes=4, batch_size=5,
                                  training=False)
  sizes = [int(x.shape[0]) for x, _ in dataset]
  assert sizes == [5, 5, 5, 1]  # 16 records, the remainder kept.


def test_find_files_layouts(tmp_path):
  for name in ('a.tfrecord', 'b.tfrecord'):
    (tmp_path / name).write_bytes(b'')
  assert [os.path.basename(f) for f in data_folder.find_files(str(tmp_path), 'train')] == [
      'a.tfrecord', 'b.tfrecord']
  assert data_folder.find_files(str(tmp_path), 'val') == []
  (tmp_path / 'train-00000-of-00001.tfrecord').write_bytes(b'')
  (tmp_path / 'val-00000-of-00001.tfrecord').write_bytes(b'')
  assert [os.path.basename(f) for f in data_folder.find_files(str(tmp_path), 'train')] == [
      'train-00000-of-00001.tfrecord']
  assert [os.path.basename(f) for f in data_folder.find_files(str(tmp_path), 'val')] == [
      'val-00000-of-00001.tfrecord']
  with pytest.raises(data_folder.DataError, match='no such directory'):
    data_folder.find_files(str(tmp_path / 'missing'), 'train')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(data_folder.DataError, match='no train-'):
    data_folder.find_files(str(empty), 'train')


def bad_records_dir(tiny_data_dir, out):
  """A copy of the tiny dataset plus train-bad.tfrecord: 3 good records among bad ones."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  shutil.copytree(tiny_data_dir, out)
  rng = np.random.default_rng(5)
  good = [records.serialize_example(
      tf.io.encode_jpeg(records.synthetic_image(rng, k, 4, grey=False)).numpy(), 'x.jpg', k)
          for k in range(4)]
  no_label = tf.train.Example(features=tf.train.Features(feature={'image': tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[b'\xff\xd8\xff']))})).SerializeToString()
  path = os.path.join(out, 'train-bad.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for record in [good[0], records.serialize_example(b'no image', 'x', 1), good[1], no_label,
                   records.serialize_example(b'\xff\xd8\xff', 'x', 9), good[2], good[3]]:
      writer.write(record)
  with open(path, 'rb+') as f:
    f.truncate(os.path.getsize(path) - 10)  # cuts the last good record off
  return str(out)


def test_skip_gives_identical_batches_in_both_modes_without_bad_records(tiny_data_dir,
                                                                        tmp_path):
  data_dir = bad_records_dir(tiny_data_dir, tmp_path / 'data')
  outputs = _dump_both_modes(data_dir, tmp_path, 20, on_bad_record='skip')
  graph, eager = outputs['graph'], outputs['eager']
  assert sorted(graph.files) == sorted(eager.files)
  for key in graph.files:
    np.testing.assert_array_equal(graph[key], eager[key], err_msg=key)
  for key in graph.files:
    if key.startswith('y'):  # every label one-hot: no out-of-range label got through
      np.testing.assert_array_equal(graph[key].sum(axis=1), np.ones(8))


def test_skip_reads_exactly_the_good_records_and_changes_nothing_without_bad_ones(
    tiny_data_dir, tmp_path):
  from tf1compat.data import data_check  # pylint: disable=g-import-not-at-top
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  data_dir = bad_records_dir(tiny_data_dir, tmp_path / 'data')
  spec = data_check.check_data_dir(data_dir, 4, 'skip')
  assert spec.train_check.good_records == 64 + 3
  assert [str(bad).split(':')[0] for bad in spec.train_check.bad] == [
      f'train-bad.tfrecord record {k}' for k in (1, 3, 4, 6)]
  assert spec.skip('train')[os.path.join(data_dir, 'train-bad.tfrecord')] == (6, (1, 3, 4))
  # One pass, in file order: the good records of the bad file sit last.
  passes = pipeline.make_dataset(spec.train_files, image_size=TINY_IMAGE_SIZE, num_classes=4,
                                 batch_size=100, training=False, skip=spec.skip('train'))
  labels = np.concatenate([y.numpy().argmax(axis=1) for _, y in passes])
  assert len(labels) == 67
  np.testing.assert_array_equal(labels[-3:], [0, 1, 2])
  # --on_bad_record=skip with nothing to skip: the default pipeline's batches.
  files = data_folder.find_files(tiny_data_dir, 'train')
  common = dict(image_size=TINY_IMAGE_SIZE, num_classes=4, batch_size=8, seed=3,
                shuffle_buffer=20)
  default = pipeline.make_dataset(files, **common).take(10)
  skipping = pipeline.make_dataset(files, skip={}, **common).take(10)
  for (x1, y1), (x2, y2) in zip(default, skipping):
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())

