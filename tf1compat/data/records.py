"""Writing TFRecords in the seed's schema: an image-folder converter and a synthetic dataset.

Both write `train-NNNNN-of-NNNNN.tfrecord` and `val-NNNNN-of-NNNNN.tfrecord` shards and a
`dataset.json` (classes, label names, counts, skipped files, the shards written,
fingerprint) that the runners read for `--num_classes` and the run manifest's data
fingerprint. bin/make_records (`run`) writes into a temporary folder and moves the
result into place only when it is complete (`_install`), so an interrupted conversion
leaves either the old records whole, nothing, or a folder the runners refuse.
"""

import contextlib
import json
import os
import shutil
import stat
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf

from tf1compat.data import data_folder
from tf1compat.data import image_bytes
from tf1compat.data import record_folder
from tf1compat.runs import atomic
from tf1compat.runs import folders
from tf1compat.runs import held_stderr

# Bump when the synthetic generator changes, so stale caches are not reused.
SYNTHETIC_VERSION = 1
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')
_JPEG_QUALITY = 95


def _bytes_feature(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def serialize_example(jpeg_bytes, filename, label):
  """One tf.Example in the seed's schema (`image`, `filename`, `label`)."""
  example = tf.train.Example(features=tf.train.Features(feature={
      'image': _bytes_feature(jpeg_bytes),
      'filename': _bytes_feature(filename.encode()),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
  }))
  # Map fields serialize in hash order unless asked otherwise: same data, same bytes.
  return example.SerializeToString(deterministic=True)


def to_rgb_jpeg(blob):
  """Returns `blob` as RGB JPEG bytes: RGB JPEGs unchanged, anything else re-encoded.

  Grey and CMYK JPEGs, PNG, GIF, BMP and WebP are decoded to 3 channels and encoded as
  JPEG. Raises tf.errors.InvalidArgumentError for bytes that are not a decodable image.
  """
  if image_bytes.jpeg_components(blob) == 3:
    tf.io.decode_jpeg(blob, channels=3)  # Rejects truncated or corrupt JPEGs.
    return blob
  image = tf.io.decode_image(blob, channels=3, expand_animations=False)
  return tf.io.encode_jpeg(image, quality=_JPEG_QUALITY).numpy()


class ShardedWriter:
  """Writes serialized examples round-robin into `num_shards` files of one split.

  A context manager: each shard is written under a temporary name (atomic.atomic_path)
  and gets its final name when the block ends without an error.
  """

  def __init__(self, out_dir, split, num_shards):
    self._paths = [os.path.join(out_dir, f'{split}-{i:05d}-of-{num_shards:05d}.tfrecord')
                   for i in range(num_shards)]
    self._writers = []
    self._count = 0
    self._stack = contextlib.ExitStack()

  def __enter__(self):
    with contextlib.ExitStack() as stack:
      for path in self._paths:
        tmp = stack.enter_context(atomic.atomic_path(path))
        self._writers.append(stack.enter_context(tf.io.TFRecordWriter(tmp)))
      self._stack = stack.pop_all()
    return self

  def __exit__(self, *error):
    # Each writer is closed before its temporary file is renamed or removed.
    return self._stack.__exit__(*error)

  def write(self, serialized):
    """Appends one serialized example to the next shard in turn."""
    self._writers[self._count % len(self._writers)].write(serialized)
    self._count += 1


def _split_names(class_dir_names):
  """Caltech256 folders are `001.ak47`: the label name is the part after the number."""
  names = []
  for folder in class_dir_names:
    prefix, dot, rest = folder.partition('.')
    names.append(rest if dot and prefix.isdigit() and rest else folder)
  return names


def _write_dataset_json(out_dir, summary):
  record_files = sorted(data_folder.find_files(out_dir, 'train')
                        + data_folder.find_files(out_dir, 'val'))
  summary['files'] = [os.path.basename(path) for path in record_files]
  summary['fingerprint'] = data_folder.fingerprint(record_files)
  json_path = os.path.join(out_dir, data_folder.DATASET_JSON)
  with atomic.atomic_path(json_path) as tmp, open(tmp, 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  return summary


def _write_splits(out_dir, examples_by_split, num_shards):
  """Writes {'train': [(bytes, filename, label)], 'val': [...]} as shards."""
  os.makedirs(out_dir, exist_ok=True)
  for split, examples in examples_by_split.items():
    if not examples:
      continue
    with ShardedWriter(out_dir, split, max(1, min(num_shards, len(examples)))) as writer:
      for jpeg, filename, label in examples:
        writer.write(serialize_example(jpeg, filename, label))


def _class_counts(examples, num_classes):
  counts = np.zeros(num_classes, np.int64)
  for _, _, label in examples:
    counts[label] += 1
  return counts.tolist()


def _class_dirs(src_dir):
  """The sorted class sub-folders of `src_dir`; DataError when there are none to read."""
  if not os.path.isdir(src_dir):
    what = 'a file, not a folder' if os.path.exists(src_dir) else 'no such directory'
    raise data_folder.DataError(f'--image_dir={src_dir}: {what}; pass a folder with one sub-folder '
                                'of images per class (Caltech256 layout)')
  try:
    class_dirs = sorted(d for d in os.listdir(src_dir)
                        if os.path.isdir(os.path.join(src_dir, d)))
  except OSError as e:
    raise data_folder.DataError(f'--image_dir={src_dir}: unreadable ({e.strerror}); make it '
                                'readable or pass another folder') from e
  if not class_dirs:
    raise data_folder.DataError(f'--image_dir={src_dir}: no class sub-folders; expected e.g. '
                                '001.ak47/001_0001.jpg')
  return class_dirs


def _read_image_file(path):
  """(bytes, None), or (None, why) for an entry named like an image that is no readable
  file: a folder, a broken link, a file without read permission, a FIFO or a device
  (opening a FIFO waits for a writer: make_records hung on one)."""
  try:
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
      return None, 'not a regular file (a FIFO, socket or device)'
    with open(path, 'rb') as f:
      return f.read(), None
  except OSError as e:
    return None, f'unreadable ({e.strerror})'


def convert_image_folder(src_dir, out_dir, *, val_fraction=0.1, num_shards=4, seed=0):
  """Converts a Caltech256-layout folder into sharded TFRecords and `dataset.json`.

  Each sub-folder of `src_dir` is a class; labels are the 0-based index of the
  sorted sub-folder names. Per class, a seeded `val_fraction` of the images goes to
  the `val-*` shards. Non-RGB-JPEG images are re-encoded as RGB JPEG; entries that are
  not decodable images (or not readable files at all) are logged, skipped and
  counted. Returns the summary that is also written to `dataset.json`.
  """
  class_dirs = _class_dirs(src_dir)
  # The conversion starts: what make_records held back (cli.run_main) goes out.
  held_stderr.release()
  rng = np.random.default_rng(seed)
  splits = {'train': [], 'val': []}
  skipped = []
  for label, class_dir in enumerate(class_dirs):
    folder = os.path.join(src_dir, class_dir)
    try:
      files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    except OSError as e:
      raise data_folder.DataError(f'--image_dir={src_dir}: {folder} is unreadable ({e.strerror}); '
                                  'make it readable or move it out') from e
    converted = []
    for name in files:
      rel = f'{class_dir}/{name}'
      blob, reason = _read_image_file(os.path.join(folder, name))
      if blob is not None:
        try:
          converted.append((to_rgb_jpeg(blob), rel, label))
        except tf.errors.InvalidArgumentError as e:
          reason = e.message.splitlines()[0] if e.message else 'not a decodable image'
      if reason:
        logging.warning('skipping %s: %s', rel, reason)
        skipped.append({'file': rel, 'reason': reason})
    order = rng.permutation(len(converted))
    num_val = int(round(val_fraction * len(converted)))
    splits['val'].extend(converted[i] for i in sorted(order[:num_val]))
    splits['train'].extend(converted[i] for i in sorted(order[num_val:]))
  _write_splits(out_dir, splits, num_shards)
  num_classes = len(class_dirs)
  return _write_dataset_json(out_dir, {
      'format': record_folder.DATASET_FORMAT,
      'source': os.path.abspath(src_dir),
      'num_classes': num_classes,
      'label_names': _split_names(class_dirs),
      'counts': {split: len(examples) for split, examples in splits.items()},
      'class_counts': {split: _class_counts(examples, num_classes)
                       for split, examples in splits.items()},
      'num_skipped': len(skipped),
      'skipped': skipped,
      'seed': seed,
  })


def synthetic_image(rng, label, num_classes, grey):
  """A class-dependent pattern: an oriented grating whose angle and frequency depend
  on the class, with a random phase, size, tint and noise. Returns uint8 [H, W, C]."""
  height, width = rng.integers(40, 97, size=2)
  angle = np.pi * label / num_classes
  frequency = 0.15 + 0.25 * (label % 3) / 2
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  phase = rng.uniform(0, 2 * np.pi)
  wave = np.sin(frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
  tint = 0.5 + 0.5 * rng.uniform(size=3)
  image = 127.5 + 60 * wave[..., None] * tint + rng.normal(0, 45, size=(height, width, 3))
  image = np.clip(image, 0, 255).astype(np.uint8)
  if grey:
    image = image.mean(axis=-1, keepdims=True).astype(np.uint8)
  return image


def _jpeg_encoder():
  """uint8 [H, W, C] -> JPEG bytes, eagerly or, in a graph-mode process, in a Session.

  The graph runner generates the embedded dataset after disable_v2_behavior(); both
  paths run the same kernel, so the bytes are the same.
  """
  if tf.executing_eagerly():
    return lambda image: tf.io.encode_jpeg(image, quality=_JPEG_QUALITY).numpy()
  graph = tf.Graph()
  with graph.as_default():
    pixels = tf.compat.v1.placeholder(tf.uint8, [None, None, None])
    jpeg = tf.io.encode_jpeg(pixels, quality=_JPEG_QUALITY)
  session = tf.compat.v1.Session(graph=graph)
  return lambda image: session.run(jpeg, {pixels: image})


def write_synthetic(out_dir, *, num_classes=10, train_per_class=64, val_per_class=16,
                    grey_fraction=0.1, num_shards=4, seed=0):
  """Writes the embedded synthetic dataset (real JPEG bytes) and its `dataset.json`.

  Deterministic: the same arguments give the same bytes. Some images are written as
  single-channel JPEGs, as Caltech256 has them, to exercise the 3-channel decode.
  """
  rng = np.random.default_rng(seed)
  splits = {'train': [], 'val': []}
  encode = _jpeg_encoder()
  for split, per_class in (('train', train_per_class), ('val', val_per_class)):
    for index in range(per_class * num_classes):
      label = index % num_classes
      grey = rng.uniform() < grey_fraction
      image = synthetic_image(rng, label, num_classes, grey)
      splits[split].append((encode(image), f'{split}/{label:03d}_{index:05d}.jpg', label))
  _write_splits(out_dir, splits, num_shards)
  return _write_dataset_json(out_dir, {
      'format': record_folder.DATASET_FORMAT,
      'source': 'synthetic',
      'synthetic_version': SYNTHETIC_VERSION,
      'num_classes': num_classes,
      'label_names': [f'pattern_{k:03d}' for k in range(num_classes)],
      'counts': {split: len(examples) for split, examples in splits.items()},
      'class_counts': {split: _class_counts(examples, num_classes)
                       for split, examples in splits.items()},
      'num_skipped': 0,
      'skipped': [],
      'seed': seed,
  })


def _cache_error(error):
  """The DataError of a cache folder that cannot be made or written."""
  where = (f'$TF1COMPAT_CACHE={folders.cache_dir()}' if os.environ.get('TF1COMPAT_CACHE')
           else f'the cache folder {folders.cache_dir()}')
  what = ('is a file, not a folder' if os.path.isfile(folders.cache_dir())
          else f'cannot be written ({error.strerror or error})')
  return data_folder.DataError(f'{where} {what}; point TF1COMPAT_CACHE at a folder you can write '
                               'to, or pass --data_dir')


def cached_synthetic(name, **kwargs):
  """Returns folders.cache_dir()/name holding write_synthetic(**kwargs), generating it once.

  Generation happens in a temporary folder that is renamed into place, so processes
  started side by side never read a half-written dataset. Not atomic.atomic_path: it
  replaces an existing folder, which would delete a copy that a racing process put in
  place and may be reading; os.replace onto a complete copy fails instead, and the
  first copy stays. A cache path that is a file or not writable is a DataError.
  """
  target = os.path.join(folders.cache_dir(), name)
  if os.path.exists(os.path.join(target, data_folder.DATASET_JSON)):
    return target
  try:
    os.makedirs(folders.cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{name}-', dir=folders.cache_dir())
  except OSError as e:
    raise _cache_error(e) from e
  try:
    write_synthetic(tmp, **kwargs)
    os.replace(tmp, target)
  except OSError:
    # Another process renamed its copy into place first; theirs is as good as ours.
    if not os.path.exists(os.path.join(target, data_folder.DATASET_JSON)):
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info('synthetic dataset written to %s', target)
  return target


def embedded_data_dir(seed=0):
  """Returns the folder of the embedded synthetic dataset, generating it once."""
  return cached_synthetic(f'synthetic-v{SYNTHETIC_VERSION}-seed{seed}', seed=seed)


def run(cfg, old_files):
  """bin/make_records: converts `image_dir` or writes the synthetic dataset into `output_dir`.

  `cfg` is a config.RecordsConfig; `old_files` what record_folder.check_output_dir, which
  the command calls before TensorFlow starts, returned for it. The records are written
  into a temporary folder and moved into place when complete (`record_folder.install`);
  with `overwrite`, the records that make_records wrote there before (`old_files`) are
  replaced then, and nothing else is touched. Returns the dataset summary (the content of
  dataset.json).
  """
  out_dir = cfg.output_dir
  if not cfg.synthetic:
    class_dirs = _class_dirs(cfg.image_dir)
    if len(class_dirs) < 2:
      # The runners refuse a dataset.json of fewer than 2 classes (a softmax over one
      # class learns nothing): such records are no dataset.
      raise data_folder.DataError(
          f'--image_dir={cfg.image_dir}: one class sub-folder ({class_dirs[0]}); the runners '
          'train at least 2 classes: add a sub-folder of images per class')
  with record_folder.staging(out_dir) as tmp:
    try:
      if cfg.synthetic:
        held_stderr.release()
        summary = write_synthetic(
            tmp, num_classes=cfg.synthetic_classes,
            train_per_class=cfg.synthetic_train_per_class,
            val_per_class=cfg.synthetic_val_per_class, num_shards=cfg.num_shards,
            seed=cfg.seed)
      else:
        summary = convert_image_folder(cfg.image_dir, tmp, val_fraction=cfg.val_fraction,
                                       num_shards=cfg.num_shards, seed=cfg.seed)
      record_folder.install(tmp, out_dir, old_files)
    except (OSError, tf.errors.OpError) as e:
      why = getattr(e, 'strerror', None) or getattr(e, 'message', None) or str(e)
      raise data_folder.DataError(f'--output_dir={out_dir}: writing the records failed '
                                  f'({why.splitlines()[0]}); free some space or choose another '
                                  'folder, then rerun') from e
  logging.info('wrote %d training and %d validation records of %d classes to %s '
               '(%d files skipped)', summary['counts']['train'], summary['counts']['val'],
               summary['num_classes'], out_dir, summary['num_skipped'])
  return summary
