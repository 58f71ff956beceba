"""train_graph: trains the seed's ConvNet with the legacy TF1 graph-mode loop (Session,
one-shot iterator)."""

from absl import flags
from absl import logging

from tf1compat.commands import cli
from tf1compat.commands import flags as tf1compat_flags
from tf1compat.commands import replay_flags
from tf1compat.data import preflight
from tf1compat.runs import config
from tf1compat.runtime import process
from tf1compat.train import replay_mode


def main(argv):
  cli.flags_only(argv)
  replay_cfg = replay_flags.replay_config(flags.FLAGS, config.GraphConfig)
  if replay_cfg:
    _replay(replay_cfg)
    return
  cfg = config.from_flags(config.GraphConfig, flags.FLAGS, model_dir=output_folder(flags.FLAGS))
  # A mistake in its paths, data folder or initial weights ends the run before
  # TensorFlow's start, which takes seconds.
  preflight.check(cfg)
  # Process-wide and read when TensorFlow is imported: tf.keras must be Keras 2
  # (tf-keras), which still has Input(tensor=...), learning_phase() and model.updates.
  process.set_cpu_kernels(cfg.onednn, cfg.intra_op_threads)
  process.use_legacy_keras()
  from tf1compat.train.graph import backend  # pylint: disable=g-import-not-at-top
  stats = backend.run(cfg)
  logging.info('done: %s', ' '.join(f'{k}={v}' for k, v in sorted(stats.items())))


def _replay(replay_cfg):
  """The replay mode: the run's own settings, then its step (train/replay_mode.py)."""
  cfg = replay_mode.run_config(config.GraphConfig, replay_cfg, ('graph',))
  replay_mode.apply_settings(replay_cfg.model_dir)
  process.set_cpu_kernels(cfg.onednn, cfg.intra_op_threads)
  process.use_legacy_keras()
  from tf1compat.train.graph import backend  # pylint: disable=g-import-not-at-top
  backend.replay_run(cfg, replay_cfg)


def output_folder(flag_values):
  """--model_dir, or the run directory of this exploration (output_folders.py)."""
  return tf1compat_flags.runner_model_dir(flag_values)


def define_flags():
  """Defines the train_graph flags (also read by flag_reference)."""
  tf1compat_flags.define_runner_flags(config.GraphConfig)


def console_main():
  """The train_graph command."""
  cli.run_main(main, define_flags, quiet_tensorflow=True, hold_stderr=True)


if __name__ == '__main__':
  console_main()
