"""The image-folder converter, the synthetic dataset and bin/make_records."""

import functools
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import at_once, run_entry, run_python
from tf1compat.data import data_folder


def _jpeg(image, **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, 'JPEG', **kwargs)
  return buffer.getvalue()


def _png(image):
  buffer = io.BytesIO()
  image.save(buffer, 'PNG')
  return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path):
  """Caltech256 layout: 3 classes; JPEG, PNG (RGBA), grey and CMYK JPEG, one corrupt file."""
  root = tmp_path / 'images'
  rgb = Image.new('RGB', (40, 30), (200, 30, 10))
  files = {
      '001.ak47/001_0001.jpg': _jpeg(rgb),
      '001.ak47/001_0002.jpg': _jpeg(Image.new('L', (25, 50), 90)),
      '002.american-flag/002_0001.png': _png(Image.new('RGBA', (33, 33), (0, 0, 255, 128))),
      '002.american-flag/002_0002.jpg': _jpeg(Image.new('CMYK', (20, 20), (0, 255, 255, 0))),
      '002.american-flag/002_0003.jpg': _jpeg(rgb)[:60],  # truncated: unreadable
      '003.backpack/003_0001.jpg': _jpeg(rgb),
      '003.backpack/notes.txt': b'not an image, not counted',
  }
  for rel, blob in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
  return root


def _read_records(paths):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  out = []
  for record in tf.data.TFRecordDataset(paths):
    example = tf.io.parse_single_example(record, pipeline.FEATURES)
    out.append((example['filename'].numpy().decode(), int(example['label']),
                example['image'].numpy()))
  return out


def test_jpeg_components():
  from tf1compat.data import image_bytes  # pylint: disable=g-import-not-at-top
  assert image_bytes.jpeg_components(_jpeg(Image.new('RGB', (8, 8)))) == 3
  assert image_bytes.jpeg_components(_jpeg(Image.new('RGB', (8, 8)), progressive=True)) == 3
  assert image_bytes.jpeg_components(_jpeg(Image.new('L', (8, 8)))) == 1
  assert image_bytes.jpeg_components(_jpeg(Image.new('CMYK', (8, 8)))) == 4
  assert image_bytes.jpeg_components(_png(Image.new('RGB', (8, 8)))) is None


def test_convert_image_folder(image_folder, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf1compat.data import image_bytes  # pylint: disable=g-import-not-at-top
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'records')
  summary = records.convert_image_folder(str(image_folder), out, val_fraction=0.0,
                                         num_shards=2)
  rows = _read_records(data_folder.find_files(out, 'train'))
  assert len(rows) == 5
  assert data_folder.find_files(out, 'val') == []
  labels = {name: label for name, label, _ in rows}
  assert labels == {'001.ak47/001_0001.jpg': 0, '001.ak47/001_0002.jpg': 0,
                    '002.american-flag/002_0001.png': 1, '002.american-flag/002_0002.jpg': 1,
                    '003.backpack/003_0001.jpg': 2}
  for name, _, blob in rows:
    assert image_bytes.jpeg_components(blob) == 3, name  # everything is RGB JPEG now
    assert tf.io.decode_jpeg(blob, channels=3).shape[-1] == 3
  decoded = {name: tf.io.decode_jpeg(blob).numpy() for name, _, blob in rows}
  assert decoded['001.ak47/001_0002.jpg'].shape == (50, 25, 3)
  # The CMYK file was pure (C=0, M=1, Y=1): red. JPEG round trips stay close.
  np.testing.assert_allclose(decoded['002.american-flag/002_0002.jpg'][10, 10], [255, 0, 0],
                             atol=8)
  np.testing.assert_allclose(decoded['002.american-flag/002_0001.png'][10, 10], [0, 0, 255],
                             atol=8)
  with open(os.path.join(out, 'dataset.json')) as f:
    info = json.load(f)
  assert info == summary
  assert info['num_classes'] == 3
  assert info['label_names'] == ['ak47', 'american-flag', 'backpack']
  assert info['counts'] == {'train': 5, 'val': 0}
  assert info['class_counts']['train'] == [2, 2, 1]
  assert info['num_skipped'] == 1
  assert info['skipped'][0]['file'] == '002.american-flag/002_0003.jpg'
  assert info['fingerprint'] == data_folder.fingerprint(data_folder.find_files(out, 'train'))


def test_validation_split_is_per_class_and_seeded(tmp_path):
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'images'
  for cls in ('001.a', '002.b'):
    (root / cls).mkdir(parents=True)
    for i in range(10):
      (root / cls / f'{i:03d}.jpg').write_bytes(_jpeg(Image.new('RGB', (8, 8), (i, i, i))))
  splits = []
  for run in range(2):
    out = str(tmp_path / f'out{run}')
    info = records.convert_image_folder(str(root), out, val_fraction=0.2, num_shards=1, seed=3)
    assert info['class_counts'] == {'train': [8, 8], 'val': [2, 2]}
    splits.append(sorted(n for n, _, _ in _read_records(data_folder.find_files(out, 'val'))))
  assert splits[0] == splits[1]


def test_records_readable_by_the_seed_pipeline(image_folder, tmp_path):
  """The seed's own TF1 code, names and all, reads what the converter writes."""
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'records')
  records.convert_image_folder(str(image_folder), out, val_fraction=0.0)
  seed_pipeline = r'''
import glob, os, sys
os.environ['TF_USE_LEGACY_KERAS'] = '1'
import tensorflow as tf
tf.compat.v1.disable_v2_behavior()
tfrecord_filennames = glob.glob(os.path.join(sys.argv[1], '*.tfrecord'))
feature_schema = {'image': tf.compat.v1.FixedLenFeature([], tf.string),
                  'filename': tf.compat.v1.FixedLenFeature([], tf.string),
                  'label': tf.compat.v1.FixedLenFeature([], tf.int64)}
dataset = tf.compat.v1.data.Dataset.from_tensor_slices(tfrecord_filennames)
dataset = dataset.flat_map(lambda filename: tf.compat.v1.data.TFRecordDataset(filename))
dataset = dataset.map(lambda p: tf.compat.v1.parse_single_example(p, feature_schema))
dataset = dataset.map(lambda sample: (sample['image'], sample['label']))
dataset = dataset.map(lambda image, label: (tf.image.decode_jpeg(image, channels=3), label))
dataset = dataset.map(lambda image, label: (tf.compat.v1.image.resize_image_with_pad(
    image, target_height=224, target_width=224), label))
dataset = dataset.map(lambda image, label: (tf.image.per_image_standardization(image), label))
dataset = dataset.map(lambda image, label: (image, tf.one_hot(indices=label, depth=257)))
features, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
count = 0
with tf.compat.v1.Session() as sess:
  while True:
    try:
      image, label = sess.run([features, labels])
    except tf.errors.OutOfRangeError:
      break
    assert image.shape == (224, 224, 3) and label.shape == (257,), (image.shape, label.shape)
    count += 1
print('records', count)
'''
  result = run_python(seed_pipeline, out)
  assert result.returncode == 0, result.stderr
  assert 'records 5' in result.stdout


def test_synthetic_is_deterministic(tmp_path):
  """Same seed, same bytes: across processes, and in the graph runner's TF1 mode too."""
  from tf1compat.data import image_bytes  # pylint: disable=g-import-not-at-top
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  kwargs = dict(num_classes=3, train_per_class=4, val_per_class=1, num_shards=1)
  first = records.write_synthetic(str(tmp_path / 'a'), seed=5, **kwargs)
  in_graph_mode = run_python(r'''
import os, sys
os.environ['TF_USE_LEGACY_KERAS'] = '1'
import tensorflow as tf
tf.compat.v1.disable_v2_behavior()
from tf1compat.data import records
records.write_synthetic(sys.argv[1], seed=5, num_classes=3, train_per_class=4, val_per_class=1,
                        num_shards=1)
''', str(tmp_path / 'b'))
  assert in_graph_mode.returncode == 0, in_graph_mode.stderr
  again = data_folder.read_dataset_json(str(tmp_path / 'b'))
  other = records.write_synthetic(str(tmp_path / 'c'), seed=6, **kwargs)
  assert first['fingerprint'] == again['fingerprint'] != other['fingerprint']
  for name in ('train-00000-of-00001.tfrecord', 'val-00000-of-00001.tfrecord'):
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
  rows = _read_records(data_folder.find_files(str(tmp_path / 'a'), 'train'))
  assert [label for _, label, _ in rows] == [0, 1, 2] * 4
  sizes = {image_bytes.jpeg_components(blob) for _, _, blob in rows}
  assert sizes <= {1, 3}


def test_synthetic_has_grey_images_and_varied_sizes():
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = [records.synthetic_image(rng, k % 5, 5, grey=k % 4 == 0) for k in range(20)]
  assert {im.shape[-1] for im in images} == {1, 3}
  assert len({im.shape[:2] for im in images}) > 10


def test_synthetic_is_learnable(tmp_path):
  """The seed's ConvNet (Keras 3, in this process) learns it far above chance."""
  import keras  # pylint: disable=g-import-not-at-top
  from tf1compat.data import pipeline  # pylint: disable=g-import-not-at-top
  from tf1compat.data import records  # pylint: disable=g-import-not-at-top
  from tf1compat.train.models import convnet  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'synthetic')
  records.write_synthetic(out, num_classes=10, train_per_class=32, val_per_class=8)
  keras.utils.set_random_seed(0)
  train = pipeline.make_dataset(data_folder.find_files(out, 'train'), image_size=32, num_classes=10,
                                batch_size=32, shuffle_buffer=320)
  val = pipeline.make_dataset(data_folder.find_files(out, 'val'), image_size=32, num_classes=10,
                              batch_size=32, training=False)
  net = convnet.build_model(keras, num_classes=10, image_size=32)
  net.compile(optimizer='adam', loss=keras.losses.CategoricalCrossentropy(from_logits=True),
              metrics=['accuracy'])
  net.fit(train, epochs=1, steps_per_epoch=100, verbose=0)
  _, accuracy = net.evaluate(val, verbose=0)
  assert accuracy > 0.4  # chance is 0.1


def test_make_records_command(image_folder, tmp_path):
  out = str(tmp_path / 'out')
  result, missing = at_once(
      functools.partial(run_entry, 'make_records', f'--image_dir={image_folder}',
                        f'--output_dir={out}', '--val_fraction=0.5', '--num_shards=1'),
      functools.partial(run_entry, 'make_records', f'--image_dir={tmp_path / "nope"}',
                        f'--output_dir={tmp_path / "o2"}'))
  assert result.returncode == 0, result.stderr
  with open(os.path.join(out, 'dataset.json')) as f:
    info = json.load(f)
  assert info['counts']['train'] + info['counts']['val'] == 5
  assert info['num_skipped'] == 1
  assert '002_0003.jpg' in result.stderr  # the skipped file is reported

  again, neither = at_once(
      functools.partial(run_entry, 'make_records', f'--image_dir={image_folder}',
                        f'--output_dir={out}'),
      functools.partial(run_entry, 'make_records', f'--output_dir={out}'))
  assert again.returncode == 2
  assert 'already holds TFRecords' in again.stderr and '--overwrite' in again.stderr
  assert 'Traceback' not in again.stderr

  assert neither.returncode == 2
  assert '--image_dir' in neither.stderr and 'Traceback' not in neither.stderr

  assert missing.returncode == 2
  assert 'no such directory' in missing.stderr and 'Traceback' not in missing.stderr
