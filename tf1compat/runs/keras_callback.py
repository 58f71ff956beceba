"""A TF2 port recorded by a Keras Callback (model.fit) or a context (a custom loop), and
the legacy job's recorded batches as the port's input.

TF2 teams instrument training with Keras callbacks; the recording callback is one more
(Keras 3, or tf-keras for a team still on Keras 2):

    callback = keras_callback.recording_callback('runs/port')
    model.fit(callback.watch(keras_callback.recorded_batches('runs/tf1')), epochs=...,
              callbacks=[callback])

`recorded_batches` gives the batches the legacy job's recording stored, in its order,
as a tf.data.Dataset: both runs then train on exactly the same inputs whatever their own
pipelines do. `watch` hashes (and stores the first of) the batches fit really consumed,
from inside the dataset, so compare_runs can prove the inputs equal step by step, or
name the first step where they part (a team that shares its pipeline watches its own
dataset). A custom tf.function loop records with `with recording(...) as rec:` and one
`rec.record(loss, batch=...)` a step.

What it reads from the objects, not from the team: the optimizer's class and
hyperparameters (team_models.optimizer_fields), each step's learning rate, the model's
weights at step 0, at the due steps and at the end, the versions and the device. fit
reports running means since the epoch start; each batch's loss is recovered from two
consecutive means, x_k = k * mean_k - (k - 1) * mean_(k-1), as the fit runner does.
Imports no TensorFlow or Keras itself: the team's, already imported, are used.
"""

import collections
import functools
import math

import numpy as np

from tf1compat.runs import batch_record
from tf1compat.runs import errors
from tf1compat.runs import recorder
from tf1compat.runs import runlog
from tf1compat.runs import team_models

_WHO = 'keras_callback'


def _tensorflow():
  return team_models.loaded_module('tensorflow', _WHO)


def _keras_module(keras):
  """The Keras to subclass: 'keras' (Keras 3, the TF2 default) or 'tf_keras'."""
  if keras not in ('keras', 'tf_keras'):
    raise errors.UsageError(f'{_WHO}: keras={keras!r}; give \'keras\' (Keras 3) or '
                            '\'tf_keras\' (Keras 2)')
  return team_models.loaded_module(keras, _WHO)


def _config(model, optimizer, options, steps_per_epoch):
  """RunConfig of a Keras port: the optimizer and the model's BatchNorm and Dropout as
  they really are, the team's options."""
  fields = team_models.optimizer_fields(optimizer)
  layers = team_models.keras_model_fields(model)
  batch_size = options['batch_size']
  if batch_size is None and options['inputs_from']:
    batch_size = (runlog.read_manifest(options['inputs_from']) or {}).get('batch_size')
  return recorder.RunConfig(
      framework='tf_keras' if options['keras'] == 'tf_keras' else 'keras3',
      batch_norm=layers['batch_norm'], dropout=layers['dropout'], batch_size=batch_size,
      loss=options['loss_name'], from_logits=None, final_activation=None, seed=options['seed'],
      steps_per_epoch=steps_per_epoch, data_id=options['data_id'],
      extra=dict(options['extra'] or {}), **fields)


def _data_id(data_id, inputs_from):
  if data_id:
    return data_id
  if inputs_from:
    # The legacy job's recording names its data; the port trains on its batches.
    return (runlog.read_manifest(inputs_from) or {}).get('data', {}).get('data_id') or \
        'hashed batches'
  return 'hashed batches'


def _options(**options):
  return {**options, 'data_id': _data_id(options['data_id'], options['inputs_from'])}


def _open(model_dir, config, options, weights):
  rec = recorder.RunRecorder(model_dir, config, overwrite=options['overwrite'],
                             stored_batches=options['stored_batches'],
                             max_batch_bytes=options['max_batch_bytes'])
  rec.snapshot(0, weights)
  return rec


def _learning_rate(optimizer):
  """The rate `optimizer` applies at its next step (a schedule's value at its iterations)."""
  rate = optimizer.learning_rate
  return float(np.asarray(rate.numpy() if hasattr(rate, 'numpy') else rate))


class BatchWatch:
  """The batches a tf.data pipeline hands its consumer, in order, as numpy arrays.

  `watch(dataset)` adds a step at the end of the pipeline that copies each element out
  (tf.py_function) before it leaves; `pop()` gives the oldest not yet taken. A prefetch
  after it may run ahead; the queue holds what was produced and not yet trained on.
  """

  def __init__(self):
    self._queue = collections.deque()

  def watch(self, dataset):
    """`dataset` whose elements are (features, labels) or (features, labels, weights)
    (features alone too), each copied into the queue as it leaves."""
    tf = _tensorflow()

    def tap(*element):
      # Labels where the element has them; a sample weight is not part of the batch.
      parts = dict(zip(('features', 'labels'), element[:2]))

      def copy(*tensors):
        arrays = tf.nest.pack_sequence_as(parts, [tensor.numpy() for tensor in tensors])
        self._queue.append((arrays['features'], arrays.get('labels')))
        return np.int64(len(self._queue))

      token = tf.py_function(copy, tf.nest.flatten(parts), tf.int64)
      with tf.control_dependencies([token]):
        passed = tf.nest.map_structure(tf.identity, element)
      # map() hands a lone tensor (or dict) as one argument: give it back alone.
      return passed if len(element) > 1 else passed[0]

    return dataset.map(tap)

  def pop(self):
    """(features, labels) of the oldest batch not yet taken, or None."""
    return self._queue.popleft() if self._queue else None

  def clear(self):
    """Forgets the batches produced so far (by an iterator nobody trains on)."""
    self._queue.clear()


class _RecordingCallback:
  """The recording callback's work; recording_callback() makes it a Callback of the
  model's Keras."""

  def __init__(self, model_dir, options):
    super().__init__()
    self.model_dir = model_dir
    self._options = options
    self._watch = BatchWatch()
    self._rec = None
    self._k = 0
    self._previous = (0.0, 0.0)
    self._learning_rate = math.nan

  @property
  def recorder(self):
    """The RunRecorder, from the start of training on."""
    return self._rec

  def watch(self, dataset):
    """`dataset` (what fit trains on) with each batch hashed, and stored for the first
    steps, as fit consumes it."""
    return self._watch.watch(dataset)

  def on_train_begin(self, logs=None):
    if _keras_module(self._options['keras']).backend.backend() == 'jax':
      # Keras' JAX trainer builds the model's state on a batch from a first iterator of
      # the dataset and trains on a second, made when the first epoch starts: the batch
      # the first took is no step's (measured: every digest one step late without this).
      self._watch.clear()
    if self._options['start_from']:
      team_models.start_from(self.model, self._options['start_from'],
                             self._options['weight_map'])
    config = _config(self.model, self.model.optimizer, self._options, self.params.get('steps'))
    self._rec = _open(self.model_dir, config, self._options,
                      team_models.keras_weights(self.model))

  def on_epoch_begin(self, epoch, logs=None):
    self._k = 0
    self._previous = (0.0, 0.0)

  def on_train_batch_begin(self, batch, logs=None):
    # Before the step's update: the rate it applies.
    self._learning_rate = _learning_rate(self.model.optimizer)

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    self._k += 1
    k = self._k
    mean_loss = float(logs['loss'])
    accuracy = float(logs['accuracy']) if 'accuracy' in logs else None
    previous_loss, previous_accuracy = self._previous
    self._previous = (mean_loss, accuracy if accuracy is not None else 0.0)
    loss = k * mean_loss - (k - 1) * previous_loss
    batch = self._watch.pop()
    batch_accuracy = None
    if accuracy is not None:
      batch_accuracy = k * accuracy - (k - 1) * previous_accuracy
      if batch is not None:
        # A share of the batch's examples: rounding to it removes the float32 error.
        examples = len(next(iter(batch_record.flatten(*batch).values())))
        batch_accuracy = round(batch_accuracy * examples) / examples
    step = self._rec.record_step(loss, batch_accuracy, mean_loss=mean_loss, accuracy=accuracy,
                                 learning_rate=self._learning_rate, batch=batch)
    if self._rec.snapshot_due(step):
      self._rec.snapshot(step, team_models.keras_weights(self.model))

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    self._rec.record_epoch(val_loss=logs.get('val_loss'), val_accuracy=logs.get('val_accuracy'))

  def on_train_end(self, logs=None):
    self._rec.finish(team_models.keras_weights(self.model))


@functools.lru_cache(maxsize=None)
def _callback_class(base):
  return type('RecordingCallback', (_RecordingCallback, base), {})


def recording_callback(model_dir, *, start_from=None, weight_map=None, inputs_from=None,
                       batch_size=None, data_id=None, loss_name=None, seed=None, keras='keras',
                       overwrite=False, stored_batches=batch_record.DEFAULT_STORED_STEPS,
                       max_batch_bytes=batch_record.DEFAULT_MAX_BYTES, extra=None):
  """A Keras Callback that records model.fit into `model_dir`.

  Train on `callback.watch(dataset)` for the batches to be hashed (and the first
  `stored_batches` stored), so that compare_runs compares the inputs step by step.
  `start_from`: a recorded run whose step-0 weights (renamed by `weight_map`) the model
  takes when fit starts: the legacy job's, for both to start alike. `inputs_from`: the
  legacy job's run directory, where the port trains on its recorded_batches (its batch
  size and data id are taken from there). `keras`: 'keras' (Keras 3) or 'tf_keras'.
  Epochs are fit's; the run is complete at the end of fit.
  """
  base = _keras_module(keras).callbacks.Callback
  return _callback_class(base)(model_dir, _options(
      keras=keras, start_from=start_from, weight_map=weight_map, batch_size=batch_size,
      data_id=data_id,
      inputs_from=inputs_from, loss_name=loss_name, seed=seed, overwrite=overwrite,
      stored_batches=stored_batches, max_batch_bytes=max_batch_bytes, extra=extra))


class recording:  # pylint: disable=invalid-name
  """A custom training loop recorded: `with recording(dir, model, optimizer) as rec:`,
  then `rec.record(loss, batch=(features, labels))` after each step.

  Snapshots step 0 on entering, the due steps as they come and the end on leaving; an
  epoch ends every `steps_per_epoch` steps (default: the whole loop is one), or at
  `rec.end_epoch(val_loss=...)`. An exception leaving the block marks the run failed.
  `keras`: the Keras the model is built with, 'keras' (Keras 3) or 'tf_keras'.
  """

  def __init__(self, model_dir, model, optimizer, *, steps_per_epoch=None, inputs_from=None,
               batch_size=None, data_id=None, loss_name=None, seed=None, keras='keras',
               overwrite=False, stored_batches=batch_record.DEFAULT_STORED_STEPS,
               max_batch_bytes=batch_record.DEFAULT_MAX_BYTES, extra=None):
    self.model_dir = model_dir
    self._model = model
    self._optimizer = optimizer
    self._steps_per_epoch = steps_per_epoch
    self._options = _options(
        keras=keras, batch_size=batch_size, data_id=data_id, inputs_from=inputs_from,
        loss_name=loss_name, seed=seed, overwrite=overwrite, stored_batches=stored_batches,
        max_batch_bytes=max_batch_bytes, extra=extra)
    self.recorder = None

  def __enter__(self):
    config = _config(self._model, self._optimizer, self._options, self._steps_per_epoch)
    self.recorder = _open(self.model_dir, config, self._options,
                          team_models.keras_weights(self._model))
    self._rate = _learning_rate(self._optimizer)
    return self

  def record(self, loss, batch=None, accuracy=None):
    """Records the step just trained: its `loss` (computed before its update), the
    `batch` (features, labels) it trained on, its batch `accuracy` where the model has
    one. Returns the step's number."""
    rec = self.recorder
    step = rec.record_step(loss, accuracy, learning_rate=self._rate, batch=batch)
    self._rate = _learning_rate(self._optimizer)
    if rec.snapshot_due(step):
      rec.snapshot(step, team_models.keras_weights(self._model))
    if self._steps_per_epoch and step % self._steps_per_epoch == 0:
      rec.record_epoch()
    return step

  def end_epoch(self, val_loss=None, val_accuracy=None):
    """Ends an epoch here, with its validation results where the loop has them."""
    self.recorder.record_epoch(val_loss=val_loss, val_accuracy=val_accuracy)

  def __exit__(self, kind, error, traceback):
    rec = self.recorder
    if error is not None:
      if not isinstance(error, errors.NumericFault):
        rec.fail(f'{kind.__name__}: {error}')
      return False
    if rec.epoch_open and not rec.config.steps_per_epoch:
      rec.record_epoch()
    rec.finish(team_models.keras_weights(self._model))
    return False


def recorded_batches(run_dir, steps=None):
  """The batches the recorded run `run_dir` stored, in order, as a tf.data.Dataset of
  (features, labels) (features alone where it recorded no labels), each checked against
  its digest; the first `steps` where given. Dtypes and shapes are as the job's input
  tensors held them: feed them to a port whose inputs take the same."""
  tf = _tensorflow()
  batches = [(features, labels) for _, features, labels in
             batch_record.stored_batches(run_dir, steps)]
  has_labels = batches[0][1] is not None
  elements = [(f, l) if has_labels else f for f, l in batches]
  shapes = {tuple((k, a.shape, a.dtype.str) for k, a in
                  batch_record.flatten(*pair).items()) for pair in batches}
  if len(shapes) == 1:
    stacked = tf.nest.map_structure(lambda *arrays: np.stack(arrays), *elements)
    return tf.data.Dataset.from_tensor_slices(stacked)
  # Batches of different sizes (a last, smaller one): one at a time.
  signature = tf.nest.map_structure(
      lambda a: tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype)), elements[0])
  return tf.data.Dataset.from_generator(lambda: iter(elements), output_signature=signature)
