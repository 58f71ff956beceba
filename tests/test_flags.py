"""Shared flag definitions: the forwarded list and the validators' one-line errors."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_entry, run_python
from tf1compat.runs import errors
from tf1compat.runtime import process


def test_runner_flags_are_the_fields_of_its_config():
  code = r'''
import dataclasses
from absl import flags
from tf1compat.commands import flags as f
from tf1compat.runs import config
f.define_data_flags(config.GraphConfig)
f.define_training_flags(config.GraphConfig)
f.define_graph_flags()
defined = flags.FLAGS.get_flags_for_module('tf1compat.commands.flags')
print(','.join(sorted(fl.name for fl in defined if fl.name not in f.ALIASES)))
print(','.join(sorted(field.name for field in dataclasses.fields(config.GraphConfig))))
'''
  result = run_python(code)
  assert result.returncode == 0, result.stderr
  defined, listed = result.stdout.split()
  assert defined == listed


def test_check_parity_forwards_the_flags_as_given():
  """The runners get check_parity's training flags as absl writes them: a rerun's arguments
  equal those recorded in check_parity.json, so complete runs are reused."""
  code = r'''
import sys
from absl import flags
from tf1compat.commands import check_parity
from tf1compat.judge import runner_jobs
from tf1compat.runs import config
check_parity.define_flags()
flags.FLAGS(sys.argv)
given = [flags.FLAGS[n].serialize() for n in runner_jobs.FORWARDED
         if flags.FLAGS[n].value is not None]
forwarded = runner_jobs.forwarded_args(config.from_flags(config.CheckParityConfig, flags.FLAGS))
print(given == forwarded, given, forwarded)
'''
  for args in ([], ['--learning_rate=3e-05', '--dropout=0.3', '--snapshot_steps=0,1,2,5',
                    '--batch_norm', '--nodeterministic', '--num_classes=4', '--data_dir=/d']):
    result = run_python(code, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('True '), result.stdout


def test_bad_flag_values_exit_2_with_one_line():
  for args, message in ((['--batch_size=0'], '--batch_size=0'),
                        (['--snapshot_steps=1,x'], '--snapshot_steps'),
                        (['--image_size=16'], '--image_size=16'),
                        (['--pitfall=nope'], '--pitfall')):
    result = run_entry('check_parity', *args)
    assert result.returncode == 2, (args, result.stderr)
    assert message in result.stderr
    assert 'Traceback' not in result.stderr
  result = run_entry('train_eager', '--mixed_precision', '--mixed_bfloat16')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].endswith(
      '--mixed_precision (float16) and --mixed_bfloat16 are two policies; pick one '
      '(see --helpfull)')


def test_an_internal_fault_exits_4_not_1():
  """1 means parity FAIL: a bug or a device fault gets its own code, with its traceback."""
  result = run_python('from tf1compat.commands import cli\n'
                      'def main(argv):\n'
                      '  raise RuntimeError("CUDA_ERROR_OUT_OF_MEMORY")\n'
                      'cli.run_main(main)\n')
  assert result.returncode == 4
  assert 'Traceback' in result.stderr
  assert result.stderr.strip().splitlines()[-1].endswith(
      'internal or device fault (RuntimeError: CUDA_ERROR_OUT_OF_MEMORY); the traceback is above')


def test_a_crashed_runner_is_a_fault_not_a_verdict(tmp_path):
  log = tmp_path / 'runner.log'
  log.write_text('$ python -m tf1compat.commands.train_eager\nF0000 check failed\n')
  for code, how in ((-11, 'killed by signal 11'), (4, 'exit code 4'), (1, 'exit code 1')):
    error = process.runner_error('eager', code, str(log))
    assert isinstance(error, errors.Fault)
    assert str(error).startswith(f'eager runner: internal or device fault ({how}): F0000 check '
                                 'failed')
  assert isinstance(process.runner_error('eager', 143, str(log)), errors.Interrupted)
  assert isinstance(process.runner_error('eager', 2, str(log)), errors.UsageError)


def test_paths_take_a_tilde_as_a_shell_user_writes_it(tmp_path):
  """After `=` the shell leaves `~` as it is: every path flag and path argument expands it."""
  home = {'HOME': str(tmp_path)}
  legacy = run_entry('check_parity', '--legacy_python=~/envs/tf115/bin/python', env=home)
  assert legacy.returncode == errors.EXIT_USAGE
  assert legacy.stderr.strip().splitlines()[-1].startswith(
      f'check_parity: --legacy_python={tmp_path}/envs/tf115/bin/python: no such interpreter')
  written = run_entry('train_graph', '--save_init_weights=~/init.npz', '--image_size=32',
                      env=home)
  assert written.returncode == 0, written.stderr[-2000:]
  assert (tmp_path / 'init.npz').is_file()
  compared = run_entry('compare_runs', '~/a', '~/b', '--control=~/c', env=home)
  assert compared.returncode == errors.EXIT_USAGE
  assert f'{tmp_path}/a' in compared.stderr.strip().splitlines()[-1]


def _documented_flags(command):
  """The flags docs/flags.md lists for `command`."""
  with open(os.path.join(REPO, 'docs', 'flags.md')) as f:
    section = f.read().split(f'\n## {command}\n')[1].split('\n## ')[0]
  return re.findall(r'^\| `--(\w+)` \|', section, re.M)


@pytest.mark.parametrize('started', [('bin', 'check_parity'), ('bin', 'compare_runs'),
                                     ('module', 'train_graph')])
def test_help_is_the_commands_own_manual(started):
  """--help lists the command's own flags with their defaults, none of absl's, on a screen
  or two, however the command is started."""
  way, command = started
  if way == 'bin':
    result = run_entry(command, '--help')
  else:
    result = subprocess.run([sys.executable, '-m', f'{process.COMMANDS_PACKAGE}.{command}',
                             '--help'], capture_output=True, text=True, check=False,
                            env=process.child_env(), timeout=300)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) < 150 and all(len(line) <= 100 for line in lines)
  listed = re.findall(r'^  --(?:\[no\])?(\w+) \[', result.stdout, re.M)
  assert listed == _documented_flags(command)
  assert not {'flagfile', 'verbosity', 'helpfull', 'logtostderr'} & set(listed)


def test_an_exploration_folder_names_what_differs_and_stays_short():
  code = r'''
from absl import flags
from tf1compat.commands import check_parity
check_parity.define_flags()
for argv in ([], ['--nobatch_norm', '--curve_rtol=0.2'], ['--batch_norm'],
             ['--model=tf1compat.train.models.resnet:resnet_small', '--lr_decay_steps=40'],
             ['--data_dir=~/data/caltech256', '--image_size=224', '--batch_size=64',
              '--steps_per_epoch=1000', '--learning_rate=0.01'],
             ['--data_dir=~/data/caltech256', '--image_size=224', '--batch_size=64',
              '--steps_per_epoch=1000', '--learning_rate=0.02'],
             ['--batch_norm', '--output_dir=runs/mine']):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['check_parity', *argv])
  print(check_parity.output_folder(flags.FLAGS))
'''
  result = run_python(code)
  assert result.returncode == 0, result.stderr
  folders = result.stdout.split()
  assert folders[:3] == ['runs/check_parity', 'runs/check_parity', 'runs/check_parity-batch_norm']
  # A spec shortened to its function: a digest keeps two specs of one name apart.
  assert re.fullmatch(r'runs/check_parity-lr_decay_steps-40\+model-resnet_small\+[0-9a-f]{8}',
                      folders[3])
  assert folders[4] != folders[5]
  for long_name in folders[4:6]:
    name = long_name.removeprefix('runs/check_parity-')
    assert name.startswith('batch_size-64+data_dir-caltech256+')
    assert len(name) <= 60 and re.fullmatch(r'[0-9a-f]{8}', name.split('+')[-1])
  assert folders[6] == 'runs/mine'
