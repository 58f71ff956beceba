"""Issue 15, the data side: atomic conversions, a pre-flight check that finds what run time
would drop, the epoch-end checkpoint before evaluation, and one-line errors.

Every case runs the real entry points as subprocesses and checks the exit code, that
stderr ends in one line without a traceback, that the user's files are byte-identical
afterwards and that nothing temporary is left behind. Cases that must pass the
pre-flight check stop right after it with --save_init_weights (no training).
"""

import functools
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from conftest import (KILL_FLAGS, REFERENCE_RUNNERS, REPO, TINY, at_once, read_run_csv, run_entry,
                      tiny_run_flags)
from tf1compat.data import data_folder
from tf1compat.data import image_bytes
from tf1compat.data import records
from tf1compat.data import tfrecord
from tf1compat.runs import run_files
from tf1compat.runs import runlog

NUM_CLASSES = TINY['num_classes']
TRAIN_RECORDS = TINY['train_per_class'] * NUM_CLASSES
# A small synthetic conversion: 2 classes, 8 training and 2 validation records.
SMALL = ('--synthetic', '--synthetic_classes=2', '--synthetic_train_per_class=4',
         '--synthetic_val_per_class=1', '--num_shards=1')
# What the temporary files of make_records and of atomic writes are named.
TEMPORARY = re.compile(r'.*(make_records-\d+|\.tmp\d+).*')


def _hashes(folder):
  """{relative path: sha256} of every file under `folder`."""
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      if os.path.isfile(path):
        with open(path, 'rb') as f:
          found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return found


def _temporaries(folder):
  return [os.path.join(root, name) for root, dirs, files in os.walk(folder)
          for name in dirs + files if TEMPORARY.fullmatch(name)]


def _hashes_but_temporaries(folder):
  return {path: digest for path, digest in _hashes(folder).items()
          if not TEMPORARY.fullmatch(path.split(os.sep)[0])}


def _one_line(proc, code=2):
  """The one line a failed command wrote, after checking its exit code and stderr."""
  assert proc.returncode == code, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def _copy(tiny_data_dir, folder):
  shutil.copytree(tiny_data_dir, folder)
  return str(folder)


def _records_of(path):
  return [record.data for record in tfrecord.walk(str(path))]


def _rewrite(path, serialized):
  with open(path, 'wb') as f:
    f.write(b''.join(tfrecord.frame(record) for record in serialized))


def _flip_data_byte(path, index):
  """Flips one byte in the middle of record `index`'s data (its stored CRC kept)."""
  record = list(tfrecord.walk(str(path), read_data=False))[index]
  content = bytearray(open(path, 'rb').read())
  position = record.offset + tfrecord.HEADER.size + record.length // 2
  content[position] ^= 0x01 if content[position] < 0xF0 else 0x10
  with open(path, 'wb') as f:
    f.write(bytes(content))
  return record.offset


def _image(fmt, mode='RGB', seed=0, **kwargs):
  pixels = records.synthetic_image(np.random.default_rng(seed), 1, NUM_CLASSES, grey=False)
  out = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(out, format=fmt, **kwargs)
  return out.getvalue()


def _without_quantization_tables(jpeg):
  """A JPEG whose DQT segments are cut out: every marker in place, so its structure
  passes, but libjpeg stops at 'Quantization table 0x00 was not defined'."""
  out, pos = bytearray(jpeg[:2]), 2
  while True:
    marker = jpeg[pos + 1]
    if marker == 0xDA:
      return bytes(out + jpeg[pos:])
    end = pos + 2 + int.from_bytes(jpeg[pos + 2:pos + 4], 'big')
    if marker != 0xDB:
      out += jpeg[pos:end]
    pos = end


def _example(image, label=1):
  return records.serialize_example(image, 'x.jpg', label)


# --- 1. atomic conversions ---------------------------------------------------------------

def test_make_records_writes_a_new_folder_whole_and_lists_its_shards(tmp_path):
  out = tmp_path / 'new' / 'records'
  proc = run_entry('make_records', *SMALL, f'--output_dir={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads((out / data_folder.DATASET_JSON).read_text())
  assert sorted(os.listdir(out)) == sorted(info['files'] + [data_folder.DATASET_JSON])
  assert info['files'] == ['train-00000-of-00001.tfrecord', 'val-00000-of-00001.tfrecord']
  assert info['fingerprint'] == data_folder.fingerprint([str(out / n) for n in info['files']])
  assert not _temporaries(tmp_path)


def test_a_killed_overwrite_leaves_the_old_records_whole_and_the_rerun_replaces_them(tmp_path):
  out = tmp_path / 'records'
  assert run_entry('make_records', *SMALL, f'--output_dir={out}').returncode == 0
  (out / 'notes.txt').write_text('the user\'s own file')
  before = _hashes(out)
  # A conversion of 1,280 images takes seconds: killed while it writes its shards.
  args = ['--synthetic', '--synthetic_train_per_class=128', f'--output_dir={out}',
          '--overwrite']
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'bin', 'make_records'), *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  while proc.poll() is None and time.monotonic() < deadline and not _temporaries(out):
    time.sleep(0.005)
  time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  assert _temporaries(out)  # killed while converting: its staging folder is left
  assert _hashes_but_temporaries(out) == before
  # The old records still train (the pre-flight check passes them).
  proc = run_entry('train_eager', f'--data_dir={out}',
                   f'--save_init_weights={tmp_path / "init.npz"}')
  assert proc.returncode == 0, proc.stderr[-3000:]

  rerun = run_entry('make_records', *SMALL, f'--output_dir={out}', '--overwrite', '--seed=1')
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert not _temporaries(tmp_path)  # the dead process's staging folder is gone too
  assert (out / 'notes.txt').read_text() == 'the user\'s own file'
  assert json.loads((out / data_folder.DATASET_JSON).read_text())['seed'] == 1


def test_foreign_records_and_dataset_json_are_never_replaced(tmp_path):
  out = tmp_path / 'records'
  out.mkdir()
  (out / 'mine.tfrecord').write_bytes(b'the user\'s records')
  before = _hashes(out)
  line = _one_line(run_entry('make_records', *SMALL, f'--output_dir={out}', '--overwrite'))
  assert f'--output_dir={out}: mine.tfrecord is not a record file bin/make_records wrote' in line
  assert 'move it away or choose another folder' in line
  (out / 'mine.tfrecord').unlink()
  (out / data_folder.DATASET_JSON).write_text('{"num_classes": 3}')
  before = _hashes(out)
  line = _one_line(run_entry('make_records', *SMALL, f'--output_dir={out}', '--overwrite'))
  assert f'its {data_folder.DATASET_JSON} was not written by bin/make_records' in line
  assert _hashes(out) == before and not _temporaries(tmp_path)


def test_an_unfinished_conversion_is_refused_by_the_runners(tiny_data_dir, tmp_path):
  # What a crash inside make_records' final moves leaves: the marker, no dataset.json.
  data_dir = _copy(tiny_data_dir, tmp_path / 'data')
  (tmp_path / 'data' / data_folder.DATASET_JSON).unlink()
  (tmp_path / 'data' / data_folder.INCOMPLETE_MARKER).write_text('')
  before = _hashes(data_dir)
  del before[data_folder.INCOMPLETE_MARKER]  # the test removes it below
  line = _one_line(run_entry('train_graph', *tiny_run_flags(data_dir, tmp_path / 'run')))
  assert (f'--data_dir={data_dir}: a bin/make_records conversion into it did not finish '
          f'({data_folder.INCOMPLETE_MARKER} is there); rerun it with --overwrite') in line
  # An older version's interruption: make_records' shards, no dataset.json, no marker.
  (tmp_path / 'data' / data_folder.INCOMPLETE_MARKER).unlink()
  line = _one_line(run_entry('train_eager', *tiny_run_flags(data_dir, tmp_path / 'run')))
  assert 'holds bin/make_records shards (train-00000-of-00002.tfrecord...) but no dataset.json' \
      in line
  assert not (tmp_path / 'run').exists()
  # Shards another program named alike: the user says how many classes there are.
  proc = run_entry('train_eager', f'--data_dir={data_dir}', f'--num_classes={NUM_CLASSES}',
                   f'--save_init_weights={tmp_path / "init.npz"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _hashes(data_dir) == before


def test_num_classes_that_disagrees_with_dataset_json_needs_the_switch(tiny_data_dir, tmp_path):
  before = _hashes(tiny_data_dir)
  refused, proc = at_once(
      functools.partial(run_entry, 'train_graph', *tiny_run_flags(
          tiny_data_dir, tmp_path / 'run', '--num_classes=5')),
      functools.partial(run_entry, 'train_eager', f'--data_dir={tiny_data_dir}',
                        '--num_classes=5', '--allow_num_classes_mismatch',
                        f'--save_init_weights={tmp_path / "i.npz"}'))
  line = _one_line(refused)
  assert (f'--num_classes=5 disagrees with {os.path.join(tiny_data_dir, data_folder.DATASET_JSON)} '
          f'({NUM_CLASSES} classes); drop --num_classes, or pass --allow_num_classes_mismatch'
          ) in line
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _hashes(tiny_data_dir) == before


# dataset.json -> what the error line says about it.
WRONG_DATASET_JSON = {
    '[]': 'holds a JSON list, not an object with num_classes',
    '{"num_classes": "ten"}': "num_classes is 'ten', not an integer in [2, 2147483647]",
    '{"num_classes": 4, "files": ["train-00009-of-00010.tfrecord"]}':
        'train-00009-of-00010.tfrecord is listed in dataset.json but missing',
}


def _runs_on_damaged_copies(tiny_data_dir, root, cases, damage):
  """{case: (CompletedProcess, data_dir, the data's hashes before the run, model_dir, what
  `damage` returned)}: for each (case, script) of `cases`, `script` on a copy of the tiny
  dataset that `damage(case, data_dir)` changed; the runs at once."""
  folders, calls = {}, []
  for index, (case, script) in enumerate(cases):
    data_dir = _copy(tiny_data_dir, root / str(index) / 'data')
    damaged = damage(case, data_dir)
    model_dir = root / str(index) / 'run'
    folders[case] = (data_dir, _hashes(data_dir), model_dir, damaged)
    calls.append(functools.partial(run_entry, script, *tiny_run_flags(data_dir, model_dir)))
  return {case: (proc, *folders[case]) for case, proc in zip(folders, at_once(*calls))}


@pytest.fixture(scope='module')
def wrong_dataset_json_runs(tiny_data_dir, tmp_path_factory):
  """The refusals of copies of the tiny dataset whose dataset.json is each of
  WRONG_DATASET_JSON."""
  def write(content, data_dir):
    with open(os.path.join(data_dir, data_folder.DATASET_JSON), 'w') as f:
      f.write(content)
  return _runs_on_damaged_copies(tiny_data_dir, tmp_path_factory.mktemp('dataset_json'),
                                 [(content, 'train_eager') for content in WRONG_DATASET_JSON],
                                 write)


@pytest.mark.parametrize('content', WRONG_DATASET_JSON)
def test_dataset_json_of_the_wrong_shape_is_one_line(content, wrong_dataset_json_runs):
  proc, data_dir, before, model_dir, _ = wrong_dataset_json_runs[content]
  line = _one_line(proc)
  assert WRONG_DATASET_JSON[content] in line
  assert _hashes(data_dir) == before and not model_dir.exists()


# --- 2 and 4. what the pre-flight check finds ---------------------------------------------

def _damaged_val(folder):
  name = 'val-00001-of-00002.tfrecord'
  return name, _flip_data_byte(os.path.join(folder, name), 2)


def _truncated_gif():
  gif = _image('GIF', 'P')
  return gif[:len(gif) * 2 // 3]


def _truncated_bmp():
  return _image('BMP')[:-7]


def _damaged_png():
  png = bytearray(_image('PNG'))
  png[len(png) // 2] ^= 0x55  # inside IDAT: its CRC no longer matches
  return bytes(png)


# name -> (the image that replaces training record 3, what the error line says about it)
BAD_IMAGES = {
    'gif': (_truncated_gif, "'image' is a truncated GIF"),
    'bmp': (_truncated_bmp, "'image' is a truncated BMP"),
    'png': (_damaged_png, "'image' is a damaged PNG (its IDAT chunk fails its CRC)"),
}


@pytest.fixture(scope='module')
def preflight_runs(tiny_data_dir, tmp_path_factory):
  """The refusals of the pre-flight check below: 'gif', 'bmp' and 'png' of BAD_IMAGES, and
  'val' with a damaged validation record (what damaging it returned: its shard and offset)."""
  def damage(case, data_dir):
    if case == 'val':
      return _damaged_val(data_dir)
    shard = os.path.join(data_dir, 'train-00000-of-00002.tfrecord')
    serialized = _records_of(shard)
    serialized[3] = _example(BAD_IMAGES[case][0]())
    _rewrite(shard, serialized)
    return None
  cases = [('gif', 'train_eager'), ('bmp', 'train_graph'), ('png', 'train_eager'),
           ('val', 'train_graph')]
  return _runs_on_damaged_copies(tiny_data_dir, tmp_path_factory.mktemp('preflight'), cases,
                                 damage)


@pytest.mark.parametrize('name', BAD_IMAGES)
def test_truncated_gif_bmp_and_damaged_png_are_named_before_the_run(name, preflight_runs):
  proc, data_dir, before, model_dir, _ = preflight_runs[name]
  line = _one_line(proc)
  assert (f'--data_dir={data_dir}: train-00000-of-00002.tfrecord record 3: '
          f'{BAD_IMAGES[name][1]}') in line
  assert _hashes(data_dir) == before and not model_dir.exists()


def test_a_damaged_validation_shard_is_named_before_the_run(preflight_runs):
  proc, data_dir, before, model_dir, (name, offset) = preflight_runs['val']
  line = _one_line(proc)
  assert (f'{name} record 2: its bytes are damaged (data checksum mismatch in the record at '
          f'byte {offset}); copy the file again') in line
  assert _hashes(data_dir) == before and not model_dir.exists()


def test_skip_counts_every_record_it_leaves_out_file_by_file(tiny_data_dir, tmp_path):
  """A data checksum failure loses the rest of its file and an image that only decoding
  rejects loses itself: both are left out up front, logged per file and counted, and
  run.json's counts are the records the run really read."""
  data_dir = _copy(tiny_data_dir, tmp_path / 'data')
  crc_shard = 'train-00001-of-00002.tfrecord'
  crc_records = len(_records_of(tmp_path / 'data' / crc_shard))
  _flip_data_byte(str(tmp_path / 'data' / crc_shard), 5)
  lost_to_crc = crc_records - 5  # record 5 and every one after it
  undecodable = _without_quantization_tables(_image('JPEG'))
  assert image_bytes.problem(undecodable) is None  # only decoding finds it
  shard = tmp_path / 'data' / 'train-00000-of-00002.tfrecord'
  serialized = _records_of(shard)
  serialized[7] = _example(undecodable)
  _rewrite(shard, serialized)
  before = _hashes(data_dir)
  model_dir = str(tmp_path / 'run')
  proc = run_entry('train_eager', *tiny_run_flags(data_dir, model_dir, '--on_bad_record=skip',
                                                  '--epochs=1', '--steps_per_epoch=3'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'leaving out {lost_to_crc + 1} bad record(s)' in proc.stderr
  assert re.search(rf'{crc_shard}: {lost_to_crc} record\(s\) left out: record 5: its bytes '
                   rf'are damaged .* \(it and the {lost_to_crc - 1} record\(s\) after it are '
                   'left out\\)', proc.stderr)
  assert re.search(r"train-00000-of-00002.tfrecord: 1 record\(s\) left out: record 7: 'image' "
                   r'does not decode \(jpeg::Uncompress failed', proc.stderr)
  block = runlog.read_manifest(model_dir)['data']
  assert block['records']['train'] == TRAIN_RECORDS - lost_to_crc - 1
  assert block['skipped_records'] == lost_to_crc + 1
  assert block['skipped_by_file'] == {'train-00000-of-00002.tfrecord': 1,
                                      crc_shard: lost_to_crc}
  assert _hashes(data_dir) == before


def test_a_run_time_decode_failure_names_the_record(tiny_data_dir, tmp_path):
  """--on_bad_record=fail: what only decoding finds stops the run at run time, named."""
  data_dir = _copy(tiny_data_dir, tmp_path / 'data')
  shard = tmp_path / 'data' / 'train-00000-of-00002.tfrecord'
  serialized = _records_of(shard)
  serialized[4] = _example(_without_quantization_tables(_image('JPEG')))
  _rewrite(shard, serialized)
  proc = run_entry('train_graph', *tiny_run_flags(data_dir, tmp_path / 'run'))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  line = proc.stderr.strip().splitlines()[-1]
  assert ("train-00000-of-00002.tfrecord record 4: 'image' does not decode "
          '(jpeg::Uncompress failed') in line, line
  assert '--on_bad_record=skip' in line


# --- 3. the epoch-end checkpoint comes before evaluating; a repaired file resumes ---------

def test_validation_damaged_mid_run_keeps_the_epoch_and_the_repaired_file_resumes(
    references, tiny_data_dir, tmp_path):
  data_dir = _copy(tiny_data_dir, tmp_path / 'data')
  original = _hashes(data_dir)
  model_dir = str(tmp_path / 'run')
  steps_csv = os.path.join(model_dir, run_files.STEPS_CSV)
  # The flags of the session's eager reference run (epochs of 8 steps, checkpoints every 3).
  script, *extra = REFERENCE_RUNNERS['eager']
  args = tiny_run_flags(data_dir, model_dir, *KILL_FLAGS, *extra)
  # The file is damaged once training runs (the pre-flight check passed it): the first
  # evaluation, at the end of epoch 1 (step 8), reads it.
  with open(tmp_path / 'stderr.txt', 'w') as log:
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'bin', script), *args],
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
      if runlog.count_rows(steps_csv) >= 1:
        name, offset = _damaged_val(data_dir)
        break
      time.sleep(0.005)
    assert proc.wait(timeout=300) == 2
  stderr = (tmp_path / 'stderr.txt').read_text()
  assert 'Traceback' not in stderr
  assert (f'{name} record 2: its bytes are damaged (data checksum mismatch in the record at '
          f'byte {offset}); copy the file again') in stderr.strip().splitlines()[-1]
  assert runlog.read_manifest(model_dir)['status'] == runlog.STATUS_FAILED
  # The epoch's training is kept: its checkpoint was written before the evaluation (the
  # periodic one before it is step 6's).
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, run_files.CHECKPOINTS_DIR))
  assert latest.endswith('-8'), latest
  assert read_run_csv(model_dir, run_files.EPOCHS_CSV) == {}

  shutil.copy(os.path.join(tiny_data_dir, name), os.path.join(data_dir, name))  # repaired
  assert _hashes(data_dir) == original
  proc = run_entry(script, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r'resuming \S+ from step 8', proc.stderr)
  assert 'evaluating epoch 1, which ended at the checkpoint of step 8' in proc.stderr
  for name, columns in ((run_files.STEPS_CSV, runlog.STEP_COLUMNS),
                        (run_files.EPOCHS_CSV, runlog.EPOCH_COLUMNS)):
    got, expected = read_run_csv(model_dir, name), read_run_csv(references('eager'), name)
    for column in columns[:-1]:  # all but seconds
      np.testing.assert_array_equal(got[column], expected[column], err_msg=f'{name} {column}')
  assert not _temporaries(model_dir)


# --- 5. make_records and the cache: one line naming the path and the fix -----------------

def test_output_dir_that_is_a_file_or_not_writable(tmp_path):
  (tmp_path / 'file').write_text('the user\'s file')
  if os.geteuid() == 0:
    read_only = '/sys/tf1compat-records'  # root writes anywhere else
  else:
    (tmp_path / 'ro').mkdir(mode=0o555)
    read_only = str(tmp_path / 'ro' / 'records')
  a_file, not_writable = at_once(
      functools.partial(run_entry, 'make_records', *SMALL, f'--output_dir={tmp_path / "file"}'),
      functools.partial(run_entry, 'make_records', *SMALL, f'--output_dir={read_only}'))
  line = _one_line(a_file)
  assert f'--output_dir={tmp_path / "file"}: a file, not a folder; pass a folder' in line
  assert (tmp_path / 'file').read_text() == 'the user\'s file'
  line = _one_line(not_writable)
  assert f'--output_dir={read_only}: cannot write there (' in line
  assert 'choose a folder you can write to' in line
  assert not _temporaries(tmp_path)


def test_image_entries_that_are_no_readable_files_are_reported_and_skipped(tmp_path):
  root = tmp_path / 'images'
  (root / '001.cat').mkdir(parents=True)
  (root / '001.cat' / 'a.jpg').write_bytes(_image('JPEG'))
  (root / '001.cat' / 'folder.jpg').mkdir()
  (root / '001.cat' / 'broken.png').symlink_to(root / 'nowhere.png')
  (root / '002.dog').mkdir()
  (root / '002.dog' / 'b.jpg').write_bytes(_image('JPEG', seed=1))
  before = _hashes(root)
  out = tmp_path / 'records'
  proc, a_file = at_once(
      functools.partial(run_entry, 'make_records', f'--image_dir={root}', f'--output_dir={out}',
                        '--val_fraction=0'),
      functools.partial(run_entry, 'make_records', f'--image_dir={root / "001.cat" / "a.jpg"}',
                        f'--output_dir={tmp_path / "other"}'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  info = json.loads((out / data_folder.DATASET_JSON).read_text())
  assert info['counts']['train'] == 2
  assert {entry['file']: entry['reason'] for entry in info['skipped']} == {
      '001.cat/broken.png': 'unreadable (No such file or directory)',
      '001.cat/folder.jpg': 'unreadable (Is a directory)'}
  assert 'skipping 001.cat/folder.jpg: unreadable (Is a directory)' in proc.stderr
  assert _hashes(root) == before and not _temporaries(tmp_path)
  line = _one_line(a_file)
  assert 'a.jpg: a file, not a folder; pass a folder with one sub-folder of images' in line
  assert not (tmp_path / 'other').exists()


def test_a_cache_folder_that_is_a_file_is_one_line(tmp_path):
  cache = tmp_path / 'cache'
  cache.write_text('not a folder')
  line = _one_line(run_entry('train_eager', f'--model_dir={tmp_path / "run"}',
                             env={'TF1COMPAT_CACHE': str(cache)}))
  assert (f'$TF1COMPAT_CACHE={cache} is a file, not a folder; point TF1COMPAT_CACHE at a '
          'folder you can write to') in line
  assert cache.read_text() == 'not a folder' and not (tmp_path / 'run').exists()
