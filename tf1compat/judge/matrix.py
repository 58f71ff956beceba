"""bin/parity_matrix: the false-alarm matrix of the calibrated verdict.

Runs check_parity on a set of cases (model switches, image and batch sizes, seeds, fit,
Keras' own kernels, a long run, real images) with the matched port, where every case
must PASS, and with each catalogued pitfall that applies, where every one must FAIL
and be named first. Writes `matrix.md` and `matrix.json` with the port's divergence
over the envelope and each pitfall's margin. Each case has its own check_parity
output folder, so its runs are reused between the matched check and the pitfalls
and across reruns of the matrix. TensorFlow-free: everything runs in subprocesses.
"""

import dataclasses
import json
import os
import subprocess

from tf1compat.judge import pitfalls
from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import optimizers
from tf1compat.runtime import process
from tf1compat.runtime import progress

# The real-image cases: scikit-learn's scanned handwritten digits (1,797 8x8 grey images
# of 10 classes, shipped inside the package), written as a Caltech-layout image folder
# and converted by make_records like any user's folder.
REAL_DATA = 'real_digits'
REAL_ARGS = ('--image_size=32', '--epochs=2', '--steps_per_epoch=30')
# Correct ports whose kernels round differently from the reference's at every step:
# oneDNN turned the other way, one intra-op thread instead of one per core, XLA. The
# references run with oneDNN forced, so each case means the same on every CPU whatever
# TensorFlow's default there.
CROSS_KERNELS = (('onednn_port_on', ('--onednn=off', '--port_flags=--onednn=on')),
                 ('onednn_port_off', ('--onednn=on', '--port_flags=--onednn=off')),
                 ('threads_port_1', ('--port_flags=--intra_op_threads=1',)),
                 ('xla_port', ('--port_flags=--jit_compile',)))


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  args: tuple
  # What the args give the run: the pitfalls that need one of these (their `needs`) apply.
  has: tuple = ()
  # Trains on the real digits (real_data_dir) instead of the embedded dataset.
  real_data: bool = False
  # Checks only its optimizer's own pitfalls (the others are checked on Adam's cases).
  optimizer_pitfalls_only: bool = False


# Each optimizer (Adam is every other case's) and each schedule, under Momentum, whose
# accumulator is where TF1 and Keras part when the rate changes.
OPTIMIZER_CASES = tuple(
    Case(f'optimizer_{name}', (f'--optimizer={name}',), optimizer_pitfalls_only=True)
    for name in optimizers.OPTIMIZERS if name != 'adam')
SCHEDULE_CASES = tuple(
    Case(f'schedule_{name}', ('--optimizer=momentum', f'--lr_schedule={name}'),
         ('lr_schedule',), optimizer_pitfalls_only=True)
    for name in optimizers.SCHEDULES if name != 'constant')


CASES = (
    Case('default', ()),
    Case('batch_norm', ('--batch_norm',), ('batch_norm',)),
    Case('dropout', ('--dropout=0.3',), ('dropout',)),
    Case('resnet_small',
         ('--model=tf1compat.train.models.resnet:resnet_small', '--lr_decay_steps=40'),
         ('batch_norm', 'regularization', 'lr_schedule', 'batch_norm_momentum')),
    Case('image_32', ('--image_size=32',)),
    Case('image_96', ('--image_size=96',)),
    Case('batch_8', ('--batch_size=8',)),
    Case('batch_64', ('--batch_size=64',)),
    Case('seed_1', ('--seed=1',)),
    Case('seed_2', ('--seed=2',)),
    Case('with_fit', ('--with_fit',)),
    Case('noexact', ('--noexact',)),
    Case('steps_300', ('--steps_per_epoch=100',)),
    Case(REAL_DATA, REAL_ARGS, real_data=True),
    *(Case(name, args) for name, args in CROSS_KERNELS),
    *(Case(f'{REAL_DATA}_{name}', REAL_ARGS + args, real_data=True)
      for name, args in CROSS_KERNELS),
    # Longer runs, where a per-step difference has the time to grow.
    Case(f'{REAL_DATA}_120_onednn_port_on',
         ('--image_size=32', '--epochs=4', '--steps_per_epoch=30', *CROSS_KERNELS[0][1]),
         real_data=True),
    Case(f'{REAL_DATA}_300_onednn_port_off',
         ('--image_size=32', '--epochs=10', '--steps_per_epoch=30', *CROSS_KERNELS[1][1]),
         real_data=True),
    *OPTIMIZER_CASES,
    *SCHEDULE_CASES,
)
CASE_NAMES = tuple(case.name for case in CASES)


def case_optimizer(case):
  """The --optimizer of a case (adam unless its args say another)."""
  given = [arg.split('=', 1)[1] for arg in case.args if arg.startswith('--optimizer=')]
  return given[-1] if given else 'adam'


def applicable_pitfalls(case):
  """The catalogued pitfalls that can show in this case's model and optimizer."""
  names = [name for name, pitfall in sorted(pitfalls.PITFALLS.items())
           if (not pitfall.needs or set(case.has) & set(pitfall.needs))
           and pitfalls.applies_to(pitfall, case_optimizer(case))
           and (pitfall.optimizers or not case.optimizer_pitfalls_only)]
  # Port-side pitfalls first: the legacy run and its control are then reused by them.
  return sorted(names, key=lambda n: 'graph' in pitfalls.PITFALLS[n].runners)


def write_digits_folder(folder):
  """scikit-learn's digits as PNG files in Caltech layout (`001.zero/001_0001.png`)."""
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UsageError(
        f'the {REAL_DATA} case needs scikit-learn and pillow: '
        "pip install -e '.[matrix]' (or leave the case out with --cases)") from e
  digits = datasets.load_digits()
  names = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
  counts = {}
  for image, label in zip(digits.images, digits.target):
    class_dir = os.path.join(folder, f'{label + 1:03d}.{names[label]}')
    os.makedirs(class_dir, exist_ok=True)
    counts[label] = counts.get(label, 0) + 1
    pixels = (image * (255.0 / 16.0)).round().astype('uint8')
    Image.fromarray(pixels, mode='L').save(
        os.path.join(class_dir, f'{label + 1:03d}_{counts[label]:04d}.png'))


def real_data_dir(output_dir):
  """The converted digits records (made once under `output_dir`)."""
  records_dir = os.path.join(output_dir, 'data', 'digits_records')
  if os.path.exists(os.path.join(records_dir, 'dataset.json')):
    return records_dir
  images_dir = os.path.join(output_dir, 'data', 'digits_images')
  if not os.path.isdir(images_dir):
    write_digits_folder(images_dir + '.tmp')
    os.replace(images_dir + '.tmp', images_dir)
  result = subprocess.run(
      process.command('make_records', f'--image_dir={images_dir}',
                      f'--output_dir={records_dir}', '--overwrite'),
      capture_output=True, text=True, env=process.child_env(), check=False)
  if result.returncode:
    raise errors.UsageError(f'make_records failed on {images_dir}: '
                            f'{result.stderr.strip().splitlines()[-1:]}')
  return records_dir


def _check(args, output_dir):
  """Runs check_parity; returns (exit code, parity.json content or None).

  --overwrite: a case's pitfalls run in its folder one after the other, each replacing
  the runs of the one before (check_parity refuses to unasked).
  """
  result = subprocess.run(process.command('check_parity', f'--output_dir={output_dir}',
                                          '--overwrite', *args),
                          capture_output=True, text=True, env=process.child_env(), check=False)
  if result.returncode not in (errors.EXIT_OK, errors.EXIT_PARITY_FAIL):
    error = errors.UsageError if result.returncode == errors.EXIT_USAGE else errors.Fault
    raise error(f'check_parity {" ".join(args)} stopped with exit code {result.returncode}: '
                f'{result.stderr.strip()[-400:]}')
  with open(os.path.join(output_dir, 'parity.json')) as f:
    return result.returncode, json.load(f)


def _matched_row(case, report):
  calibration = report.get('calibration') or {}
  ratios = [p['envelope_ratio'] for p in report['pairs'] if p['envelope_ratio'] is not None]
  return {
      'case': case.name, 'verdict': report['verdict'],
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


def _pitfall_row(case, pitfall, report):
  named = [p for pair in report['pairs'] for p in pair['pitfalls']]
  first = named[0] if named else None
  where, where_ratio, agreement = _where(report, pitfall)
  return {'case': case.name, 'pitfall': pitfall, 'verdict': report['verdict'],
          'named_first': bool(first and first['name'] == pitfall),
          'judged_by': first['judged_by'] if first else None,
          'margin': first['margin'] if first else None,
          'named': [p['name'] for p in named],
          'where': where, 'where_ratio': where_ratio, 'where_agreement': agreement}


def run(cfg):
  """Runs the cases config.MatrixConfig `cfg` selects; returns {'matched': [...],
  'pitfalls': [...], 'passed'}."""
  output_dir = cfg.output_dir
  os.makedirs(output_dir, exist_ok=True)
  selected = [case for case in CASES if not cfg.cases or case.name in cfg.cases]
  matched, pitfall_rows = [], []
  for case in selected:
    args = list(case.args)
    if case.real_data:
      args.append(f'--data_dir={real_data_dir(output_dir)}')
    case_dir = os.path.join(output_dir, case.name)
    _, report = _check(args, case_dir)
    row = _matched_row(case, report)
    matched.append(row)
    progress.say(f'{case.name}: matched port {row["verdict"]} '
                 f'({_num(row["envelope_ratio"])}x envelope, curves at '
                 f'{_num(row["curve_band_ratio"])}x their band)')
    if not cfg.pitfalls:
      continue
    for pitfall in applicable_pitfalls(case):
      _, report = _check(args + [f'--pitfall={pitfall}'], case_dir)
      row = _pitfall_row(case, pitfall, report)
      pitfall_rows.append(row)
      margin = 'exact' if row['margin'] is None else f'{row["margin"]:.3g}x'
      progress.say(f'{case.name}: {pitfall} {row["verdict"]}, named first: '
                   f'{"yes" if row["named_first"] else "no"} (margin {margin})')
  passed = (all(r['verdict'] == 'PASS' for r in matched) and
            all(r['verdict'] == 'FAIL' and r['named_first'] for r in pitfall_rows))
  result = {'matched': matched, 'pitfalls': pitfall_rows, 'passed': passed}
  atomic.atomic_write_json(os.path.join(output_dir, 'matrix.json'), result)
  atomic.atomic_write_text(os.path.join(output_dir, 'matrix.md'), markdown(result))
  return result


def _num(value, fmt='{:.2g}'):
  return '-' if value is None else fmt.format(value)


def markdown(result):
  """The matrix as Markdown tables (what docs/parity.md shows)."""
  out = ['| case | steps | verdict | port x envelope | bit-identical | step tier | '
         'horizon (loss/weights) | curves x band |', '|---|---|---|---|---|---|---|---|']
  for r in result['matched']:
    out.append(f'| {r["case"]} | {r["steps"]} | {r["verdict"]} | {_num(r["envelope_ratio"])} | '
               f'{"yes" if r["bit_identical"] else "no"} | '
               f'{"judged" if r["step_judged"] else "reported"} | '
               f'{r["loss_horizon"]}/{r["weight_horizon"]} | {_num(r["curve_band_ratio"])} |')
  if result['pitfalls']:
    out += ['', '| case | pitfall | verdict | named first | judged by | margin over correct runs '
            '| where (the replayed step) | x control | catalogue |',
            '|---|---|---|---|---|---|---|---|---|']
    for r in result['pitfalls']:
      out.append(f'| {r["case"]} | {r["pitfall"]} | {r["verdict"]} | '
                 f'{"yes" if r["named_first"] else "no: " + ", ".join(r["named"])} | '
                 f'{r["judged_by"] or "-"} | '
                 f'{_num(r["margin"], "{:.3g}x") if r["margin"] is not None else "exact"} | '
                 f'{r["where"]} | {_num(r["where_ratio"], "{:.3g}x")} | '
                 f'{r["where_agreement"] or "-"} |')
  return '\n'.join(out) + '\n'
