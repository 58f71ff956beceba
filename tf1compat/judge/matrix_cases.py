"""The matrix's cases as absl flag files: one check_parity run each.

A case is a file `NAME.flags` of check_parity flags (`check_parity --flagfile=NAME.flags`
is the case, as absl allows): a team's own matrix is a folder of them. One with
`--pitfall=P` must FAIL with P named first; one without must PASS. The built-in
false-alarm matrix (model switches, image and batch sizes, seeds, fit, Keras' own
kernels, long runs, real images, every optimizer and schedule) is written out as such
files by `write_cases`: each case matched, and once with each catalogued pitfall that
applies (`CASE--PITFALL.flags`). TensorFlow-free.
"""

import dataclasses
import hashlib
import json
import os
import re
import subprocess

from tf1compat.judge import pitfalls
from tf1compat.runs import atomic
from tf1compat.runs import errors
from tf1compat.runs import optimizers
from tf1compat.runtime import process

SUFFIX = '.flags'
BUILTIN_HEADER = '# The built-in false-alarm matrix'
# What the output root holds besides the case folders (matrix.py, matrix_jobs.py).
RESERVED_NAMES = ('cases', 'matrix.md', 'matrix.json', 'cases.json')
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.+-]*')
# The flags a case file may not set: the matrix gives each case its folder.
_REFUSED = ('output_dir',)
# absl's nested flag files, followed to read what a case injects.
_MAX_NESTING = 8

# The real-image cases: scikit-learn's scanned handwritten digits (1,797 8x8 grey images
# of 10 classes, shipped inside the package), written as a Caltech-layout image folder
# and converted by make_records like any user's folder.
REAL_DATA = 'real_digits'
REAL_ARGS = ('--image_size=32', '--epochs=2', '--steps_per_epoch=30')
REAL_RECORDS = os.path.join('data', 'digits_records')
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
           and (pitfall.optimizers or not case.optimizer_pitfalls_only)
           # The built-in cases run the TensorFlow port.
           and not pitfall.port_backend]
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


def real_data_dir(folder):
  """The converted digits records (made once under `folder`)."""
  records_dir = os.path.join(folder, REAL_RECORDS)
  if os.path.exists(os.path.join(records_dir, 'dataset.json')):
    return records_dir
  images_dir = os.path.join(folder, 'data', 'digits_images')
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


@dataclasses.dataclass(frozen=True)
class CaseFile:
  """One case: its name (the file's, without .flags), file, flags (nested flag files
  read), the pitfall it injects (None: a matched port, which must PASS) and a digest
  of its flags (what a rerun compares: comments and blank lines do not count)."""
  name: str
  path: str
  args: tuple
  pitfall: str | None
  digest: str

  @property
  def expected(self):
    """'PASS', or 'FAIL, P named first'."""
    return 'PASS' if self.pitfall is None else f'FAIL, {self.pitfall} named first'


def _flag_lines(path, depth=0):
  """The flags of the absl flag file `path`, nested --flagfile= ones read in place."""
  where = f'--cases: {path}'
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError:
    raise errors.UsageError(f'{where} is not UTF-8 text; a case is a file of '
                            'check_parity flags, one per line') from None
  except OSError as e:
    raise errors.UsageError(f'{where}: {e.strerror}') from None
  args = []
  for number, line in enumerate(lines, 1):
    line = line.strip()
    if not line or line.startswith(('#', '//')):
      continue
    if not line.startswith('-'):
      raise errors.UsageError(f'{where}, line {number}: {line!r} is not a flag; a case file '
                              'holds one --flag=value per line (# starts a comment)')
    name = line.lstrip('-').split('=', 1)[0]
    if name in _REFUSED:
      raise errors.UsageError(f'{where}, line {number}: a case sets no --{name}; the matrix '
                              'runs each case in OUTPUT_ROOT/NAME')
    if name == 'flagfile' and '=' in line:
      if depth >= _MAX_NESTING:
        raise errors.UsageError(f'{where}: flag files nested more than {_MAX_NESTING} deep')
      args += _flag_lines(line.split('=', 1)[1], depth + 1)
    else:
      args.append(line)
  return args


def read_case(path):
  """The CaseFile of the flag file `path`; errors.UsageError where it cannot be one."""
  name = os.path.basename(path)[:-len(SUFFIX)]
  if not _NAME.fullmatch(name) or name in RESERVED_NAMES:
    raise errors.UsageError(
        f'--cases: {path}: a case is named by its file, in letters, digits and _.+- '
        f'(not {", ".join(RESERVED_NAMES)}); rename it')
  args = tuple(_flag_lines(path))
  injected = [arg.split('=', 1)[1] for arg in args if arg.startswith('--pitfall=')]
  digest = hashlib.sha256(json.dumps(args).encode()).hexdigest()
  return CaseFile(name, os.path.abspath(path), args, injected[-1] if injected else None,
                  digest)


def read_cases(folder):
  """The cases of `folder` (its NAME.flags files) in the order of their names: the
  scheduler's index counts in it. errors.UsageError where there are none."""
  if not os.path.isdir(folder):
    raise errors.UsageError(f'--cases={folder} is neither a built-in case nor a folder of '
                            f'case files (NAME{SUFFIX}, check_parity flags)')
  # By case name: `default` before `default--adam_epsilon`.
  names = sorted((name for name in os.listdir(folder) if name.endswith(SUFFIX)),
                 key=lambda name: name[:-len(SUFFIX)])
  if not names:
    raise errors.UsageError(f'--cases={folder} holds no case files (NAME{SUFFIX}, '
                            'check_parity flags); parity_matrix --write_cases=FOLDER writes '
                            'the built-in matrix there')
  return [read_case(os.path.join(folder, name)) for name in names]


def builtin_files(cases, with_pitfalls, data_dir):
  """{file name: its text} of the built-in `cases`: each matched, and with each
  applicable pitfall where `with_pitfalls`; the real-image cases read `data_dir`."""
  files = {}
  for case in cases:
    flags = [*case.args, f'--data_dir={data_dir}'] if case.real_data else list(case.args)
    files[case.name + SUFFIX] = [f'{BUILTIN_HEADER}, case {case.name}: the matched port must '
                                 'PASS.', *flags]
    for pitfall in applicable_pitfalls(case) if with_pitfalls else ():
      files[f'{case.name}--{pitfall}{SUFFIX}'] = [
          f'{BUILTIN_HEADER}, case {case.name} with the pitfall {pitfall}: it must FAIL, '
          'named first.', *flags, f'--pitfall={pitfall}']
  return {name: '\n'.join(lines) + '\n' for name, lines in files.items()}


def write_cases(folder, cases, with_pitfalls, replace=False):
  """Writes the built-in `cases` (Case) into `folder` as flag files, the real-image
  cases' records made under it; returns the CaseFiles there, in index order.

  errors.UsageError, before anything is written, where `folder` holds another case
  file, or one of these names with other flags: an earlier selection's or a team's.
  With `replace` (the local run's own folder under its output root) an earlier
  selection's go instead; a file the built-in matrix did not write never does.
  """
  existing = sorted(name for name in os.listdir(folder) if name.endswith(SUFFIX)) if (
      os.path.isdir(folder)) else []
  data_dir = (os.path.abspath(os.path.join(folder, REAL_RECORDS))
              if any(c.real_data for c in cases) else None)
  files = builtin_files(cases, with_pitfalls, data_dir)
  other = [name for name in existing if name not in files or _text(folder, name) != files[name]]
  kept = [name for name in other if not (replace and _text(folder, name).startswith(
      BUILTIN_HEADER))]
  if kept:
    raise errors.UsageError(
        f'{folder} holds other case files ({", ".join(kept[:3])}'
        f'{", ..." if len(kept) > 3 else ""}); choose an empty folder')
  os.makedirs(folder, exist_ok=True)
  if data_dir:
    real_data_dir(folder)
  for name in other:
    os.remove(os.path.join(folder, name))
  for name, text in files.items():
    if name not in existing or name in other:
      atomic.atomic_write_text(os.path.join(folder, name), text)
  return read_cases(folder)


def _text(folder, name):
  with open(os.path.join(folder, name), encoding='utf-8', errors='replace') as f:
    return f.read()
