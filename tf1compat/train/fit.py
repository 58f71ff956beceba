"""The port's Keras path: `model.compile` + `model.fit` (`--loop=fit`, runner 'fit'), on
Keras 3's TensorFlow or JAX backend.

fit drives its own loop: the custom loop's backend (eager/backend.EagerBackend, or
jax/backend.JaxBackend) supplies the model, the optimizer, the loss and the pipelines, and
callbacks record fit's steps and epochs through the same `training.Recorder` as every
runner. `BackupAndRestore`
resumes at epoch boundaries. Runs on one device or under --strategy=mirrored (one
process, the chief; TensorFlow only). Keras 3 only.
"""

import json
import os
import time

from absl import logging
import keras
import numpy as np

from tf1compat.data import pipeline
from tf1compat.runs import run_files
from tf1compat.runtime import progress
from tf1compat.train import training

RUNNER = 'fit'
# model.fit's BackupAndRestore folder inside MODEL_DIR/checkpoints.
BACKUP_DIR = 'backup'
# Keras writes this beside the backed-up weights; its 'epoch' is the epochs completed.
_BACKUP_METADATA = 'training_metadata.json'


class FiniteWeights(keras.callbacks.Callback):
  """Stops fit before BackupAndRestore backs up NaN or Inf weights (it must precede it).

  A step's loss is computed before its update, so the last step of an epoch can leave
  non-finite weights behind a finite loss.
  """

  def __init__(self, recorder, steps_per_epoch):
    super().__init__()
    self._recorder = recorder
    self._steps_per_epoch = steps_per_epoch

  def on_epoch_end(self, epoch, logs=None):
    self._recorder.check_weights((epoch + 1) * self._steps_per_epoch)


class FitRecorder(keras.callbacks.Callback):
  """Writes model.fit's steps and epochs into the run directory via training.Recorder.

  fit reports running means since the epoch start; the batch values are recovered as
  x_k = k * mean_k - (k - 1) * mean_(k-1) (steps_per_execution=1, so every batch is
  reported). Must follow BackupAndRestore in the callback list, so that an epoch's
  backup is written before the epoch is recorded and a signal is honoured.
  """

  def __init__(self, recorder, schedule, batch_size, backend, signals, backup_dir):
    super().__init__()
    self._recorder = recorder
    self._schedule = schedule
    self._batch_size = batch_size
    self._backend = backend
    self._signals = signals
    self._backup_dir = backup_dir
    self._epoch = 0
    self._previous = (0.0, 0.0)
    self._bar = None
    self._epoch_started = 0.0
    self._learning_rate = None
    self.final_metrics = None

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch + 1
    self._previous = (0.0, 0.0)
    self._bar = progress.EpochProgress(self._epoch, self._schedule.epochs,
                                       self._schedule.steps_per_epoch,
                                       log_every=self._schedule.log_every)
    self._epoch_started = time.perf_counter()

  def on_train_batch_begin(self, batch, logs=None):
    self._recorder.start_step()
    # Before the step's update: the rate it applies (a schedule's, or the callback's).
    self._learning_rate = float(keras.ops.convert_to_numpy(
        self.model.optimizer.learning_rate))

  def on_train_batch_end(self, batch, logs=None):
    k = batch + 1
    mean_loss, accuracy = float(logs['loss']), float(logs['accuracy'])
    previous_loss, previous_accuracy = self._previous
    self._previous = (mean_loss, accuracy)
    loss = k * mean_loss - (k - 1) * previous_loss
    # A batch accuracy is a multiple of 1/batch: rounding removes the float32 error.
    batch_accuracy = float(np.round((k * accuracy - (k - 1) * previous_accuracy)
                                    * self._batch_size) / self._batch_size)
    step = (self._epoch - 1) * self._schedule.steps_per_epoch + k
    self._recorder.record_step(
        step, training.StepResult(loss, batch_accuracy, mean_loss, accuracy,
                                  self._learning_rate),
        self._backend.write_scalars)
    self._bar.update(loss=mean_loss, accuracy=accuracy)
    if self._signals.caught:
      # BackupAndRestore resumes at the last epoch end: report that step.
      raise self._recorder.interrupted(
          self._signals.signum, (self._epoch - 1) * self._schedule.steps_per_epoch,
          self._recorder.last_checkpoint)

  def on_epoch_end(self, epoch, logs=None):
    self.close()
    evaluation = ((float(logs['val_loss']), float(logs['val_accuracy']))
                  if 'val_loss' in logs else None)
    self.final_metrics = self._recorder.record_epoch(
        epoch + 1, float(logs['loss']), float(logs['accuracy']), evaluation,
        time.perf_counter() - self._epoch_started, self._backend.write_scalars)
    self._recorder.last_checkpoint = self._backup_dir
    self._backend.flush_scalars()
    if self._signals.caught:
      raise self._recorder.interrupted(
          self._signals.signum, (epoch + 1) * self._schedule.steps_per_epoch,
          self._backup_dir)

  def close(self):
    """Closes the progress bar of the current epoch, if one is open."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def accuracy_metric(class_name):
  """The keras.metrics accuracy `class_name` (--fit_accuracy) fit compiles, named 'accuracy'.

  Not the string 'accuracy': Keras 3.15 resolves it by the shapes of labels and outputs
  (CategoricalAccuracy for this model's one-hot labels, measured), where the class a team
  writes is taken as it is. keras.metrics.Accuracy compares labels and outputs element by
  element, so on one-hot labels and logits it shows about 0 (keras-team/keras#18796).
  """
  return getattr(keras.metrics, class_name)(name='accuracy')


def per_epoch_learning_rate(schedule, steps_per_epoch):
  """keras.callbacks.LearningRateScheduler with the step `schedule` evaluated at each
  epoch's first step, the rate then held for the whole epoch: a per-step schedule ported
  into Keras' per-epoch callback (--fit_lr_schedule=epoch_callback, the
  lr_schedule_per_epoch mistake)."""
  return keras.callbacks.LearningRateScheduler(
      lambda epoch, rate: float(keras.ops.convert_to_numpy(schedule(epoch * steps_per_epoch))))


def resume_step(backup_dir, steps_per_epoch):
  """The step BackupAndRestore will resume from: completed epochs x steps per epoch."""
  path = os.path.join(backup_dir, _BACKUP_METADATA)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return int(json.load(f)['epoch']) * steps_per_epoch


def datasets(backend, skip_batches):
  """(training batches after the first `skip_batches`, validation batches or None) for
  model.fit.

  Distributed, the training batches are the custom loop's per-replica slices of the
  global batches, in a dataset that starts over for each iterator fit makes
  (`distribution.fresh_distributed_dataset`). fit keeps one validation iterator for
  all epochs, so the validation set (no shuffle; fit splits its batches over the
  replicas) repeats: each pass reads it once.
  """
  train = backend.train_batches(skip_batches, fresh_iterators=True)
  val = backend.val_batches()
  if val is not None and backend.distribution.distributed:
    val = val.repeat()
  return train, val


def train(backend, cfg, spec, log, schedule, signals):
  """model.compile + model.fit of `backend`'s model, recorded like the custom loop.

  Resumes from the BackupAndRestore state at the last epoch end; the training stream
  skips the batches already trained on, so the resumed epochs see the batches of an
  uninterrupted run. `signals` is the runner's interrupts.SignalCatcher: a signal stops fit
  after the current batch (the rerun redoes the epoch) or after the epoch's backup.
  Returns the stats dict.
  """
  model = backend.model
  spe = schedule.steps_per_epoch
  backup_dir = log.path(run_files.CHECKPOINTS_DIR, BACKUP_DIR)
  step = resume_step(backup_dir, spe)
  recorder = training.Recorder(log, schedule, backend.weights, backend.optimizer_state)
  # model.fit resumes at epoch ends: the checkpoint is the backup of the last one.
  recorder.begin(step, backup_dir if step else None)
  # jit_compile explicitly: fit's 'auto' would turn XLA on on a GPU without op
  # determinism, where the custom loop compiles only with --jit_compile.
  model.compile(optimizer=backend.optimizer, loss=backend.loss,
                metrics=[accuracy_metric(cfg.fit_accuracy)],
                jit_compile=cfg.jit_compile, steps_per_execution=1)
  if cfg.jit_compile and not model.jit_compile:
    # Keras 3 declines XLA under op determinism (with the warning above); the manifest
    # says what ran.
    logging.warning('model.fit runs without XLA: Keras disables jit_compile under '
                    '--deterministic; pass --nodeterministic for XLA in fit')
  log.update(jit_compile=bool(model.jit_compile))
  train_dataset, val_dataset = datasets(backend, step)
  callback = FitRecorder(recorder, schedule, cfg.batch_size, backend, signals, backup_dir)
  backup = keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True,
                                            delete_checkpoint=False)
  rate_callbacks = ([per_epoch_learning_rate(backend.lr_schedule, spe)]
                    if cfg.fit_lr_schedule == 'epoch_callback' else [])
  try:
    # A known length keeps Keras from warning, after every first validation pass,
    # that the input "ran out of data; interrupting training".
    validation_steps = (-(-spec.val_check.good_records // cfg.batch_size)
                        if val_dataset is not None else None)
    # shuffle=False: the pipeline shuffles; Keras would only warn that it cannot. Only
    # errors of the input pipeline are data errors; the model's are faults.
    with pipeline.input_errors(spec):
      model.fit(train_dataset, epochs=schedule.epochs, steps_per_epoch=spe,
                validation_data=val_dataset, validation_steps=validation_steps,
                callbacks=[*rate_callbacks, FiniteWeights(recorder, spe), backup, callback],
                shuffle=False,
                verbose=0)
  finally:
    callback.close()
    backend.flush_scalars()
  final_metrics = callback.final_metrics or training.last_epoch_metrics(log)
  return recorder.finish(schedule.total_steps, final_metrics, backend.export, signals)
