"""The runner jobs of check_parity: which runners run with which arguments, the pitfall
injected where teams make it, and the controls made from the reference's job
(calibration.py says what they measure; harness.py runs the jobs and judges them).
"""

import dataclasses
import os

from tf1compat.judge import pitfalls
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import nudge
from tf1compat.runs import optimizers
from tf1compat.runs import runlog
from tf1compat.train.models import plugins

# The port's switches that remove the known framework differences (docs/parity.md,
# "Exact mode").
EXACT_PORT_ARGS = ('--tf1_adam', '--tf1_optimizer_kernel', '--tf1_bn_variance')
# Training fields check_parity sets itself for every runner instead of forwarding them.
_NOT_FORWARDED = frozenset({'init_weights', 'save_init_weights', 'overwrite', 'epsilon'})
# The training fields every runner gets as check_parity was given them.
FORWARDED = tuple(field.name for field in dataclasses.fields(config.TrainingConfig)
                  if field.name not in _NOT_FORWARDED)

CONTROL = 'control'
PER_STEP_CONTROL = 'control_per_step'
KERNELS_CONTROL = 'control_kernels'
# The legacy loop on TensorFlow 1.15 (--legacy_python): the migration ladder's first rung.
LEGACY = 'tf115'
ROLES = {'init': 'initial weights from the legacy runner',
         'graph': 'the legacy TF1 loop (reference)',
         CONTROL: 'the reference again, one ulp apart (calibration)',
         PER_STEP_CONTROL: 'the reference again, one ulp apart after every step (calibration)',
         KERNELS_CONTROL: 'the reference again, oneDNN turned the other way (calibration)',
         LEGACY: 'the legacy TF1 loop on TensorFlow 1.15 (first rung)',
         'eager': 'the TF2 port, custom loop', 'fit': 'the TF2 port, model.fit'}


# The port's backend, as its train_eager argument says it (port_args).
_JAX_PORT = '--backend=jax'


@dataclasses.dataclass(frozen=True)
class RunnerJob:
  name: str       # run directory name under --output_dir
  command: str    # the runner's command (process.command)
  args: tuple     # runner-specific arguments
  env: tuple = ()  # (name, value) pairs set in the runner's environment
  python: str = None  # the interpreter (None: this one), --legacy_python's for LEGACY


def role(job):
  """What `job` runs, in words (ROLES; the port on JAX named as such)."""
  text = ROLES.get(job.name, '')
  return text.replace('TF2 port', 'JAX port') if _JAX_PORT in job.args else text


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
  if not pitfalls.applies_to(pitfall, cfg.optimizer):
    names = ', '.join(name for name in optimizers.OPTIMIZERS
                      if pitfalls.applies_to(pitfall, name))
    raise errors.UsageError(f'--pitfall={cfg.pitfall} is a mistake of another optimizer: run it '
                            f'with --optimizer={names.replace(", ", " or ")}')
  if pitfall.port_backend and cfg.port_backend != pitfall.port_backend:
    raise errors.UsageError(f'--pitfall={cfg.pitfall} is a mistake of the port on '
                            f'{pitfall.port_backend}: add --port_backend={pitfall.port_backend}')
  own_model = cfg.model not in (None, plugins.DEFAULT_MODEL)
  has = {'batch_norm': bool(cfg.batch_norm) or own_model, 'dropout': cfg.dropout > 0,
         'regularization': own_model, 'batch_norm_momentum': own_model,
         'lr_schedule': optimizers.schedule_name(cfg) != 'constant'}
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
  """How check_parity's --port_backend, --strategy, --cpu_devices, --mixed_precision and
  --port_flags reach the port."""
  args = []
  if cfg.port_backend == 'jax':
    args.append(_JAX_PORT)
  if cfg.strategy != 'default':
    args.append(f'--strategy={cfg.strategy}')
  if cfg.cpu_devices > 1:
    args.append(f'--cpu_devices={cfg.cpu_devices}')
  if cfg.mixed_precision:
    args.append('--mixed_precision')
  return args + list(cfg.port_flags)


def legacy_epsilon(cfg):
  """The epsilon every runner gets: --epsilon, else the legacy optimizer's (TF1's
  AdagradOptimizer has none: Keras' Adagrad gets 0); None for an optimizer without one."""
  values = optimizers.hyperparameters(cfg, 'tf1')
  return values.get('epsilon')


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
  epsilon = legacy_epsilon(cfg)
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
    if epsilon is not None and not (injected and 'epsilon' in pitfall.omits):
      args.append(f'--epsilon={epsilon!r}')
    if injected:
      args.extend(pitfall.args)
      if pitfall.args_from_config:
        args.extend(pitfall.args_from_config(cfg))
    python = cfg.legacy_python if name == LEGACY else None
    out.append(RunnerJob(name, command, tuple(args), python=python))
    if name == 'graph' and cfg.calibrate:
      out.append(control_job(out[-1], cfg))
  return out
