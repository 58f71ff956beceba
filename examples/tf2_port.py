"""The team's TF2 port of tf1_session_loop.py, recorded for compare_runs by tf1compat.runs.recorder.

The port as a team writes it: a Keras 3 model (the TF1 loop's two dense layers, under
Keras' own names), keras.optimizers.Adam with the legacy epsilon passed explicitly, a
tf.function train step with GradientTape, Keras metrics reset at every epoch, on the
same numpy batches (team_common.py). It starts from the TF1 loop's initial weights,
renamed to its own variables by the weight map tf1_to_port.map. The lines marked
`# recorder` write the run directory and a probe of the first step (its layer outputs,
named as the TF1 loop names its layers, and gradients) for compare_runs --localize; the
optimizer's and the model's settings are read from the objects themselves, so a mistake
in them is recorded as made.

    python examples/tf2_port.py --model_dir=runs/port --init_weights=runs/init.npz
    bin/compare_runs runs/tf1 runs/port --weight_map=runs/tf1=examples/tf1_to_port.map

--mistake=NAME makes one real migration mistake, for compare_runs to name:
adam_epsilon (Keras' default epsilon 1e-7 instead of TF1's 1e-8) or metrics_never_reset
(the running metrics never restart at an epoch's start). Not double_softmax: Keras 3's
CategoricalCrossentropy(from_logits=True) undoes a final softmax by itself (it takes the
logits the softmax kept, with a warning), so that mistake changes no number here.
"""

import os
import sys
import time

# A Keras 3 process: an inherited TF_USE_LEGACY_KERAS would make tf.keras Keras 2.
os.environ.pop('TF_USE_LEGACY_KERAS', None)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

import team_common  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.runs import recorder  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.runs import team_models  # pylint: disable=g-import-not-at-top,wrong-import-position

HIDDEN_UNITS = 32
LEGACY_ADAM_EPSILON = 1e-8  # tf.compat.v1.train.AdamOptimizer's default
MISTAKES = ('none', 'adam_epsilon', 'metrics_never_reset')
WEIGHT_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tf1_to_port.map')


def add_arguments(parser):
  """The port's own flags."""
  parser.add_argument('--weight_map', default=WEIGHT_MAP,
                      help='renames the initial weights to this model\'s variables')
  parser.add_argument('--mistake', choices=MISTAKES, default='none',
                      help='make one migration mistake')


def build(args):
  """The model, the optimizer, the loss and the running metrics."""
  model = keras.Sequential([
      keras.Input((team_common.IMAGE_SIZE * team_common.IMAGE_SIZE,)),
      keras.layers.Dense(HIDDEN_UNITS, activation='relu'),
      keras.layers.Dense(team_common.NUM_CLASSES)])
  epsilon = {} if args.mistake == 'adam_epsilon' else {'epsilon': LEGACY_ADAM_EPSILON}
  optimizer = keras.optimizers.Adam(args.learning_rate, **epsilon)
  loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
  return model, optimizer, loss_fn, keras.metrics.Mean(), keras.metrics.CategoricalAccuracy()


def main(argv):
  """Trains and records one run; returns the exit code."""
  args = team_common.parse_args(argv, __doc__.splitlines()[0], add_arguments)
  keras.utils.set_random_seed(args.seed)
  tf.config.experimental.enable_op_determinism()
  x_train, y_train, x_val, y_val = team_common.make_data(args.seed)
  model, optimizer, loss_fn, mean_loss, accuracy = build(args)
  team_models.set_keras_weights(
      model, team_models.load_weights(args.init_weights, weight_map=args.weight_map))
  # The model with every layer's output as well, and the variables' names: a step's probe.
  layer_outputs = keras.Model(model.inputs, [layer.output for layer in model.layers])
  names = [team_models.variable_name(v) for v in model.trainable_variables]

  @tf.function
  def train_step(x, y):
    with tf.GradientTape() as tape:
      hidden, logits = layer_outputs(x, training=True)
      loss = loss_fn(y, logits)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    mean_loss.update_state(loss)
    accuracy.update_state(y, logits)
    hits = tf.equal(tf.argmax(y, 1), tf.argmax(logits, 1))
    probe = {'outputs': {'hidden': hidden, 'logits': logits}, 'loss': loss,
             'gradients': dict(zip(names, gradients))}
    return loss, tf.reduce_mean(tf.cast(hits, tf.float32)), probe

  config = recorder.RunConfig(  # recorder
      framework='keras3', **team_models.optimizer_fields(optimizer),
      **team_models.keras_model_fields(model), loss='keras_categorical',
      batch_size=args.batch_size, image_size=team_common.IMAGE_SIZE,
      num_classes=team_common.NUM_CLASSES, seed=args.seed, deterministic=True,
      steps_per_epoch=args.steps_per_epoch,
      data_fingerprint=recorder.data_fingerprint(x_train, y_train, x_val, y_val),
      init_weights=args.init_weights, extra=vars(args))
  started = time.perf_counter()
  with recorder.RunRecorder(args.model_dir, config, overwrite=args.overwrite) as rec:  # recorder
    rec.snapshot(0, team_models.keras_weights(model))  # recorder
    for epoch in range(1, args.epochs + 1):
      if args.mistake != 'metrics_never_reset':
        mean_loss.reset_state()
        accuracy.reset_state()
      order = team_common.batches(len(x_train), args.batch_size, args.seed, epoch)
      for index in order[:args.steps_per_epoch]:
        loss, batch_accuracy, probe = train_step(x_train[index], y_train[index])
        step = rec.record_step(loss, batch_accuracy, mean_loss=mean_loss.result(),  # recorder
                               accuracy=accuracy.result())
        if step == 1:  # recorder: the first step's probe
          rec.probe(step, batch=(x_train[index], y_train[index]), **probe)
        if args.nudge_seed is not None:  # a per-step control, before the step's snapshot
          team_models.nudge_keras_model(model, step, seed=args.nudge_seed)
        if rec.snapshot_due(step):  # recorder
          rec.snapshot(step, team_models.keras_weights(model))
      logits = model(x_val, training=False)
      val_loss = float(loss_fn(y_val, logits))
      val_accuracy = float(keras.metrics.categorical_accuracy(y_val, logits).numpy().mean())
      rec.record_epoch(val_loss=val_loss, val_accuracy=val_accuracy)  # recorder
      team_common.print_epoch(epoch, mean_loss.result(), accuracy.result(), val_loss,
                              val_accuracy)
    rec.finish(team_models.keras_weights(model))  # recorder
  print(f'{rec.step} steps in {time.perf_counter() - started:.1f}s: {args.model_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
