"""benchmark: measures the input pipelines and the three training loops side by side.

Also the roofline: the device's matmul peak and the FLOPs of a training step, so that
each loop's throughput is a fraction of the peak. Prints a table to stdout and, with
--json=PATH, writes the figures. Every measurement runs in a subprocess of its own
(tf1compat/bench/workers.py, started by tf1compat/bench/benchmark.py). The default run
(224-pixel images, batch 32, 10240 records) takes about 9 minutes on 2 quiet CPU cores;
--image_size, --steps, --repetitions, --shuffle_buffer, --records and --measurements
shrink it.
"""

import sys

from absl import flags
from absl import logging

from tf1compat.bench import benchmark
from tf1compat.bench import benchmark_figures
from tf1compat.commands import cli
from tf1compat.commands import flags as tf1compat_flags
from tf1compat.commands import tool_flags
from tf1compat.runs import config


def main(argv):
  cli.flags_only(argv)
  settings = config.from_flags(config.BenchmarkConfig, flags.FLAGS)
  benchmark.check_outputs(settings, flags.FLAGS.output_dir, flags.FLAGS.json)
  figures = benchmark.run(settings, flags.FLAGS.output_dir, flags.FLAGS.measurements)
  sys.stdout.write(benchmark_figures.format_table(figures) + '\n')
  if flags.FLAGS.json:
    benchmark_figures.write_json(flags.FLAGS.json, figures)
    logging.info('figures written to %s', flags.FLAGS.json)


def define_flags():
  """Defines the benchmark flags (also read by flag_reference)."""
  tf1compat_flags.define_data_flags(config.BenchmarkConfig)
  tool_flags.define_benchmark_flags()


def console_main():
  """The benchmark command."""
  cli.run_main(main, define_flags, quiet_tensorflow=True)


if __name__ == '__main__':
  console_main()
