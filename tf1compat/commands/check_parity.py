"""check_parity, the main job: trains the legacy graph loop, its control and the TF2 port
from one start, then compares them.

Exit codes: 0 PASS, 1 FAIL (the report names the pitfalls that fit), 2 usage or data
error, 3 NaN/Inf loss in a runner, 4 a runner's internal or device fault, 130/143
interrupted (rerun to resume).
"""

import os
import sys

from absl import flags

from tf1compat.commands import cli
from tf1compat.commands import flags as tf1compat_flags
from tf1compat.commands import output_folders
from tf1compat.commands import tool_flags
from tf1compat.judge import harness
from tf1compat.judge import report
from tf1compat.judge import settings_matrix
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import runlog

# What changes neither the runs nor their numbers: the same folder serves.
_NOT_IN_FOLDER_NAME = frozenset({*runlog.OPERATIONAL_FLAGS, 'localize', 'reuse_from',
                                 *tool_flags.TOLERANCE_NAMES})


def main(argv):
  cli.flags_only(argv)
  cfg = config.from_flags(config.CheckParityConfig, flags.FLAGS,
                          output_dir=output_folder(flags.FLAGS))
  if cfg.settings_matrix:
    results = settings_matrix.run(cfg, tool_flags.tolerances(flags.FLAGS))
    sys.stdout.write('\n'.join(settings_matrix.table_lines(results)) + '\n')
    sys.stdout.write(settings_matrix.fastest_line(results) + '\n')
    sys.stdout.write(f'table: {os.path.join(cfg.output_dir, settings_matrix.MARKDOWN)}\n')
    # A setting that fails is what the table is for; the port itself must pass.
    passed = results['defaults']['verdict'] == 'PASS'
    return errors.EXIT_OK if passed else errors.EXIT_PARITY_FAIL
  result = harness.run(cfg, tool_flags.tolerances(flags.FLAGS))
  sys.stdout.write('\n'.join(report.summary_lines(result)) + '\n')
  sys.stdout.write(f'report: {os.path.join(cfg.output_dir, "parity.md")}\n')
  return errors.EXIT_OK if result['verdict'] == 'PASS' else errors.EXIT_PARITY_FAIL


def output_folder(flag_values):
  """--output_dir, or the folder of this exploration (output_folders.py)."""
  return output_folders.resolve('output_dir', _NOT_IN_FOLDER_NAME, flag_values=flag_values)


def define_flags():
  """Defines the check_parity flags (also read by flag_reference)."""
  tf1compat_flags.define_data_flags(config.CheckParityConfig)
  tf1compat_flags.define_training_flags(config.CheckParityConfig)
  tool_flags.define_parity_flags(config.default(config.CheckParityConfig, 'output_dir'),
                                 explorations=True)
  tool_flags.define_check_parity_flags()


def console_main():
  """The check_parity command."""
  cli.run_main(main, define_flags)


if __name__ == '__main__':
  console_main()
