"""parity_matrix: check_parity over the false-alarm matrix, matched and with each pitfall.

Exit codes: 0 every matched case PASSes and every pitfall FAILs and is named first,
1 otherwise (matrix.md says where), 2 usage error.
"""

import os
import sys

from absl import flags

from tf1compat.commands import cli
from tf1compat.commands import tool_flags
from tf1compat.judge import matrix
from tf1compat.runs import config
from tf1compat.runs import errors


def main(argv):
  cli.flags_only(argv)
  cfg = config.from_flags(config.MatrixConfig, flags.FLAGS)
  result = matrix.run(cfg)
  sys.stdout.write(matrix.markdown(result))
  sys.stdout.write(f'matrix: {os.path.join(cfg.output_dir, "matrix.md")}\n')
  return errors.EXIT_OK if result['passed'] else errors.EXIT_PARITY_FAIL


def define_flags():
  """Defines the parity_matrix flags (also read by flag_reference)."""
  tool_flags.define_matrix_flags()


def console_main():
  """The parity_matrix command."""
  cli.run_main(main, define_flags)


if __name__ == '__main__':
  console_main()
