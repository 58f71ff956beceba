"""make_records: writes TFRecord shards in the seed's schema from an image folder, or the
synthetic dataset."""

from absl import flags

from tf1compat.commands import cli
from tf1compat.commands import tool_flags
from tf1compat.data import record_folder
from tf1compat.runs import config
from tf1compat.runs import interrupts


def main(argv):
  cli.flags_only(argv)
  cfg = config.from_flags(config.RecordsConfig, flags.FLAGS)
  # Where it would write is checked before TensorFlow's start, which takes seconds.
  old_files = record_folder.check_output_dir(cfg.output_dir, cfg.overwrite, cfg.image_dir)
  with interrupts.signals_interrupt('nothing was half-written: --output_dir holds its old records '
                                    'or the new ones whole, the images are untouched; rerun the '
                                    'same command (with --overwrite if it holds the new ones)'):
    from tf1compat.data import records  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    records.run(cfg, old_files)


def define_flags():
  """Defines the make_records flags (also read by flag_reference)."""
  tool_flags.define_records_flags()


def console_main():
  """The make_records command."""
  cli.run_main(main, define_flags, quiet_tensorflow=True, hold_stderr=True)


if __name__ == '__main__':
  console_main()
