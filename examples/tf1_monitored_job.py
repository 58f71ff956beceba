"""A team's TF1 production job, recorded for compare_runs by a SessionRunHook.

Written as such jobs are: a tf.data input pipeline over the job's own data (a dict of
non-image features, tabular_common.py), variables made with get_variable, a model with
two heads whose losses are summed, AdamOptimizer, and MonitoredTrainingSession with its
hooks. No accuracy: the model has none.

The three statements marked `# recorder` (on their first line) are all it takes: the
import, the hook, and the hook added to the job's hooks. The hook records every step's
loss and learning rate, the optimizer as the train op applies it, the weights, the first
step's probe, and every step's input batch (hashed; the first 200 stored), so that the
port trains on exactly these batches (keras_fit_port.py).

    python examples/tf1_monitored_job.py --model_dir=runs/tf1

A control run, for a calibrated verdict, is this job again from the weights it started
from moved one ulp each: `--start_weights=` a file team_models.control_start writes from
the run's weights/step-000000.npz (the hook loads it after the session's own
initialization; an Estimator job does the same through the hook in its training_hooks).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

import tabular_common  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat import session_hook  # recorder  # pylint: disable=g-import-not-at-top


def input_fn(batch_size, seed):
  """The job's pipeline: shuffled every pass with a fixed seed, repeated, batched."""
  dataset = tf.data.Dataset.from_tensor_slices(tabular_common.make_examples(seed))
  dataset = dataset.shuffle(tabular_common.EXAMPLES, seed=seed).repeat()
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()


def dense(inputs, units, name, activation=None):
  """A dense layer the TF1 way: its variables under its scope's name."""
  with tf.compat.v1.variable_scope(name):
    kernel = tf.compat.v1.get_variable('kernel', [inputs.shape[-1], units])
    bias = tf.compat.v1.get_variable('bias', [units], initializer=tf.zeros_initializer())
    outputs = tf.matmul(inputs, kernel) + bias
  return activation(outputs) if activation else outputs


def model_fn(features, labels):
  """The summed loss of the two heads, and the layers' outputs."""
  inputs = tf.concat([features['numeric'],
                      tf.one_hot(features['category'], tabular_common.CATEGORIES)], axis=1)
  hidden = dense(inputs, tabular_common.HIDDEN_UNITS, 'hidden', tf.nn.relu)
  price = dense(hidden, 1, 'price')
  clicked = dense(hidden, 1, 'clicked')
  loss = (tf.compat.v1.losses.mean_squared_error(labels['price'], price) +
          tf.compat.v1.losses.sigmoid_cross_entropy(labels['clicked'], clicked))
  return loss, {'hidden': hidden, 'price': price, 'clicked': clicked}


def main(argv):
  """Trains and records one run; returns the exit code."""
  args = tabular_common.parse_args(argv, __doc__.splitlines()[0],
                                   tabular_common.job_arguments)
  tf.compat.v1.disable_v2_behavior()
  tf.compat.v1.set_random_seed(args.seed)
  features, labels = input_fn(args.batch_size, args.seed)
  loss, outputs = model_fn(features, labels)
  global_step = tf.compat.v1.train.get_or_create_global_step()
  train_op = tf.compat.v1.train.AdamOptimizer(args.learning_rate).minimize(
      loss, global_step=global_step)
  hook = session_hook.recording_hook(  # recorder
      args.model_dir, loss, features=features, labels=labels, outputs=outputs,
      steps_per_epoch=args.steps_per_epoch, start_weights=args.start_weights,
      overwrite=args.overwrite)
  hooks = [tf.compat.v1.train.StopAtStepHook(last_step=args.steps),
           hook]  # recorder
  with tf.compat.v1.train.MonitoredTrainingSession(hooks=hooks) as sess:
    while not sess.should_stop():
      sess.run(train_op)
  print(f'{hook.recorder.step} steps: {args.model_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
