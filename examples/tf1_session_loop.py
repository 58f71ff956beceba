"""A team's legacy TF1 training loop, recorded for compare_runs by tf1compat.runs.recorder.

The loop is written the TF1 way, as such code is found: placeholders fed with numpy
batches from the team's own pipeline (team_common.py), tf.compat.v1.layers, softmax
cross-entropy on logits, AdamOptimizer.minimize, tf.compat.v1.metrics running means
reset at every epoch, one Session. The lines marked `# recorder` are all it takes to
write a run directory that compare_runs judges like our runners' (run.json, steps.csv,
epochs.csv, weight snapshots), and a probe of the first step (its layer outputs and
gradients) for compare_runs --localize.

    python examples/tf1_session_loop.py --model_dir=runs/tf1 --init_weights=runs/init.npz

--init_weights: the .npz both this loop and its port (tf2_port.py) start from. When it
does not exist yet, the loop writes its own freshly initialized weights there first,
under its TF1 variable names ('hidden/kernel'). A control run, for a calibrated
verdict, is this loop again from those weights moved by one ulp each
(tf1compat.runs.team_models.control_start writes them beside the file); a second, per-step
control is this loop again from the same weights with --nudge_seed, every weight moved by
one ulp after every step (team_models.nudge_session).
"""

import os
import sys
import time

# tf.compat.v1.layers needs tf-keras, which TensorFlow 2.16+ uses only when told
# before it is imported.
os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

import team_common  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.runs import recorder  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat.runs import team_models  # pylint: disable=g-import-not-at-top,wrong-import-position

HIDDEN_UNITS = 32


def build_graph(learning_rate):
  """The model, its loss and metrics, and the train op, as placeholders and tensors."""
  size = team_common.IMAGE_SIZE * team_common.IMAGE_SIZE
  x = tf.compat.v1.placeholder(tf.float32, [None, size], name='x')
  y = tf.compat.v1.placeholder(tf.float32, [None, team_common.NUM_CLASSES], name='y')
  hidden = tf.compat.v1.layers.dense(x, HIDDEN_UNITS, activation=tf.nn.relu, name='hidden')
  logits = tf.compat.v1.layers.dense(hidden, team_common.NUM_CLASSES, name='logits')
  loss = tf.compat.v1.losses.softmax_cross_entropy(y, logits)
  labels, predictions = tf.argmax(y, 1), tf.argmax(logits, 1)
  batch_accuracy = tf.reduce_mean(tf.cast(tf.equal(labels, predictions), tf.float32))
  optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate)
  # minimize() in its two halves, so that the first step's gradients can be probed.
  gradients = optimizer.compute_gradients(loss)
  train_op = optimizer.apply_gradients(gradients)
  # The running means the loop shows; their local variables are reset every epoch.
  _, mean_loss = tf.compat.v1.metrics.mean(loss)
  _, accuracy = tf.compat.v1.metrics.accuracy(labels, predictions)
  reset_metrics = tf.compat.v1.variables_initializer(tf.compat.v1.local_variables())
  # What a probe of a step reads: its layer outputs, gradients and loss.
  probe = {'outputs': {'hidden': hidden, 'logits': logits}, 'loss': loss,
           'gradients': {team_models.variable_name(v): g for g, v in gradients}}
  return dict(x=x, y=y, loss=loss, batch_accuracy=batch_accuracy, optimizer=optimizer,
              train_op=train_op, mean_loss=mean_loss, accuracy=accuracy,
              reset_metrics=reset_metrics, probe=probe)


def main(argv):
  """Trains and records one run; returns the exit code."""
  args = team_common.parse_args(argv, __doc__.splitlines()[0])
  tf.compat.v1.disable_v2_behavior()
  # TensorFlow 1.15 has no op-determinism switch; its CPU kernels need none.
  if hasattr(tf.config.experimental, 'enable_op_determinism'):
    tf.config.experimental.enable_op_determinism()
  tf.compat.v1.set_random_seed(args.seed)
  x_train, y_train, x_val, y_val = team_common.make_data(args.seed)
  g = build_graph(args.learning_rate)
  started = time.perf_counter()
  with tf.compat.v1.Session() as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    if os.path.exists(args.init_weights):
      team_models.assign_session_weights(sess, team_models.load_weights(args.init_weights))
    else:
      team_models.save_weights(args.init_weights, team_models.session_weights(sess))
    config = recorder.RunConfig(  # recorder
        framework='tf1', **team_models.optimizer_fields(g['optimizer']),
        loss='softmax_cross_entropy', batch_size=args.batch_size,
        image_size=team_common.IMAGE_SIZE, num_classes=team_common.NUM_CLASSES, seed=args.seed,
        deterministic=True, steps_per_epoch=args.steps_per_epoch,
        data_fingerprint=recorder.data_fingerprint(x_train, y_train, x_val, y_val),
        init_weights=args.init_weights, extra=vars(args))
    with recorder.RunRecorder(args.model_dir, config, overwrite=args.overwrite) as rec:  # recorder
      rec.snapshot(0, team_models.session_weights(sess))  # recorder
      for epoch in range(1, args.epochs + 1):
        sess.run(g['reset_metrics'])
        order = team_common.batches(len(x_train), args.batch_size, args.seed, epoch)
        for index in order[:args.steps_per_epoch]:
          probed = g['probe'] if rec.step == 0 else {}  # recorder: the first step's
          _, loss, batch_accuracy, mean_loss, accuracy, probe = sess.run(
              [g['train_op'], g['loss'], g['batch_accuracy'], g['mean_loss'], g['accuracy'],
               probed], {g['x']: x_train[index], g['y']: y_train[index]})
          step = rec.record_step(loss, batch_accuracy, mean_loss=mean_loss,  # recorder
                                 accuracy=accuracy)
          if args.nudge_seed is not None:  # a per-step control, before the step's snapshot
            team_models.nudge_session(sess, step, seed=args.nudge_seed)
          if probe:  # recorder
            rec.probe(step, batch=(x_train[index], y_train[index]), **probe)
          if rec.snapshot_due(step):  # recorder
            rec.snapshot(step, team_models.session_weights(sess))
        val_loss, val_accuracy = sess.run([g['loss'], g['batch_accuracy']],
                                          {g['x']: x_val, g['y']: y_val})
        rec.record_epoch(val_loss=val_loss, val_accuracy=val_accuracy)  # recorder
        team_common.print_epoch(epoch, mean_loss, accuracy, val_loss, val_accuracy)
      rec.finish(team_models.session_weights(sess))  # recorder
  print(f'{rec.step} steps in {time.perf_counter() - started:.1f}s: {args.model_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
