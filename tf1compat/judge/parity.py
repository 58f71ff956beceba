"""Judgement of finished run directories: loads them, judges each pair, gives the verdict.

TensorFlow-free: it reads what runners wrote (runlog's contract) and judges it with
numpy. Runs are compared pairwise against the first (the reference, normally the
legacy graph run) on the tiers (tiers.py); a pair that fails is explained by the
pitfalls that fit (diagnosis.py). With control runs (calibration.py) the step, weight
and curve tiers are judged against the widest measured divergence of correct runs;
without one, against fixed tolerances over the first steps. report.py writes the result.
"""

import collections
import dataclasses
import hashlib
import os

import numpy as np

from tf1compat.judge import calibration
from tf1compat.judge import config_lint
from tf1compat.judge import diagnosis
from tf1compat.judge import framework_differences
from tf1compat.judge import tiers
from tf1compat.runs import batch_record
from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runs import user_files


@dataclasses.dataclass
class Tolerances:
  """How the tiers judge (defaults measured: docs/parity.md).

  With a control run: step and weight tiers pass while the divergence stays within
  `envelope_multiple` times the control's (floored at float32's rounding step), up to
  the horizon where the control's own divergence passes `horizon_level`; the curve band
  is `curve_multiple` times the control's curve difference, never below the fixed bands.
  Without one: `step_rtol` / `weight_rtol` over the first `parity_steps` steps.
  """
  parity_steps: int = 10
  step_rtol: float = 1e-5
  weight_rtol: float = 1e-3
  curve_rtol: float = 0.05
  accuracy_atol: float = 0.05
  envelope_multiple: float = calibration.ENVELOPE_MULTIPLE
  horizon_level: float = calibration.HORIZON_LEVEL
  curve_multiple: float = calibration.CURVE_MULTIPLE


@dataclasses.dataclass
class Run:
  """A finished run directory, loaded."""
  path: str
  manifest: dict
  steps: dict
  epochs: dict
  snapshot_steps: list
  # A weight_map.WeightMap giving the run's variables the names of the others', or None.
  weight_map: object = None

  @property
  def label(self):
    return f'{self.manifest.get("runner", "?")}:{os.path.basename(os.path.normpath(self.path))}'

  def flag(self, name, default=None):
    return self.manifest.get('flags', {}).get(name, default)

  def snapshot(self, step):
    path = run_files.snapshot_path(self.path, step)
    weights = user_files.load_npz(path, '', "rerun the run's command with --overwrite to "
                                  'write it again')
    return self.weight_map.apply(weights, self.path) if self.weight_map else weights

  def start_digest(self):
    """sha256 of the weights the run really started from (its step-0 snapshot), or None.

    A run's manifest names its --init_weights file only when one was given; two runs
    seeded alike but initialised by different frameworks start apart all the same.
    """
    if 0 not in self.snapshot_steps:
      return None
    digest = hashlib.sha256()
    for key, value in sorted(self.snapshot(0).items()):
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()

  def input_digests(self):
    """{step: sha256 of its input batch} of the steps a recorded loop hashed
    (batches/digests.csv), or None where it hashed none."""
    return batch_record.read_digests(self.path) or None


def load_run(path, weight_map=None):
  """Loads a complete run directory; its snapshots renamed by `weight_map` when given.

  Raises errors.UsageError for a missing or unfinished one; for one whose records do not
  cover its global step (steps.csv rows 1..global_step, epochs.csv rows of the epochs
  done, the snapshots its flags ask for), which a copy cut short or a hand edit leaves;
  and for one whose run.json does not say which Adam and BatchNorm kernels it computed
  with (an older runner's): the framework differences are read from there, never guessed.
  """
  if not os.path.isdir(path):
    raise errors.UsageError(f'{path}: no such run directory')
  manifest = runlog.read_manifest(path)
  if manifest is None:
    raise errors.UsageError(
        f'{path}: no {run_files.RUN_JSON}; it is not a run directory written by '
        'train_graph or train_eager')
  status = manifest.get('status')
  if status != runlog.STATUS_COMPLETE:
    raise errors.UsageError(f'{path}: run is {status}, not complete; rerun its command to finish '
                            'it before comparing')
  steps = runlog.read_csv(os.path.join(path, run_files.STEPS_CSV))
  if not steps:
    raise errors.UsageError(f'{path}: {run_files.STEPS_CSV} is missing or empty')
  problem = framework_differences.kernels_problem(manifest)
  if problem:
    raise errors.UsageError(f'{path}: {run_files.RUN_JSON} does not say which kernels the run '
                            f'computed with ({problem}); rerun its command with this version')
  run = Run(path, manifest, steps, runlog.read_csv(os.path.join(path, run_files.EPOCHS_CSV)),
            run_files.snapshot_steps_in(path), weight_map)
  missing = _missing_records(run)
  if missing:
    raise errors.UsageError(f'{path}: an incomplete run: run.json says complete at step '
                            f'{manifest.get("global_step")}, but {missing}; rerun its command '
                            'with --overwrite to train it again')
  return run


def _numbering_problem(name, what, numbers, last):
  """What is wrong with rows numbered `numbers` that should be 1..last, or None."""
  if not np.all(np.isfinite(numbers)):
    return f'{name} holds a row without a {what} number'
  numbers = [int(n) for n in numbers]
  if numbers == list(range(1, last + 1)):
    return None
  repeated = sorted(n for n, count in collections.Counter(numbers).items() if count > 1)
  absent = sorted(set(range(1, last + 1)) - set(numbers))
  if repeated:
    return f'{name} holds {what} {repeated[0]} more than once'
  if absent:
    return (f'{name} holds {len(numbers)} rows for {last} {what}s ({what} {absent[0]} is the '
            'first missing)')
  return f'{name} holds {what}s past {last} or out of order'


def _missing_records(run):
  """What a complete run's records lack or hold twice (None when they cover it): steps.csv
  rows 1..global_step, epochs.csv rows for the epochs done, and the weight snapshots its
  flags ask for within the run (the last step always)."""
  step = run.manifest.get('global_step')
  if not isinstance(step, int) or step < 1:
    return 'it names no global step'
  spe, epochs = run.flag('steps_per_epoch'), run.flag('epochs')
  if spe and epochs and step != spe * epochs:
    return f'its flags ask for {epochs} epochs of {spe} steps ({spe * epochs} steps)'
  problem = _numbering_problem(run_files.STEPS_CSV, 'step', run.steps['step'], step)
  if problem is None and spe:
    problem = _numbering_problem(run_files.EPOCHS_CSV, 'epoch', run.epochs.get('epoch', []),
                                 step // spe)
  if problem is None and run.flag('snapshot_steps') is not None:
    wanted = {s for s in run.flag('snapshot_steps') if s <= step} | {step}
    absent = sorted(wanted - set(run.snapshot_steps))
    if absent:
      name = os.path.relpath(run_files.snapshot_path(run.path, absent[0]), run.path)
      problem = f'{name} is missing ({len(absent)} of its {len(wanted)} weight snapshots are)'
  return problem


# How a control may differ from its reference: its start is nudged by one ulp, and the
# harness turns op determinism off in it (a reduction-order change, as on a GPU); the
# per-step control's nudges are a flag (--nudge_seed) the lint does not read.
CONTROL_DIFFERENCES = frozenset({config_lint.START_FIELD, 'init-weights sha256', 'deterministic'})


def measure_envelope(reference, control, tol):
  """The calibration.Envelope of `control` against `reference`.

  Raises errors.UsageError when the control is not the reference's own run again (a
  field that changes the math differs, or it is shorter).
  """
  different = [d['field'] for d in config_lint.lint(reference, control)
               if not d['equivalent'] and d['field'] not in CONTROL_DIFFERENCES]
  if different or control.manifest.get('runner') != reference.manifest.get('runner'):
    what = ', '.join(different) or 'runner'
    raise errors.UsageError(f'{control.path}: not a control of {reference.path} ({what} '
                            'differ); a control is the reference command run again with '
                            '--init_weights nudged by one ulp (check_parity makes one)')
  if len(control.steps['loss']) < len(reference.steps['loss']):
    raise errors.UsageError(f'{control.path}: the control has fewer steps than the reference; '
                            'run it as long')
  common = sorted(set(reference.snapshot_steps) & set(control.snapshot_steps))
  weight_diffs = calibration.weight_divergence(reference.snapshot, control.snapshot, common)
  return calibration.measure(control.label, reference.steps['loss'], control.steps['loss'],
                             weight_diffs, tiers.curve_differences(reference, control),
                             tol.horizon_level)


def _measured(steps):
  return {'first_step_loss_relative_difference': steps['relative_difference'][0],
          'max_loss_relative_difference': steps['max_relative_difference'],
          'over_steps': steps['steps']}


def compare_pair(reference, other, tol, envelope=None, dropout_state=None):
  """All tiers for one pair; returns the pair's section of parity.json.

  `dropout_state` is tiers.dropout_in_training() of the reference, judged in the
  semantics tier.
  """
  lint_found = config_lint.lint(reference, other)
  differences = framework_differences.known_differences(reference, other)
  excluded = set()
  if 'bn_moving_variance' in differences:
    excluded = {k for k in reference.snapshot(reference.snapshot_steps[0])
                if k.endswith('moving_variance')}
    differences['bn_moving_variance']['measured'] = framework_differences.measure_bn_variance(
        reference, other)
  steps = tiers.step_tier(reference, other, tol, envelope)
  for name in framework_differences.STEP_BREAKING & set(differences):
    if steps['steps'] and not differences[name].get('measured'):
      differences[name]['measured'] = _measured(steps)
  weights = tiers.weight_tier(reference, other, tol, excluded, envelope)
  curves = tiers.curve_tier(reference, other, tol, envelope)
  metrics, metrics_left_out = tiers.shared_metrics(reference, other)
  semantics = {run.path: tiers.metric_semantics(run, metrics) for run in (reference, other)}
  bn_states = {run.path: tiers.batch_norm_state(run) for run in (reference, other)}
  semantics_ok = all(info['kind'] == tiers.METRICS_PER_EPOCH
                     for run_info in semantics.values() for info in run_info.values())
  bn_ok = all(state is None or state['all_moved'] for state in bn_states.values())
  step_judged = not framework_differences.STEP_BREAKING & set(differences)
  mismatches = [d for d in lint_found if not d['equivalent']]
  verdicts = {
      'config': {'judged': True, 'passed': not mismatches},
      'step': {'judged': step_judged, 'passed': steps['passed'] and weights['passed']},
      'curve': {'judged': True, 'passed': curves['passed']},
      'semantics': {'judged': True, 'passed': semantics_ok and bn_ok and (
          dropout_state is None or dropout_state['active'])},
  }
  passed = all(t['passed'] for t in verdicts.values() if t['judged'])
  named = [] if passed else diagnosis.diagnose(
      reference, other, lint_found, steps if step_judged else None,
      weights if step_judged else None, semantics, bn_states, dropout_state, curves)
  ratios = [r for r in (steps['max_envelope_ratio'], weights['max_envelope_ratio'])
            if r is not None and step_judged]
  return {
      'reference': reference.path, 'other': other.path,
      'reference_label': reference.label, 'other_label': other.label,
      'lint': lint_found, 'lint_mismatches': len(mismatches),
      'not_compared': config_lint.not_compared(reference, other),
      'inputs': config_lint.inputs(reference, other),
      'step_tier': steps, 'weight_tier': weights, 'curve_tier': curves,
      'semantics_tier': {'judged_metrics': metrics, 'left_out': metrics_left_out,
                         'metrics': {run.label: semantics[run.path]
                                     for run in (reference, other)},
                         'batch_norm': {run.label: bn_states[run.path]
                                        for run in (reference, other)},
                         'reference_dropout': dropout_state},
      'tiers': verdicts, 'framework_differences': differences,
      'versions': config_lint.versions(reference, other),
      'parting': tiers.parting(steps, weights),
      # divergence / envelope at the worst judged step (the limit is envelope_multiple).
      'envelope_ratio': max(ratios) if ratios else None,
      'bit_identical': steps['losses_identical'] and weights['weights_identical'],
      'verdict': 'PASS' if passed else 'FAIL', 'pitfalls': named,
  }


def compare(paths, tol, controls=(), weight_maps=None):
  """Compares every run against the first; returns the whole parity.json content.

  `controls` are run directories of control runs of the first (the reference): with
  them the tiers are calibrated by the widest of their envelopes (calibration.widest),
  without them they use the fixed tolerances. The first control is the one whose
  Dropout masks and first step differ (the localization's and the Dropout check's).
  `weight_maps`: {run directory: weight_map.WeightMap} for runs named differently.
  """
  if len(paths) < 2:
    raise errors.UsageError('compare_runs needs at least two run directories')
  maps = weight_maps or {}
  runs = [load_run(p, maps.get(p)) for p in paths]
  control_runs = [load_run(c, maps.get(c)) for c in controls]
  envelope = calibration.widest([measure_envelope(runs[0], c, tol) for c in control_runs],
                                tol.horizon_level) if control_runs else None
  dropout_state = tiers.dropout_in_training(
      runs[0], control_runs[0] if control_runs else None, envelope)
  pairs = [compare_pair(runs[0], other, tol, envelope, dropout_state) for other in runs[1:]]
  verdict = 'PASS' if all(p['verdict'] == 'PASS' for p in pairs) else 'FAIL'
  return {'verdict': verdict, 'tolerances': dataclasses.asdict(tol),
          'calibration': envelope.as_dict() if envelope else None,
          'controls': list(controls),
          'runs': [{'path': r.path, 'label': r.label, 'runner': r.manifest.get('runner'),
                    'device': r.manifest.get('device'), 'steps': len(r.steps['step'])}
                   for r in runs],
          'pairs': pairs,
          'pitfalls': [p['name'] for pair in pairs for p in pair['pitfalls']]}


def rests_on_numbers(report):
  """Whether calibrated report `report` fails some pair on the step, weight or curve tiers
  alone (its config and semantics tiers passed): the FAIL that a wider envelope, another
  control's, could still overturn. A config or semantics FAIL stands as it is."""
  return report['calibration'] is not None and any(
      pair['verdict'] == 'FAIL' and pair['tiers']['config']['passed']
      and pair['tiers']['semantics']['passed'] for pair in report['pairs'])


def ladder(report, first_rung):
  """The migration ladder of a compare() report whose reference is tf.compat.v1 on
  TensorFlow 2.21 and whose run `first_rung` is the same loop on TensorFlow 1.15: the
  rungs in order, TF 1.15 -> tf.compat.v1 (the pair of `first_rung`), then tf.compat.v1
  -> each port, every rung summarized from the pair that judged it (where the two ends
  part, by how much, over the reference stack's envelope, and the verdict)."""
  multiple = report['tolerances']['envelope_multiple']
  pairs = sorted(report['pairs'], key=lambda pair: pair['other'] != first_rung)
  rungs = []
  for pair in pairs:
    legacy = pair['other'] == first_rung
    ends = (pair['other_label'], pair['reference_label']) if legacy else (
        pair['reference_label'], pair['other_label'])
    side = {field['field']: (field['other'], field['reference']) if legacy else
            (field['reference'], field['other']) for field in pair['versions']}
    # Measured whether or not the step tier is judged (a framework difference may leave
    # it reported only): how far the rung's two ends part, over the reference's envelope.
    ratios = [r for r in (pair['step_tier']['max_envelope_ratio'],
                          pair['weight_tier']['max_envelope_ratio']) if r is not None]
    ratio = max(ratios) if ratios else None
    rungs.append({
        'from': ends[0], 'to': ends[1],
        'versions': {name: side.get(name) for name in ('TensorFlow', 'Keras implementation',
                                                       'Keras', 'Python')},
        'parting': pair['parting'],
        'step_max_relative_difference': pair['step_tier']['max_relative_difference'],
        'weight_max_relative_difference': pair['weight_tier']['max_relative_difference'],
        'step_tier_judged': pair['tiers']['step']['judged'],
        'envelope_ratio': ratio,
        'inside_envelope': None if ratio is None else ratio <= multiple,
        'framework_differences': sorted(pair['framework_differences']),
        'bit_identical': pair['bit_identical'], 'verdict': pair['verdict'],
    })
  return rungs
