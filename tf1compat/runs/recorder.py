"""Records a team's own training loop as a run directory, for compare_runs to judge.

Our runners write runlog's contract (run.json, steps.csv, epochs.csv, weight
snapshots); any loop, a TF1 Session loop or its TF2 port, writes the same through a
RunRecorder, so that `compare_runs THEIR_TF1_RUN THEIR_TF2_RUN` gives the same tiered
report and names the same pitfalls:

    config = recorder.RunConfig(
        framework='tf1', batch_size=32, image_size=64, seed=0, steps_per_epoch=100,
        data_fingerprint=recorder.data_fingerprint(x_train, y_train),
        init_weights='init.npz', **team_models.optimizer_fields(optimizer))
    with recorder.RunRecorder('runs/tf1', config) as rec:
      rec.snapshot(0, team_models.session_weights(sess))
      for epoch in ...:
        for batch in ...:
          _, loss, acc, mean_loss, mean_acc = sess.run([...])
          step = rec.record_step(loss, acc, mean_loss=mean_loss, accuracy=mean_acc)
          if step == 1:  # optional: what the step computed, for compare_runs --localize
            rec.probe(step, batch=batch, outputs=layer_outputs, gradients=gradients, loss=loss)
          if rec.snapshot_due(step):
            rec.snapshot(step, team_models.session_weights(sess))
        rec.record_epoch(val_loss=val_loss, val_accuracy=val_acc)
      rec.finish(team_models.session_weights(sess))

Importing it imports neither TensorFlow nor absl (numpy and tf1compat's TensorFlow-free
modules), so it runs in a team's pinned environment too, Python 3.7 and TensorFlow 1.15
included: `pip install recorder/` installs it alone (docs/legacy-stack.md); team_models'
helpers, which read an optimizer or read and set a model's weights, work on the objects
the loop hands them.
"""

import hashlib
import math
import numbers
import os
import time

import numpy as np

from tf1compat.runs import batch_record
from tf1compat.runs import errors
from tf1compat.runs import loop_config
from tf1compat.runs import probes
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runs import weight_map as weight_maps

# What the loop computes with (loop_config.py), as teams have always named it.
RunConfig = loop_config.RunConfig


class RunRecorder:
  """Writes one run directory from a training loop; a context manager that marks the
  run failed when the loop raises.

  Opening it starts run.json (a complete run is replaced only with `overwrite`). A
  loop that resumes from its own checkpoint passes that checkpoint's `start_step`
  (which needs RunConfig.steps_per_epoch): the rows and snapshots after it are
  dropped and redone. An unfinished run of the same config started over
  (`start_step` 0) loses its rows.

  Rows: record_step() once per training step, in order (step k's loss is computed on
  the weights after step k-1, as `sess.run([train_op, loss])` and a GradientTape step
  give it); record_epoch() at each epoch's end; snapshot() of the weights at step 0
  (the initial weights) and wherever snapshot_due() says; finish() marks it complete.
  """

  def __init__(self, model_dir, config, *, overwrite=False, start_step=0,
               stored_batches=batch_record.DEFAULT_STORED_STEPS,
               max_batch_bytes=batch_record.DEFAULT_MAX_BYTES):
    self.config = config
    if start_step:
      previous = runlog.read_manifest(model_dir) or {}
      if not config.steps_per_epoch or previous.get('status') in (None, runlog.STATUS_COMPLETE):
        raise errors.UsageError(
            f'start_step={start_step}: {model_dir} holds no unfinished run to resume, or '
            'RunConfig has no steps_per_epoch to tell its epochs by; start at 0')
    self.log = runlog.RunLog(model_dir, config.framework, config.flags(), overwrite=overwrite,
                             fingerprint=config.data_fingerprint)
    self.log.open()
    self.log.truncate_after(start_step, config.steps_per_epoch or 1)
    self.log.update(**config.manifest())
    self.step = start_step
    self.batches = batch_record.BatchWriter(model_dir, stored_batches, max_batch_bytes,
                                            start_step)
    epochs = runlog.read_csv(self.log.path(run_files.EPOCHS_CSV))
    self._epochs = len(epochs.get('epoch', ()))
    self._final_metrics = ({name: float(epochs[name][-1]) for name in runlog.EPOCH_METRICS}
                           if self._epochs else {})
    # This epoch's (loss, batch accuracy, shown mean loss, shown accuracy) so far.
    self._epoch_rows = self._rows_of_epoch(self._epoch_of(start_step + 1))
    keys = weight_maps.snapshot_keys(model_dir)
    self._keys = sorted(keys) if keys is not None else None
    self._started = time.time()
    self._last_time = self._epoch_time = time.perf_counter()

  @property
  def model_dir(self):
    """The run directory."""
    return self.log.model_dir

  @property
  def epoch_open(self):
    """Whether steps were recorded since the last epoch's row."""
    return bool(self._epoch_rows)

  def _epoch_of(self, step):
    if self.config.steps_per_epoch:
      return (step - 1) // self.config.steps_per_epoch + 1
    return self._epochs + 1

  def _rows_of_epoch(self, epoch):
    steps = runlog.read_csv(self.log.path(run_files.STEPS_CSV))
    if not steps:
      return []
    mask = steps['epoch'] == epoch
    return list(zip(*(steps[name][mask].tolist()
                      for name in ('loss', 'batch_accuracy', 'mean_loss', 'accuracy'))))

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    # A NaN loss was marked by record_step; anything else must not leave the run
    # looking alive.
    if error is not None and not isinstance(error, errors.NumericFault):
      self.fail(f'{kind.__name__}: {error}')
    return False

  def record_step(self, loss, batch_accuracy=None, *, mean_loss=None, accuracy=None,
                  learning_rate=None, step=None, batch=None):
    """Appends the steps.csv row of the next step; returns its number (1 first).

    `loss` and `batch_accuracy`: of this step's batch (a model without an accuracy
    leaves it out: its columns hold NaN, and compare_runs judges what both runs have).
    `mean_loss` and `accuracy`: the running metrics the loop shows its user, if it shows
    any (the semantics tier checks that they restart every epoch); without them the
    recorder writes the means since the epoch's first step. `learning_rate`: this
    step's, when it has a schedule. `step`, when given, must be the next one. `batch`:
    (features, labels) the step trained on, arrays or dicts of arrays: hashed, and
    stored for the first steps (batch_record.py). Raises errors.NumericFault for a NaN or
    Inf loss, after marking the run failed.
    """
    number = self.step + 1
    if step is not None and int(step) != number:
      raise errors.UsageError(f'record_step(step={step}) after step {self.step}: record every '
                              'training step once, in order, from step 1')
    loss = float(loss)
    batch_accuracy = math.nan if batch_accuracy is None else float(batch_accuracy)
    if not math.isfinite(loss):
      self.log.update(status=runlog.STATUS_FAILED, global_step=self.step,
                      failure=f'loss is {loss} at step {number}')
      raise errors.NumericFault(f'loss is {loss} at step {number}; {self.model_dir} is marked '
                                'failed. Lower the learning rate or check the data.')
    epoch = self._epoch_of(number)
    if number > 1 and epoch != self._epoch_of(number - 1):
      self._epoch_rows = []
    losses = [row[0] for row in self._epoch_rows] + [loss]
    accuracies = [row[1] for row in self._epoch_rows] + [batch_accuracy]
    mean_loss = float(np.mean(losses)) if mean_loss is None else float(mean_loss)
    accuracy = float(np.mean(accuracies)) if accuracy is None else float(accuracy)
    if learning_rate is None:
      learning_rate = (self.config.learning_rate
                       if isinstance(self.config.learning_rate, numbers.Real) else math.nan)
    now = time.perf_counter()
    self.log.append_step({'step': number, 'epoch': epoch, 'loss': loss,
                          'batch_accuracy': batch_accuracy, 'mean_loss': mean_loss,
                          'accuracy': accuracy, 'learning_rate': float(learning_rate),
                          'seconds': now - self._last_time})
    self._last_time = now
    if batch is not None:
      self.batches.add(number, *batch)
    self._epoch_rows.append((loss, batch_accuracy, mean_loss, accuracy))
    self.step = number
    return number

  def record_epoch(self, *, val_loss=None, val_accuracy=None, train_loss=None,
                   train_accuracy=None):
    """Appends the epochs.csv row of the epoch the last step belongs to; returns its number.

    `train_loss` / `train_accuracy` default to the running metrics shown at its last
    step (what our runners record); without a validation set leave `val_*` out.
    """
    if not self._epoch_rows:
      raise errors.UsageError(f'record_epoch() with no step recorded since epoch {self._epochs}: '
                              'call it once after each epoch\'s steps')
    spe = self.config.steps_per_epoch
    if spe and self.step % spe:
      raise errors.UsageError(f'record_epoch() at step {self.step}, inside an epoch of '
                              f'steps_per_epoch={spe}: call it after the epoch\'s last step')
    epoch = self._epoch_of(self.step)
    last = self._epoch_rows[-1]
    row = {'epoch': epoch,
           'train_loss': last[2] if train_loss is None else float(train_loss),
           'train_accuracy': last[3] if train_accuracy is None else float(train_accuracy),
           'val_loss': math.nan if val_loss is None else float(val_loss),
           'val_accuracy': math.nan if val_accuracy is None else float(val_accuracy)}
    now = time.perf_counter()
    self.log.append_epoch({**row, 'seconds': now - self._epoch_time})
    self._epoch_time = now
    self._epochs = epoch
    self._epoch_rows = []
    self._final_metrics = {name: row[name] for name in runlog.EPOCH_METRICS}
    return epoch

  def snapshot_due(self, step):
    """Whether RunConfig.snapshot_steps asks for the weights after `step`."""
    return step in self.config.snapshot_steps

  def snapshot(self, step, weights):
    """Writes weights/step-NNNNNN.npz: `weights` ({name: array}) after `step` (0: the
    initial weights). Every snapshot of a run holds the same names."""
    if not 0 <= step <= self.step:
      raise errors.UsageError(f'snapshot(step={step}) with {self.step} steps recorded: a '
                              'snapshot holds the weights after a recorded step (0: initial)')
    arrays = {str(name): np.asarray(value) for name, value in weights.items()}
    if not arrays:
      raise errors.UsageError(f'snapshot(step={step}) of no weights; pass {{name: array}}')
    keys = sorted(arrays)
    if self.config.batch_norm and not any(k.endswith('moving_variance') for k in keys):
      raise errors.UsageError(f'snapshot(step={step}) holds no BatchNorm moving_variance, yet '
                              'RunConfig says batch_norm=True; snapshot the moving statistics too')
    if self._keys is not None and keys != self._keys:
      raise errors.UsageError(
          f'snapshot(step={step}) names other weights than the earlier snapshots (new: '
          f'{sorted(set(keys) - set(self._keys))[:5]}, missing: '
          f'{sorted(set(self._keys) - set(keys))[:5]}); snapshot every variable every time')
    self._keys = keys
    self.log.save_snapshot(step, arrays)

  def probe(self, step, *, batch, outputs, gradients, loss, data_loss=None,
            regularization_loss=None):
    """Writes probe/step-NNNNNN.npz: what training step `step` computed, for
    `compare_runs --localize` (localize.py), which compares two loops' probes of one step
    stage by stage. Probe the same step in both loops, the first is the simplest (both
    start from the same weights); snapshot the weights before and after it too, and the
    optimizer's update and the state's change are compared as well.

    `batch`: (inputs, labels) the step trained on. `outputs`: {layer name: array} of the
    layer outputs of the step's forward pass, in the model's order (the last the model's
    output); name a layer alike in both loops, or give rules for the names in the weight
    map. `gradients`: {variable name: array} of the gradients the step applied, named
    as in snapshots (the weight map renames them). `loss`: the step's loss;
    `data_loss` and `regularization_loss`, when the loop knows them, its two parts.
    Arrays of the computation (numpy, or tensors with .numpy()).
    """
    if not 1 <= step <= self.step + 1:
      raise errors.UsageError(f'probe(step={step}) with {self.step} steps recorded: probe a step '
                              'recorded or the one about to be')
    inputs, labels = batch
    loss_parts = {'data': data_loss, 'regularization': regularization_loss, 'total': loss}
    # A model of named inputs has each under its name; the images of the seed's kind.
    batch_stage = dict(inputs) if isinstance(inputs, dict) else (
        {} if inputs is None else {'images': inputs})
    if isinstance(labels, dict):
      batch_stage.update({f'labels/{name}': value for name, value in labels.items()})
    elif labels is not None:
      batch_stage['labels'] = labels
    stages = {'input': batch_stage,
              'forward': dict(outputs),
              'loss': {part: value for part, value in loss_parts.items() if value is not None},
              'gradients': dict(gradients)}
    if not stages['forward'] or not stages['gradients']:
      raise errors.UsageError(f'probe(step={step}) needs the layer outputs and the gradients of '
                              'the step ({name: array} each)')
    probes.save(probes.path_in(self.model_dir, step),
                {stage: {str(name): _array(value) for name, value in items.items()}
                 for stage, items in stages.items()},
                {'runner': self.config.framework, 'step': step,
                 'output_layer': str(list(stages['forward'])[-1])})

  def finish(self, weights=None):
    """Marks the run complete; `weights` ({name: array}, the final ones) are saved as the
    last step's snapshot unless it has one. Returns the final metrics."""
    if not self.step or not self._epochs:
      raise errors.UsageError(f'finish() with {self.step} steps and {self._epochs} epochs '
                              'recorded: compare_runs needs steps and at least one epoch '
                              '(record_step, record_epoch)')
    if weights is not None and self.step not in run_files.snapshot_steps_in(self.model_dir):
      self.snapshot(self.step, weights)
    # A team's loop snapshots when it can, not always when snapshot_due() says: the
    # record names the snapshots it holds (compare_runs checks a run holds what it names).
    flags = {**self.log.manifest['flags'],
             'snapshot_steps': run_files.snapshot_steps_in(self.model_dir)}
    self.log.update(flags=flags, status=runlog.STATUS_COMPLETE, global_step=self.step,
                    final_metrics=self._final_metrics, finished=runlog.now(),
                    seconds=round(time.time() - self._started, 3))
    return dict(self._final_metrics)

  def fail(self, reason):
    """Marks the run failed with `reason` (compare_runs refuses it)."""
    self.log.update(status=runlog.STATUS_FAILED, global_step=self.step, failure=reason)


def _array(value):
  """A loop's value as a numpy array: tensors convert themselves (.numpy())."""
  return np.asarray(value.numpy() if hasattr(value, 'numpy') else value)


def data_fingerprint(*parts):
  """sha256 over numpy arrays (dtype, shape, bytes) and files (name, size, bytes), in order.

  Equal for the same data only: both loops fingerprint what they train on (the arrays,
  or the files they read) and the config lint compares the two.
  """
  digest = hashlib.sha256()
  for part in parts:
    if isinstance(part, (str, os.PathLike)):
      digest.update(f'{os.path.basename(part)}:{os.path.getsize(part)}'.encode())
      with open(part, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          digest.update(chunk)
    else:
      array = np.ascontiguousarray(part)
      digest.update(f'{array.dtype.str}{array.shape}'.encode())
      digest.update(array.tobytes())
  return digest.hexdigest()
