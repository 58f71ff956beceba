"""parity_matrix's jobs: one case per job on a scheduler, or every case on this host.

A case (matrix_cases.CaseFile) runs as `check_parity --flagfile=CASE
--output_dir=ROOT/NAME --reuse_from=ROOT`, a subprocess whose console goes to
ROOT/NAME/parity_matrix.log (and to this job's console, which the scheduler keeps). The
folder has check_parity's guarantees: its lock (one process at a time), atomic writes, and
resume on a rerun: a preempted or retried job resumes its runners from their checkpoints,
and a job whose case finished is answered from its record (case.json) without running.
SIGINT and SIGTERM are passed on, so a job stopped by its scheduler checkpoints first.
Each job also records the case list in ROOT/cases.json: what --merge expects.
TensorFlow-free.
"""

import concurrent.futures
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import user_files
from tf1compat.runtime import process
from tf1compat.runtime import progress

CASE_JSON = 'case.json'
CASES_JSON = 'cases.json'
LOG = 'parity_matrix.log'
PARITY_JSON = 'parity.json'
# Where schedulers put the index of one job among many: a Kubernetes Indexed Job, a Slurm
# job array.
INDEX_VARIABLES = ('JOB_COMPLETION_INDEX', 'SLURM_ARRAY_TASK_ID')
VERDICT_CODES = (errors.EXIT_OK, errors.EXIT_PARITY_FAIL)
INTERRUPTED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def scheduler_index(given, environ):
  """(index, where it came from): `given` (--case_index), else the first of
  INDEX_VARIABLES set in `environ`; (None, None) without one."""
  if given is not None:
    return given, '--case_index'
  for name in INDEX_VARIABLES:
    value = environ.get(name, '').strip()
    if value:
      if not value.isdigit():
        raise errors.UsageError(f'{name}={value} is not a case index (0, 1, ...)')
      return int(value), name
  return None, None


def pick(cases, index, source):
  """The case of `index` among `cases`; errors.UsageError when there is none."""
  if index >= len(cases):
    raise errors.UsageError(
        f'{source}={index}, but there are {len(cases)} cases (indexes 0 to {len(cases) - 1}); '
        'start one job per case (Kubernetes: completions; Slurm: --array=0-'
        f'{len(cases) - 1})')
  return cases[index]


def record_case_list(cases, root):
  """Writes ROOT/cases.json, the cases --merge expects, unless it holds them already.

  Every job writes it, on hosts of their own: the temporary file is named by mkstemp, not
  by the process id (atomic.py), which is 1 in every container of a Kubernetes Job.
  """
  listed = {'cases': [{'name': c.name, 'file': c.path, 'digest': c.digest,
                       'pitfall': c.pitfall} for c in cases]}
  path = os.path.join(root, CASES_JSON)
  if user_files.read_json_object(path) == listed:
    return
  os.makedirs(root, exist_ok=True)
  handle, tmp = tempfile.mkstemp(dir=root, prefix=f'.{CASES_JSON}.', suffix='.tmp')
  try:
    with os.fdopen(handle, 'w') as f:
      json.dump(listed, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def check_parity_args(case, root, overwrite):
  """check_parity's arguments for `case` under the output root `root`."""
  root = os.path.abspath(root)
  return [f'--flagfile={case.path}', f'--output_dir={os.path.join(root, case.name)}',
          f'--reuse_from={root}', *(['--overwrite'] if overwrite else [])]


class Children:
  """The check_parity processes this job started: SIGINT and SIGTERM go on to each (a
  scheduler signals only its job's first process), which checkpoints and exits; after
  one, no case starts (`stopped`: its number)."""

  def __init__(self):
    self._live = set()
    self._lock = threading.Lock()
    self.stopped = None

  @contextlib.contextmanager
  def forwarding(self):
    """Passes SIGINT and SIGTERM on while the block runs (in the main thread)."""
    forward = lambda signum, frame: self.send(signum)
    previous = {signum: signal.signal(signum, forward)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield self
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)

  def send(self, signum):
    with self._lock:
      self.stopped = self.stopped or signum
      for child in self._live:
        child.send_signal(signum)

  def start(self, command, **kwargs):
    """The started process, or None after a signal."""
    with self._lock:
      if self.stopped:
        return None
      child = subprocess.Popen(command, **kwargs)  # pylint: disable=consider-using-with
      self._live.add(child)
      return child

  def done(self, child):
    with self._lock:
      self._live.discard(child)


def finished_record(case, root, args):
  """The record of `case`'s finished run with these arguments (a verdict and its
  parity.json), or None."""
  case_dir = os.path.join(root, case.name)
  record = user_files.read_json_object(os.path.join(case_dir, CASE_JSON))
  if (record and record.get('digest') == case.digest and record.get('args') == args
      and record.get('exit_code') in VERDICT_CODES
      and os.path.isfile(os.path.join(case_dir, PARITY_JSON))):
    return record
  return None


def run_case(case, root, children, overwrite=False, echo=True):
  """Runs `case` to its end under `root` (or answers it from its finished record);
  returns check_parity's exit code. `echo`: its console to this one's too."""
  args = check_parity_args(case, root, overwrite)
  case_dir = os.path.join(os.path.abspath(root), case.name)
  record = finished_record(case, root, args)
  if record:
    if echo:
      progress.say(f'{case.name}: finished before ({record.get("verdict")}, '
                   f'{os.path.join(case_dir, PARITY_JSON)}); nothing to run')
    return record['exit_code']
  if children.stopped:  # interrupted before this case started: it stays missing
    return 128 + children.stopped
  os.makedirs(case_dir, exist_ok=True)
  started = time.monotonic()
  last_line = ''
  with open(os.path.join(case_dir, LOG), 'a') as log:
    log.write(f'# {_now()} on {socket.gethostname()}: check_parity {" ".join(args)}\n')
    log.flush()
    child = children.start(process.command('check_parity', *args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=process.child_env())
    if child is None:
      log.write('# not started: this job was interrupted\n')
      return 128 + children.stopped
    try:
      for line in child.stdout:
        log.write(line)
        log.flush()
        if echo:
          progress.say(line.rstrip('\n'))
        last_line = line.strip() or last_line
      code = child.wait()
    finally:
      children.done(child)
  report = (user_files.read_json_object(os.path.join(case_dir, PARITY_JSON))
            if code in VERDICT_CODES else None)
  atomic.atomic_write_json(os.path.join(case_dir, CASE_JSON), {
      'name': case.name, 'file': case.path, 'digest': case.digest, 'pitfall': case.pitfall,
      'args': args, 'exit_code': code, 'verdict': (report or {}).get('verdict'),
      'last_line': last_line,
      'seconds': round(time.monotonic() - started, 1), 'finished': _now(),
      'host': socket.gethostname()})
  return code


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def run_local(cases, root, parallel, on_done, overwrite=False):
  """Runs every case on this host, `parallel` at a time, the matched ones first (the
  pitfalls then copy their runs), calling `on_done(case, exit code)` as each ends;
  returns {case name: exit code}."""
  order = sorted(cases, key=lambda c: c.pitfall is not None)  # stable: index order kept
  children = Children()
  codes = {}
  with children.forwarding(), concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    running = {pool.submit(run_case, case, root, children, overwrite, False): case
               for case in order}
    pending = set(running)
    while pending:
      # A timeout, so that the main thread passes signals on while cases run.
      done, pending = concurrent.futures.wait(pending, timeout=0.5,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        case = running[future]
        codes[case.name] = future.result()
        on_done(case, codes[case.name])
  return codes
