"""make_dataset gives identical batches in graph mode and eager mode."""

import os

import numpy as np
import pytest

from conftest import TINY_IMAGE_SIZE, run_python

# Iterates the first batches of make_dataset and saves them; argv: mode, data_dir, out.
DUMP_BATCHES = r'''
import os, sys
import numpy as np
mode, data_dir, out, num_batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == 'graph':
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
import tensorflow as tf
if mode == 'graph':
  tf.compat.v1.disable_v2_behavior()
  tf.compat.v1.set_random_seed(7)
else:
  tf.random.set_seed(7)
from tf1compat import data
dataset = data.make_dataset(data.find_files(data_dir, 'train'), image_size=%(size)d,
                            num_classes=4, batch_size=8, seed=7, shuffle_buffer=20)
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


@pytest.mark.parametrize('num_batches', [5, 20])
def test_graph_and_eager_batches_are_identical(tiny_data_dir, tmp_path, num_batches):
  # 20 batches of 8 cross the 64-record epoch boundary twice: the reshuffle after
  # `repeat` must match too, not only the first pass.
  outputs = {}
  for mode in ('graph', 'eager'):
    out = str(tmp_path / f'{mode}.npz')
    result = run_python(DUMP_BATCHES, mode, tiny_data_dir, out, str(num_batches))
    assert result.returncode == 0, result.stderr
    outputs[mode] = np.load(out)
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
  from tf1compat import data  # pylint: disable=g-import-not-at-top
  files = data.find_files(tiny_data_dir, 'train')

  def labels(seed):
    dataset = data.make_dataset(files, image_size=TINY_IMAGE_SIZE, num_classes=4,
                                batch_size=64, seed=seed, shuffle_buffer=64)
    return next(iter(dataset))[1].numpy().argmax(axis=1)

  first_epoch = labels(0)
  # A shuffle buffer as large as the data gives each record exactly once per epoch.
  np.testing.assert_array_equal(np.bincount(first_epoch, minlength=4), [16, 16, 16, 16])
  assert not np.array_equal(first_epoch, labels(1))
  del tf


def test_validation_pipeline_reads_every_record_once_in_order(tiny_data_dir):
  from tf1compat import data  # pylint: disable=g-import-not-at-top
  files = data.find_files(tiny_data_dir, 'val')
  dataset = data.make_dataset(files, image_size=TINY_IMAGE_SIZE, num_classes=4, batch_size=5,
                              training=False)
  sizes = [int(x.shape[0]) for x, _ in dataset]
  assert sizes == [5, 5, 5, 1]  # 16 records, the remainder kept.


def test_find_files_layouts(tmp_path):
  from tf1compat import data  # pylint: disable=g-import-not-at-top
  for name in ('a.tfrecord', 'b.tfrecord'):
    (tmp_path / name).write_bytes(b'')
  assert [os.path.basename(f) for f in data.find_files(str(tmp_path), 'train')] == [
      'a.tfrecord', 'b.tfrecord']
  assert data.find_files(str(tmp_path), 'val') == []
  (tmp_path / 'train-00000-of-00001.tfrecord').write_bytes(b'')
  (tmp_path / 'val-00000-of-00001.tfrecord').write_bytes(b'')
  assert [os.path.basename(f) for f in data.find_files(str(tmp_path), 'train')] == [
      'train-00000-of-00001.tfrecord']
  assert [os.path.basename(f) for f in data.find_files(str(tmp_path), 'val')] == [
      'val-00000-of-00001.tfrecord']
  with pytest.raises(data.DataError, match='no such directory'):
    data.find_files(str(tmp_path / 'missing'), 'train')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(data.DataError, match='no train-'):
    data.find_files(str(empty), 'train')
