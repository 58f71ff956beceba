"""benchmark_worker: one measurement of bin/benchmark in a process of its own.

`python -m tf1compat.commands.benchmark_worker SPEC_JSON` runs the worker the spec names
(bench/workers.py) and writes its result to the spec's 'result' file; bench/benchmark.py
starts it, never a person.
"""

import json
import sys

from absl import flags
from absl import logging

from tf1compat.bench import workers
from tf1compat.commands import cli
from tf1compat.runs import atomic
from tf1compat.runs import errors


def main(spec_path):
  """Runs the worker a spec file names and writes its result beside it; exit code."""
  with open(spec_path) as f:
    spec = json.load(f)
  # A worker takes no command-line flags: said so, absl logs as after parsing them,
  # without prefixing the log with 'Logging before flag parsing goes to stderr'.
  flags.FLAGS.mark_as_parsed()
  # The runners' progress and timing lines, with time stamps, for the worker's log.
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  try:
    result = workers.run(spec)
  except errors.UsageError as e:
    cli.fail(errors.EXIT_USAGE, e)
  atomic.atomic_write_json(spec['result'], result)
  return errors.EXIT_OK


if __name__ == '__main__':
  cli.quiet_tensorflow_logs()
  sys.exit(main(sys.argv[1]))
