"""compare_runs: compares finished run directories and writes the parity report.

Usage: compare_runs RUN_DIR RUN_DIR [RUN_DIR...] [--control=RUN_DIR ...] [--output_dir=DIR]
                    [--weight_map=RUN_DIR=MAP ...] [--localize]
"""

import os
import sys

from absl import flags
from absl import logging

from tf1compat.commands import cli
from tf1compat.commands import flag_kinds
from tf1compat.commands import tool_flags
from tf1compat.judge import parity
from tf1compat.judge import replay_runs
from tf1compat.judge import report as parity_report
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import runlog
from tf1compat.runs import weight_map


def main(argv):
  run_dirs = flag_kinds.expand_user(argv[1:])
  if len(run_dirs) < 2:
    raise errors.UsageError('pass at least two run directories: compare_runs RUN_DIR RUN_DIR ...')
  controls = flag_kinds.expand_user(flags.FLAGS.control)
  maps = weight_map.maps_for_runs(_expand_weight_maps(flags.FLAGS.weight_map), run_dirs, controls)
  if maps:
    weight_map.check_aligned(run_dirs + controls, maps)
  tolerances = tool_flags.tolerances(flags.FLAGS)
  report = parity.compare(run_dirs, tolerances, controls=controls, weight_maps=maps)
  report['weight_maps'] = {path: m.source for path, m in maps.items()}
  output_dir = flags.FLAGS.output_dir
  # The runs are loaded: their run.json names the data folders the report must stay out
  # of, as it must stay out of the runs themselves.
  compared = run_dirs + controls
  folders.check_output(output_dir, '--output_dir', folder=True,
                       data_dirs=[runlog.read_manifest(d).get('data', {}).get('data_dir')
                                  for d in compared], read_runs=compared)
  try:
    if flags.FLAGS.localize:
      replay_runs.localize_report(report, tolerances, output_dir, weight_maps=maps)
  finally:
    paths = parity_report.write_report(report, output_dir)
  sys.stdout.write('\n'.join(parity_report.summary_lines(report)) + '\n')
  logging.info('report: %s', ', '.join(paths.values()))
  return errors.EXIT_OK if report['verdict'] == 'PASS' else errors.EXIT_PARITY_FAIL


def _expand_weight_maps(specs):
  """--weight_map's RUN_DIR=MAP values with `~` expanded in the run directory and in a MAP
  that names a file."""
  out = []
  for spec in specs or ():
    run_dir, equals, map_spec = spec.partition('=')
    if equals and map_spec.startswith('~'):
      map_spec = os.path.expanduser(map_spec)
    out.append(f'{os.path.expanduser(run_dir)}{equals}{map_spec}')
  return out


def define_flags():
  """Defines the compare_runs flags (also read by flag_reference)."""
  tool_flags.define_parity_flags(os.path.join('runs', 'parity'))
  flags.DEFINE_multi_string(
      'control', None,
      'Run directory of a control run of the first run, its command again: from initial '
      'weights nudged by one ulp (team_models.control_start), or moved by one ulp after '
      'every step (train_graph --nudge_seed). Calibrates the tolerances; given more than '
      'once, by the widest of the controls at each step (the first is the one the '
      'localization replays).')
  flags.DEFINE_bool('localize', False,
                    'Say where inside one training step each pair parts '
                    '(docs/localization.md): replay the first step of runs our runners made (into '
                    'OUTPUT_DIR/localize), or read the probe a recorded loop wrote '
                    '(RunRecorder.probe), and judge them stage by stage against the '
                    'control\'s.')
  flags.DEFINE_multi_string(
      'weight_map', None,
      'RUN_DIR=MAP: rename the weight keys of RUN_DIR (one of the runs compared, or the '
      'control, which otherwise takes the first run\'s map) by MAP, a file of ordered rules '
      '"PATTERN -> REPLACEMENT" (Python regular expressions matching whole keys; the first '
      'that matches rewrites a key), or such rules inline, separated by ";". A key no rule '
      'matches, or one left without a counterpart in the first run, is an error (exit 2)')


def console_main():
  """The compare_runs command."""
  cli.run_main(main, define_flags)


if __name__ == '__main__':
  console_main()
