"""The parity report: the console table, parity.md, parity.json and parity.png.

TensorFlow-free; it formats what parity.compare returned.
"""

import os

import numpy as np

from tf1compat.judge import calibration
from tf1compat.judge import events
from tf1compat.judge import framework_differences
from tf1compat.runs import atomic
from tf1compat.runs import batch_record
from tf1compat.runs import run_files
from tf1compat.runs import runlog


def _fmt(value):
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.3g}'
  return str(value)


def _ratio(value):
  return '-' if value is None else f'{value:.2g}x'


def calibration_line(report):
  """One line on how the tiers were judged (the control, the horizon, the multiple)."""
  envelope, tol = report.get('calibration'), report['tolerances']
  if not envelope:
    return (f'uncalibrated: fixed tolerances over the first {tol["parity_steps"]} steps '
            '(give a control run to calibrate them)')
  controls = envelope['controls']
  which = (f'control {controls[0]}' if len(controls) == 1 else
           f'controls {", ".join(controls)} (the widest at each step)')
  return (f'calibrated by {which}: judged up to step '
          f'{envelope["loss_horizon"]} (losses) and {envelope["weight_horizon"]} (weights), '
          f'limit {tol["envelope_multiple"]:g}x the control\'s divergence')


def device_line(report):
  """Where each run computed: a GPU host whose runs fell back to the CPU shows it here."""
  devices = {r['label']: r.get('device') or 'unknown' for r in report['runs']}
  if len(set(devices.values())) == 1:
    return f'device: {next(iter(devices.values()))} (every run)'
  return 'devices: ' + ', '.join(f'{label} {device}' for label, device in devices.items())


def inputs_text(inputs):
  """What the input digests say of a pair (config_lint.inputs), in a sentence."""
  n, first, have = inputs['compared_steps'], inputs['first_differing_step'], inputs['with_digests']
  where = f'{batch_record.BATCHES_DIR}/{batch_record.DIGESTS_CSV}'
  if not n:
    why = ('neither run hashed its batches' if not have else
           f'only {have[0]} hashed its batches' if len(have) == 1 else
           'no step hashed by both runs')
    return f'inputs not compared ({why})'
  if first is None:
    return f'the same input at every one of {n} steps (digests in {where})'
  return (f'the input batches differ from step {first} ({inputs["differing_steps"]} of {n} '
          f'steps; digests in {where}): the runs did not train on the same data')


def _lacking_text(left_out):
  """'no C in either run; no D in LABEL' of {name: labels of the runs without it}."""
  lacking = {}
  for name, labels in left_out.items():
    lacking.setdefault('either run' if len(labels) > 1 else labels[0], []).append(name)
  return '; '.join(f'no {", ".join(names)} in {who}' for who, names in lacking.items())


def judged_text(judged, left_out):
  """'judged what both runs have: A, B (no C in either run; no D in LABEL)' of a tier's
  judged names and left-out {name: labels of the runs without it}."""
  text = f'judged what both runs have: {", ".join(judged) or "nothing"}'
  return f'{text} ({_lacking_text(left_out)})' if left_out else text


def _not_compared_text(pair):
  """'not compared (no A in LABEL; no B, C in either run)': the lint fields of a pair that
  one run or both do not record."""
  left_out = {field['field']: [pair[f'{side}_label'] for side in ('reference', 'other')
                               if field[side] is None]
              for field in pair['not_compared']}
  return f'not compared ({_lacking_text(left_out)})'


def _pair_notes(pair):
  """The console's lines on what a pair was judged on, where it is not everything: the
  input digests where a run hashed its batches, the series and running means both runs
  have, the lint fields one run lacks."""
  lines = []
  if pair['inputs']['with_digests']:
    lines.append(f'  inputs: {inputs_text(pair["inputs"])}')
  curves, semantics = pair['curve_tier'], pair['semantics_tier']
  if curves['left_out']:
    lines.append(f'  curves: {judged_text(curves["judged_series"], curves["left_out"])}')
  if semantics['left_out']:
    lines.append(f'  running means: '
                 f'{judged_text(semantics["judged_metrics"], semantics["left_out"])}')
  if pair['not_compared']:
    lines.append(f'  config lint: {_not_compared_text(pair)}')
  return lines


def _lint_note(difference):
  if 'step' in difference:
    return f'changes the math: they differ from step {difference["step"]}'
  if difference.get('setting'):
    return 'a setting: named, the tiers decide'
  if difference.get('version_default'):
    return "a version's default: named, its rounding a framework difference the tiers judge"
  return 'numerically equivalent' if difference['equivalent'] else 'changes the math'


def _parting_text(parting):
  if parting['loss_step'] is None and parting['weight_step'] is None:
    return 'never part'
  loss = ('losses equal throughout' if parting['loss_step'] is None else
          f'loss from step {parting["loss_step"]} ({parting["loss_difference"]:.1e})')
  weights = ('weights equal at every snapshot' if parting['weight_step'] is None else
             f'weights at snapshot {parting["weight_step"]} ({parting["first_variable"]} '
             f'first, up to {parting["weight_difference"]:.1e})')
  return f'{loss}; {weights}'


def ladder_lines(report):
  """The migration ladder (check_parity --legacy_python): one line per rung, in order."""
  lines = ['migration ladder (each rung judged against the reference stack\'s envelope):']
  for number, rung in enumerate(report.get('ladder') or (), start=1):
    versions = rung['versions']
    inside = {None: 'uncalibrated', True: 'inside the envelope',
              False: 'outside the envelope'}[rung['inside_envelope']]
    if not rung['step_tier_judged']:
      inside += ' (step tier reported, not judged: ' + ', '.join(
          sorted(set(rung['framework_differences']) & framework_differences.STEP_BREAKING)) + ')'
    lines.append(
        f'  rung {number}: {rung["from"]} -> {rung["to"]} (TensorFlow '
        f'{versions["TensorFlow"][0]} -> {versions["TensorFlow"][1]}, '
        f'{versions["Keras implementation"][0]} -> {versions["Keras implementation"][1]}): '
        f'{rung["verdict"]}, {_ratio(rung["envelope_ratio"])} the envelope, {inside}; '
        f'{_parting_text(rung["parting"])}')
  return lines


def summary_lines(report):
  """The short table and verdict that compare_runs and check_parity print.

  `x envelope` is the port's worst divergence over the control's at the judged steps
  (a PASS needs at most envelope_multiple); `identical` says whether the pair is bit
  for bit equal, which is reported, never required.
  """
  lines = [f'{"pair":<32} {"step max rel":>12} {"weight max rel":>14} {"x envelope":>10} '
           f'{"curve":>5} {"semantics":>9} {"identical":>9}  verdict']
  for pair in report['pairs']:
    name = f'{pair["reference_label"]} vs {pair["other_label"]}'
    tiers = pair['tiers']
    step_note = '' if tiers['step']['judged'] else '*'
    lines.append(
        f'{name[:32]:<32} {_fmt(pair["step_tier"]["max_relative_difference"]) + step_note:>12} '
        f'{_fmt(pair["weight_tier"]["max_relative_difference"]) + step_note:>14} '
        f'{_ratio(pair["envelope_ratio"]):>10} '
        f'{"ok" if tiers["curve"]["passed"] else "FAIL":>5} '
        f'{"ok" if tiers["semantics"]["passed"] else "FAIL":>9} '
        f'{"yes" if pair["bit_identical"] else "no":>9}  {pair["verdict"]}')
    lines += _pair_notes(pair)
    for p in pair['pitfalls']:
      margin = f' [{_ratio(p["margin"])} what correct runs show]' if p['margin'] else ''
      lines.append(f'  {p["kind"]} {p["name"]}: {p["evidence"]}{margin}')
      lines.append(f'    fix: {p["fix"]}')
    if pair['verdict'] == 'FAIL' and not pair['pitfalls']:
      lines.append('  no catalogued pitfall fits the evidence; see parity.md')
    lines += where_lines(pair.get('where'))
  if any(not pair['tiers']['step']['judged'] for pair in report['pairs']):
    lines.append('* step tier reported, not judged: a known framework difference (parity.md)')
  if report.get('ladder'):
    lines += ladder_lines(report)
  lines.append(calibration_line(report))
  lines.append(device_line(report))
  lines.append(f'VERDICT: {report["verdict"]}')
  return lines


def where_lines(where):
  """The console's lines on where inside the replayed step a pair parts (none when it
  was not localized at all)."""
  if where is None:
    return []
  if not where['judged']:
    return [f'  where: not localized: {where["reason"]}']
  lines = [f'  where: {where["summary"]}']
  lines += [f'    {"DISAGREES" if p["verdict"] == "disagrees" else p["verdict"]}: {p["note"]}'
            for p in where.get('pitfalls', [])]
  return lines


def _where_section(where):
  """parity.md's section on where inside the replayed step the pair parts."""
  if where is None:
    return []
  out = ['', '### Where the codes part', '']
  if not where['judged']:
    return out + [f'Not localized: {where["reason"]}.']
  how = ('against the control\'s difference at each item' if where['calibrated']
         else 'against --step_rtol (no control)')
  out += [f'The step-{where["step"]} probes of both runs compared item by item, {how}: '
          f'**{where["summary"]}**.']
  if where['then']:
    out += ['', 'Then: ' + '; '.join(where['then']) + '.']
  out += ['', '| stage | items | outside | worst item | difference | control | limit |',
          '|---|---|---|---|---|---|---|']
  for stage, info in where['stages'].items():
    rows = info['rows']
    if not rows:
      continue
    worst = max(rows, key=lambda row: row['ratio'])
    out.append(f'| {stage} | {len(rows)} | {len(info["outside"])} | {worst["name"]} | '
               f'{worst["difference"]:.2e} | {_fmt(worst["control"])} | '
               f'{worst["limit"]:.2e} |')
  unpaired = [name for info in where['stages'].values() for name in info['unpaired']]
  excluded = [f'{stage} ({", ".join(info["excluded"])})' for stage, info in where['stages'].items()
              if info['excluded']]
  if excluded:
    out += ['', f'Reported, not judged (a known framework difference): {"; ".join(excluded)}.']
  if unpaired:
    out += ['', f'Not compared (in one probe only): {", ".join(unpaired)}.']
  for p in where.get('pitfalls', []):
    out += ['', f'- **{p["name"]}** {p["verdict"]}: {p["note"]}.']
  return out


def _step_section(pair, tol):
  steps = pair['step_tier']
  out = ['', f'### Step tier ({"judged" if pair["tiers"]["step"]["judged"] else "reported only"})',
         '', f'Batch loss over the first {steps["steps"]} steps (step 1 uses the initial '
         'weights):', '', '| step | reference | other | relative difference | limit | x envelope |',
         '|---|---|---|---|---|---|']
  ratios = steps['envelope_ratio'] or [None] * steps['steps']
  out += [f'| {i + 1} | {a:.8g} | {b:.8g} | {d:.2e} | {lim:.2e} | {_ratio(r)} |'
          for i, (a, b, d, lim, r) in enumerate(zip(
              steps['reference_loss'], steps['other_loss'], steps['relative_difference'],
              steps['limit'], ratios))]
  out += ['', f'Max relative difference {_fmt(steps["max_relative_difference"])}, '
          f'{_ratio(steps["max_envelope_ratio"])} the envelope; first step over: '
          f'{_fmt(steps["first_step_over"])}.']
  weights = pair['weight_tier']
  if weights['common_steps']:
    out += ['', f'Weights (||a - b|| / ||a|| per variable) at the common snapshot steps '
            f'{weights["common_steps"]}, judged at {weights["judged_steps"]}: max '
            f'{_fmt(weights["max_relative_difference"])}, '
            f'{_ratio(weights["max_envelope_ratio"])} the envelope; first over: '
            f'{_fmt(weights["first_over"])}.']
  else:
    out += ['', 'The runs have no common snapshot step: weights not compared (align '
            '--snapshot_steps to compare them).']
  if weights.get('excluded'):
    out.append(f'Reported, not judged (framework difference): {", ".join(weights["excluded"])}.')
  if weights['per_step']:
    out += ['', '| step | judged | max relative difference | limit | worst variable |',
            '|---|---|---|---|---|']
    for entry in weights['per_step']:
      worst = max(entry['variables'].items(), key=lambda kv: kv[1], default=('-', 0.0))
      out.append(f'| {entry["step"]} | {"yes" if entry["judged"] else "no"} | '
                 f'{entry["max_relative_difference"]:.2e} | {_fmt(entry.get("limit"))} | '
                 f'{worst[0]} ({worst[1]:.2e}) |')
  return out


def _ladder_section(report):
  """parity.md's migration ladder table (check_parity --legacy_python), or nothing."""
  if not report.get('ladder'):
    return []
  out = ['## Migration ladder', '',
         'TensorFlow 1.15 -> tf.compat.v1 on TensorFlow 2.21 -> the TF2 port. Every rung is '
         'judged against the envelope of the reference stack (tf.compat.v1 on TensorFlow '
         '2.21, its control run); the first rung is the same loop from the same initial '
         'weights on two TensorFlows, on the same batches at every step.', '',
         '| rung | from | to | TensorFlow | Keras | where they part | step max rel | '
         'weight max rel | x envelope | identical | verdict |',
         '|---|---|---|---|---|---|---|---|---|---|---|']
  for number, rung in enumerate(report['ladder'], start=1):
    versions = rung['versions']
    note = '' if rung['step_tier_judged'] else ' (reported: ' + ', '.join(
        rung['framework_differences']) + ')'
    out.append(
        f'| {number} | `{rung["from"]}` | `{rung["to"]}` | '
        f'{versions["TensorFlow"][0]} -> {versions["TensorFlow"][1]} | '
        f'{versions["Keras implementation"][0]} {versions["Keras"][0]} -> '
        f'{versions["Keras implementation"][1]} {versions["Keras"][1]} | '
        f'{_parting_text(rung["parting"])} | {_fmt(rung["step_max_relative_difference"])} | '
        f'{_fmt(rung["weight_max_relative_difference"])}{note} | '
        f'{_ratio(rung["envelope_ratio"])} | {"yes" if rung["bit_identical"] else "no"} | '
        f'{rung["verdict"]} |')
  return out + ['']


def _markdown(report):
  tol = report['tolerances']
  out = ['# Parity report', '', f'**Verdict: {report["verdict"]}**', '',
         'Runs (compared pairwise against the first):', '']
  out += [f'- `{r["label"]}` ({r["steps"]} steps): `{r["path"]}`' for r in report['runs']]
  out += ['', calibration_line(report) + '.', '']
  envelope = report.get('calibration')
  if envelope:
    out += ['Control runs: ' + ', '.join(f'`{path}`' for path in report['controls']) + '. A '
            'control is the reference run again: from initial weights moved by one ulp each, '
            'under another reduction order (`control`); and, before a FAIL that rests on '
            'numbers alone stands, with every weight moved by one ulp after every step '
            '(`control_per_step`) and with oneDNN turned the other way (`control_kernels`). '
            'The widest of their divergences from the reference is the envelope of correct '
            'runs:', '', '| step | control loss divergence (running max) |', '|---|---|']
    loss = envelope['loss']
    shown = sorted({s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, len(loss)) if s <= len(loss)})
    out += [f'| {s} | {loss[s - 1]:.2e} |' for s in shown]
    out += ['', '| snapshot step | control weight divergence (running max) |', '|---|---|']
    out += [f'| {s} | {v:.2e} |' for s, v in sorted(envelope['weights'].items(),
                                                    key=lambda kv: int(kv[0]))]
    out.append('')
  out += ['Tolerances: ' + ', '.join(f'{k}={v}' for k, v in tol.items()), '']
  out += _ladder_section(report)
  for pair in report['pairs']:
    out += [f'## {pair["reference_label"]} vs {pair["other_label"]}: {pair["verdict"]}', '',
            f'Bit for bit identical: {"yes" if pair["bit_identical"] else "no"} (reported, '
            f'not required). Worst divergence over the envelope: '
            f'{_ratio(pair["envelope_ratio"])} (limit {tol["envelope_multiple"]:g}x).', '']
    out += ['### Config lint', '']
    if pair['lint']:
      out += ['| field | reference | other | note |', '|---|---|---|---|']
      out += [f'| {d["field"]} | {_fmt(d["reference"])} | {_fmt(d["other"])} | '
              f'{_lint_note(d)} |' for d in pair['lint']]
    else:
      out.append('The manifests agree on every field that changes the math.')
    if pair['not_compared']:
      out += ['', f'Fields one run or both do not record: {_not_compared_text(pair)}.']
    out += ['', f'Inputs: {inputs_text(pair["inputs"])}.']
    out += ['', 'Versions (recorded, not judged): ' + '; '.join(
        f'{v["field"]} {_fmt(v["reference"])}' + ('' if v['same'] else f' vs {_fmt(v["other"])}')
        for v in pair['versions']) + '.']
    out += _step_section(pair, tol)
    out += ['', '### Curve tier', '']
    curves = pair['curve_tier']
    out += [f'Series: {judged_text(curves["judged_series"], curves["left_out"])}.', '']
    series = curves['series']
    if series:
      out += ['| series | reference | other | difference | band | ok |',
              '|---|---|---|---|---|---|']
      for name, s in series.items():
        out.append(f'| {name} | {", ".join(f"{v:.4f}" for v in s["reference"])} | '
                   f'{", ".join(f"{v:.4f}" for v in s["other"])} | '
                   f'{", ".join(f"{v:.2e}" for v in s["difference"])} | '
                   f'{", ".join(f"{v:.3g}" for v in s["limit"])} | '
                   f'{"yes" if s["passed"] else "NO"} |')
    else:
      out.append('No common epochs.')
    out += ['', '### Semantics tier', '']
    semantics = pair['semantics_tier']
    out += [f'Running means: '
            f'{judged_text(semantics["judged_metrics"], semantics["left_out"])}.', '']
    for label, info in pair['semantics_tier']['metrics'].items():
      for value_name, m in info.items():
        out.append(f'- `{label}` running {value_name}: {m["kind"]} (error vs per-epoch mean '
                   f'{m["error_per_epoch"]:.1e}, vs mean since step 1 '
                   f'{m["error_since_start"]:.1e})')
    for label, state in pair['semantics_tier']['batch_norm'].items():
      if state is not None:
        out.append(f'- `{label}` BatchNorm moving statistics moved: '
                   f'{"all" if state["all_moved"] else "some" if state["any_moved"] else "none"}')
    dropout = pair['semantics_tier']['reference_dropout']
    if dropout is not None:
      out.append(f'- `{pair["reference_label"]}` Dropout acted in training: '
                 f'{"yes" if dropout["active"] else "no"} (its control, with other masks, '
                 f'parts by {dropout["control_first_step_difference"]:.1e} at step 1)')
    if pair['framework_differences']:
      out += ['', '### Known framework differences (not mistakes)', '']
      for name, details in pair['framework_differences'].items():
        out.append(f'- **{name}**: {framework_differences.FRAMEWORK_DIFFERENCES[name]} Measured: '
                   f'{_fmt(details)}')
    if pair['pitfalls']:
      out += ['', '### Pitfalls that fit the evidence', '']
      for p in pair['pitfalls']:
        margin = (f' Margin: {_ratio(p["margin"])} what correct runs show.' if p['margin']
                  else '')
        out.append(f'- **{p["name"]}**: {p["evidence"]}.{margin} Fix: {p["fix"]}')
    elif pair['verdict'] == 'FAIL':
      out += ['', 'No catalogued pitfall fits the evidence.']
    out += _where_section(pair.get('where'))
    out.append('')
  out += ['![loss curves and step-wise difference](parity.png)', '']
  return '\n'.join(out)


def _plot(report, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, (curves, diffs) = pyplot.subplots(1, 2, figsize=(12, 4.5))
  for entry in report['runs']:
    steps = runlog.read_csv(os.path.join(entry['path'], run_files.STEPS_CSV))
    curves.plot(steps['step'], steps['loss'], label=entry['label'], linewidth=1)
  curves.set_xlabel('step')
  curves.set_ylabel('batch loss')
  curves.set_title('Training loss')
  curves.legend()
  tol, envelope = report['tolerances'], report.get('calibration')
  if envelope:
    band = tol['envelope_multiple'] * np.maximum(envelope['loss'], calibration.ROUNDING_FLOOR)
    x = np.arange(1, len(band) + 1)
    diffs.fill_between(x, 1e-12, band, color='green', alpha=0.12,
                       label=f'{tol["envelope_multiple"]:g}x control envelope')
    diffs.semilogy(x, np.maximum(envelope['loss'], 1e-12), color='green', linewidth=0.8,
                   linestyle=':', label='control vs reference')
    diffs.axvline(envelope['loss_horizon'] + 0.5, color='grey', linestyle='--',
                  label='horizon (judged before)')
  else:
    diffs.axhline(tol['step_rtol'], color='red', linestyle='--', label='step_rtol')
    diffs.axvspan(0.5, tol['parity_steps'] + 0.5, color='grey', alpha=0.15,
                  label='step tier window')
  for pair in report['pairs']:
    rel = np.asarray(pair['step_tier']['whole_run_relative_difference'])
    diffs.semilogy(np.arange(1, len(rel) + 1), np.maximum(rel, 1e-12), linewidth=1,
                   label=f'{pair["other_label"]} vs {pair["reference_label"]}')
  diffs.set_xlabel('step')
  diffs.set_ylabel('relative loss difference (1e-12 = equal)')
  diffs.set_title('Step-wise difference')
  diffs.legend(fontsize='small')
  figure.tight_layout()
  figure.savefig(path + '.tmp.png', dpi=100)
  pyplot.close(figure)
  os.replace(path + '.tmp.png', path)


def write_report(report, output_dir):
  """Writes parity.json, parity.md, parity.png and the comparison's TensorBoard series
  (events.write_comparison) into `output_dir`; returns their paths."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {name: os.path.join(output_dir, f'parity.{name}') for name in ('json', 'md', 'png')}
  atomic.atomic_write_json(paths['json'], report)
  atomic.atomic_write_text(paths['md'], _markdown(report))
  _plot(report, paths['png'])
  paths['events'] = ', '.join(events.write_comparison(report, output_dir))
  return paths
