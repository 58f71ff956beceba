"""The JAX backend's replay of a run's step (train_eager --backend=jax --replay_out).

train/replay_mode.py says what a replay is and writes its probe; this is how the JAX port
computes one: the custom loop's step, jitted, through a probe model that also returns
every layer's output (train/eager/replay.py is the twin). A fit run's step is the same,
with the regularization losses fit adds (its backend's config says so).
"""

import jax
import keras
import numpy as np

from tf1compat.data import pipeline
from tf1compat.train import replay_mode
from tf1compat.train.eager import model_fn as keras3_model_fn
from tf1compat.train.models import keras_facts


class ReplayStep:
  """JaxBackend's replay of one step, stage by stage (a mix-in of its model and step)."""

  def replay_step(self, batch=None):
    """Runs the next training step as the custom loop's train step does, on `batch`
    ((images, labels), or None: the pipeline's next one), the model called through a
    probe model that also returns every layer's output; returns its probe stages
    (probes.STAGES) with the step's learning rate. Meant for a backend loaded with a
    run's snapshot (and advance()d past it): the step updates these variables as
    training would."""
    batches = self._replay_batches or iter(self.train_batches())
    with pipeline.input_errors(self._spec):
      own = [tensor.numpy() for tensor in next(batches)]
    images, labels = own if batch is None else batch
    layers, probe, output_index = replay_mode.probe_model(self.model, keras)
    # The probe holds the model's variables, in its own order: the optimizer takes the
    # model's.
    position = {id(variable): index for index, variable in
                enumerate(self.model.trainable_variables)}
    order = [position[id(variable)] for variable in probe.trainable_variables]
    learning_rate = self.learning_rate()

    def step(trainable, non_trainable, optimizer_variables, images, labels):
      (_, (outputs, non_trainable, data, regularization)), gradients = jax.value_and_grad(
          self._step_loss, has_aux=True)(trainable, non_trainable, images, labels, probe,
                                         output_index)
      by_model = [None] * len(gradients)
      for gradient, index in zip(gradients, order):
        by_model[index] = gradient
      model_trainable = [None] * len(trainable)
      for value, index in zip(trainable, order):
        model_trainable[index] = value
      model_trainable, optimizer_variables = self.optimizer.stateless_apply(
          optimizer_variables, by_model, model_trainable)
      return outputs, (data + regularization, data, regularization), by_model, (
          model_trainable, non_trainable, optimizer_variables)

    items = keras_facts.weight_items(self.model)
    before = keras3_model_fn.model_weights(self.model)
    outputs, parts, gradients, (trainable, non_trainable, optimizer_variables) = jax.jit(step)(
        [v.value for v in probe.trainable_variables],
        [v.value for v in probe.non_trainable_variables],
        [v.value for v in self.optimizer.variables], images, labels)
    for variable, value in zip(self.model.trainable_variables, trainable):
      variable.assign(value)
    for variable, value in zip(probe.non_trainable_variables, non_trainable):
      if self._cfg.keep_non_trainable_state:
        variable.assign(value)
    for variable, value in zip(self.optimizer.variables, optimizer_variables):
      variable.assign(value)
    after = keras3_model_fn.model_weights(self.model)
    return replay_mode.step_stages(
        own, {layer.name: np.asarray(output) for layer, output in zip(layers, outputs)},
        [np.asarray(part) for part in parts], [np.asarray(g) for g in gradients], items,
        self.model.trainable_variables, before, after), learning_rate

  def layer_meta(self):
    """The probe's meta on the model: each layer's kinds and the output layer."""
    return replay_mode.layer_meta(self.model)
