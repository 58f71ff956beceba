"""train_eager: trains the seed's ConvNet the TF2 way, a custom tf.function loop or Keras
model.fit; with --backend=jax the same port on Keras 3's JAX backend, a jax.jit loop or
model.fit."""

import os

from absl import flags
from absl import logging

from tf1compat.commands import cli
from tf1compat.commands import flags as tf1compat_flags
from tf1compat.commands import replay_flags
from tf1compat.data import preflight
from tf1compat.runs import config
from tf1compat.runtime import process
from tf1compat.train import ports
from tf1compat.train import replay_mode


def main(argv):
  cli.flags_only(argv)
  replay_cfg = replay_flags.replay_config(flags.FLAGS, config.EagerConfig)
  if replay_cfg:
    _replay(replay_cfg)
    return
  cfg = config.from_flags(config.EagerConfig, flags.FLAGS, model_dir=output_folder(flags.FLAGS))
  # A mistake in its paths, data folder or initial weights ends the run before
  # TensorFlow's start, which takes seconds.
  preflight.check(cfg)
  # The TF2 port always runs on Keras 3, whatever a parent process set.
  process.set_cpu_kernels(cfg.onednn, cfg.intra_op_threads)
  ignored = process.use_keras3(cfg.backend)
  if ignored:
    logging.warning('TF_USE_LEGACY_KERAS=%s ignored: train_eager always uses Keras 3', ignored)
  stats = ports.port_backend(cfg.backend).run(cfg)
  logging.info('done: %s', ' '.join(f'{key}={value}' for key, value in stats.items()))


def _replay(replay_cfg):
  """The replay mode: the run's own settings, then its step (train/replay_mode.py)."""
  cfg = replay_mode.run_config(config.EagerConfig, replay_cfg, ('eager', 'fit'))
  replay_mode.apply_settings(replay_cfg.model_dir)
  process.set_cpu_kernels(cfg.onednn, cfg.intra_op_threads)
  process.use_keras3(cfg.backend)
  ports.port_backend(cfg.backend).replay_run(cfg, replay_cfg)


def output_folder(flag_values):
  """--model_dir, or the run directory of this exploration (output_folders.py): runs/<runner>,
  as for every runner, so that fit never shares the custom loop's folder."""
  default = os.path.join('runs', 'fit') if flag_values.loop == 'fit' else None
  return tf1compat_flags.runner_model_dir(flag_values, default)


def define_flags():
  """Defines the train_eager flags (also read by flag_reference)."""
  tf1compat_flags.define_runner_flags(config.EagerConfig)


def console_main():
  """The train_eager command."""
  cli.run_main(main, define_flags, quiet_tensorflow=True, hold_stderr=True)


if __name__ == '__main__':
  console_main()
