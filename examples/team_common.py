"""What the team's two example loops share: their numpy input pipeline and command line.

The TF1 loop and its port import this one module, as a team's two codebases share
their data code, so both train on the same examples in the same order: 4 classes of
noisy 8x8 patterns, and each epoch's full batches drawn from a permutation seeded by
(seed, epoch).
"""

import argparse

import numpy as np

IMAGE_SIZE = 8
NUM_CLASSES = 4
TRAIN_EXAMPLES = 512
VAL_EXAMPLES = 128
# Noise around each class's pattern: enough that a few epochs of Adam take the
# validation accuracy from chance to about 90%, not at once.
NOISE = 2.0


def make_data(seed=0):
  """(x_train, y_train, x_val, y_val): float32 inputs of IMAGE_SIZE**2 features and
  float32 one-hot labels."""
  rng = np.random.default_rng(seed)
  patterns = rng.normal(size=(NUM_CLASSES, IMAGE_SIZE * IMAGE_SIZE))
  labels = rng.integers(0, NUM_CLASSES, TRAIN_EXAMPLES + VAL_EXAMPLES)
  x = (patterns[labels] + NOISE * rng.normal(size=(len(labels), patterns.shape[1])))
  x, y = x.astype(np.float32), np.eye(NUM_CLASSES, dtype=np.float32)[labels]
  return x[:TRAIN_EXAMPLES], y[:TRAIN_EXAMPLES], x[TRAIN_EXAMPLES:], y[TRAIN_EXAMPLES:]


def batches(num_examples, batch_size, seed, epoch):
  """One epoch's batches as index arrays: full batches of a permutation seeded by
  (seed, epoch)."""
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return [order[start:start + batch_size]
          for start in range(0, num_examples - batch_size + 1, batch_size)]


def parse_args(argv, description, add_arguments=None):
  """The loops' common command line; `add_arguments(parser)` adds a loop's own flags."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--model_dir', required=True, help='the run directory to write')
  parser.add_argument('--init_weights', required=True, help='initial weights .npz')
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--steps_per_epoch', type=int, default=None,
                      help='default: one pass over the training data')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--learning_rate', type=float, default=0.001)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--overwrite', action='store_true',
                      help='replace a complete run in --model_dir')
  parser.add_argument('--nudge_seed', type=int, default=None,
                      help='a per-step control: every weight one ulp up or down after every '
                           'step (team_models.nudge_session), from this seed')
  if add_arguments is not None:
    add_arguments(parser)
  args = parser.parse_args(argv)
  one_pass = TRAIN_EXAMPLES // args.batch_size
  if not 0 < (args.steps_per_epoch or one_pass) <= one_pass:
    parser.error(f'--steps_per_epoch: give 1 to {one_pass} (one pass over the data)')
  args.steps_per_epoch = args.steps_per_epoch or one_pass
  return args


def print_epoch(epoch, train_loss, train_accuracy, val_loss, val_accuracy):
  """The loops' progress line at an epoch's end."""
  print(f'epoch {epoch}: loss {float(train_loss):.4f} accuracy {float(train_accuracy):.3f} '
        f'val_loss {float(val_loss):.4f} val_accuracy {float(val_accuracy):.3f}')
