"""bin/parity_matrix's library: which job a call is (`run`), and the merge of what finished.

A call writes the built-in cases as flag files (matrix_cases), runs the one case its
scheduler's index names, or every case here (matrix_jobs), or merges. Each case ran, or
runs, or never ran, in ROOT/NAME. The merge reads what is there: a finished case's
parity.json (its verdict, whether it is the expected one, the port's divergence over the
envelope or the pitfall's margin and where the replay finds it), and for every other case
what became of it: running (its folder is locked), interrupted or stopped (a rerun of its
job resumes), failed as a fault (its exit code and the last line it wrote), changed since
it ran, or missing. It writes matrix.md and matrix.json; the matrix is green when every
case finished as expected. TensorFlow-free.
"""

import os

from tf1compat.judge import matrix_cases
from tf1compat.judge import matrix_jobs
from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import user_files
from tf1compat.runtime import progress

MARKDOWN = 'matrix.md'
JSON = 'matrix.json'
FINISHED = 'finished'
# What each state of an unfinished case means, for the table.
UNFINISHED = {
    'running': 'running (its folder is locked by a job)',
    'interrupted': 'interrupted by SIGINT/SIGTERM after a checkpoint: rerun its job to resume',
    'stopped': 'stopped without a word (killed, or its host lost): rerun its job to resume',
    'fault': 'failed',
    'changed': 'its case file changed since it ran: rerun its job',
    'missing': 'not started',
}
_EXIT_MEANINGS = {errors.EXIT_USAGE: 'usage or data error', errors.EXIT_NUMERIC: 'numeric fault',
                  errors.EXIT_FAULT: 'internal or device fault'}


def case_state(case, root):
  """(state, the case's record or None): FINISHED or a key of UNFINISHED."""
  case_dir = os.path.join(root, case.name)
  if not os.path.isdir(case_dir):
    return 'missing', None
  if folders.held(case_dir):
    return 'running', None
  record = user_files.read_json_object(os.path.join(case_dir, matrix_jobs.CASE_JSON))
  if record is None:
    return 'stopped', None
  if record.get('digest') != case.digest:
    return 'changed', record
  code = record.get('exit_code')
  if code in matrix_jobs.VERDICT_CODES:
    if user_files.read_json_object(os.path.join(case_dir, matrix_jobs.PARITY_JSON)) is None:
      return 'stopped', record
    return FINISHED, record
  if code in matrix_jobs.INTERRUPTED_CODES:
    return 'interrupted', record
  return 'fault', record


def _matched_row(case, report):
  calibration = report.get('calibration') or {}
  ratios = [p['envelope_ratio'] for p in report['pairs'] if p['envelope_ratio'] is not None]
  return {
      'case': case.name, 'verdict': report['verdict'],
      'as_expected': report['verdict'] == 'PASS',
      'envelope_ratio': max(ratios) if ratios else None,
      'bit_identical': all(p['bit_identical'] for p in report['pairs']),
      'step_judged': all(p['tiers']['step']['judged'] for p in report['pairs']),
      'curve_band_ratio': max(s['band_ratio'] for p in report['pairs']
                              for s in p['curve_tier']['series'].values()),
      'loss_horizon': calibration.get('loss_horizon'),
      'weight_horizon': calibration.get('weight_horizon'),
      'steps': report['runs'][0]['steps'],
  }


def _where(report, pitfall):
  """(where the replay finds the failed pair part, its difference over the control's,
  the catalogue's verdict on it) from the report's localization (localize.py)."""
  where = next((pair.get('where') for pair in report['pairs'] if pair['verdict'] == 'FAIL'),
               None) or {'judged': False}
  if not where['judged']:
    return 'not localized', None, None
  first = where['first']
  verdicts = {p['name']: p['verdict'] for p in where.get('pitfalls', [])}
  found = f'{first["stage"]} at {first["name"]}' if first else 'nothing'
  return found, first['ratio'] if first else None, verdicts.get(pitfall)


def _pitfall_row(case, report):
  pitfall = case.pitfall
  named = [p for pair in report['pairs'] for p in pair['pitfalls']]
  first = named[0] if named else None
  where, where_ratio, agreement = _where(report, pitfall)
  named_first = bool(first and first['name'] == pitfall)
  return {'case': case.name, 'pitfall': pitfall, 'verdict': report['verdict'],
          'as_expected': report['verdict'] == 'FAIL' and named_first,
          'named_first': named_first,
          'judged_by': first['judged_by'] if first else None,
          'margin': first['margin'] if first else None,
          'named': [p['name'] for p in named],
          'where': where, 'where_ratio': where_ratio, 'where_agreement': agreement}


def listed_cases(root):
  """The cases the jobs under `root` recorded (ROOT/cases.json) as CaseFiles without
  their flags; errors.UsageError where no job recorded them."""
  listed = user_files.read_json_object(os.path.join(root, matrix_jobs.CASES_JSON))
  if not listed:
    raise errors.UsageError(f'--output_root={root} holds no {matrix_jobs.CASES_JSON}: no job '
                            'of a matrix started there; pass --cases=FOLDER to say which '
                            'cases to expect')
  return [matrix_cases.CaseFile(c['name'], c['file'], (), c['pitfall'], c['digest'])
          for c in listed['cases']]


def _row(case, root):
  """(state, the case's row): the finished case's, else the unfinished one's."""
  state, record = case_state(case, root)
  if state != FINISHED:
    code = (record or {}).get('exit_code') if state in ('fault', 'interrupted') else None
    return state, {
        'case': case.name, 'pitfall': case.pitfall, 'state': state, 'exit_code': code,
        'meaning': _EXIT_MEANINGS.get(code, UNFINISHED[state]),
        'last_line': (record or {}).get('last_line') if code is not None else None,
        'log': os.path.join(root, case.name, matrix_jobs.LOG)}
  report = user_files.read_json_object(os.path.join(root, case.name, matrix_jobs.PARITY_JSON))
  row = _pitfall_row(case, report) if case.pitfall else _matched_row(case, report)
  row['seconds'] = record.get('seconds')
  return state, row


def case_line(case, root):
  """One console line on how `case` ended."""
  state, row = _row(case, root)
  if state != FINISHED:
    return f'{case.name}: {state}, {row["meaning"]}' + (
        f' ({row["last_line"]})' if row['last_line'] else '')
  named = f', named: {", ".join(row["named"]) or "nothing"}' if case.pitfall else ''
  return (f'{case.name}: {row["verdict"]}{named}, '
          f'{"as" if row["as_expected"] else "NOT as"} expected ({case.expected}) '
          f'in {row["seconds"]:.0f} s')


def merge(root, cases):
  """The matrix of `cases` (matrix_cases.CaseFile) under `root` as it stands, written to
  ROOT/matrix.md and ROOT/matrix.json: {'matched': rows, 'pitfalls': rows,
  'unfinished': rows, 'cases', 'finished', 'complete', 'green'}."""
  matched, pitfall_rows, unfinished = [], [], []
  for case in cases:
    state, row = _row(case, root)
    if state != FINISHED:
      unfinished.append(row)
    else:
      (pitfall_rows if case.pitfall else matched).append(row)
  finished = len(matched) + len(pitfall_rows)
  result = {'matched': matched, 'pitfalls': pitfall_rows, 'unfinished': unfinished,
            'cases': len(cases), 'finished': finished, 'complete': not unfinished,
            'green': not unfinished and all(r['as_expected'] for r in matched + pitfall_rows)}
  atomic.atomic_write_json(os.path.join(root, JSON), result)
  atomic.atomic_write_text(os.path.join(root, MARKDOWN), markdown(result))
  return result


def summary_line(result):
  """One line: how many cases finished, how many as expected, what is left."""
  off = [r['case'] for r in result['matched'] + result['pitfalls'] if not r['as_expected']]
  line = (f'{result["finished"]} of {result["cases"]} cases finished, '
          f'{result["finished"] - len(off)} as expected')
  if off:
    line += f'; not as expected: {", ".join(off)}'
  by_state = {}
  for row in result['unfinished']:
    by_state.setdefault(row['state'], []).append(row['case'])
  for state, names in by_state.items():
    line += f'; {state}: {", ".join(names)}'
  return line + ('; green' if result['green'] else '')


def selected_builtin(names):
  """The built-in cases named (all for None)."""
  return [case for case in matrix_cases.CASES if not names or case.name in names]


def _case_folder(cfg):
  """The folder of case files --cases names, or None for built-in cases."""
  names = cfg.cases or ()
  if len(names) == 1 and names[0] not in matrix_cases.CASE_NAMES:
    return names[0]
  return None


def run(cfg, environ):
  """parity_matrix for config.MatrixConfig `cfg` and the scheduler's `environ`; returns
  (exit code, the merged matrix or None).

  --write_cases: the built-in cases as flag files. --merge: the table of what has
  finished. A case index (--case_index, JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID): that
  case of the --cases folder, its exit code. Otherwise every case here, then the table.
  """
  folder = _case_folder(cfg)
  root = cfg.output_root
  if cfg.write_cases:
    if folder:
      raise errors.UsageError('--write_cases writes the built-in cases: --cases names them '
                              f'({", ".join(matrix_cases.CASE_NAMES[:3])}, ...), not a folder')
    folders.check_output(cfg.write_cases, '--write_cases', folder=True)
    written = matrix_cases.write_cases(cfg.write_cases, selected_builtin(cfg.cases),
                                       cfg.pitfalls)
    progress.say(f'wrote {len(written)} cases to {cfg.write_cases}: indexes 0 to '
                 f'{len(written) - 1} (Kubernetes: completions: {len(written)}; Slurm: '
                 f'--array=0-{len(written) - 1})')
    return errors.EXIT_OK, None
  folders.check_output(root, '--output_root', folder=True)
  if cfg.merge:
    cases = matrix_cases.read_cases(folder) if folder else listed_cases(root)
    result = merge(root, cases)
    return (errors.EXIT_OK if result['green'] else errors.EXIT_PARITY_FAIL), result
  index, source = matrix_jobs.scheduler_index(cfg.case_index, environ)
  if index is not None:
    if not folder:
      raise errors.UsageError(
          f'{source}={index} runs one case of a folder of case files: write the built-in '
          'matrix with parity_matrix --write_cases=FOLDER, then pass --cases=FOLDER')
    cases = matrix_cases.read_cases(folder)
    case = matrix_jobs.pick(cases, index, source)
    matrix_jobs.record_case_list(cases, root)
    progress.say(f'case {index} ({source}) of {len(cases)}: {case.name}, '
                 f'expected {case.expected}; folder {os.path.join(root, case.name)}')
    children = matrix_jobs.Children()
    with children.forwarding():
      return matrix_jobs.run_case(case, root, children, cfg.overwrite), None
  folders.lock_folder(root, '--output_root')
  cases = (matrix_cases.read_cases(folder) if folder else matrix_cases.write_cases(
      os.path.join(root, 'cases'), selected_builtin(cfg.cases), cfg.pitfalls, replace=True))
  matrix_jobs.record_case_list(cases, root)
  progress.say(f'{len(cases)} cases, {cfg.parallel} at a time, into {root}')
  done = []
  def on_done(case, _):
    done.append(case)
    progress.say(f'[{len(done)}/{len(cases)}] {case_line(case, root)}')
  codes = matrix_jobs.run_local(cases, root, cfg.parallel, on_done, cfg.overwrite)
  result = merge(root, cases)
  interrupted = [code for code in codes.values() if code in matrix_jobs.INTERRUPTED_CODES]
  if interrupted:
    return interrupted[0], result
  return (errors.EXIT_OK if result['green'] else errors.EXIT_PARITY_FAIL), result


def _num(value, fmt='{:.2g}'):
  return '-' if value is None else fmt.format(value)


def markdown(result):
  """The matrix as Markdown: its summary line, then the matched cases, the pitfall
  cases and the unfinished ones, a table each (what docs/false-alarms.md shows)."""
  out = [summary_line(result), '']
  if result['matched']:
    out += ['| case | steps | verdict | port x envelope | bit-identical | step tier | '
            'horizon (loss/weights) | curves x band | seconds |',
            '|---|---|---|---|---|---|---|---|---|']
  for r in result['matched']:
    out.append(f'| {r["case"]} | {r["steps"]} | {r["verdict"]} | {_num(r["envelope_ratio"])} | '
               f'{"yes" if r["bit_identical"] else "no"} | '
               f'{"judged" if r["step_judged"] else "reported"} | '
               f'{r["loss_horizon"]}/{r["weight_horizon"]} | {_num(r["curve_band_ratio"])} | '
               f'{_num(r.get("seconds"), "{:.0f}")} |')
  if result['pitfalls']:
    out += ['', '| case | pitfall | verdict | named first | judged by | margin over correct runs '
            '| where (the replayed step) | x control | catalogue | seconds |',
            '|---|---|---|---|---|---|---|---|---|---|']
  for r in result['pitfalls']:
    out.append(f'| {r["case"]} | {r["pitfall"]} | {r["verdict"]} | '
               f'{"yes" if r["named_first"] else "no: " + ", ".join(r["named"])} | '
               f'{r["judged_by"] or "-"} | '
               f'{_num(r["margin"], "{:.3g}x") if r["margin"] is not None else "exact"} | '
               f'{r["where"]} | {_num(r["where_ratio"], "{:.3g}x")} | '
               f'{r["where_agreement"] or "-"} | {_num(r.get("seconds"), "{:.0f}")} |')
  if result['unfinished']:
    out += ['', '| case | state | exit code | what it means | last line |', '|---|---|---|---|---|']
  for r in result['unfinished']:
    last = (r['last_line'] or '-').replace('|', '\\|')
    out.append(f'| {r["case"]} | {r["state"]} | {_num(r["exit_code"], "{}")} | {r["meaning"]} | '
               f'{last} |')
  return '\n'.join(out) + '\n'
