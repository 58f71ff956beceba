"""The graph backend's replay of a run's step (train_graph --replay_out).

train/replay_mode.py says what a replay is and writes its probe; this is how the graph
runner computes one: the next training step in its Session, every stage fetched
(train/eager/replay.py is the twin).
"""

import numpy as np

from tf1compat.runs import probes
from tf1compat.train import replay_mode


class ReplayStep:
  """GraphBackend's replay of one step, stage by stage (a mix-in of its Session and graph)."""

  def replay_step(self, batch=None):
    """Runs the next training step as train_step does, on `batch` ((images, labels), or
    None: the pipeline's next one), and returns its probe stages (probes.STAGES) with the
    step's learning rate. Meant for a backend loaded with a run's snapshot (and
    advance()d past it): the step updates these variables as training would."""
    own = self._sess.run(self._batch)
    images, labels = own if batch is None else batch
    # Fed in place of the iterator's output: the model and the loss read these tensors.
    feed = {**self._train_feed, self._batch[0]: images, self._batch[1]: labels}
    if self._model_input is not None:
      feed[self._model_input] = images
    keys = {id(variable): key for key, variable in self._weight_items}
    with_gradients = [(keys[id(variable)], gradient) for gradient, variable in self._gradients
                      if gradient is not None]
    before = self.weights()
    values = self._sess.run(
        {'train': self._train_op, 'forward': self._layer_outputs,
         'data': self._data_loss, 'regularization': self._regularization_loss,
         'total': self._loss, 'learning_rate': self._learning_rate,
         'gradients': [gradient for _, gradient in with_gradients]}, feed)
    after = self.weights()
    trainable = {id(variable) for variable in self.model.trainable_weights}
    trainable_keys = [key for key, variable in self._weight_items if id(variable) in trainable]
    stages = {
        'input': {'images': own[0], 'labels': own[1]},
        'forward': values['forward'],
        'loss': {part: values[part] for part in probes.LOSS_PARTS},
        'gradients': {key: _dense(value) for (key, _), value in zip(with_gradients,
                                                                    values['gradients'])},
        'update': {key: after[key].astype(np.float64) - before[key] for key in trainable_keys},
        'state': {key: after[key].astype(np.float64) - before[key] for key, _ in
                  self._weight_items if key not in trainable_keys},
    }
    return stages, float(values['learning_rate'])

  def layer_meta(self):
    """The probe's meta on the model: each layer's kinds and the output layer."""
    return replay_mode.layer_meta(self.model)


def _dense(value):
  """A fetched gradient as an array (sparse IndexedSlices scattered into their shape)."""
  if hasattr(value, 'indices') and hasattr(value, 'dense_shape'):
    dense = np.zeros(value.dense_shape, value.values.dtype)
    np.add.at(dense, value.indices, value.values)
    return dense
  return value
