"""A team's TF1 production job as a tf.estimator job, recorded for compare_runs by a
SessionRunHook in its EstimatorSpec's training_hooks.

The model and data of tf1_monitored_job.py, imported, not copied (its get_variable layers
'hidden', 'price', 'clicked' and summed loss; tabular_common.py's data and command line),
written the Estimator way: a `model_fn(features, labels, mode, params)` that returns an
EstimatorSpec with AdamOptimizer's train op, an `input_fn` that returns a tf.data.Dataset
over the job's numpy arrays (no TFRecords: the Estimator makes and initializes the
iterator), a RunConfig with the job's seed, and `estimator.train(input_fn,
max_steps=--steps)`. The job's flags are the Estimator's params. With the same seed it
reads the monitored job's batches, in the same order. The Estimator left TensorFlow in
2.16: this job runs on TensorFlow 1.15 (a Python 3.7 that bin/legacy_env makes);
elsewhere it says so in one line.

The three statements marked `# recorder` (on their first line) are all it takes: the
import, the hook (made inside model_fn, the one place where the loss and the batch's
features and labels tensors exist), and the hook given to the EstimatorSpec as a
training hook. The hook records as
under MonitoredTrainingSession (tf1_monitored_job.py): every step's loss and learning
rate, the optimizer, the weights, the first step's probe and every step's batch, so that
the Keras port trains on exactly these batches (keras_fit_port.py --legacy_dir=).

    python examples/tf1_estimator_job.py --model_dir=runs/tf1

--model_dir is the run directory the hook writes, as for the other examples. The
Estimator's own model_dir (checkpoints, events) is a fresh folder beside it in the same
parent, 'tf1.estimator-XXXXXX': not inside the run directory, which the recorder makes
itself at the first step and must find new; and fresh, because an Estimator resumes from
a checkpoint in its model_dir and, at max_steps already, trains nothing at all.

A control run, for a calibrated verdict, is this job again from the weights it started
from moved one ulp each: `--start_weights=` a file team_models.control_start writes from
the run's weights/step-000000.npz. The example passes it to the hook's `start_weights=`,
which loads it after the session's own initialization: no line more, and the .npz as it
is. The Estimator's own ways need more: `warm_start_from` reads a checkpoint or a
SavedModel, not an .npz (the weights would first be written into a checkpoint), and a
`tf.compat.v1.train.Scaffold(init_fn=...)` in the EstimatorSpec is a function of the
job's own that loads the file, lines added to model_fn for the control alone.
"""

import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow 2 sets TF2_BEHAVIOR=1 in its process's environment; inherited from one (a
# test, a TF2 driver), it would make TensorFlow 1.15 import its TF2 API.
os.environ.pop('TF2_BEHAVIOR', None)

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

import tabular_common  # pylint: disable=g-import-not-at-top,wrong-import-position
import tf1_monitored_job  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf1compat import session_hook  # recorder  # pylint: disable=g-import-not-at-top


def _estimator_api():
  """tf.estimator, or None on a TensorFlow without it (2.16 and later)."""
  try:
    return tf.estimator
  except (AttributeError, ImportError):
    # TensorFlow 2.16+ has no such attribute; a 2.x whose tensorflow_estimator is missing
    # fails importing it lazily.
    return None


def input_fn(params):
  """The job's pipeline over its numpy data: shuffled every pass with a fixed seed,
  repeated, batched; the Dataset itself, whose iterator the Estimator makes."""
  dataset = tf.data.Dataset.from_tensor_slices(tabular_common.make_examples(params['seed']))
  dataset = dataset.shuffle(tabular_common.EXAMPLES, seed=params['seed'])
  return dataset.repeat().batch(params['batch_size'], drop_remainder=True)


def model_fn(features, labels, mode, params):
  """The job's two-headed model and summed loss, trained by AdamOptimizer; the spec of a
  training job (the job only trains), with the recording hook among its training hooks."""
  loss, outputs = tf1_monitored_job.model_fn(features, labels)
  train_op = tf.compat.v1.train.AdamOptimizer(params['learning_rate']).minimize(
      loss, global_step=tf.compat.v1.train.get_or_create_global_step())
  hook = session_hook.recording_hook(  # recorder
      params['model_dir'], loss, features=features, labels=labels, outputs=outputs,
      steps_per_epoch=params['steps_per_epoch'], start_weights=params['start_weights'],
      overwrite=params['overwrite'])
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                    training_hooks=[hook])  # recorder


def estimator_dir(run_dir):
  """A new, empty folder for the Estimator's checkpoints beside the run directory."""
  parent = os.path.dirname(os.path.abspath(run_dir))
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(prefix=f'{os.path.basename(os.path.abspath(run_dir))}.estimator-',
                          dir=parent)


def main(argv):
  """Trains and records one run; returns the exit code."""
  # The monitored job's command line: the same flags, --model_dir the hook's run directory.
  args = tabular_common.parse_args(argv, __doc__.splitlines()[0], tabular_common.job_arguments)
  if _estimator_api() is None:
    print(f'tf1_estimator_job: TensorFlow {tf.__version__} has no tf.estimator (it left '
          'TensorFlow in 2.16); run this job on TensorFlow 1.15 (bin/legacy_env DIR makes '
          'one: DIR/bin/python examples/tf1_estimator_job.py ...)', file=sys.stderr)
    return 2
  tf.compat.v1.disable_v2_behavior()
  config = tf.estimator.RunConfig(tf_random_seed=args.seed,
                                  model_dir=estimator_dir(args.model_dir))
  estimator = tf.estimator.Estimator(model_fn, config=config, params=vars(args))
  estimator.train(input_fn, max_steps=args.steps)
  steps = estimator.get_variable_value(tf.compat.v1.GraphKeys.GLOBAL_STEP)
  print(f'{steps} steps: {args.model_dir} (the Estimator\'s checkpoints: {config.model_dir})')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
