"""parity_matrix: check_parity over a matrix of cases, one case per job or all here.

Exit codes: one case (a case index): its check_parity code. Otherwise 0 when every case
finished as expected (matched ports PASS, each pitfall FAILs and is named first), 1 when
not or when cases are unfinished (matrix.md says which), 2 usage error, 130/143
interrupted (rerun to resume).
"""

import os
import sys

from absl import flags

from tf1compat.commands import cli
from tf1compat.commands import tool_flags
from tf1compat.judge import matrix
from tf1compat.runs import config


def main(argv):
  cli.flags_only(argv)
  cfg = config.from_flags(config.MatrixConfig, flags.FLAGS)
  code, result = matrix.run(cfg, os.environ)
  if result is not None:
    sys.stdout.write(matrix.markdown(result))
    sys.stdout.write(f'matrix: {os.path.join(cfg.output_root, matrix.MARKDOWN)}\n')
  return code


def define_flags():
  """Defines the parity_matrix flags (also read by flag_reference)."""
  tool_flags.define_matrix_flags()


def console_main():
  """The parity_matrix command."""
  cli.run_main(main, define_flags)


if __name__ == '__main__':
  console_main()
