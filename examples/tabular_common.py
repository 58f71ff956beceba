"""What the tabular job's legacy code and its port share: the model's sizes, the job's
data, and their command line.

A two-headed model over a dict of non-image features (8 numeric columns and a
categorical id): a price regressed with the mean squared error and a click predicted
with sigmoid cross-entropy, their losses summed; no accuracy. The data is the legacy
job's own: the port never reads it, it trains on the batches the legacy job recorded.
"""

import argparse

import numpy as np

NUMERIC_COLUMNS = 8
CATEGORIES = 5
HIDDEN_UNITS = 16
EXAMPLES = 1024
# The port's mistake switch: Keras' default Adam epsilon (1e-7) instead of TF1's 1e-8.
MISTAKES = ('none', 'adam_epsilon')


def make_examples(seed):
  """(features, labels) as numpy: {'numeric', 'category'} and {'price', 'clicked'}."""
  rng = np.random.default_rng(seed)
  numeric = rng.normal(size=(EXAMPLES, NUMERIC_COLUMNS)).astype(np.float32)
  category = rng.integers(0, CATEGORIES, EXAMPLES).astype(np.int64)
  weights = rng.normal(size=NUMERIC_COLUMNS)
  offsets = rng.normal(size=CATEGORIES)
  score = numeric @ weights + offsets[category]
  price = (score + 0.3 * rng.normal(size=EXAMPLES)).astype(np.float32)[:, None]
  clicked = (rng.random(EXAMPLES) < 1 / (1 + np.exp(-score))).astype(np.float32)[:, None]
  return {'numeric': numeric, 'category': category}, {'price': price, 'clicked': clicked}


def job_arguments(parser):
  """The legacy job's own flags."""
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--start_weights', default=None,
                      help='an .npz of weights to start from (a control run\'s)')


def port_arguments(parser):
  """The port's own flags."""
  parser.add_argument('--legacy_dir', required=True,
                      help='the legacy job\'s run: its batches and its start')
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--mistake', choices=MISTAKES, default='none',
                      help='make one migration mistake')


def parse_args(argv, description, add_arguments=None):
  """The jobs' common command line; `add_arguments(parser)` adds a job's own flags."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--model_dir', required=True, help='the run directory to write')
  parser.add_argument('--steps_per_epoch', type=int, default=20)
  parser.add_argument('--learning_rate', type=float, default=0.01)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--overwrite', action='store_true',
                      help='replace a complete run in --model_dir')
  if add_arguments is not None:
    add_arguments(parser)
  args = parser.parse_args(argv)
  if args.steps_per_epoch < 1:
    parser.error('--steps_per_epoch: give 1 or more')
  return args
