"""bin/check_parity: run the legacy and ported runners from one start, then compare them.

Each runner is a subprocess (graph mode and Keras 3 never share a process) whose whole
output (TensorFlow's start-up lines included) goes to `runner.log` in its run
directory; the console shows one line per phase, or a bar per runner on a terminal.
All runners get the same common flags, one initial-weights file and one Adam epsilon;
`--pitfall` injects one catalogued mistake into the runner where teams make it. A
control run of the reference (calibration.py) calibrates the verdict; a FAIL that rests
on numbers alone stands only once controls of the other kinds agree.
"""

import hashlib
import json
import os
import signal
import subprocess
import time

from tf1compat.judge import legacy_env
from tf1compat.judge import parity
from tf1compat.judge import replay_runs
from tf1compat.judge import report as parity_report
from tf1compat.judge import run_reuse
from tf1compat.judge import runner_jobs
from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import nudge
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runtime import process
from tf1compat.runtime import progress

STATE_JSON = run_reuse.STATE_JSON
# What the initial weights depend on (the data_dir only through num_classes).
_INIT_FIELDS = ('num_classes', 'image_size', 'batch_norm', 'dropout', 'seed', 'data_dir')
# The folder from which the legacy run's interpreter imports tf1compat
# (legacy_env.source_path).
LEGACY_SOURCE = '.tf115_source'


def _complete(model_dir):
  manifest = runlog.read_manifest(model_dir)
  return manifest is not None and manifest.get('status') == runlog.STATUS_COMPLETE


def _init_weights_paths(cfg, output_dir):
  """(the initial-weights file, its one-ulp nudge for the control): --init_weights, or one
  file per model shape and seed, written by the legacy runner (_write_init_weights)."""
  if cfg.init_weights:
    # Named by the given file's content: another file must not reuse an old control.
    digest = run_files.file_sha256(cfg.init_weights)[:12]
    return cfg.init_weights, os.path.join(output_dir, f'init_weights-given-{digest}-ulp.npz')
  shape = {name: getattr(cfg, name) for name in _INIT_FIELDS}
  if cfg.model:  # a team's model has its own initial weights; the seed's digests stay
    shape['model'] = cfg.model
  digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
  return (os.path.join(output_dir, f'init_weights-{digest}.npz'),
          os.path.join(output_dir, f'init_weights-{digest}-ulp.npz'))


def _write_init_weights(path, nudged, common):
  """Writes what is missing of the initial weights `path` (by the legacy runner) and of
  their nudge `nudged` (None: no control runs here)."""
  if not os.path.exists(path):
    code = _run(runner_jobs.RunnerJob('init', 'train_graph', ()),
                common + [f'--save_init_weights={path}'], path + '.log', total_steps=0)
    if code:
      raise process.runner_error('init', code, path + '.log')
  if nudged and not os.path.exists(nudged):
    run_files.save_weights(nudged, nudge.nudge_weights(run_files.load_weights(path)))


def _read_state(path, overwrite):
  """The runners' arguments check_parity.json recorded ({} without one; with `overwrite`,
  a damaged one is replaced)."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      state = json.load(f)
  except ValueError as e:
    state = e
  if isinstance(state, dict):
    return state
  if overwrite:
    return {}
  what = state if isinstance(state, ValueError) else 'not a JSON object'
  raise errors.UsageError(f'{path} is damaged ({what}); pass --overwrite to train every run '
                          'again, or choose another --output_dir')


def _flag_values(args):
  """{flag or environment variable: value} of a runner's recorded arguments, the last one
  winning as in absl; a boolean --name is 'on', --noname 'off' where --name occurs too."""
  booleans = {arg[2:] for arg in args if arg.startswith('--') and '=' not in arg}
  booleans |= set(runner_jobs.FORWARDED)
  values = {}
  for arg in args:
    if arg.startswith('--'):
      name, given, value = arg[2:].partition('=')
      if not given:
        negated = name.startswith('no') and name[2:] in booleans
        name, value = (name[2:], 'off') if negated else (name, 'on')
      values[f'--{name}'] = value
    else:
      name, _, value = arg.partition('=')
      values[name] = value
  return values


def _changed_arguments(old, new):
  """'NAME was OLD, now NEW' for each of check_parity's own flags that differs between the
  recorded arguments `old` and `new`, in the order of `new`; what check_parity derives from
  them (the initial weights' file, a pitfall's or the port's arguments, the environment)
  only where no flag of the user's differs."""
  old_values, new_values = _flag_values(old), _flag_values(new)
  names = list(new_values) + [name for name in old_values if name not in new_values]
  changed = [name for name in names if old_values.get(name) != new_values.get(name)]
  users = [name for name in changed if name[2:] in runner_jobs.FORWARDED]
  return [f'{name} was {old_values.get(name, "unset")}, now {new_values.get(name, "unset")}'
          for name in users or changed]


def _refuse_replacing(cfg, job_name, model_dir, old, new):
  """Raises errors.UsageError when the run of `job_name` in `model_dir`, made with the recorded
  arguments `old` (None: unrecorded), would be replaced by a run with arguments `new`
  without --overwrite: it may be a complete or resumable run the user still wants."""
  if cfg.overwrite or old == new or not run_files.content(model_dir):
    return
  way_out = 'pass --overwrite to replace it, or choose another --output_dir'
  if old is None:
    raise errors.UsageError(f'--output_dir={cfg.output_dir}: {model_dir} holds a run that '
                            f'{STATE_JSON} does not record; {way_out}')
  changes = _changed_arguments(old, new)
  listed = '; '.join(changes[:3]) + (f'; and {len(changes) - 3} more' if len(changes) > 3
                                     else '')
  raise errors.UsageError(f'--output_dir={cfg.output_dir}: its {job_name} run was made with other '
                          f'arguments ({listed}); {way_out}')


def _run(job, args, log_path, total_steps, model_dir=None, append=False, package_parent=None):
  """Runs a runner to its end, its output into `log_path`; returns its exit code.

  With a terminal a bar follows the run's steps.csv; otherwise one line at the start
  and one at the end. SIGINT/SIGTERM sent to check_parity are passed on to the runner,
  which checkpoints and exits 130/143; check_parity then exits the same way, and a
  rerun resumes.
  """
  command = process.command(job.command, *args, python=job.python)
  env = process.child_env(job.env, package_parent or process.PACKAGE_PARENT)
  # The log file is for everything: TensorFlow's own start-up lines included.
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '0')
  steps_csv = os.path.join(model_dir, run_files.STEPS_CSV) if model_dir else None
  bar = progress.RunProgress(f'{job.name}: {runner_jobs.role(job)}', total_steps, log_path)
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


def _controls(run_dirs):
  """The control runs among `run_dirs` ({job name: run directory}), the one that differs
  once first (the localization replays it)."""
  return [run_dirs[name] for name in (runner_jobs.CONTROL, runner_jobs.PER_STEP_CONTROL,
                                      runner_jobs.KERNELS_CONTROL)
          if name in run_dirs]


def _plan(cfg, job, common, output_dir, init_weights, nudged, previous):
  """(job, run directory, arguments, recorded arguments) of a runner job; raises
  errors.UsageError where it would replace a run made with other arguments unasked."""
  model_dir = os.path.join(output_dir, job.name)
  start = nudged if job.name == runner_jobs.CONTROL else init_weights
  args = common + [f'--model_dir={model_dir}', f'--init_weights={start}', *job.args]
  recorded = args + [f'{k}={v}' for k, v in job.env]
  if job.python:
    recorded.append(f'python={job.python}')
  _refuse_replacing(cfg, job.name, model_dir, previous.get(job.name), recorded)
  return job, model_dir, args, recorded


def _train(cfg, planned, previous, state, state_path, legacy_source, donors):
  """Trains (or resumes, or reuses, or copies from one of `donors`) one planned runner
  job, its arguments recorded in check_parity.json first; returns its run directory."""
  job, model_dir, args, recorded = planned
  # --overwrite replaces the runs whose arguments changed; the others are reused or
  # resumed as without it (a pitfall then retrains only the runner it is injected in).
  same = previous.get(job.name) == recorded
  donor = None
  if not same and not run_files.content(model_dir) and donors:
    donor = run_reuse.copy_run(job.name, recorded, model_dir, donors)
    same = donor is not None
  state[job.name] = recorded
  atomic.atomic_write_json(state_path, {**previous, **state})
  if same and _complete(model_dir):
    progress.say(f'{job.name}: copied the complete run with these arguments from {donor}'
                 if donor else f'{job.name}: reusing the complete run in {model_dir}')
    return model_dir
  os.makedirs(model_dir, exist_ok=True)
  log_path = os.path.join(model_dir, run_files.RUNNER_LOG)
  code = _run(job, args + ([] if same else ['--overwrite']), log_path, cfg.total_steps,
              model_dir, append=same,
              package_parent=legacy_source if job.python else None)
  if code:
    if not same and code not in process.INTERRUPTED_CODES:
      # A runner that refused (a usage error, before it touched its folder) left the run
      # made with the earlier arguments there, complete: the state must keep saying so,
      # or the next check would reuse that run as one made with these arguments.
      state.pop(job.name)
      atomic.atomic_write_json(state_path, {**previous, **state})
    raise process.runner_error(job.name, code, log_path)
  return model_dir


def run(cfg, tolerances, reuse=None):
  """The check_parity job of config.CheckParityConfig `cfg`, judged with parity.Tolerances
  `tolerances`; returns the parity report (its verdict decides the exit code).

  Before anything is written: --output_dir must lie apart from the data (and the cache
  and the package), a given --init_weights must load, the folder's lock is taken, and no
  run whose arguments changed is replaced without --overwrite. `reuse` maps job names
  ('graph' and the controls') to complete run directories made by another check with the
  same arguments and initial weights (the settings matrix's rows share the defaults row's
  legacy run and controls): they are compared, not trained again.
  """
  reuse = reuse or {}
  runner_jobs.check_pitfall_requirements(cfg)
  process.check_keras_backend(cfg.port_backend)
  output_dir = cfg.output_dir
  folders.check_output(output_dir, '--output_dir', folder=True, data_dirs=[cfg.data_dir])
  if cfg.init_weights:
    run_files.load_weights(cfg.init_weights)  # missing, unreadable or not finite: exit 2
  if cfg.legacy_python:
    found = legacy_env.check(cfg.legacy_python)
    progress.say(f'{runner_jobs.LEGACY}: {cfg.legacy_python}: Python {found["python"]}, TensorFlow '
                 f'{found["tensorflow"]} (tf.keras {found["keras"]}), numpy {found["numpy"]}')
  folders.lock_folder(output_dir, '--output_dir')
  # Without --data_dir the first runner generates the embedded dataset's cache and the
  # others reuse it; this process never imports TensorFlow.
  common = runner_jobs.forwarded_args(cfg)
  init_weights, nudged = _init_weights_paths(cfg, output_dir)
  # The exact arguments of each finished or started runner: a rerun of check_parity
  # reuses a complete run with the same arguments and resumes an unfinished one.
  state_path = os.path.join(output_dir, STATE_JSON)
  previous = _read_state(state_path, cfg.overwrite)
  all_jobs = runner_jobs.jobs(cfg)
  planned = [_plan(cfg, job, common, output_dir, init_weights, nudged, previous)
             for job in all_jobs if job.name not in reuse]
  for name, model_dir in reuse.items():
    if not _complete(model_dir):
      raise RuntimeError(f'{model_dir} is not a complete run to reuse')
  controls = any(job.name == runner_jobs.CONTROL for job, _, _, _ in planned)
  donors = run_reuse.donor_folders(cfg.reuse_from, output_dir)
  for path in (init_weights, nudged if controls else None):
    if path:
      run_reuse.copy_file(path, donors)
  _write_init_weights(init_weights, nudged if controls else None, common)
  # The legacy interpreter imports this tf1compat from a folder that holds it alone.
  legacy_source = (legacy_env.source_path(os.path.join(output_dir, LEGACY_SOURCE))
                   if cfg.legacy_python else None)
  state = {}
  run_dirs = dict(reuse)
  for item in planned:
    run_dirs[item[0].name] = _train(cfg, item, previous, state, state_path, legacy_source,
                                    donors)
  compared = [run_dirs[job.name] for job in all_jobs if job.name != runner_jobs.CONTROL]
  report = parity.compare(compared, tolerances, controls=_controls(run_dirs))
  # A PASS judged by some controls passes the widest of more as well; a FAIL on numbers
  # alone may be a fork the controls so far did not take (calibration.py). A control an
  # earlier check made with these arguments is always counted.
  reference = next(job for job in all_jobs if job.name == 'graph')
  for job in runner_jobs.escalation_jobs(reference, run_dirs['graph']) if cfg.calibrate else ():
    if job.name in run_dirs:
      continue
    item = _plan(cfg, job, common, output_dir, init_weights, nudged, previous)
    made = previous.get(job.name) == item[3] and _complete(item[1])
    if not (made or parity.rests_on_numbers(report)):
      continue
    if not made:
      progress.say('the FAIL rests on numbers alone: another kind of control before it '
                   'stands')
    run_dirs[job.name] = _train(cfg, item, previous, state, state_path, legacy_source, donors)
    report = parity.compare(compared, tolerances, controls=_controls(run_dirs))
  report['pitfall_injected'] = cfg.pitfall
  report['init_weights'] = init_weights
  if runner_jobs.LEGACY in run_dirs:
    report['ladder'] = parity.ladder(report, run_dirs[runner_jobs.LEGACY])
  try:
    # Where inside the first step each failed pair parts (--localize: every pair).
    # The TensorFlow 1.15 run replays on TensorFlow 1.15, where it trained.
    replay_runs.localize_report(report, tolerances, output_dir, pairs=[
        index for index, pair in enumerate(report['pairs'])
        if cfg.localize or (cfg.localize is None and pair['verdict'] == 'FAIL')],
        interpreters={run_dirs[runner_jobs.LEGACY]: (cfg.legacy_python, legacy_source)}
        if runner_jobs.LEGACY in run_dirs else None, donors=donors)
  finally:
    parity_report.write_report(report, output_dir)
  return report
