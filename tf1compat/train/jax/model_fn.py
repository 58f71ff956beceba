"""What the JAX port computes where Keras 3 on JAX differs from Keras 3 on TensorFlow.

The model, the schedule, the optimizer (its exact switches included: tf1_kernels computes
TF1's formulas on this backend), the optimizer's state, the weights' I/O and the export
(Keras exports a JAX model through jax2tf) are Keras 3's and shared with the TensorFlow
port (train/eager/model_fn.py, the twin). What differs is what a TensorFlow op computed
there: the kernels run.json names, the loss, the regularization losses (which a stateless
call returns).
"""

import keras
from keras import ops

from tf1compat.runs import optimizers
from tf1compat.runs import runlog
from tf1compat.train.eager import model_fn as keras3_model_fn


def kernels(cfg):
  """Which Adam (None without Adam), other optimizer and BatchNorm moving-variance kernels
  the run computes with (run.json): the exact switches give TF1's formulas compiled by XLA,
  never TF1's kernels (FTRL stays Keras': tf1_kernels.TF1Ftrl)."""
  chosen = keras3_model_fn.kernels(cfg)
  algorithm = optimizers.ALGORITHMS[cfg.optimizer][0]
  if chosen['adam'] == runlog.ADAM_TF1_FUSED:
    chosen['adam'] = runlog.TF1_FORMULA
  if chosen['optimizer'] == runlog.OPTIMIZER_TF1_FUSED:
    chosen['optimizer'] = (runlog.OPTIMIZER_KERAS if algorithm == 'ftrl'
                           else runlog.TF1_FORMULA)
  return chosen


def optimizer_name(cfg, optimizer):
  """The optimizer as run.json names it."""
  name = f'keras.optimizers.{type(optimizer).__name__}'
  return (f"{name} (TF1 ApplyAdam's formula, XLA)" if cfg.tf1_adam and cfg.optimizer == 'adam'
          else name)


def regularization_loss(losses):
  """The sum of the regularization `losses` a stateless call returned (0 without any),
  which the custom loop adds to its loss itself (fit does)."""
  total = ops.convert_to_tensor(0.0, 'float32')
  for loss in losses:
    total = total + loss
  return total


def per_example_loss(loss_name, labels, outputs):
  """The per-example loss of --loss on the model's outputs, [batch] (the twin's names).

  softmax_cross_entropy is `tf.nn.softmax_cross_entropy_with_logits`' formula,
  -sum(labels * log_softmax(logits)), which XLA computes; the Keras losses are Keras'.
  """
  if loss_name == 'keras_categorical':
    return keras.losses.categorical_crossentropy(labels, outputs, from_logits=True)
  if loss_name == 'keras_categorical_probs':
    return keras.losses.categorical_crossentropy(labels, outputs)
  labels = ops.stop_gradient(labels)
  return -ops.sum(labels * ops.log_softmax(outputs, axis=-1), axis=-1)

