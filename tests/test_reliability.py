"""Issue 6: bad input gets a clear error, faults lose nothing, interrupted runs resume exactly.

Every runner is a subprocess on copies of the tiny synthetic dataset, some with one bad
file added. Bad input must stop before the run directory exists, with exit 2 and one
line naming the file or flag; a NaN loss exits 3 and names a checkpoint that loads;
SIGTERM, SIGINT and SIGKILL in the middle of an epoch lose nothing: the rerun of the
same command ends on the weights of a run that was never interrupted, bit for bit.
"""

import functools
import io
import os
import re
import shutil
import signal
import types

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from conftest import (JAX_PORT, KILL_FLAGS, STEPS_PER_EPOCH, TINY, TOTAL_STEPS, at_once,
                      csv_rows, read_run_csv, read_snapshot, requires_jax, run_entry,
                      run_python, signal_after, tiny_run_flags)
from tf1compat.data import data_folder
from tf1compat.data import pipeline
from tf1compat.data import records
from tf1compat.data import tfrecord
from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import runlog

NUM_CLASSES = TINY['num_classes']
# Runs that get interrupted take conftest's KILL_FLAGS, as its `references` do.
BAD_FILE = 'train-bad.tfrecord'


# --- data --------------------------------------------------------------------------------

def _image(label, fmt='JPEG', mode='RGB', seed=0):
  """A synthetic image of `label` encoded by Pillow as `fmt` in colour `mode`."""
  pixels = records.synthetic_image(np.random.default_rng(seed), label, NUM_CLASSES, grey=False)
  out = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(out, format=fmt)
  return out.getvalue()


def _example(image=None, label=1, omit=()):
  """A serialized tf.train.Example in the seed's schema, less the features in `omit`."""
  feature = {
      'image': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[_image(label) if image is None else image])),
      'filename': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'bad/x.jpg'])),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  }
  for name in omit:
    del feature[name]
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _tfrecord_bytes(serialized):
  """The bytes of a TFRecord file holding `serialized` records."""
  return b''.join(tfrecord.frame(record) for record in serialized)


def _with_bad_file(tiny_data_dir, folder, content):
  """A copy of the tiny dataset in `folder` plus BAD_FILE holding `content` (bytes)."""
  shutil.copytree(tiny_data_dir, folder)
  with open(os.path.join(folder, BAD_FILE), 'wb') as f:
    f.write(content)
  return str(folder)


def _good_records(n):
  return [_example(label=k % NUM_CLASSES) for k in range(n)]


def test_tfrecord_framing_matches_tensorflow(tmp_path):
  # The tests build bad files byte by byte: their framing must be TensorFlow's own.
  serialized = _good_records(2)
  path = str(tmp_path / 'x.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for record in serialized:
      writer.write(record)
  with open(path, 'rb') as f:
    assert f.read() == _tfrecord_bytes(serialized)


# --- bad input: exit 2, one line naming the problem, no run directory --------------------

def _truncated():
  content = _tfrecord_bytes(_good_records(3))
  return content[:len(content) - 100]


# name -> (content of BAD_FILE, runner arguments, substrings of the error line)
BAD_FILES = {
    'not_a_tfrecord': (lambda: _image(1) * 3, ('train_eager',),
                       [f'{BAD_FILE} record 0: not a TFRecord file', 'remove it']),
    'truncated': (_truncated, ('train_graph',),
                  [f'{BAD_FILE} record 2:', 'the file is truncated', 'copy the file again']),
    'missing_image': (lambda: _tfrecord_bytes([_example(), _example(omit=['image'])]),
                      ('train_eager', '--loop=fit'),
                      [f"{BAD_FILE} record 1: no 'image' feature", 'bin/make_records']),
    'missing_label': (lambda: _tfrecord_bytes([_example(omit=['label'])]), ('train_graph',),
                      [f"{BAD_FILE} record 0: no 'label' feature"]),
    'not_an_image': (lambda: _tfrecord_bytes(_good_records(2) + [_example(b'not an image')]),
                     ('train_eager',),
                     [f"{BAD_FILE} record 2: 'image' is not an image", '--on_bad_record=skip']),
    'label_out_of_range': (lambda: _tfrecord_bytes([_example(label=NUM_CLASSES)]),
                           ('train_graph',),
                           [f'{BAD_FILE} record 0: label out of range [0, {NUM_CLASSES}) '
                            f'(label {NUM_CLASSES})', 'check --num_classes']),
}


def _expect_usage_error(proc, *substrings):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  line = proc.stderr.strip().splitlines()[-1]
  for text in substrings:
    assert text in line, line
  return line


@pytest.fixture(scope='module')
def bad_file_runs(tiny_data_dir, tmp_path_factory):
  """{name: (CompletedProcess, data_dir, model_dir)} of every BAD_FILES case, run at once."""
  root = tmp_path_factory.mktemp('bad_files')
  folders, calls = {}, []
  for name, (content, (script, *args), _) in BAD_FILES.items():
    data_dir = _with_bad_file(tiny_data_dir, root / name / 'data', content())
    folders[name] = (data_dir, root / name / 'run')
    calls.append(functools.partial(run_entry, script,
                                   *tiny_run_flags(data_dir, folders[name][1], *args)))
  return {name: (proc, *folders[name]) for name, proc in zip(folders, at_once(*calls))}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_bad_record_file_stops_before_the_run_starts(name, bad_file_runs):
  _, (script, *_), expected = BAD_FILES[name]
  proc, data_dir, model_dir = bad_file_runs[name]
  line = _expect_usage_error(proc, f'--data_dir={data_dir}: ', *expected)
  assert line.startswith(f'{script}: ')
  # One line: TensorFlow's start-up lines, held back until a run starts, never come.
  assert proc.stderr.strip().splitlines() == [line]
  assert not model_dir.exists()


NO_RECORDS = ('missing', 'empty', 'no_matching_files')


@pytest.fixture(scope='module')
def no_records_runs(tmp_path_factory):
  """{case of NO_RECORDS: (CompletedProcess, data_dir, model_dir)}, run at once."""
  root = tmp_path_factory.mktemp('no_records')
  folders, calls = {}, []
  for name in NO_RECORDS:
    data_dir, model_dir = root / name / 'data', root / name / 'run'
    (root / name).mkdir()
    if name != 'missing':
      data_dir.mkdir()
    if name == 'no_matching_files':
      (data_dir / 'train.csv').write_text('image,label\n')
      (data_dir / 'images').mkdir()
    folders[name] = (data_dir, model_dir)
    calls.append(functools.partial(run_entry, 'train_graph' if name == 'empty' else 'train_eager',
                                   *tiny_run_flags(data_dir, model_dir)))
  return {name: (proc, *folders[name]) for name, proc in zip(folders, at_once(*calls))}


@pytest.mark.parametrize('name', NO_RECORDS)
def test_data_dir_without_records_is_a_usage_error(name, no_records_runs):
  proc, data_dir, model_dir = no_records_runs[name]
  expected = ('no such directory' if name == 'missing'
              else 'no train-*.tfrecord or *.tfrecord files')
  _expect_usage_error(proc, f'--data_dir={data_dir}: {expected}', 'bin/make_records')
  assert not model_dir.exists()


@pytest.mark.parametrize('script,flag,expected', [
    ('train_graph', '--batch_size=0', '--batch_size=0'),
    ('train_eager', '--epochs=-1', '--epochs=-1'),
    ('train_graph', '--image_size=16', '--image_size=16: 16 is not an integer in the range [31, '),
])
def test_flag_out_of_range_is_a_usage_error(script, flag, expected, tiny_data_dir, tmp_path):
  model_dir = tmp_path / 'run'
  proc = run_entry(script, *tiny_run_flags(tiny_data_dir, model_dir), flag)
  _expect_usage_error(proc, expected, '--helpfull')
  assert not model_dir.exists()


def test_grey_png_cmyk_and_other_formats_train(tiny_data_dir, tmp_path):
  formats = [('JPEG', 'L'), ('JPEG', 'CMYK'), ('PNG', 'RGB'), ('PNG', 'L'), ('PNG', 'RGBA'),
             ('GIF', 'P'), ('BMP', 'RGB'), ('WEBP', 'RGB')]
  content = _tfrecord_bytes([_example(_image(k % NUM_CLASSES, fmt, mode, seed=k),
                                      label=k % NUM_CLASSES)
                             for k, (fmt, mode) in enumerate(formats)])
  data_dir = _with_bad_file(tiny_data_dir, tmp_path / 'data', content)
  model_dir = str(tmp_path / 'run')
  # A batch of 64 + 8 records: every image is decoded in the first step.
  proc = run_entry('train_graph', *tiny_run_flags(data_dir, model_dir, '--batch_size=72',
                                                  '--epochs=1', '--steps_per_epoch=1',
                                                  '--shuffle_buffer=100'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  manifest = runlog.read_manifest(model_dir)
  assert manifest['status'] == runlog.STATUS_COMPLETE
  assert manifest['data']['records']['train'] == TINY['train_per_class'] * NUM_CLASSES + 8
  assert manifest['data']['skipped_records'] == 0


def test_skip_leaves_bad_records_out_and_counts_them(tiny_data_dir, tmp_path):
  good = _good_records(2)
  content = _tfrecord_bytes([good[0], _example(b'not an image'), _example(omit=['label']),
                             _example(label=-1), good[1]] + _good_records(2))
  data_dir = _with_bad_file(tiny_data_dir, tmp_path / 'data', content[:-50])
  model_dir = str(tmp_path / 'run')
  proc = run_entry('train_eager', *tiny_run_flags(data_dir, model_dir, '--on_bad_record=skip',
                                                  '--epochs=1', '--steps_per_epoch=9'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'leaving out 4 bad record(s)' in proc.stderr
  manifest = runlog.read_manifest(model_dir)
  assert manifest['status'] == runlog.STATUS_COMPLETE
  block = manifest['data']
  assert block['on_bad_record'] == 'skip'
  assert block['skipped_records'] == 4
  assert block['records']['train'] == TINY['train_per_class'] * NUM_CLASSES + 3
  assert [entry.split(':')[0] for entry in block['skipped']] == [
      f'{BAD_FILE} record {k}' for k in (1, 2, 3, 6)]
  assert 'not an image' in block['skipped'][0]
  assert 'truncated' in block['skipped'][3]


def test_damaged_record_is_named_by_the_pre_flight_check(tiny_data_dir, tmp_path):
  # A flipped byte inside a record's image data: the framing and the JPEG structure are
  # intact, so only the data checksum finds it. The pre-flight check verifies it with
  # TensorFlow's reader (issue 15); a file damaged during a run is named at run time
  # (test_data_guards).
  data_dir = tmp_path / 'data'
  shutil.copytree(tiny_data_dir, data_dir)
  name = 'train-00001-of-00002.tfrecord'
  path = data_dir / name
  content = bytearray(path.read_bytes())
  length = int.from_bytes(content[:8], 'little')
  second = 16 + length  # offset of record 1
  position = second + 12 + int.from_bytes(content[second:second + 8], 'little') // 2
  content[position] ^= 0x01 if content[position] < 0xF0 else 0x10
  path.write_bytes(bytes(content))
  model_dir = str(tmp_path / 'run')
  proc = run_entry('train_eager', *tiny_run_flags(str(data_dir), model_dir))
  _expect_usage_error(proc, f'{name} record 1: its bytes are damaged', f'at byte {second}',
                      'copy the file again')
  assert not os.path.exists(model_dir)


def test_only_input_pipeline_errors_are_data_errors():
  """An InvalidArgumentError of the model (a bug, a device) is a fault, not bad data: only
  errors that surface at the pipeline's IteratorGetNext (or a checksum) become exit 2."""
  spec = types.SimpleNamespace(data_dir='/data', train_files=[], val_files=[])
  at_iterator = tf.errors.InvalidArgumentError(
      None, None, 'Graph execution error:\n\nDetected at node IteratorGetNext defined at ...'
      '\nUnknown image file format. One of JPEG, PNG, GIF, BMP required.')
  in_model = tf.errors.InvalidArgumentError(
      None, None, 'Graph execution error:\n\nDetected at node compile_loss/categorical_'
      'crossentropy/softmax_cross_entropy_with_logits defined at ...\nlogits and labels must '
      'be broadcastable')
  for error in (at_iterator, tf.errors.DataLossError(None, None, 'corrupted record at 12')):
    with pytest.raises(data_folder.DataError, match='--data_dir=/data'):
      with pipeline.input_errors(spec):
        raise error
  with pytest.raises(tf.errors.InvalidArgumentError, match='broadcastable'):
    with pipeline.input_errors(spec):
      raise in_model


# --- kill and resume ---------------------------------------------------------------------

def _kill_flags(data_dir, model_dir, *extra):
  return tiny_run_flags(data_dir, model_dir, *KILL_FLAGS, *extra)


def _assert_same_run(resumed, reference):
  """Every step, epoch and snapshot of `resumed` equals `reference`'s, seconds aside."""
  manifest = runlog.read_manifest(resumed)
  assert manifest['status'] == runlog.STATUS_COMPLETE
  assert manifest['global_step'] == TOTAL_STEPS
  for name, columns in ((run_files.STEPS_CSV, runlog.STEP_COLUMNS),
                        (run_files.EPOCHS_CSV, runlog.EPOCH_COLUMNS)):
    got, expected = read_run_csv(resumed, name), read_run_csv(reference, name)
    for column in columns[:-1]:  # all but seconds
      np.testing.assert_array_equal(got[column], expected[column], err_msg=f'{name} {column}')
  assert run_files.snapshot_steps_in(resumed) == run_files.snapshot_steps_in(reference)
  for step in run_files.snapshot_steps_in(reference):
    expected = read_snapshot(reference, step)
    got = read_snapshot(resumed, step)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
      np.testing.assert_array_equal(got[key], value, err_msg=f'step {step} {key}')


def _resume(script, args, model_dir, log_path):
  proc = run_entry(script, *args)
  with open(log_path, 'a') as log:
    log.write(proc.stderr)
  assert proc.returncode == 0, proc.stderr[-3000:]
  match = re.search(r'resuming \S+ from step (\d+)', proc.stderr)
  assert match, proc.stderr[-3000:]
  return int(match.group(1))


RUNNERS = {'graph': ('train_graph',), 'eager': ('train_eager', '--loop=custom')}
# The JAX port checkpoints its own way (train/jax/backend.py): its state beside the
# iterator's checkpoint.
RESUMED = [*RUNNERS, pytest.param('jax', marks=requires_jax)]


@pytest.mark.parametrize('runner', RESUMED)
def test_sigkill_then_sigterm_mid_epoch_and_the_reruns_end_exactly_as_one_run(
    runner, references, tiny_data_dir, tmp_path):
  """SIGKILL after 5 steps, rerun, SIGTERM in the second epoch, rerun: nothing lost."""
  reference = references(runner)
  script, *extra = {**RUNNERS, 'jax': JAX_PORT}[runner]
  model_dir = str(tmp_path / 'run')
  args = _kill_flags(tiny_data_dir, model_dir, *extra)
  steps_csv = os.path.join(model_dir, run_files.STEPS_CSV)
  log_path = str(tmp_path / 'stderr.txt')

  assert signal_after(script, args, model_dir, 5, signal.SIGKILL, log_path) == -signal.SIGKILL
  # Nothing ran after the kill: run.json still says running, steps.csv is ahead of the
  # last checkpoint.
  assert runlog.read_manifest(model_dir)['status'] == runlog.STATUS_RUNNING
  killed_at = csv_rows(steps_csv)
  assert killed_at >= 5

  # The rerun resumes from the last periodic checkpoint (every 3 steps) before the kill,
  # and is stopped by SIGTERM two steps into the second epoch.
  code = signal_after(script, args, model_dir, STEPS_PER_EPOCH + 2, signal.SIGTERM, log_path)
  with open(log_path) as f:
    stderr = f.read()
  assert code == 128 + signal.SIGTERM, stderr[-3000:]
  assert 'Traceback' not in stderr
  resumed_from = int(re.search(r'resuming \S+ from step (\d+)', stderr).group(1))
  assert killed_at - 3 <= resumed_from <= killed_at, (resumed_from, killed_at)
  assert resumed_from % 3 == 0 or resumed_from % STEPS_PER_EPOCH == 0, resumed_from
  manifest = runlog.read_manifest(model_dir)
  assert manifest['status'] == runlog.STATUS_INTERRUPTED
  step = manifest['global_step']
  assert STEPS_PER_EPOCH < step < TOTAL_STEPS, step  # mid-epoch
  assert f'interrupted at step {step}; checkpoint: {manifest["last_checkpoint"]}' in stderr
  # The checkpoint of that very step (weights, optimizer, step, iterator, metrics) is
  # the latest, and steps.csv ends at it.
  checkpoint_dir = os.path.join(model_dir, run_files.CHECKPOINTS_DIR)
  assert tf.train.latest_checkpoint(checkpoint_dir) == manifest['last_checkpoint']
  assert manifest['last_checkpoint'].endswith(f'-{step}')
  assert csv_rows(steps_csv) == step

  assert _resume(script, args, model_dir, log_path) == step
  _assert_same_run(model_dir, reference)


def test_fit_sigint_resumes_at_the_last_epoch_end(references, tiny_data_dir, tmp_path):
  def args(model_dir):
    return _kill_flags(tiny_data_dir, model_dir, '--loop=fit')

  reference = references('fit')
  model_dir = str(tmp_path / 'run')
  log_path = str(tmp_path / 'stderr.txt')
  # Two steps into the second epoch.
  code = signal_after('train_eager', args(model_dir), model_dir, STEPS_PER_EPOCH + 2,
                      signal.SIGINT, log_path)
  assert code == 128 + signal.SIGINT
  manifest = runlog.read_manifest(model_dir)
  assert manifest['status'] == runlog.STATUS_INTERRUPTED
  # model.fit's BackupAndRestore resumes at epoch ends: the run says where.
  assert manifest['global_step'] == STEPS_PER_EPOCH
  assert _resume('train_eager', args(model_dir), model_dir, log_path) == STEPS_PER_EPOCH
  # The epoch is redone on the batches of an uninterrupted run, from the backed-up
  # weights and optimizer: on CPU the result is the same to the bit.
  _assert_same_run(model_dir, reference)


# --- numeric faults ----------------------------------------------------------------------

@pytest.fixture(scope='module')
def nan_runs(tiny_data_dir, tmp_path_factory):
  """{runner: (CompletedProcess, model_dir)} of a run per runner whose loss becomes NaN.

  Adam moves every weight by about the learning rate: after one step of 1e30 the weights
  are huge but finite, and the second step's loss overflows to NaN.
  """
  root = tmp_path_factory.mktemp('nan')
  model_dirs = {runner: str(root / runner) for runner in RUNNERS}
  procs = at_once(*(functools.partial(
      run_entry, RUNNERS[runner][0], *tiny_run_flags(
          tiny_data_dir, model_dirs[runner], *RUNNERS[runner][1:], '--learning_rate=1e30',
          '--checkpoint_every=1')) for runner in RUNNERS))
  return {runner: (proc, model_dirs[runner]) for runner, proc in zip(RUNNERS, procs)}


@pytest.mark.parametrize('runner', sorted(RUNNERS))
def test_nan_loss_exits_3_and_names_a_checkpoint_that_loads(runner, nan_runs):
  proc, model_dir = nan_runs[runner]
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  line = proc.stderr.strip().splitlines()[-1]
  match = re.search(r'loss is nan at step 2; stopped\. Last good checkpoint: (\S+)\.', line)
  assert match, line
  checkpoint = match.group(1)
  assert checkpoint.endswith('-1')
  manifest = runlog.read_manifest(model_dir)
  assert manifest['status'] == runlog.STATUS_FAILED
  assert manifest['last_checkpoint'] == checkpoint
  assert manifest['global_step'] == 1
  # No checkpoint after the NaN: the named one is the latest, and it loads.
  assert tf.train.latest_checkpoint(os.path.dirname(checkpoint)) == checkpoint
  reader = tf.train.load_checkpoint(checkpoint)
  dtypes = reader.get_variable_to_dtype_map()
  shapes = reader.get_variable_to_shape_map()
  floats = [name for name, dtype in dtypes.items() if dtype.is_floating]
  for name in floats:
    assert np.all(np.isfinite(reader.get_tensor(name))), name
  # The four convolution kernels and the logits' (graph and eager name them differently):
  # trained, one Adam step of 1e30 moved them by about that much.
  for shape in ([3, 3, 3, 64], [3, 3, 64, 64], [3, 3, 64, 128], [3, 3, 128, 256],
                [256, NUM_CLASSES]):
    moved = [np.abs(reader.get_tensor(name)).max() for name in floats if shapes[name] == shape]
    assert moved and max(moved) > 1e29, (shape, sorted(dtypes))


# --- a run directory holds one run --------------------------------------------------------

def test_a_directory_holding_a_different_run_is_refused(references, tiny_data_dir, tmp_path):
  model_dir = str(tmp_path / 'run')
  shutil.copytree(references('graph'), model_dir)
  manifest = runlog.read_manifest(model_dir)
  manifest['status'] = runlog.STATUS_INTERRUPTED
  atomic.atomic_write_json(os.path.join(model_dir, run_files.RUN_JSON), manifest)
  proc = run_entry('train_graph', *_kill_flags(tiny_data_dir, model_dir,
                                               '--learning_rate=0.002'))
  _expect_usage_error(proc, f'--model_dir={model_dir} holds a different run (--learning_rate '
                      'was 0.001, now 0.002)', '--overwrite')
  assert runlog.read_manifest(model_dir) == manifest


def test_a_run_resumes_only_on_the_data_it_started_on(tmp_path):
  model_dir = str(tmp_path / 'run')
  log = runlog.RunLog(model_dir, 'graph', {'seed': 0}, fingerprint='0123456789abcdef')
  log.open()
  log.update(status=runlog.STATUS_INTERRUPTED, data={'fingerprint': '0123456789abcdef'})
  assert runlog.RunLog(model_dir, 'graph', {'seed': 0}, fingerprint='0123456789abcdef').open()
  with pytest.raises(errors.UsageError, match=(
      f'--model_dir={model_dir} holds a run on different data \\(fingerprint 0123456789ab, '
      'now fedcba987654\\): the files in --data_dir changed')):
    runlog.RunLog(model_dir, 'graph', {'seed': 0}, fingerprint='fedcba9876543210').open()


def test_resume_drops_what_a_killed_process_left_half_written(tmp_path):
  model_dir = str(tmp_path / 'run')
  log = runlog.RunLog(model_dir, 'graph', {'seed': 0})
  log.open()
  for step in (1, 2, 3):
    log.append_step({column: step for column in runlog.STEP_COLUMNS})
  log.save_snapshot(2, {'w': np.zeros(2)})
  # A row cut off in the middle, and the temporaries of writes that never got renamed.
  with open(log.path(run_files.STEPS_CSV), 'a') as f:
    f.write('4,1,0.5')
  leftovers = [log.path('run.json.tmp123'), log.path('model.tmp5.keras'),
               log.path(run_files.WEIGHTS_DIR, '.step-000004.npz.tmp1.npz')]
  for path in leftovers:
    with open(path, 'w') as f:
      f.write('half')
  leftovers.append(log.path('export.tmp77'))
  os.makedirs(os.path.join(leftovers[-1], 'variables'))
  assert run_files.snapshot_steps_in(model_dir) == [2]

  assert runlog.RunLog(model_dir, 'graph', {'seed': 0}).open()  # resuming
  log.truncate_after(3, 10)
  assert not any(os.path.exists(path) for path in leftovers)
  steps = runlog.read_csv(log.path(run_files.STEPS_CSV))
  np.testing.assert_array_equal(steps['step'], [1, 2, 3])
  log.append_step({column: 4 for column in runlog.STEP_COLUMNS})
  np.testing.assert_array_equal(runlog.read_csv(log.path(run_files.STEPS_CSV))['step'],
                                [1, 2, 3, 4])


@pytest.mark.parametrize('ending', ['release', 'SIGKILL'])
def test_held_stderr_is_replayed_or_leaves_nothing_behind(ending, tmp_path):
  """What a process writes to stderr before its run starts comes out when the run starts;
  a process killed before then leaves no file of it in $TMPDIR."""
  proc = run_python('import os, signal\n'
                    'from tf1compat.runs import held_stderr\n'
                    'held_stderr.hold()\n'
                    'os.write(2, b"a start-up line\\n")\n'
                    'assert not os.listdir(os.environ["TMPDIR"])\n'
                    f'if {ending == "SIGKILL"}: os.kill(os.getpid(), signal.SIGKILL)\n'
                    'held_stderr.release()\n'
                    'os.write(2, b"after\\n")\n',
                    env={'TMPDIR': str(tmp_path)})
  if ending == 'SIGKILL':
    assert proc.returncode == -signal.SIGKILL and proc.stderr == ''
  else:
    assert proc.returncode == 0 and proc.stderr == 'a start-up line\nafter\n'
  assert os.listdir(tmp_path) == []
