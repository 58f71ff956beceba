"""The replays of check_parity's and compare_runs' runs, and the localization built on them.

For each run a FAIL names, the probe of one step: the one its loop recorded
(RunRecorder.probe), else a replay by the runner that trained it (`--replay_out`,
train/replay_mode.py), started here two at a time, on the reference's batch. The step
is the first, or where the first-named pitfall shows (pitfalls.Where.at, replay_step).
"""

import concurrent.futures
import os
import subprocess

from tf1compat.judge import config_lint
from tf1compat.judge import localize
from tf1compat.judge import pitfalls
from tf1compat.judge import run_reuse
from tf1compat.runs import errors
from tf1compat.runs import probes
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runtime import process
from tf1compat.runtime import progress
from tf1compat.train import replay_mode

# Where check_parity and compare_runs write the replays: beside the report.
REPLAY_DIR = 'localize'
# Replays run two at a time: each spends most of its seconds starting TensorFlow.
_AT_ONCE = 2


def _current(path, run_dir, fed_digest, step):
  """Whether the replay at `path` replays step `step` of the run now in `run_dir` on the
  batch `fed_digest`."""
  if not os.path.exists(path):
    return False
  try:
    meta = probes.load(path).meta
  except errors.UsageError:
    return False
  return (meta.get('run_json_sha256') == run_files.file_sha256(
      os.path.join(run_dir, run_files.RUN_JSON)) and meta.get('fed_batch_sha256') == fed_digest
          and meta.get('step') == step)


def _replay(name, run_dir, out_dir, batch_path=None, interpreter=None, step=1, donors=()):
  """The probe path of run `name`'s replay of `step` in `out_dir`, made unless a current
  one is there or in a donor's replays (check_parity --reuse_from: its run was copied
  from there), by `interpreter` ((python, the folder it imports tf1compat from); None:
  this one's). `batch_path`: the reference's replay, whose batch it computes on and, for
  a step after the first, whose start state it starts from."""
  out = os.path.join(out_dir, f'{name}.npz' if step == 1 else f'{name}-step{step}.npz')
  fed_digest = probes.load(batch_path).meta['batch_sha256'] if batch_path else None
  if _current(out, run_dir, fed_digest, step):
    progress.say(f'{name}: reusing its replay of step {step} ({out})')
    return out
  for donor in donors:
    theirs = os.path.join(donor, REPLAY_DIR, os.path.basename(out))
    if _current(theirs, run_dir, fed_digest, step):
      run_reuse.link_file(theirs, out)
      progress.say(f'{name}: copied its replay of step {step} from {donor}')
      return out
  progress.say(f'{name}: replaying step {step}')
  runner = runlog.read_manifest(run_dir)['runner']
  args = [f'--model_dir={run_dir}', f'--replay_out={out}', f'--replay_step={step}']
  if batch_path:
    args.append(f'--replay_batch={batch_path}')
    if step > 1:
      args.append(f'--replay_start={batch_path}')
  log_path = os.path.join(out_dir, f'{name}.log')
  python, package_parent = interpreter or (None, process.PACKAGE_PARENT)
  with open(log_path, 'w') as log:
    code = subprocess.run(
        process.command(replay_mode.RUNNER_COMMANDS[runner], *args, python=python),
        stdout=log, stderr=subprocess.STDOUT,
        env=process.child_env(package_parent=package_parent),
        check=False).returncode
  if code:
    raise process.runner_error(f'{name} replay', code, log_path)
  return out


def replay_runs(runs, out_dir, interpreters=None, step=1, donors=()):
  """{name: probe path}: the replays of step `step` of `runs` ({name: run directory}, the
  reference first) in `out_dir`. The reference is replayed on its pipeline's batch, the
  others on the same batch (its probe's) and, after the first step, from the state its
  replay started from; a replay of the same run, step and batch already there is reused.
  A run in `interpreters` ({run directory: (python, the folder it imports tf1compat
  from)}) is replayed by the interpreter that trained it: a TF 1.15 run on TF 1.15
  itself. `donors`: check_parity folders whose current replays serve (run_reuse)."""
  interpreters = interpreters or {}
  os.makedirs(out_dir, exist_ok=True)
  names = list(runs)
  reference = _replay(names[0], runs[names[0]], out_dir,
                      interpreter=interpreters.get(runs[names[0]]), step=step, donors=donors)
  with concurrent.futures.ThreadPoolExecutor(_AT_ONCE) as pool:
    others = {name: pool.submit(_replay, name, runs[name], out_dir, reference,
                                interpreters.get(runs[name]), step, donors)
              for name in names[1:]}
    return {names[0]: reference, **{name: job.result() for name, job in others.items()}}


def _names(run_dirs):
  """A file name for each run directory's replay: its folder's name, made unique."""
  names = []
  for index, run_dir in enumerate(run_dirs):
    name = os.path.basename(os.path.normpath(run_dir)) or 'run'
    names.append(name if name not in names else f'{name}-{index}')
  return names


def replay_step(pair):
  """The step whose replay localizes `pair` (a parity report's): where its first-named
  pitfall shows (pitfalls.Where.at): 1; the first step whose learning rate (the
  reference's steps.csv) differs from the first step's; the pair's last common snapshot
  step. 1 where none is named, or the rate never changes."""
  named = pair.get('pitfalls') or []
  problems = {**pitfalls.SETUP_PROBLEMS, **pitfalls.PITFALLS}
  at = problems[named[0]['name']].where.at if named else 'first'
  if at == 'late':
    return max([1, *((pair.get('weight_tier') or {}).get('common_steps') or [])])
  if at == 'rate_change':
    changed = config_lint.first_rate_change(runlog.read_csv(
        os.path.join(pair['reference'], run_files.STEPS_CSV))['learning_rate'])
    return 1 if changed is None else changed + 1
  return 1


def localize_report(report, tol, out_dir, weight_maps=None, pairs=None, interpreters=None,
                    donors=()):
  """Adds 'where' (localize.py) to the pairs of parity report `report` whose indices are
  in `pairs` (None: all), from the probes of the reference, the control and those pairs'
  other runs at each pair's replay_step: a loop's recorded probe (RunRecorder.probe),
  else a replay by our runner, written into `out_dir`/localize. `weight_maps` as
  parity.compare's; `interpreters` and `donors` as replay_runs'."""
  chosen = range(len(report['pairs'])) if pairs is None else sorted(pairs)
  by_step = {}
  for index in chosen:
    by_step.setdefault(replay_step(report['pairs'][index]), []).append(index)
  for step, indices in sorted(by_step.items()):
    _localize_at(report, tol, out_dir, weight_maps, indices, interpreters, step, donors)


def _localize_at(report, tol, out_dir, weight_maps, chosen, interpreters, step, donors):
  """localize_report for the pairs `chosen`, on the probes of step `step`."""
  run_dirs = [report['pairs'][0]['reference'], *report.get('controls', [])[:1],
              *(report['pairs'][index]['other'] for index in chosen)]
  found, to_replay = {}, {}
  for name, run_dir in zip(_names(run_dirs), run_dirs):
    recorded = probes.recorded(run_dir)
    if recorded:
      found[run_dir] = recorded
      continue
    why = replay_mode.replayable(runlog.read_manifest(run_dir) or {})
    if why is None and 0 not in run_files.snapshot_steps_in(run_dir):
      why = 'it holds no step-0 snapshot: rerun it with 0 in --snapshot_steps'
    if why:
      found[run_dir] = errors.UsageError(f'{run_dir} has no probe: {why}')
    else:
      to_replay[name] = run_dir
  if to_replay:
    try:
      replayed = replay_runs(to_replay, os.path.join(out_dir, REPLAY_DIR), interpreters, step,
                             donors)
    except errors.UsageError as e:
      replayed = {name: e for name in to_replay}
    found.update({to_replay[name]: path for name, path in replayed.items()})
  localize.localize_report(report, found, tol, weight_maps, set(chosen))
