"""bin/check_parity: run the legacy and ported runners from one start, then compare them.

Each runner is a subprocess (graph mode and Keras 3 never share a process) whose
progress goes straight to this job's terminal or log. All runners get the same common
flags, one initial-weights file and one Adam epsilon; `--pitfall` injects one
catalogued mistake into the runner where teams make it.
"""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys

from absl import logging

from tf1compat import cli
from tf1compat import flags as tf1compat_flags
from tf1compat import parity
from tf1compat import runlog

STATE_JSON = 'check_parity.json'
BIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bin')
# The legacy loop's epsilon: the port is what must match it.
LEGACY_ADAM_EPSILON = 1e-8
# The port's switches that remove the known framework differences (DESIGN.md).
EXACT_PORT_ARGS = ('--tf1_adam', '--tf1_bn_variance')
# Flags check_parity sets itself for every runner instead of forwarding them.
_NOT_FORWARDED = frozenset({'model_dir', 'init_weights', 'save_init_weights', 'overwrite',
                            'adam_epsilon'})

# What the initial weights depend on (the data_dir only through num_classes).
_INIT_FLAGS = ('num_classes', 'image_size', 'batch_norm', 'dropout', 'seed', 'data_dir')


@dataclasses.dataclass(frozen=True)
class Pitfall:
  """One catalogued mistake: which runner makes it, how, and what it needs to show."""
  runners: tuple
  args: tuple
  needs: str = ''  # 'batch_norm', or 'batch_norm|dropout'


PITFALLS = {
    'adam_epsilon': Pitfall(('eager', 'fit'), ()),  # The port keeps Keras' own epsilon.
    'metrics_never_reset': Pitfall(('graph',), ('--reset_metrics=never',)),
    'skip_update_ops': Pitfall(('graph',), ('--noupdate_ops',), 'batch_norm'),
    'model_call_wiring': Pitfall(('graph',), ('--wiring=model_call',), 'batch_norm'),
    'no_learning_phase': Pitfall(('graph',), ('--nofeed_learning_phase',),
                                 'batch_norm|dropout'),
    'double_softmax': Pitfall(('eager', 'fit'), ('--final_activation=softmax',)),
}
assert set(PITFALLS) == set(parity.PITFALLS)


@dataclasses.dataclass(frozen=True)
class RunnerJob:
  name: str       # run directory name under --output_dir
  script: str     # bin/ entry point
  args: tuple     # runner-specific arguments


def check_pitfall_requirements(flags_obj):
  """Raises cli.UsageError when --pitfall needs --batch_norm/--dropout and has neither."""
  if not flags_obj.pitfall:
    return
  needs = PITFALLS[flags_obj.pitfall].needs
  if not needs:
    return
  has = {'batch_norm': bool(flags_obj.batch_norm), 'dropout': flags_obj.dropout > 0}
  if not any(has[n] for n in needs.split('|')):
    wanted = ' or '.join(f'--{n}' + ('=0.5' if n == 'dropout' else '') for n in needs.split('|'))
    raise cli.UsageError(f'--pitfall={flags_obj.pitfall} shows only in a model with layer '
                         f'updates or a learning phase: add {wanted}')


def forwarded_args(flags_obj):
  """The common flags, as set for this job, in the form every runner accepts."""
  return [flags_obj[name].serialize() for name in tf1compat_flags.COMMON_FLAGS
          if name not in _NOT_FORWARDED and flags_obj[name].value is not None]


def port_args(flags_obj):
  """How check_parity's --strategy, --cpu_devices and --mixed_precision reach the port."""
  args = []
  if flags_obj.strategy != 'default':
    args.append(f'--strategy={flags_obj.strategy}')
  if flags_obj.cpu_devices > 1:
    args.append(f'--cpu_devices={flags_obj.cpu_devices}')
  if flags_obj.mixed_precision:
    args.append('--mixed_precision')
  return args


def jobs(flags_obj):
  """The runner jobs of this check, the pitfall (if any) injected into its runners."""
  epsilon = flags_obj.adam_epsilon or LEGACY_ADAM_EPSILON
  pitfall = PITFALLS.get(flags_obj.pitfall)
  out = []
  runners = [('graph', 'train_graph', ()), ('eager', 'train_eager', ('--loop=custom',))]
  if flags_obj.with_fit:
    runners.append(('fit', 'train_eager', ('--loop=fit',)))
  for name, script, own in runners:
    args = list(own)
    if name != 'graph':
      args.extend(port_args(flags_obj))
    if flags_obj.exact and name != 'graph':
      args.extend(EXACT_PORT_ARGS)
    injected = pitfall is not None and name in pitfall.runners
    if not (injected and flags_obj.pitfall == 'adam_epsilon'):
      args.append(f'--adam_epsilon={epsilon!r}')
    if injected:
      args.extend(pitfall.args)
    out.append(RunnerJob(name, script, tuple(args)))
  return out


def _complete(model_dir):
  manifest = runlog.read_manifest(model_dir)
  return manifest is not None and manifest.get('status') == runlog.STATUS_COMPLETE


def _make_init_weights(flags_obj, output_dir, common):
  """One initial-weights file per model shape and seed, written by the legacy runner."""
  shape = {name: getattr(flags_obj, name) for name in _INIT_FLAGS}
  digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
  path = os.path.join(output_dir, f'init_weights-{digest}.npz')
  if not os.path.exists(path):
    code = _run('train_graph', common + [f'--save_init_weights={path}'])
    if code:
      _raise_for('train_graph', code)
  return path


def _read_state(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _run(script, args):
  """Runs a runner to its end and returns its exit code.

  SIGINT/SIGTERM sent to check_parity are passed on to the runner, which checkpoints
  and exits 130/143; check_parity then exits the same way, and a rerun resumes.
  """
  command = [sys.executable, os.path.join(BIN_DIR, script), *args]
  logging.info('running %s', ' '.join(command[1:]))
  child = subprocess.Popen(command)
  forward = lambda signum, frame: child.send_signal(signum)
  previous = {signum: signal.signal(signum, forward)
              for signum in (signal.SIGINT, signal.SIGTERM)}
  try:
    return child.wait()
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _raise_for(script, code):
  if code == cli.EXIT_USAGE:
    raise cli.UsageError(f'{script} stopped on a usage or data error (its message is above)')
  if code == cli.EXIT_NUMERIC:
    raise cli.NumericFault(f'{script} stopped on a NaN/Inf loss (its message is above)')
  if code > 128:
    raise cli.Interrupted(code - 128, f'{script} was interrupted; rerun the same command to '
                          'resume')
  raise RuntimeError(f'{script} failed with exit code {code}')


def run(flags_obj):
  """The check_parity job; returns the parity report (its verdict decides the exit code)."""
  check_pitfall_requirements(flags_obj)
  output_dir = flags_obj.output_dir
  os.makedirs(output_dir, exist_ok=True)
  # Without --data_dir the first runner generates the embedded dataset's cache and the
  # others reuse it; this process never imports TensorFlow.
  common = forwarded_args(flags_obj)
  init_weights = flags_obj.init_weights or _make_init_weights(flags_obj, output_dir, common)
  # The exact arguments of each finished or started runner: a rerun of check_parity
  # reuses a complete run with the same arguments and resumes an unfinished one.
  state_path = os.path.join(output_dir, STATE_JSON)
  previous = _read_state(state_path)
  state = {}
  run_dirs = []
  for job in jobs(flags_obj):
    model_dir = os.path.join(output_dir, job.name)
    args = common + [f'--model_dir={model_dir}', f'--init_weights={init_weights}', *job.args]
    same = previous.get(job.name) == args and not flags_obj.overwrite
    state[job.name] = args
    runlog.atomic_write_json(state_path, {**previous, **state})
    if same and _complete(model_dir):
      logging.info('%s: reusing the complete run in %s', job.name, model_dir)
    else:
      code = _run(job.script, args + ([] if same else ['--overwrite']))
      if code:
        _raise_for(job.script, code)
    run_dirs.append(model_dir)
  report = parity.compare(run_dirs, tf1compat_flags.tolerances(flags_obj))
  report['pitfall_injected'] = flags_obj.pitfall
  parity.write_report(report, output_dir)
  return report
