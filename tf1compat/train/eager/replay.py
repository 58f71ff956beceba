"""The eager backend's replay of a run's step (train_eager --replay_out).

train/replay_mode.py says what a replay is and writes its probe; this is how the port
computes one: the custom loop's step in a `tf.function`, through a probe model that also
returns every layer's output (train/graph/replay.py is the twin). A fit run's step is
the same, with the regularization losses fit adds (its backend's config says so).
"""

import keras
import tensorflow as tf

from tf1compat.data import pipeline
from tf1compat.train import replay_mode
from tf1compat.train.eager import model_fn
from tf1compat.train.models import keras_facts


class ReplayStep:
  """EagerBackend's replay of one step, stage by stage (a mix-in of its model and step)."""

  def replay_step(self, batch=None):
    """Runs the next training step as the custom loop's train step does (one device),
    on `batch` ((images, labels), or None: the pipeline's next one), the model called
    through a probe model that also returns every layer's output; returns its probe
    stages (probes.STAGES) with the step's learning rate. Meant for a backend loaded with
    a run's snapshot (and advance()d past it): the step updates these variables as
    training would."""
    batches = self._replay_batches or iter(self.train_batches())
    with pipeline.input_errors(self._spec):
      own = [tensor.numpy() for tensor in next(batches)]
    images, labels = own if batch is None else batch
    layers, probe, output_index = replay_mode.probe_model(self.model, keras)
    variables = self.model.trainable_variables
    # Its slots before the step's tf.function is traced, as restore() builds them.
    self.optimizer.build(variables)
    # Read before the update increments optimizer.iterations, as the train step does.
    learning_rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def step(images, labels):
      with tf.GradientTape() as tape:
        layer_outputs = probe(images, training=True)
        parts = self._step_loss(labels, layer_outputs[output_index])
      # One replica in float32 (replay_mode.replayable): no loss scaling to undo.
      return layer_outputs, parts, self._apply(tape, parts[0])

    items = keras_facts.weight_items(self.model)
    before = model_fn.model_weights(self.model)
    outputs, parts, gradients = tf.function(step, jit_compile=self._cfg.jit_compile)(
        tf.constant(images), tf.constant(labels))
    after = model_fn.model_weights(self.model)
    return replay_mode.step_stages(
        own, {layer.name: output.numpy() for layer, output in zip(layers, outputs)},
        [p.numpy() for p in parts], [tf.convert_to_tensor(g).numpy() for g in gradients],
        items, variables, before, after), learning_rate

  def layer_meta(self):
    """The probe's meta on the model: each layer's kinds and the output layer."""
    return replay_mode.layer_meta(self.model)
