"""bin/check_parity: run the legacy and ported runners from one start, then compare them.

Each runner is a subprocess (graph mode and Keras 3 never share a process) whose whole
output (TensorFlow's start-up lines included) goes to `runner.log` in its run
directory; the console shows one line per phase, or a bar per runner on a terminal.
All runners get the same common flags, one initial-weights file and one Adam epsilon;
`--pitfall` injects one catalogued mistake into the runner where teams make it. A
control run of the reference (calibration.py) calibrates the verdict.
"""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import time

from tf1compat import calibration
from tf1compat import cli
from tf1compat import flags as tf1compat_flags
from tf1compat import parity
from tf1compat import pitfalls
from tf1compat import process
from tf1compat import progress
from tf1compat import report as parity_report
from tf1compat import runlog

STATE_JSON = 'check_parity.json'
# The legacy loop's epsilon: the port is what must match it.
LEGACY_ADAM_EPSILON = 1e-8
# The port's switches that remove the known framework differences (README, "Exact mode").
EXACT_PORT_ARGS = ('--tf1_adam', '--tf1_bn_variance')
# Flags check_parity sets itself for every runner instead of forwarding them.
_NOT_FORWARDED = frozenset({'model_dir', 'init_weights', 'save_init_weights', 'overwrite',
                            'adam_epsilon'})

# What the initial weights depend on (the data_dir only through num_classes).
_INIT_FLAGS = ('num_classes', 'image_size', 'batch_norm', 'dropout', 'seed', 'data_dir')


CONTROL = 'control'
ROLES = {'init': 'initial weights from the legacy runner',
         'graph': 'the legacy TF1 loop (reference)',
         CONTROL: 'the reference again, one ulp apart (calibration)',
         'eager': 'the TF2 port, custom loop', 'fit': 'the TF2 port, model.fit'}


@dataclasses.dataclass(frozen=True)
class RunnerJob:
  name: str       # run directory name under --output_dir
  command: str    # the runner's command (process.command)
  args: tuple     # runner-specific arguments
  env: tuple = ()  # (name, value) pairs set in the runner's environment


def control_threads():
  """An intra-op thread count other than TensorFlow's default (one per core)."""
  return 1 if (os.cpu_count() or 1) > 1 else 2


def control_job(reference, flags_obj):
  """The reference job again as the calibration's control.

  Besides initial weights one ulp apart (passed by `run`), it runs under another
  reduction order: another intra-op thread count (what changes Eigen's and oneDNN's
  summation order on a CPU) and op determinism off (what does on a GPU). Measured on
  the defaults with --batch_norm, the thread count alone parts the weights by 8e-4
  after one step, 400x more than the ulp nudge; a port whose kernels sum in another
  order shows the same. With Dropout, the control also draws other masks, as every
  port does.
  """
  args = [*reference.args, '--nodeterministic']
  if flags_obj.dropout > 0:
    args.append(f'--dropout_seed={flags_obj.seed + 1}')
  return RunnerJob(CONTROL, reference.command, tuple(args),
                   (('TF_NUM_INTRAOP_THREADS', str(control_threads())),))


def check_pitfall_requirements(flags_obj):
  """Raises cli.UsageError when --pitfall needs --batch_norm/--dropout and has neither."""
  if not flags_obj.pitfall:
    return
  needs = pitfalls.PITFALLS[flags_obj.pitfall].needs
  if not needs:
    return
  has = {'batch_norm': bool(flags_obj.batch_norm), 'dropout': flags_obj.dropout > 0}
  if not any(has[n] for n in needs):
    wanted = ' or '.join(f'--{n}' + ('=0.5' if n == 'dropout' else '') for n in needs)
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
  pitfall = pitfalls.PITFALLS.get(flags_obj.pitfall)
  out = []
  runners = [('graph', 'train_graph', ()), ('eager', 'train_eager', ('--loop=custom',))]
  if flags_obj.with_fit:
    runners.append(('fit', 'train_eager', ('--loop=fit',)))
  for name, command, own in runners:
    args = list(own)
    if name != 'graph':
      args.extend(port_args(flags_obj))
    if flags_obj.exact and name != 'graph':
      args.extend(EXACT_PORT_ARGS)
    injected = pitfall is not None and name in pitfall.runners
    if not (injected and 'adam_epsilon' in pitfall.omits):
      args.append(f'--adam_epsilon={epsilon!r}')
    if injected:
      args.extend(pitfall.args)
    out.append(RunnerJob(name, command, tuple(args)))
    if name == 'graph' and flags_obj.calibrate:
      out.append(control_job(out[-1], flags_obj))
  return out


def _complete(model_dir):
  manifest = runlog.read_manifest(model_dir)
  return manifest is not None and manifest.get('status') == runlog.STATUS_COMPLETE


def _init_weights_files(flags_obj, output_dir, common):
  """One initial-weights file per model shape and seed, written by the legacy runner,
  and its one-ulp nudge for the control: (path, nudged path)."""
  shape = {name: getattr(flags_obj, name) for name in _INIT_FLAGS}
  digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
  path = os.path.join(output_dir, f'init_weights-{digest}.npz')
  if not os.path.exists(path):
    code = _run(RunnerJob('init', 'train_graph', ()), common + [f'--save_init_weights={path}'],
                path + '.log', total_steps=0)
    if code:
      raise runner_error('init', code, path + '.log')
  nudged = os.path.join(output_dir, f'init_weights-{digest}-ulp.npz')
  if not os.path.exists(nudged):
    runlog.save_weights(nudged, calibration.nudge_weights(runlog.load_weights(path)))
  return path, nudged


def _read_state(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _run(job, args, log_path, total_steps, model_dir=None, append=False):
  """Runs a runner to its end, its output into `log_path`; returns its exit code.

  With a terminal a bar follows the run's steps.csv; otherwise one line at the start
  and one at the end. SIGINT/SIGTERM sent to check_parity are passed on to the runner,
  which checkpoints and exits 130/143; check_parity then exits the same way, and a
  rerun resumes.
  """
  command = process.command(job.command, *args)
  env = process.child_env(job.env)
  # The log file is for everything: TensorFlow's own start-up lines included.
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '0')
  steps_csv = os.path.join(model_dir, runlog.STEPS_CSV) if model_dir else None
  bar = progress.RunProgress(f'{job.name}: {ROLES.get(job.name, "")}', total_steps, log_path)
  started = time.monotonic()
  with open(log_path, 'a' if append else 'w') as log:
    log.write(f'$ {" ".join(command)}\n')
    log.flush()
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    forward = lambda signum, frame: child.send_signal(signum)
    previous = {signum: signal.signal(signum, forward)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
      while True:
        try:
          code = child.wait(timeout=0.5)
          break
        except subprocess.TimeoutExpired:
          if steps_csv:
            bar.update(runlog.count_rows(steps_csv))
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)
  bar.close(code, time.monotonic() - started)
  return code


def _last_line(log_path):
  """The runner's own last message (its one-line error), from its log."""
  try:
    with open(log_path, errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ''
  return lines[-1] if lines else ''


def runner_error(name, code, log_path):
  """The exception for a runner that ended with exit `code` (negative: killed by a signal).

  Its own one-line message (the last line of its log) is kept; a usage error stays a
  usage error, NaN/Inf a numeric fault, SIGINT/SIGTERM an interruption, and anything
  else is a fault (exit 4), never read as a parity verdict.
  """
  message = _last_line(log_path)
  if code == cli.EXIT_USAGE:
    return cli.UsageError(f'{name} runner: {message} (log: {log_path})')
  if code == cli.EXIT_NUMERIC:
    return cli.NumericFault(f'{name} runner: {message} (log: {log_path})')
  if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
    return cli.Interrupted(code - 128, f'{name} runner was interrupted; rerun the same '
                           'command to resume')
  how = f'killed by signal {-code}' if code < 0 else f'exit code {code}'
  return cli.Fault(f'{name} runner: internal or device fault ({how}): {message} (log: '
                   f'{log_path})')


def run(flags_obj):
  """The check_parity job; returns the parity report (its verdict decides the exit code)."""
  check_pitfall_requirements(flags_obj)
  output_dir = flags_obj.output_dir
  os.makedirs(output_dir, exist_ok=True)
  # Without --data_dir the first runner generates the embedded dataset's cache and the
  # others reuse it; this process never imports TensorFlow.
  common = forwarded_args(flags_obj)
  if flags_obj.init_weights:
    init_weights = flags_obj.init_weights
    given = runlog.load_weights(init_weights)  # a missing or unreadable file: exit 2
    # Named by the given file's content: another file must not reuse an old control.
    digest = runlog.file_sha256(init_weights)[:12]
    nudged = os.path.join(output_dir, f'init_weights-given-{digest}-ulp.npz')
    if not os.path.exists(nudged):
      runlog.save_weights(nudged, calibration.nudge_weights(given))
  else:
    init_weights, nudged = _init_weights_files(flags_obj, output_dir, common)
  # The exact arguments of each finished or started runner: a rerun of check_parity
  # reuses a complete run with the same arguments and resumes an unfinished one.
  state_path = os.path.join(output_dir, STATE_JSON)
  previous = _read_state(state_path)
  state = {}
  run_dirs = {}
  total_steps = flags_obj.epochs * flags_obj.steps_per_epoch
  for job in jobs(flags_obj):
    model_dir = os.path.join(output_dir, job.name)
    start = nudged if job.name == CONTROL else init_weights
    args = common + [f'--model_dir={model_dir}', f'--init_weights={start}', *job.args]
    recorded = args + [f'{k}={v}' for k, v in job.env]
    same = previous.get(job.name) == recorded and not flags_obj.overwrite
    state[job.name] = recorded
    runlog.atomic_write_json(state_path, {**previous, **state})
    if same and _complete(model_dir):
      progress.say(f'{job.name}: reusing the complete run in {model_dir}')
    else:
      os.makedirs(model_dir, exist_ok=True)
      log_path = os.path.join(model_dir, runlog.RUNNER_LOG)
      code = _run(job, args + ([] if same else ['--overwrite']), log_path, total_steps,
                  model_dir, append=same)
      if code:
        raise runner_error(job.name, code, log_path)
    run_dirs[job.name] = model_dir
  compared = [d for name, d in run_dirs.items() if name != CONTROL]
  report = parity.compare(compared, tf1compat_flags.tolerances(flags_obj),
                          control=run_dirs.get(CONTROL))
  report['pitfall_injected'] = flags_obj.pitfall
  parity_report.write_report(report, output_dir)
  return report
