"""bin/check_parity: run the legacy and ported runners from one start, then compare them.

Each runner is a subprocess (graph mode and Keras 3 never share a process) whose whole
output (TensorFlow's start-up lines included) goes to `runner.log` in its run
directory; the console shows one line per phase, or a bar per runner on a terminal.
All runners get the same common flags, one initial-weights file and one Adam epsilon;
`--pitfall` injects one catalogued mistake into the runner where teams make it. A
control run of the reference (calibration.py) calibrates the verdict; a FAIL that rests
on numbers alone stands only once controls of the other kinds agree.
"""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import time

from tf1compat.runs import atomic
from tf1compat.runs import nudge
from tf1compat.runs import errors
from tf1compat.runs import config
from tf1compat.runs import folders
from tf1compat.judge import legacy_env
from tf1compat.judge import parity
from tf1compat.judge import pitfalls
from tf1compat.train.models import plugins
from tf1compat.runtime import process
from tf1compat.runtime import progress
from tf1compat.judge import replay_runs
from tf1compat.judge import report as parity_report
from tf1compat.runs import run_files
from tf1compat.runs import runlog

STATE_JSON = 'check_parity.json'
# The port's switches that remove the known framework differences (docs/parity.md,
# "Exact mode").
EXACT_PORT_ARGS = ('--tf1_adam', '--tf1_bn_variance')
# Training fields check_parity sets itself for every runner instead of forwarding them.
_NOT_FORWARDED = frozenset({'init_weights', 'save_init_weights', 'overwrite', 'adam_epsilon'})
# The training fields every runner gets as check_parity was given them.
FORWARDED = tuple(field.name for field in dataclasses.fields(config.TrainingConfig)
                  if field.name not in _NOT_FORWARDED)

# What the initial weights depend on (the data_dir only through num_classes).
_INIT_FIELDS = ('num_classes', 'image_size', 'batch_norm', 'dropout', 'seed', 'data_dir')

CONTROL = 'control'
PER_STEP_CONTROL = 'control_per_step'
KERNELS_CONTROL = 'control_kernels'
# The legacy loop on TensorFlow 1.15 (--legacy_python): the migration ladder's first rung,
# and the folder from which its interpreter imports tf1compat (legacy_env.source_path).
LEGACY = 'tf115'
LEGACY_SOURCE = '.tf115_source'
ROLES = {'init': 'initial weights from the legacy runner',
         'graph': 'the legacy TF1 loop (reference)',
         CONTROL: 'the reference again, one ulp apart (calibration)',
         PER_STEP_CONTROL: 'the reference again, one ulp apart after every step (calibration)',
         KERNELS_CONTROL: 'the reference again, oneDNN turned the other way (calibration)',
         LEGACY: 'the legacy TF1 loop on TensorFlow 1.15 (first rung)',
         'eager': 'the TF2 port, custom loop', 'fit': 'the TF2 port, model.fit'}


@dataclasses.dataclass(frozen=True)
class RunnerJob:
  name: str       # run directory name under --output_dir
  command: str    # the runner's command (process.command)
  args: tuple     # runner-specific arguments
  env: tuple = ()  # (name, value) pairs set in the runner's environment
  python: str = None  # the interpreter (None: this one), --legacy_python's for LEGACY


def control_threads():
  """An intra-op thread count other than TensorFlow's default (one per core)."""
  return 1 if (os.cpu_count() or 1) > 1 else 2


def control_job(reference, cfg):
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
  if cfg.dropout > 0:
    args.append(f'--dropout_seed={cfg.seed + 1}')
  return RunnerJob(CONTROL, reference.command, tuple(args),
                   (('TF_NUM_INTRAOP_THREADS', str(control_threads())),))


def escalation_jobs(reference, reference_dir):
  """The controls of the other kinds, in the order a FAIL on numbers alone asks for them
  (harness.run): the `reference` job again from the same start,

  - every weight moved by one ulp after every step (--nudge_seed): rounding that differs
    at every step, which a control that differs only at its start does not measure;
  - with oneDNN turned the other way than the reference in `reference_dir` ran: other
    kernels at every step, which also round a gradient that is rounding noise (a sum
    that cancels) otherwise, and Adam turns such a gradient into a step of the learning
    rate's size (measured: 7e-4 apart after step 1 while every other control was 3e-6).

  Measured on the real digits (docs/parity.md, "Three kinds of control"): the
  trajectory of correct runs forks, and which branch a control takes is a coin toss;
  the three kinds together took every branch a correct port took.
  """
  onednn = runlog.read_manifest(reference_dir)['settings']['onednn']
  return [RunnerJob(PER_STEP_CONTROL, reference.command,
                    (*reference.args, f'--nudge_seed={nudge.NUDGE_SEED}')),
          RunnerJob(KERNELS_CONTROL, reference.command,
                    (*reference.args, f'--onednn={"off" if onednn else "on"}'))]


# What pitfalls need (Pitfall.needs): what it is, and what adds it. A Dropout rate of 0.5
# would hide keep_prob_as_rate.
_NEEDS = {'batch_norm': ('BatchNormalization', '--batch_norm'),
          'dropout': ('Dropout', '--dropout=0.3'),
          'regularization': ('regularized weights (model.losses)',
                             '--model=tf1compat.train.models.resnet:resnet_small'),
          'lr_schedule': ('a learning-rate schedule', '--lr_decay_steps=40'),
          'batch_norm_momentum': ('BatchNormalization at another momentum than Keras\' 0.99',
                                  '--model=tf1compat.train.models.resnet:resnet_small')}


def check_pitfall_requirements(cfg):
  """Raises errors.UsageError when --pitfall needs what the run has not (Pitfall.needs), or
  when the arguments it would inject are those every runner has already.

  The seed's ConvNet has BatchNormalization only with --batch_norm, at Keras' momentum,
  and no regularizers; the layers of another model are known once it is built, so the
  run goes on.
  """
  if not cfg.pitfall:
    return
  pitfall = pitfalls.PITFALLS[cfg.pitfall]
  own_model = cfg.model not in (None, plugins.DEFAULT_MODEL)
  has = {'batch_norm': bool(cfg.batch_norm) or own_model, 'dropout': cfg.dropout > 0,
         'regularization': own_model, 'batch_norm_momentum': own_model,
         'lr_schedule': cfg.lr_decay_steps > 0}
  if pitfall.needs and not any(has[n] for n in pitfall.needs):
    what = ' or '.join(_NEEDS[n][0] for n in pitfall.needs)
    wanted = ' or '.join(_NEEDS[n][1] for n in pitfall.needs)
    raise errors.UsageError(f'--pitfall={cfg.pitfall} shows only in a run with {what}: '
                            f'add {wanted}')
  derived = pitfall.args_from_config(cfg) if pitfall.args_from_config else ()
  if derived and set(derived) <= set(forwarded_args(cfg)):
    names = ', '.join(arg.split('=')[0] for arg in derived)
    raise errors.UsageError(f'--pitfall={cfg.pitfall} would give the port {" ".join(derived)}, '
                            f'which every runner has already: it cannot show; choose another '
                            f'{names}')


def forwarded_args(cfg):
  """The training fields of `cfg` every runner gets, as the flags every runner accepts."""
  return config.runner_args(cfg, FORWARDED)


def port_args(cfg):
  """How check_parity's --strategy, --cpu_devices, --mixed_precision and --port_flags
  reach the port."""
  args = []
  if cfg.strategy != 'default':
    args.append(f'--strategy={cfg.strategy}')
  if cfg.cpu_devices > 1:
    args.append(f'--cpu_devices={cfg.cpu_devices}')
  if cfg.mixed_precision:
    args.append('--mixed_precision')
  return args + list(cfg.port_flags)


def _makes(cfg, name):
  """Which runner's mistakes the run `name` carries: under --legacy_python the legacy
  loop's go into its TensorFlow 1.15 run, never into the reference."""
  if cfg.legacy_python and name == 'graph':
    return None
  return 'graph' if name == LEGACY else name


def jobs(cfg):
  """The runner jobs of check_parity config `cfg`, the pitfall (if any) injected into
  its runners; a pitfall made only in model.fit makes fit the port without --with_fit.

  With --legacy_python the legacy loop runs a second time on TensorFlow 1.15 (LEGACY)
  with the same arguments; a pitfall of the legacy loop goes there, the team's
  production loop, and the reference on this TensorFlow and its control stay correct.
  """
  epsilon = config.LEGACY_ADAM_EPSILON if cfg.adam_epsilon is None else cfg.adam_epsilon
  pitfall = pitfalls.PITFALLS.get(cfg.pitfall)
  out = []
  ports = [('eager', 'train_eager', ('--loop=custom',)), ('fit', 'train_eager', ('--loop=fit',))]
  chosen = [port for port in ports if port[0] == 'eager' or cfg.with_fit]
  if pitfall and 'graph' not in pitfall.runners and not any(
      name in pitfall.runners for name, _, _ in chosen):
    # A mistake made only in model.fit, without --with_fit: fit is the port checked.
    chosen = [port for port in ports if port[0] in pitfall.runners]
  legacy = [(LEGACY, 'train_graph', ())] if cfg.legacy_python else []
  runners = [('graph', 'train_graph', ()), *legacy, *chosen]
  for name, command, own in runners:
    args = list(own)
    port = command != 'train_graph'
    if port:
      args.extend(port_args(cfg))
    if cfg.exact and port:
      args.extend(EXACT_PORT_ARGS)
    if cfg.legacy_python and cfg.dropout > 0 and command == 'train_graph':
      # An unseeded Dropout takes its op seed from the graph's op count, which the two
      # TensorFlows' builds of one model do not share: seeded alike, they draw the same
      # masks, and the first rung is judged step by step (the control redraws them).
      args.append(f'--dropout_seed={cfg.seed}')
    injected = pitfall is not None and _makes(cfg, name) in pitfall.runners
    if not (injected and 'adam_epsilon' in pitfall.omits):
      args.append(f'--adam_epsilon={epsilon!r}')
    if injected:
      args.extend(pitfall.args)
      if pitfall.args_from_config:
        args.extend(pitfall.args_from_config(cfg))
    python = cfg.legacy_python if name == LEGACY else None
    out.append(RunnerJob(name, command, tuple(args), python=python))
    if name == 'graph' and cfg.calibrate:
      out.append(control_job(out[-1], cfg))
  return out


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
    code = _run(RunnerJob('init', 'train_graph', ()), common + [f'--save_init_weights={path}'],
                path + '.log', total_steps=0)
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
  """'NAME was OLD, now NEW' for each flag or environment variable that differs between
  the recorded arguments `old` and `new`, in the order of `new`."""
  old_values, new_values = _flag_values(old), _flag_values(new)
  names = list(new_values) + [name for name in old_values if name not in new_values]
  return [f'{name} was {old_values.get(name, "unset")}, now {new_values.get(name, "unset")}'
          for name in names if old_values.get(name) != new_values.get(name)]


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


def _controls(run_dirs):
  """The control runs among `run_dirs` ({job name: run directory}), the one that differs
  once first (the localization replays it)."""
  return [run_dirs[name] for name in (CONTROL, PER_STEP_CONTROL, KERNELS_CONTROL)
          if name in run_dirs]


def _plan(cfg, job, common, output_dir, init_weights, nudged, previous):
  """(job, run directory, arguments, recorded arguments) of a runner job; raises
  errors.UsageError where it would replace a run made with other arguments unasked."""
  model_dir = os.path.join(output_dir, job.name)
  start = nudged if job.name == CONTROL else init_weights
  args = common + [f'--model_dir={model_dir}', f'--init_weights={start}', *job.args]
  recorded = args + [f'{k}={v}' for k, v in job.env]
  if job.python:
    recorded.append(f'python={job.python}')
  _refuse_replacing(cfg, job.name, model_dir, previous.get(job.name), recorded)
  return job, model_dir, args, recorded


def _train(cfg, planned, previous, state, state_path, legacy_source):
  """Trains (or resumes, or reuses) one planned runner job, its arguments recorded in
  check_parity.json first; returns its run directory."""
  job, model_dir, args, recorded = planned
  # --overwrite replaces the runs whose arguments changed; the others are reused or
  # resumed as without it (a pitfall then retrains only the runner it is injected in).
  same = previous.get(job.name) == recorded
  state[job.name] = recorded
  atomic.atomic_write_json(state_path, {**previous, **state})
  if same and _complete(model_dir):
    progress.say(f'{job.name}: reusing the complete run in {model_dir}')
    return model_dir
  os.makedirs(model_dir, exist_ok=True)
  log_path = os.path.join(model_dir, run_files.RUNNER_LOG)
  code = _run(job, args + ([] if same else ['--overwrite']), log_path, cfg.total_steps,
              model_dir, append=same,
              package_parent=legacy_source if job.python else None)
  if code:
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
  check_pitfall_requirements(cfg)
  output_dir = cfg.output_dir
  folders.check_output(output_dir, '--output_dir', folder=True, data_dirs=[cfg.data_dir])
  if cfg.init_weights:
    run_files.load_weights(cfg.init_weights)  # missing, unreadable or not finite: exit 2
  if cfg.legacy_python:
    found = legacy_env.check(cfg.legacy_python)
    progress.say(f'{LEGACY}: {cfg.legacy_python}: Python {found["python"]}, TensorFlow '
                 f'{found["tensorflow"]} (tf.keras {found["keras"]}), numpy {found["numpy"]}')
  folders.lock_folder(output_dir, '--output_dir')
  # Without --data_dir the first runner generates the embedded dataset's cache and the
  # others reuse it; this process never imports TensorFlow.
  common = forwarded_args(cfg)
  init_weights, nudged = _init_weights_paths(cfg, output_dir)
  # The exact arguments of each finished or started runner: a rerun of check_parity
  # reuses a complete run with the same arguments and resumes an unfinished one.
  state_path = os.path.join(output_dir, STATE_JSON)
  previous = _read_state(state_path, cfg.overwrite)
  runner_jobs = jobs(cfg)
  planned = [_plan(cfg, job, common, output_dir, init_weights, nudged, previous)
             for job in runner_jobs if job.name not in reuse]
  for name, model_dir in reuse.items():
    if not _complete(model_dir):
      raise RuntimeError(f'{model_dir} is not a complete run to reuse')
  controls = any(job.name == CONTROL for job, _, _, _ in planned)
  _write_init_weights(init_weights, nudged if controls else None, common)
  # The legacy interpreter imports this tf1compat from a folder that holds it alone.
  legacy_source = (legacy_env.source_path(os.path.join(output_dir, LEGACY_SOURCE))
                   if cfg.legacy_python else None)
  state = {}
  run_dirs = dict(reuse)
  for item in planned:
    run_dirs[item[0].name] = _train(cfg, item, previous, state, state_path, legacy_source)
  compared = [run_dirs[job.name] for job in runner_jobs if job.name != CONTROL]
  report = parity.compare(compared, tolerances, controls=_controls(run_dirs))
  # A PASS judged by some controls passes the widest of more as well; a FAIL on numbers
  # alone may be a fork the controls so far did not take (calibration.py). A control an
  # earlier check made with these arguments is always counted.
  reference = next(job for job in runner_jobs if job.name == 'graph')
  for job in escalation_jobs(reference, run_dirs['graph']) if cfg.calibrate else ():
    if job.name in run_dirs:
      continue
    item = _plan(cfg, job, common, output_dir, init_weights, nudged, previous)
    made = previous.get(job.name) == item[3] and _complete(item[1])
    if not (made or parity.rests_on_numbers(report)):
      continue
    if not made:
      progress.say('the FAIL rests on numbers alone: another kind of control before it '
                   'stands')
    run_dirs[job.name] = _train(cfg, item, previous, state, state_path, legacy_source)
    report = parity.compare(compared, tolerances, controls=_controls(run_dirs))
  report['pitfall_injected'] = cfg.pitfall
  report['init_weights'] = init_weights
  if LEGACY in run_dirs:
    report['ladder'] = parity.ladder(report, run_dirs[LEGACY])
  try:
    # Where inside the first step each failed pair parts (--localize: every pair).
    # The TensorFlow 1.15 run replays on TensorFlow 1.15, where it trained.
    replay_runs.localize_report(report, tolerances, output_dir, pairs=[
        index for index, pair in enumerate(report['pairs'])
        if cfg.localize or (cfg.localize is None and pair['verdict'] == 'FAIL')],
        interpreters={run_dirs[LEGACY]: (cfg.legacy_python, legacy_source)}
        if LEGACY in run_dirs else None)
  finally:
    parity_report.write_report(report, output_dir)
  return report
