"""TensorBoard scalars of a Keras 3 run, on either backend (the graph runner writes its own
with tf.compat.v1's FileWriter)."""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2


class ScalarWriter:
  """TensorBoard scalars in the run directory; the events file is opened on first use.

  `tf.summary.scalar` lives in the tensorboard package, which is no dependency here;
  `tf.summary.write` with the scalars plugin's metadata writes the same event.
  """

  _METADATA = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))

  def __init__(self, logdir):
    self._logdir = logdir
    self._writer = None

  def __call__(self, step, scalars):
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self._logdir)
    with self._writer.as_default(step=step):
      for tag, value in scalars.items():
        tf.summary.write(tag, tf.constant(value, tf.float32), metadata=self._METADATA)

  def flush(self):
    if self._writer is not None:
      self._writer.flush()
