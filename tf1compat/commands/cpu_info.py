"""cpu_info: prints the CPU, its vector extensions, oneDNN's default here and the CPU time
of a TensorFlow start (what .ci/run shows before the tests, so that a red or slow run says
which kind of machine it was)."""

import sys

from tf1compat.runtime import cpu_info


def main():
  """Writes cpu_info.report_lines() to stdout."""
  sys.stdout.write('\n'.join(cpu_info.report_lines()) + '\n')


if __name__ == '__main__':
  main()
