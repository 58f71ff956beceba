"""train_eager: trains the seed's ConvNet the TF2 way, a custom tf.function loop or Keras
model.fit."""

import os

from absl import flags
from absl import logging

from tf1compat import cli
from tf1compat import config
from tf1compat import flags as tf1compat_flags
from tf1compat import process


def main(argv):
  del argv
  # The TF2 port always runs on Keras 3, whatever a parent process set.
  process.set_onednn(flags.FLAGS.onednn)
  ignored = process.use_keras3()
  if ignored:
    logging.warning('TF_USE_LEGACY_KERAS=%s ignored: train_eager always uses Keras 3', ignored)
  from tf1compat import eager_loop  # pylint: disable=g-import-not-at-top
  overrides = {}
  if flags.FLAGS.loop == 'fit' and not flags.FLAGS['model_dir'].present:
    # runs/<runner>, as for every runner: fit must not share the custom loop's folder.
    overrides['model_dir'] = os.path.join('runs', 'fit')
  stats = eager_loop.run(config.from_flags(config.EagerConfig, flags.FLAGS, **overrides))
  logging.info('done: %s', ' '.join(f'{key}={value}' for key, value in stats.items()))


def define_flags():
  """Defines the train_eager flags (also read by flag_reference)."""
  tf1compat_flags.define_runner_flags(config.EagerConfig)


def console_main():
  """The train_eager command."""
  cli.run_main(main, define_flags, quiet_tensorflow=True, hold_stderr=True)


if __name__ == '__main__':
  console_main()
