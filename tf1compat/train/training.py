"""The framework-neutral part of a training run, shared by the graph and eager runners.

A runner owns the TensorFlow side (a Session or a tf.function step, metrics, a
checkpoint saver) and exposes it as a `Backend`; `train` drives it through epochs and
steps with the same bookkeeping everywhere: run-directory rows, weight snapshots,
checkpoint cadence, progress, NaN/Inf detection, SIGINT/SIGTERM handling and the
final manifest. Keras `model.fit` drives its own loop and uses `Recorder` from a callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

from absl import logging
import numpy as np

from tf1compat.data import data_check
from tf1compat.data import records
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runtime import progress
from tf1compat.runtime import stacks


@dataclasses.dataclass
class StepResult:
  """What one training step reports, as Python floats.

  loss / batch_accuracy: of this batch; mean_loss / accuracy: the running metrics the
  user is shown (since the last reset); learning_rate: the rate this step applied (None:
  the constant --learning_rate).
  """
  loss: float
  batch_accuracy: float
  mean_loss: float
  accuracy: float
  learning_rate: float | None = None


class Backend:
  """The framework side of a run. Runners subclass it; every method is required."""

  def restore(self):
    """Restores the latest checkpoint if there is one: (its global step, its path), or
    (0, None) without one."""
    raise NotImplementedError

  def train_step(self):
    """Runs one step on the next batch; returns a StepResult."""
    raise NotImplementedError

  def reset_metrics(self):
    """Resets the running training metrics."""
    raise NotImplementedError

  def evaluate(self):
    """One pass over the validation set: (val_loss, val_accuracy), or None without one."""
    raise NotImplementedError

  def weights(self):
    """{weight key: numpy array} of every model weight."""
    raise NotImplementedError

  def optimizer_state(self):
    """The optimizer's state in one form for both runners: {'step': the global step,
    'slot/NAME/KEY': each slot of each trained weight (optimizers.SLOTS), 'scalar/NAME':
    its other variables (Adam's beta powers)}."""
    raise NotImplementedError

  def load_optimizer_state(self, state):
    """Sets the optimizer's slots, scalars and the global step from `state`
    (optimizer_state()'s form, as the same runner wrote it)."""
    raise NotImplementedError

  def save_checkpoint(self, step):
    """Writes a checkpoint (weights, optimizer, step, iterator, metrics); returns its path."""
    raise NotImplementedError

  def write_scalars(self, step, scalars):
    """Writes {tag: float} to the run's TensorBoard events at `step`."""
    raise NotImplementedError

  def export(self, export_dir):
    """Writes the trained model (SavedModel) to `export_dir`."""
    raise NotImplementedError


@dataclasses.dataclass
class Schedule:
  """How long to train and when to snapshot, checkpoint and log."""
  epochs: int
  steps_per_epoch: int
  snapshot_steps: tuple
  checkpoint_every: int
  log_every: int
  learning_rate: float
  reset_metrics: bool = True

  @property
  def total_steps(self):
    return self.epochs * self.steps_per_epoch


def _inside(path, folder):
  """Whether `path` lies inside `folder`."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


class Recorder:
  """Writes a run's per-step and per-epoch records, snapshots, and failure states."""

  def __init__(self, log, schedule, weights_fn, optimizer_state_fn=None):
    self.log = log
    self.schedule = schedule
    self._weights_fn = weights_fn
    self._optimizer_state_fn = optimizer_state_fn or (lambda: None)
    self.last_checkpoint = None
    self.checkpoint_step = None
    self._started = time.time()
    self._step_started = time.perf_counter()

  def start_step(self):
    self._step_started = time.perf_counter()

  def record_step(self, step, result, scalars_fn=None):
    """Appends the steps.csv row of `step`, snapshots the weights when scheduled.

    Raises errors.NumericFault for a NaN or Inf loss, after marking the run failed.
    """
    seconds = time.perf_counter() - self._step_started
    if not math.isfinite(result.loss):
      raise self.numeric_fault(step, f'loss is {result.loss}')
    epoch = (step - 1) // self.schedule.steps_per_epoch + 1
    self.log.append_step({
        'step': step, 'epoch': epoch, 'loss': result.loss,
        'batch_accuracy': result.batch_accuracy, 'mean_loss': result.mean_loss,
        'accuracy': result.accuracy,
        'learning_rate': (self.schedule.learning_rate if result.learning_rate is None
                          else result.learning_rate),
        'seconds': seconds})
    if scalars_fn is not None:
      scalars_fn(step, {'train/batch_loss': result.loss, 'train/mean_loss': result.mean_loss,
                        'train/accuracy': result.accuracy})
    if step in self.schedule.snapshot_steps:
      self.log.save_snapshot(step, self._weights_fn(), self._optimizer_state_fn())

  def numeric_fault(self, step, what):
    """Marks the run failed by a non-finite `what` at `step`; returns the exception to raise.

    Nothing is saved from here on, so the last checkpoint stays the last good one.
    """
    self.log.update(status=runlog.STATUS_FAILED, global_step=step - 1,
                    failure=f'{what} at step {step}', last_checkpoint=self.last_checkpoint)
    where = self.last_checkpoint or 'none written yet'
    return errors.NumericFault(f'{what} at step {step}; stopped. Last good checkpoint: {where}. '
                               'Lower --learning_rate or check the data.')

  def check_weights(self, step):
    """Raises NumericFault when a weight is NaN or Inf after `step`.

    A step's loss is computed before its update, so a finite loss does not vouch for
    the weights a checkpoint would save.
    """
    for key, value in self._weights_fn().items():
      if not np.all(np.isfinite(value)):
        raise self.numeric_fault(step, f'weight {key} is not finite after the update')

  def checkpoint(self, step, save):
    """Checks the weights, then writes the checkpoint of `step` with `save(step)`."""
    self.check_weights(step)
    self.last_checkpoint = save(step)
    self.checkpoint_step = step
    return self.last_checkpoint

  def record_epoch(self, epoch, train_loss, train_accuracy, evaluation, seconds,
                   scalars_fn=None):
    """Appends the epochs.csv row of `epoch`; `evaluation` is (loss, acc) or None."""
    val_loss, val_accuracy = evaluation if evaluation is not None else (math.nan, math.nan)
    self.log.append_epoch({'epoch': epoch, 'train_loss': train_loss,
                           'train_accuracy': train_accuracy, 'val_loss': val_loss,
                           'val_accuracy': val_accuracy, 'seconds': seconds})
    if scalars_fn is not None:
      scalars = {'epoch/train_loss': train_loss, 'epoch/train_accuracy': train_accuracy}
      if evaluation is not None:
        scalars.update({'epoch/val_loss': val_loss, 'epoch/val_accuracy': val_accuracy})
      scalars_fn(epoch * self.schedule.steps_per_epoch, scalars)
    logging.info('epoch %d: train_loss=%.4f train_accuracy=%.4f val_loss=%.4f '
                 'val_accuracy=%.4f (%.1fs)', epoch, train_loss, train_accuracy, val_loss,
                 val_accuracy, seconds)
    return {'train_loss': train_loss, 'train_accuracy': train_accuracy,
            'val_loss': val_loss, 'val_accuracy': val_accuracy}

  def interrupted(self, signum, step, checkpoint):
    """Marks the run interrupted at `step` (resumable from `checkpoint`, None if there is
    none yet) and returns the exception to raise."""
    self.last_checkpoint = checkpoint
    self.log.update(status=runlog.STATUS_INTERRUPTED, global_step=step,
                    last_checkpoint=checkpoint)
    where = checkpoint or 'none yet, the rerun starts from the beginning'
    return errors.Interrupted(signum, f'interrupted at step {step}; checkpoint: {where}. Rerun '
                              'the same command to resume.')

  def begin(self, step, checkpoint):
    """Starts recording at `step`, restored from `checkpoint` (0 and None: a new run).

    Refuses a resume whose CSVs lost rows before `step` (RunLog.check_rows), drops the
    rows and snapshots after `step` (a resumed run redoes them), saves the
    initial weights' snapshot of a new run; returns the final metrics recorded so far.
    """
    self._started = time.time()
    self.last_checkpoint = checkpoint
    # Only the run directory that wrote the checkpoint holds its rows: another worker of a
    # multi-worker run resumes from the chief's checkpoint into a scratch folder.
    if checkpoint and _inside(checkpoint, self.log.model_dir):
      self.log.check_rows(step, self.schedule.steps_per_epoch)
    self.log.truncate_after(step, self.schedule.steps_per_epoch)
    if step:
      self.checkpoint_step = step
      logging.info('resuming %s from step %d', self.log.model_dir, step)
    elif 0 in self.schedule.snapshot_steps:
      self.log.save_snapshot(0, self._weights_fn(), self._optimizer_state_fn())
    return last_epoch_metrics(self.log)

  def finish(self, step, final_metrics, export, signals):
    """Exports the trained model with `export(export_dir)` and marks the run complete;
    returns the stats dict.

    A signal caught by then leaves the run unfinished: the export is whole, but the
    rerun restores the final checkpoint and only exports again.
    """
    export_dir = self.log.path(run_files.EXPORT_DIR)
    export(export_dir)
    if signals.caught:
      raise self.interrupted(signals.signum, step, self.last_checkpoint)
    self.log.update(status=runlog.STATUS_COMPLETE, global_step=step,
                    final_metrics=final_metrics, last_checkpoint=self.last_checkpoint,
                    export_dir=export_dir, finished=runlog.now(),
                    seconds=round(time.time() - self._started, 3))
    return {'global_step': step, 'model_dir': self.log.model_dir, **final_metrics}


def last_epoch_metrics(log):
  """The final metrics as the run's last epochs.csv row has them ({} before any epoch)."""
  epochs = runlog.read_csv(log.path(run_files.EPOCHS_CSV))
  if not epochs:
    return {}
  return {name: float(epochs[name][-1]) for name in runlog.EPOCH_METRICS}


def check_device(cfg):
  """Logs the device the run computes on; with --require_gpu, a CPU is a usage error.

  A CUDA driver or library mismatch makes TensorFlow fall back to the CPU with only a
  log line, which a batch job's console hides: this says it at the start of every run,
  and --require_gpu stops such a job before it trains on the wrong device.
  """
  device = stacks.device_description()
  logging.info('device: %s', device)
  if cfg.require_gpu and device == 'CPU':
    raise errors.UsageError('--require_gpu: TensorFlow sees no GPU here (it would train on the '
                            'CPU); check the NVIDIA driver and install with '
                            "pip install '.[and-cuda]', or drop --require_gpu")
  return device


def schedule(cfg, reset_metrics=True):
  """The Schedule of a runner's config."""
  return Schedule(epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
                  snapshot_steps=cfg.snapshot_steps_within(),
                  checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                  learning_rate=cfg.learning_rate, reset_metrics=reset_metrics)


def check_data(cfg):
  """The DataSpec of --data_dir (or of the embedded dataset when it is unset), after the
  pre-flight check of its records (of --features' schema, when given)."""
  data_dir = cfg.data_dir or records.embedded_data_dir()
  return data_check.check_data_dir(data_dir, cfg.num_classes, cfg.on_bad_record,
                                   cfg.allow_num_classes_mismatch, cfg.features)


def save_init_weights(cfg, weights):
  """--save_init_weights: writes the initial `weights`; the stats of a run that trains not."""
  run_files.save_weights(cfg.save_init_weights, weights)
  logging.info('initial weights written to %s', cfg.save_init_weights)
  return {'init_weights': cfg.save_init_weights}


def open_run(cfg, spec, runner, model_dir=None):
  """Opens (or resumes) the run directory of `cfg` for `runner`; returns its RunLog.

  `model_dir`: where this process writes, when that is not cfg.model_dir (a worker
  other than the chief).
  """
  log = runlog.RunLog(model_dir or cfg.model_dir, runner, config.manifest_flags(cfg),
                      overwrite=cfg.overwrite, fingerprint=spec.fingerprint)
  log.open()
  return log


def start_manifest(cfg, spec, *, versions, device, kernels, optimizer, lr_schedule,
                   **runner_fields):
  """The run.json fields every runner writes at start (runlog.MANIFEST_FIELDS; the config
  lint compares them); `optimizer`: the optimizer as optimizers.describe reads it;
  `lr_schedule`: the learning-rate schedule as the runner applies it
  (optimizers.schedule_manifest(cfg), or None); `runner_fields` are the runner's own
  (distribution, dtype policy, model summary, its block)."""
  return runlog.start_fields(
      versions=versions, device=device, kernels=kernels,
      optimizer={**optimizer, 'schedule': lr_schedule},
      loss=cfg.loss, from_logits=config.LOSS_TAKES_LOGITS[cfg.loss],
      final_activation=cfg.final_activation,
      batch_size=cfg.batch_size, image_size=cfg.image_size, seed=cfg.seed,
      deterministic=cfg.deterministic, data=spec.manifest(),
      init_weights_sha256=(run_files.file_sha256(cfg.init_weights) if cfg.init_weights
                           else None),
      **runner_fields)


def check_optimizer_state(state, variables):
  """Raises errors.UsageError when an optimizer state (run_files.load_optimizer_state)
  does not hold exactly the state `variables` ({name: variable}) of this optimizer."""
  missing, extra = sorted(set(variables) - set(state)), sorted(set(state) - set(variables))
  if missing or extra:
    raise errors.UsageError(f'the optimizer state does not fit this run\'s optimizer (missing '
                            f'{missing[:3]}, unexpected {extra[:3]}); was it written by '
                            'another --optimizer?')


@contextlib.contextmanager
def marking_failures(log):
  """Marks run.json failed when the run stops on an error the driver does not record.

  NumericFault and Interrupted leave run.json as the driver wrote it; anything else
  (bad data found at run time, a bug) must not leave the run looking alive.
  """
  try:
    yield
  except (errors.NumericFault, errors.Interrupted):
    raise
  except Exception as e:
    failure = str(e) if isinstance(e, errors.UsageError) else f'{type(e).__name__}: {e}'
    log.update(status=runlog.STATUS_FAILED, failure=failure)
    raise


def train(backend, log, schedule, signals):
  """Trains `backend` from its latest checkpoint (or step 0) to the schedule's end.

  `signals` is the runner's interrupts.SignalCatcher, installed before anything was built so
  that a signal at any moment is honoured: between steps, after the epoch's checkpoint,
  or at the end, the run writes a checkpoint (unless the latest one is of this very
  step) and raises errors.Interrupted. Returns the stats dict (global_step, final
  metrics, model_dir). Raises errors.NumericFault on a NaN/Inf loss or weight, each after
  the run directory says so.
  """
  recorder = Recorder(log, schedule, backend.weights, backend.optimizer_state)
  step, checkpoint = backend.restore()
  final_metrics = recorder.begin(step, checkpoint)
  spe = schedule.steps_per_epoch

  def interrupted():
    if step and recorder.checkpoint_step != step:
      recorder.checkpoint(step, backend.save_checkpoint)
    return recorder.interrupted(signals.signum, step, recorder.last_checkpoint)

  if signals.caught:
    raise interrupted()
  unevaluated = _unevaluated_epoch(log, step, spe)
  if unevaluated:
    epoch, train_loss, train_accuracy, seconds = unevaluated
    logging.info('evaluating epoch %d, which ended at the checkpoint of step %d', epoch, step)
    final_metrics = recorder.record_epoch(epoch, train_loss, train_accuracy, backend.evaluate(),
                                          seconds, backend.write_scalars)
  for epoch in range(step // spe + 1, schedule.epochs + 1):
    done_in_epoch = step - (epoch - 1) * spe
    if done_in_epoch == 0 and schedule.reset_metrics:
      backend.reset_metrics()
    bar = progress.EpochProgress(epoch, schedule.epochs, spe, initial=done_in_epoch,
                                 log_every=schedule.log_every)
    epoch_started = time.perf_counter()
    result = None
    try:
      while step < epoch * spe:
        recorder.start_step()
        result = backend.train_step()
        step += 1
        recorder.record_step(step, result, backend.write_scalars)
        bar.update(loss=result.mean_loss, accuracy=result.accuracy)
        if signals.caught:
          raise interrupted()
        if step % schedule.checkpoint_every == 0 and step % spe:
          recorder.checkpoint(step, backend.save_checkpoint)
    finally:
      bar.close()
    if result is None:
      continue
    # The epoch's checkpoint comes before its evaluation: validation data that fails
    # there (exit 2) loses no training, and the rerun evaluates from this checkpoint.
    recorder.checkpoint(step, backend.save_checkpoint)
    final_metrics = recorder.record_epoch(
        epoch, result.mean_loss, result.accuracy, backend.evaluate(),
        time.perf_counter() - epoch_started, backend.write_scalars)
    if signals.caught:
      raise interrupted()
  return recorder.finish(step, final_metrics, backend.export, signals)


def _unevaluated_epoch(log, step, steps_per_epoch):
  """(epoch, train_loss, train_accuracy, seconds) of the epoch that ended at `step` when
  its checkpoint was written but its epochs.csv row was not (the run stopped in its
  evaluation), else None. The training metrics are its last steps.csv row's running
  metrics, the values the row would have had; seconds are its steps' own."""
  epoch = step // steps_per_epoch
  if not step or step % steps_per_epoch:
    return None
  epochs = runlog.read_csv(log.path(run_files.EPOCHS_CSV))
  if epochs and int(epochs['epoch'][-1]) >= epoch:
    return None
  steps = runlog.read_csv(log.path(run_files.STEPS_CSV))
  if not steps or int(steps['step'][-1]) != step:
    return None
  in_epoch = steps['epoch'] == epoch
  return (epoch, float(steps['mean_loss'][-1]), float(steps['accuracy'][-1]),
          float(steps['seconds'][in_epoch].sum()))
