"""The run's log: run.json and the steps and epochs CSV files, written as the run goes
(RunLog) and read back (read_manifest, read_csv), on the run directory's layout
(run_files.py). TensorFlow-free, so that the parity harness can read runs cheaply.
"""
import csv
import datetime
import os
import platform

import numpy as np

from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import held_stderr
from tf1compat.runs import run_files
from tf1compat.runs import user_files

STEP_COLUMNS = ('step', 'epoch', 'loss', 'batch_accuracy', 'mean_loss', 'accuracy',
                'learning_rate', 'seconds')
EPOCH_COLUMNS = ('epoch', 'train_loss', 'train_accuracy', 'val_loss', 'val_accuracy', 'seconds')
# The epochs.csv columns that are a run's final metrics.
EPOCH_METRICS = ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy')

# run.json's 'kernels' block: which Adam and which BatchNorm moving variance a run
# computed with (parity reads it to expect or rule out their rounding differences).
KERNELS = 'kernels'
ADAM_TF1_FUSED = 'tf1_fused_apply_adam'
ADAM_KERAS = 'keras'
# Any other optimizer: TF1's fused Apply* kernel, or Keras' separate ops.
OPTIMIZER_TF1_FUSED = 'tf1_fused'
OPTIMIZER_KERAS = 'keras_ops'
# The JAX port's exact switches: TF1's kernel's formula in keras.ops, compiled by XLA
# (Adam and the others alike; tf1_kernels.py), for 'adam' and 'optimizer'.
TF1_FORMULA = 'tf1_formula_xla'
BN_VARIANCE_BESSEL = 'bessel_corrected'
BN_VARIANCE_BIASED = 'biased'

# run.json, field by field: who writes it and what it holds. RunLog.update refuses any
# other field, so this is the whole schema.
MANIFEST_FIELDS = {
    # RunLog, at open and at every update.
    'runner': "'graph', 'eager' or 'fit'",
    'flags': 'the run config, field by field (config.manifest_flags)',
    'started': 'UTC time stamp of the first start', 'updated': 'UTC time stamp of the last write',
    'status': 'running, complete, interrupted or failed',
    # Every runner at start (training.start_manifest); the config lint compares them.
    'versions': 'python, numpy, tensorflow and keras versions, and which keras',
    'device': "'CPU' or 'GPU (name)'",
    'optimizer': 'name, learning_rate, beta_1, beta_2, the epsilon really used and the '
                 'learning-rate schedule (null: constant)',
    KERNELS: "'adam', 'optimizer' (any other) and 'batch_norm_variance': the kernels' "
             'rounding (parity reads them)',
    'loss': '--loss', 'from_logits': 'the loss takes logits',
    'final_activation': '--final_activation', 'batch_size': 'the global batch',
    'image_size': '--image_size', 'seed': '--seed', 'deterministic': 'op determinism on',
    'data': 'data_dir, files, fingerprint, num_classes, record counts, skipped records',
    'init_weights_sha256': 'of --init_weights, or null',
    'strategy': 'the tf.distribute strategy', 'replicas': 'replicas in sync',
    'workers': 'processes of the cluster', 'devices': 'the devices mirrored over',
    'dtype_policy': 'the Keras dtype policy', 'jit_compile': 'whether the steps ran under XLA',
    'settings': 'what changes the numbers: tf32, op_determinism, onednn, threads, GPU, CUDA',
    'graph': "the graph runner's own block (wiring, update ops, learning phase...)",
    'model_summary': 'BatchNorm momentum/epsilon (and fused kernel, Keras 2), Dropout '
                     'layers, regularization losses (model.summary)',
    'regularization_in_loss': "whether the loss adds the model's regularization losses",
    # The driver, as the run goes and ends (training.Recorder).
    'global_step': 'steps done', 'last_checkpoint': 'path of the latest checkpoint',
    'failure': 'why a failed run stopped', 'final_metrics': 'the last epochs.csv metrics',
    'export_dir': 'the SavedModel', 'finished': 'UTC time stamp', 'seconds': 'wall time',
}

STATUS_RUNNING = 'running'
STATUS_COMPLETE = 'complete'
STATUS_INTERRUPTED = 'interrupted'
STATUS_FAILED = 'failed'

# Flags that do not change what a run computes: a run directory may be resumed with
# different values of these.
OPERATIONAL_FLAGS = frozenset({
    'model_dir', 'overwrite', 'log_every', 'checkpoint_every', 'save_init_weights',
    'require_gpu', 'allow_num_classes_mismatch',
})


def now():
  """UTC time stamp as written into manifests."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def read_csv(path):
  """Rows of a steps/epochs CSV as a dict of float numpy columns (empty when absent).

  Raises errors.UsageError naming the file when a value is not a number or a row is short:
  a damaged run is named, not a traceback.
  """
  if not os.path.exists(path):
    return {}
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows:
    return {}
  try:
    return {name: np.array([float(r[name]) if r[name] != '' else np.nan for r in rows])
            for name in rows[0]}
  except (TypeError, ValueError) as e:
    raise errors.UsageError(f'{path} is damaged ({e}); rerun the run\'s command with --overwrite '
                            'to write it again') from e


def count_rows(path):
  """Complete data rows of a CSV file being appended to (0 while it does not exist)."""
  try:
    with open(path, 'rb') as f:
      return max(0, f.read().count(b'\n') - 1)
  except FileNotFoundError:
    return 0


def read_manifest(model_dir):
  """run.json of `model_dir` as a dict, or None when there is none.

  Raises errors.UsageError naming a run.json that is not a JSON object (a damaged disk, a
  cut-off copy, a hand edit) and the way out.
  """
  path = os.path.join(model_dir, run_files.RUN_JSON)
  if not os.path.exists(path):
    return None
  fix = "rerun the run's command with --overwrite to train it again, or use another --model_dir"
  manifest = user_files.read_json(path, '', fix)
  if not isinstance(manifest, dict):
    raise errors.UsageError(f'{path} is damaged (not a JSON object); {fix}')
  return manifest


def _format(value):
  if isinstance(value, float) or isinstance(value, np.floating):
    return repr(float(value))
  return str(value)


def _whole_row(row, columns):
  """Whether a CSV row holds a number in every column: a killed process may leave its
  last row (or the header) cut off."""
  if tuple(row) != tuple(columns):
    return False
  try:
    for value in row.values():
      float(value)
  except (TypeError, ValueError):
    return False
  return True


def start_fields(**fields):
  """The run.json fields a runner writes at start, checked against MANIFEST_FIELDS."""
  unknown = set(fields) - set(MANIFEST_FIELDS)
  if unknown:
    raise ValueError(f'run.json has no field {", ".join(sorted(unknown))} (MANIFEST_FIELDS)')
  return fields


# run.json's versions.keras_implementation: Keras 3, the tf-keras package (Keras 2, what
# TensorFlow 2.16+ serves as tf.keras under TF_USE_LEGACY_KERAS=1), or TF 1.x's own.
KERAS_3 = 'keras'
KERAS_TF_KERAS = 'tf-keras'
KERAS_BUNDLED = 'tf.keras (bundled with TensorFlow)'


def versions(tf_version, keras_implementation, keras_version):
  """The versions block of the manifest: this process's Python and numpy, the TensorFlow
  and the Keras (which implementation: KERAS_3, KERAS_TF_KERAS, KERAS_BUNDLED) the run
  computed with."""
  return {'python': platform.python_version(), 'numpy': np.__version__,
          'tensorflow': tf_version, 'keras_implementation': keras_implementation,
          'keras': keras_version}


class RunLog:
  """Writes one run directory; resumes it when it holds the same, unfinished run.

  Typical use by a runner:
    log = RunLog(model_dir, 'graph', flags_dict, overwrite=...)
    log.open()                       # raises UsageError for a complete or foreign run
    ...restore checkpoint -> step...
    log.truncate_after(step, steps_per_epoch)
    log.append_step({...}); log.append_epoch({...}); log.save_snapshot(step, weights)
    log.update(status='complete', ...)
  """

  def __init__(self, model_dir, runner, flags_dict, overwrite=False, fingerprint=None):
    self.model_dir = model_dir
    self.runner = runner
    self.flags = dict(flags_dict)
    self.overwrite = overwrite
    # The data fingerprint: a run is resumed only on the data it started on.
    self.fingerprint = fingerprint
    self.manifest = {}
    self.resuming = False

  def path(self, *parts):
    return os.path.join(self.model_dir, *parts)

  def open(self):
    """Checks the directory, then starts a new manifest or resumes the existing one.

    Takes the folder's lock first (folders.lock_folder). `overwrite` empties the folder, but
    only when all it holds is what a run writes (run_files.written_by_a_run). Without it, a
    complete run is kept; an unfinished run of the same runner, flags and data is
    resumed (what a killed process left half-written is removed); anything else, a
    folder with run_files.content but no run.json included, is a UsageError naming the difference.
    Returns True when resuming.
    """
    folders.lock_folder(self.model_dir, '--model_dir')
    if self.overwrite:
      self._clear()
      previous = None
    else:
      previous = read_manifest(self.model_dir)
      if previous is None and run_files.content(self.model_dir):
        run_files.refuse_foreign(self.model_dir, self.overwrite)
        raise errors.UsageError(
            f'--model_dir={self.model_dir} holds the files of a run but no run.json; pass '
            '--overwrite to replace them or choose another --model_dir')
    if previous is not None:
      self._check_same_run(previous)
      self._remove_temporaries()
      self.manifest = previous
      self.resuming = True
    else:
      self.manifest = {'runner': self.runner, 'flags': self.flags, 'started': now(),
                       'global_step': 0}
    os.makedirs(self.path(run_files.WEIGHTS_DIR), exist_ok=True)
    os.makedirs(self.path(run_files.CHECKPOINTS_DIR), exist_ok=True)
    self.update(status=STATUS_RUNNING)
    # The run has started: what the runner held back until now (cli.run_main) goes out.
    held_stderr.release()
    return self.resuming

  def _clear(self):
    # Everything or nothing: one file the run did not write keeps the whole folder.
    run_files.refuse_foreign(self.model_dir, self.overwrite)
    for name in run_files.content(self.model_dir):
      atomic.remove(os.path.join(self.model_dir, name))

  def _remove_temporaries(self):
    for folder in (self.model_dir, self.path(
        run_files.WEIGHTS_DIR), self.path(run_files.PROBE_DIR), self.path(run_files.BATCHES_DIR)):
      if not os.path.isdir(folder):
        continue
      for name in os.listdir(folder):
        if atomic.TEMPORARY_NAME.fullmatch(name):
          atomic.remove(os.path.join(folder, name))

  def _check_same_run(self, previous):
    where = f'--model_dir={self.model_dir}'
    if previous.get('status') == STATUS_COMPLETE:
      raise errors.UsageError(f'{where} holds a complete {previous.get("runner")} run; pass '
                              '--overwrite to replace it or choose another --model_dir')
    if previous.get('runner') != self.runner:
      raise errors.UsageError(f'{where} holds a {previous.get("runner")} run, not a {self.runner} '
                              'run; choose another --model_dir or pass --overwrite')
    old_flags = previous.get('flags', {})
    for name in sorted(set(old_flags) | set(self.flags)):
      if name in OPERATIONAL_FLAGS:
        continue
      if old_flags.get(name) != self.flags.get(name):
        raise errors.UsageError(
            f'{where} holds a different run (--{name} was {old_flags.get(name)!r}, now '
            f'{self.flags.get(name)!r}); rerun with the same flags to resume, or pass --overwrite')
    old_fingerprint = previous.get('data', {}).get('fingerprint')
    if self.fingerprint and old_fingerprint and old_fingerprint != self.fingerprint:
      raise errors.UsageError(
          f'{where} holds a run on different data (fingerprint {old_fingerprint[:12]}, now '
          f'{self.fingerprint[:12]}): the files in --data_dir changed; restore them to resume, '
          'or pass --overwrite')

  def update(self, **fields):
    """Merges `fields` (MANIFEST_FIELDS) into run.json and rewrites it atomically."""
    unknown = set(fields) - set(MANIFEST_FIELDS)
    if unknown:
      raise ValueError(f'run.json has no field {", ".join(sorted(unknown))} (MANIFEST_FIELDS)')
    self.manifest.update(fields)
    self.manifest['updated'] = now()
    atomic.atomic_write_json(self.path(run_files.RUN_JSON), self.manifest)

  def check_rows(self, step, steps_per_epoch):
    """Refuses to resume at the checkpoint of `step` when steps.csv or epochs.csv lacks a row
    before it (errors.UsageError naming the file): the rerun redoes only the steps after
    the checkpoint, so a lost row would stay lost and the run end complete without it.

    Rows after `step` are no reason (truncate_after drops them), nor the row of the epoch
    that ended at `step` (the run stopped in its evaluation, which the rerun redoes).
    """
    done_epochs = step // steps_per_epoch
    evaluated = ({done_epochs, done_epochs - 1} if step % steps_per_epoch == 0
                 else {done_epochs})
    for name, column, columns, wanted in (
        (run_files.STEPS_CSV, 'step', STEP_COLUMNS, {step}),
        (run_files.EPOCHS_CSV, 'epoch', EPOCH_COLUMNS, evaluated)):
      numbers = [number for number in self._numbers(name, column, columns)
                 if number <= max(wanted)]
      if not any(numbers == list(range(1, last + 1)) for last in wanted):
        raise errors.UsageError(
            f'{self.path(name)}: {len(numbers)} {column} row(s) up to the checkpoint at step '
            f'{step}, which needs {column}s 1 to {max(wanted)}: rows were lost, and a resumed '
            'run would end without them; restore the file, or rerun with --overwrite to '
            'train again')

  def _numbers(self, name, column, columns):
    """The `column` of the whole rows of the CSV `name` (empty without the file)."""
    path = self.path(name)
    if not os.path.exists(path):
      return []
    with open(path, newline='') as f:
      return [int(row[column]) for row in csv.DictReader(f) if _whole_row(row, columns)]

  def truncate_after(self, step, steps_per_epoch):
    """Drops rows a restored checkpoint at `step` has not seen (they will be redone)."""
    self._truncate(run_files.STEPS_CSV, STEP_COLUMNS, lambda row: int(row['step']) <= step)
    done_epochs = step // steps_per_epoch
    self._truncate(
        run_files.EPOCHS_CSV, EPOCH_COLUMNS, lambda row: int(row['epoch']) <= done_epochs)
    for old in run_files.snapshot_steps_in(self.model_dir):
      if old > step:
        os.remove(run_files.snapshot_path(self.model_dir, old))
        if os.path.exists(run_files.optimizer_state_path(self.model_dir, old)):
          os.remove(run_files.optimizer_state_path(self.model_dir, old))
    for old in run_files.steps_in(self.path(run_files.PROBE_DIR)):
      if old > step:
        os.remove(self.path(run_files.PROBE_DIR, f'step-{old:06d}.npz'))

  def _truncate(self, name, columns, keep):
    path = self.path(name)
    if not os.path.exists(path):
      return
    with open(path, newline='') as f:
      rows = [row for row in csv.DictReader(f) if _whole_row(row, columns) and keep(row)]
    lines = [','.join(columns)] + [','.join(row[c] for c in columns) for row in rows]
    atomic.atomic_write_text(path, '\n'.join(lines) + '\n')

  def _append(self, name, columns, row):
    # Each row reaches the file in one write when it closes: a killed process cuts off
    # at most the last row, which truncate_after drops.
    if set(row) != set(columns):
      raise ValueError(f'a {name} row has the columns {", ".join(columns)}, not '
                       f'{", ".join(sorted(row))}')
    path = self.path(name)
    new = not os.path.exists(path)
    with open(path, 'a') as f:
      if new:
        f.write(','.join(columns) + '\n')
      f.write(','.join(_format(row[c]) for c in columns) + '\n')

  def append_step(self, row):
    """Appends one steps.csv row; `row` has every STEP_COLUMNS key."""
    self._append(run_files.STEPS_CSV, STEP_COLUMNS, row)

  def append_epoch(self, row):
    """Appends one epochs.csv row; `row` has every EPOCH_COLUMNS key (NaN for no val)."""
    self._append(run_files.EPOCHS_CSV, EPOCH_COLUMNS, row)

  def save_snapshot(self, step, weights, optimizer_state=None):
    """Writes weights/step-NNNNNN.npz with {key: array}, and the optimizer's state beside
    it (run_files.optimizer_state_path) where given."""
    run_files.save_weights(run_files.snapshot_path(self.model_dir, step), weights)
    if optimizer_state is not None:
      run_files.save_weights(run_files.optimizer_state_path(self.model_dir, step),
                             optimizer_state)
