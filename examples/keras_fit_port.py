"""The team's Keras 3 port of tf1_monitored_job.py, trained with model.fit on the legacy
job's recorded batches and recorded for compare_runs by a Keras Callback.

The port as a team writes it: a functional model over the same dict of features
(Inputs named as the legacy job's feature columns), the same two heads under the
legacy job's layer names, a loss for each output (Keras sums them), keras.optimizers.Adam
with TF1's epsilon passed explicitly. It needs no pipeline of its own for the
comparison: `recorded_batches` gives the legacy job's batches in their order.

The three statements marked `# recorder` (on their first line): the import; the
callback, which also gives the model the legacy job's step-0 weights when fit starts;
and fit on the recorded batches, watched, with the callback.

    python examples/keras_fit_port.py --model_dir=runs/port --legacy_dir=runs/tf1
    bin/compare_runs runs/tf1 runs/port --control=runs/control

--mistake=adam_epsilon makes a real migration mistake (Keras' default epsilon 1e-7
instead of TF1's 1e-8) for compare_runs to name.
"""

import os
import sys

# A Keras 3 process: an inherited TF_USE_LEGACY_KERAS would make tf.keras Keras 2.
os.environ.pop('TF_USE_LEGACY_KERAS', None)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

import tabular_common  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat import keras_callback  # recorder  # pylint: disable=g-import-not-at-top

LEGACY_ADAM_EPSILON = 1e-8  # tf.compat.v1.train.AdamOptimizer's default


def build(learning_rate, mistake):
  """The compiled two-headed model."""
  numeric = keras.Input((tabular_common.NUMERIC_COLUMNS,), name='numeric')
  category = keras.Input((), dtype='int64', name='category')
  one_hot = keras.ops.one_hot(category, tabular_common.CATEGORIES)
  inputs = keras.layers.Concatenate()([numeric, one_hot])
  hidden = keras.layers.Dense(tabular_common.HIDDEN_UNITS, activation='relu',
                              name='hidden')(inputs)
  outputs = {'price': keras.layers.Dense(1, name='price')(hidden),
             'clicked': keras.layers.Dense(1, name='clicked')(hidden)}
  model = keras.Model({'numeric': numeric, 'category': category}, outputs)
  epsilon = {} if mistake == 'adam_epsilon' else {'epsilon': LEGACY_ADAM_EPSILON}
  model.compile(optimizer=keras.optimizers.Adam(learning_rate, **epsilon),
                loss={'price': keras.losses.MeanSquaredError(),
                      'clicked': keras.losses.BinaryCrossentropy(from_logits=True)})
  return model


def main(argv):
  """Trains and records one run; returns the exit code."""
  args = tabular_common.parse_args(argv, __doc__.splitlines()[0],
                                   tabular_common.port_arguments)
  keras.utils.set_random_seed(args.seed)
  tf.config.experimental.enable_op_determinism()
  model = build(args.learning_rate, args.mistake)
  callback = keras_callback.recording_callback(  # recorder
      args.model_dir, start_from=args.legacy_dir, inputs_from=args.legacy_dir,
      seed=args.seed, overwrite=args.overwrite)
  model.fit(callback.watch(keras_callback.recorded_batches(args.legacy_dir)),  # recorder
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, callbacks=[callback],
            shuffle=False, verbose=0)
  print(f'{callback.recorder.step} steps: {args.model_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
