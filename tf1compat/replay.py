"""Replays of a finished run's first step, as probes for localize.py: the runners' replay
mode and the driver that starts it.

    train_graph|train_eager --model_dir=RUN --replay_out=PROBE.npz [--replay_batch=REF.npz]

rebuilds RUN's model from RUN's own run.json (its flags, its thread counts), loads its
step-0 snapshot and runs its first training step once more as the run ran it (the
learning phase as fed, the same kernels and loss), on the batch of REF.npz (the
reference's probe) or on its own pipeline's first batch, and writes the step's probe
(probes.py). The run directory is only read; the step updates the replay's own copy.

Why the first step: a snapshot holds the model's weights, not the optimizer's slots,
and the two frameworks keep those in incompatible checkpoints; at step 0 every code's
slots are zero, so each replay starts from exactly the state its run started from,
without converting anything. Every mistake that acts inside one step shows there; a
mistake that acts only later (a schedule held per epoch, running metrics) leaves the
replay of step 1 inside the envelope, and the localization says so.

Model.fit's replay is the custom loop's step on the same Keras 3 model, with the
regularization losses added as fit adds them: fit's own train_step computes the same
loss, gradients and update (the pair fit vs graph is judged on it). Distributed and
mixed-precision runs are not replayed (replayable). TensorFlow-free.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import subprocess

import numpy as np

from tf1compat import cli
from tf1compat import errors
from tf1compat import folders
from tf1compat import localize
from tf1compat import probes
from tf1compat import process
from tf1compat import progress
from tf1compat import runlog

# The command that replays a run of each runner (its run.json 'runner').
RUNNER_COMMANDS = {'graph': 'train_graph', 'eager': 'train_eager', 'fit': 'train_eager'}
# Where check_parity and compare_runs write the replays: beside the report.
REPLAY_DIR = 'localize'
# The process settings a replay takes from the run's run.json 'settings' block.
_THREAD_SETTINGS = {'intra_op_threads': 'TF_NUM_INTRAOP_THREADS',
                    'inter_op_threads': 'TF_NUM_INTEROP_THREADS'}
# Replays run two at a time: each spends most of its seconds starting TensorFlow.
_AT_ONCE = 2


def replayable(manifest):
  """Why the run of run.json `manifest` cannot be replayed by our runners, or None."""
  if manifest.get('runner') not in RUNNER_COMMANDS:
    return (f'it is a {manifest.get("runner")!r} run, not one of our runners\'; record a '
            'probe in the loop (RunRecorder.probe)')
  if manifest.get('replicas', 1) != 1:
    return f'it ran over {manifest.get("replicas")} replicas; a replay is one device\'s step'
  if manifest.get('dtype_policy', 'float32') != 'float32':
    return (f'it ran under {manifest.get("dtype_policy")}; a replay compares float32 steps')
  return None


def run_config(config_class, replay_cfg, runner_names):
  """The config of the complete run that replay_cfg (config.ReplayConfig) replays (its
  run.json's flags), set up to replay its first step: its step-0 snapshot as the initial
  weights, nothing written.

  Raises cli.UsageError when the run directory holds no complete run of one of
  `runner_names` with a step-0 snapshot, or one that is not replayable, and when the
  probe would be written into it, among the data, into the package or over a file that
  is not a probe (folders.check_output).
  """
  model_dir = replay_cfg.model_dir
  manifest = runlog.read_manifest(model_dir)
  folders.check_output(replay_cfg.output, '--replay_out', folder=False,
                       data_dirs=[(manifest or {}).get('flags', {}).get('data_dir')],
                       read_runs=[model_dir], replaceable=_is_probe)
  if manifest is None:
    raise cli.UsageError(f'--model_dir={model_dir}: no {runlog.RUN_JSON}; --replay_out '
                         'replays a run our runners made')
  runner = manifest.get('runner')
  if runner not in runner_names:
    raise cli.UsageError(f'--model_dir={model_dir} holds a {runner} run; replay it with '
                         f'{RUNNER_COMMANDS.get(runner, "its own loop (RunRecorder.probe)")}')
  if manifest.get('status') != runlog.STATUS_COMPLETE:
    raise cli.UsageError(f'--model_dir={model_dir}: the run is {manifest.get("status")}, not '
                         'complete; rerun its command to finish it before replaying it')
  why_not = replayable(manifest)
  if why_not:
    raise cli.UsageError(f'--model_dir={model_dir} cannot be replayed: {why_not}')
  start = runlog.snapshot_path(model_dir, 0)
  if not os.path.exists(start):
    raise cli.UsageError(f'--model_dir={model_dir} holds no step-0 snapshot ({start}); '
                         'rerun it with 0 in --snapshot_steps to replay it')
  fields = {field.name for field in dataclasses.fields(config_class)}
  values = {name: tuple(value) if isinstance(value, list) else value
            for name, value in manifest.get('flags', {}).items() if name in fields}
  cfg = dataclasses.replace(config_class(**values), model_dir=model_dir, init_weights=start,
                            save_init_weights=None, overwrite=False)
  return cfg


def _is_probe(path):
  """Whether `path` holds a probe (a replay's, which --replay_out replaces)."""
  try:
    probes.load(path)
  except errors.UsageError:
    return False
  return True


def apply_settings(model_dir):
  """Sets this process's thread counts as the run in `model_dir` had them (run.json's
  settings), before TensorFlow is imported: a control ran with another intra-op count,
  which changes its sums."""
  manifest = runlog.read_manifest(model_dir) or {}
  for name, variable in _THREAD_SETTINGS.items():
    threads = (manifest.get('settings') or {}).get(name)
    if threads:
      os.environ[variable] = str(threads)


def batch_digest(images, labels):
  """sha256 of a batch's arrays: which batch a replay computed on."""
  digest = hashlib.sha256()
  for array in (images, labels):
    array = np.ascontiguousarray(array)
    digest.update(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def read_batch(path):
  """(images, labels) of the probe at `path` (--replay_batch): the batch to compute on."""
  batch = probes.load(path).items('input')
  if set(batch) != {'images', 'labels'}:
    raise cli.UsageError(f'--replay_batch={path}: the probe holds no batch (input/images, '
                         'input/labels); give another run\'s replay')
  return batch['images'], batch['labels']


def write_probe(replay_cfg, runner, stages, meta):
  """Writes a replay's probe: `stages` (probes.STAGES), `meta` plus what says which run and
  which batch it replays (replay_runs reuses a replay of the same)."""
  images, labels = stages['input']['images'], stages['input']['labels']
  fed = read_batch(replay_cfg.batch) if replay_cfg.batch else None
  probes.save(replay_cfg.output, stages, {
      **meta, 'runner': runner, 'step': 1, 'replayed_run': replay_cfg.model_dir,
      'run_json_sha256': runlog.file_sha256(os.path.join(replay_cfg.model_dir,
                                                         runlog.RUN_JSON)),
      'batch_sha256': batch_digest(images, labels),
      'fed_batch_sha256': batch_digest(*fed) if fed else None})


def _current(path, run_dir, fed_digest):
  """Whether the replay at `path` replays the run now in `run_dir` on the batch `fed_digest`."""
  if not os.path.exists(path):
    return False
  try:
    meta = probes.load(path).meta
  except cli.UsageError:
    return False
  return (meta.get('run_json_sha256') == runlog.file_sha256(
      os.path.join(run_dir, runlog.RUN_JSON)) and meta.get('fed_batch_sha256') == fed_digest)


def _replay(name, run_dir, out_dir, batch_path=None, interpreter=None):
  """The probe path of run `name`'s replay in `out_dir`, made unless a current one is there,
  by `interpreter` ((python, the folder it imports tf1compat from); None: this one's)."""
  out = os.path.join(out_dir, f'{name}.npz')
  fed_digest = probes.load(batch_path).meta['batch_sha256'] if batch_path else None
  if _current(out, run_dir, fed_digest):
    progress.say(f'{name}: reusing its replay of step 1 ({out})')
    return out
  progress.say(f'{name}: replaying step 1')
  runner = runlog.read_manifest(run_dir)['runner']
  args = [f'--model_dir={run_dir}', f'--replay_out={out}']
  if batch_path:
    args.append(f'--replay_batch={batch_path}')
  log_path = os.path.join(out_dir, f'{name}.log')
  python, package_parent = interpreter or (None, process.PACKAGE_PARENT)
  with open(log_path, 'w') as log:
    code = subprocess.run(process.command(RUNNER_COMMANDS[runner], *args, python=python),
                          stdout=log, stderr=subprocess.STDOUT,
                          env=process.child_env(package_parent=package_parent),
                          check=False).returncode
  if code:
    raise process.runner_error(f'{name} replay', code, log_path)
  return out


def replay_runs(runs, out_dir, interpreters=None):
  """{name: probe path}: the replays of `runs` ({name: run directory}, the reference
  first) in `out_dir`. The reference is replayed on its pipeline's first batch, the
  others on the same batch (its probe's); a replay of the same run on the same batch
  already there is reused. A run in `interpreters` ({run directory: (python, the folder
  it imports tf1compat from)}) is replayed by the interpreter that trained it: a TF 1.15
  run on TF 1.15 itself."""
  interpreters = interpreters or {}
  os.makedirs(out_dir, exist_ok=True)
  names = list(runs)
  reference = _replay(names[0], runs[names[0]], out_dir,
                      interpreter=interpreters.get(runs[names[0]]))
  with concurrent.futures.ThreadPoolExecutor(_AT_ONCE) as pool:
    others = {name: pool.submit(_replay, name, runs[name], out_dir, reference,
                                interpreters.get(runs[name]))
              for name in names[1:]}
    return {names[0]: reference, **{name: job.result() for name, job in others.items()}}


def _names(run_dirs):
  """A file name for each run directory's replay: its folder's name, made unique."""
  names = []
  for index, run_dir in enumerate(run_dirs):
    name = os.path.basename(os.path.normpath(run_dir)) or 'run'
    names.append(name if name not in names else f'{name}-{index}')
  return names


def localize_report(report, tol, out_dir, weight_maps=None, pairs=None, interpreters=None):
  """Adds 'where' (localize.py) to the pairs of parity report `report` whose indices are
  in `pairs` (None: all), from the probes of the reference, the control and those pairs'
  other runs: a loop's recorded probe (RunRecorder.probe), else a replay of our runner's
  first step, written into `out_dir`/localize. `weight_maps` as parity.compare's;
  `interpreters` as replay_runs'."""
  chosen = range(len(report['pairs'])) if pairs is None else sorted(pairs)
  if not chosen:
    return
  run_dirs = [report['pairs'][0]['reference'], *report.get('controls', [])[:1],
              *(report['pairs'][index]['other'] for index in chosen)]
  found, to_replay = {}, {}
  for name, run_dir in zip(_names(run_dirs), run_dirs):
    recorded = probes.recorded(run_dir)
    if recorded:
      found[run_dir] = recorded
      continue
    why = replayable(runlog.read_manifest(run_dir) or {})
    if why is None and 0 not in runlog.snapshot_steps_in(run_dir):
      why = 'it holds no step-0 snapshot: rerun it with 0 in --snapshot_steps'
    if why:
      found[run_dir] = cli.UsageError(f'{run_dir} has no probe: {why}')
    else:
      to_replay[name] = run_dir
  if to_replay:
    try:
      replayed = replay_runs(to_replay, os.path.join(out_dir, REPLAY_DIR), interpreters)
    except cli.UsageError as e:
      replayed = {name: e for name in to_replay}
    found.update({to_replay[name]: path for name, path in replayed.items()})
  localize.localize_report(report, found, tol, weight_maps, pairs)
