"""compare_runs: compares finished run directories and writes the parity report.

Usage: compare_runs RUN_DIR RUN_DIR [RUN_DIR...] [--control=RUN_DIR] [--output_dir=DIR]
"""

import os
import sys

from absl import flags
from absl import logging

from tf1compat import cli
from tf1compat import flags as tf1compat_flags
from tf1compat import folders
from tf1compat import parity
from tf1compat import report as parity_report
from tf1compat import runlog


def main(argv):
  run_dirs = argv[1:]
  if len(run_dirs) < 2:
    raise cli.UsageError('pass at least two run directories: compare_runs RUN_DIR RUN_DIR ...')
  report = parity.compare(run_dirs, tf1compat_flags.tolerances(flags.FLAGS),
                          control=flags.FLAGS.control)
  output_dir = flags.FLAGS.output_dir or os.path.join('runs', 'parity')
  # The runs are loaded: their run.json names the data folders the report must stay out of.
  compared = run_dirs + ([flags.FLAGS.control] if flags.FLAGS.control else [])
  folders.check_placement(output_dir, '--output_dir',
                         [runlog.read_manifest(d).get('data', {}).get('data_dir')
                          for d in compared])
  paths = parity_report.write_report(report, output_dir)
  sys.stdout.write('\n'.join(parity_report.summary_lines(report)) + '\n')
  logging.info('report: %s', ', '.join(paths.values()))
  return cli.EXIT_OK if report['verdict'] == 'PASS' else cli.EXIT_PARITY_FAIL


def define_flags():
  """Defines the compare_runs flags (also read by flag_reference)."""
  tf1compat_flags.define_parity_flags()
  flags.DEFINE_string('control', None,
                      'Run directory of a control run of the first run (its command again, '
                      'from initial weights nudged by one ulp): calibrates the tolerances.')


def console_main():
  """The compare_runs command."""
  cli.run_main(main, define_flags)


if __name__ == '__main__':
  console_main()
