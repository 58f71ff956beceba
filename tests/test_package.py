"""The project as users install it: a wheel that holds only the package, its console
scripts, and check_parity run from outside the checkout."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from conftest import REPO, TINY_IMAGE_SIZE, run_entry

COMMANDS = ('make_records', 'train_graph', 'train_eager', 'compare_runs', 'check_parity',
            'parity_matrix', 'benchmark')


def _run(command, **kwargs):
  result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def test_installed_wheel_runs_check_parity_outside_the_checkout(tmp_path, tiny_data_dir):
  # Built from a copy: a build leaves build/ and *.egg-info beside the sources.
  source = tmp_path / 'source'
  everywhere = shutil.ignore_patterns('.git', '.venv', 'build', '*.egg-info', '__pycache__',
                                      '.pytest_cache')
  # The checkout's runs/ output folder, not the package's runs/ wing.
  shutil.copytree(REPO, source, ignore=lambda folder, names: everywhere(folder, names) | (
      {'runs'} if os.path.samefile(folder, REPO) else set()))
  # Nothing of the checkout may leak into the installed environment.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  wheels = tmp_path / 'wheels'
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
        '-w', str(wheels), str(source)], env=env)
  (wheel,) = wheels.iterdir()
  with zipfile.ZipFile(wheel) as archive:
    tops = {name.split('/')[0] for name in archive.namelist()}
    entry_points = archive.read(next(n for n in archive.namelist()
                                     if n.endswith('entry_points.txt'))).decode()
  assert tops == {'tf1compat', 'tf1compat-0.1.0.dist-info'}, tops
  for name in COMMANDS:
    assert f'{name} = tf1compat.commands.{name}:console_main' in entry_points

  # A fresh venv with the wheel installed on its own, then this environment's
  # dependencies reused: a .pth line puts its site-packages on the path after the venv's
  # own (without running its .pth files, so the checkout's editable install stays out).
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', str(venv)], env=env)
  python = str(venv / 'bin' / 'python')
  _run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', str(wheel)], env=env)
  purelib = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                 env=env)
  with open(os.path.join(purelib.stdout.strip(), 'test_dependencies.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')

  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  where = _run([python, '-c', 'import tf1compat; print(tf1compat.__file__)'], cwd=elsewhere,
               env=env)
  assert where.stdout.startswith(str(venv)), where.stdout
  version = _run([str(venv / 'bin' / 'check_parity'), '--version'], cwd=elsewhere, env=env)
  assert 'tf1compat 0.1.0' in version.stdout and 'TensorFlow 2.21' in version.stdout
  result = subprocess.run(
      [str(venv / 'bin' / 'check_parity'), f'--data_dir={tiny_data_dir}', '--output_dir=out',
       f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=1', '--steps_per_epoch=4',
       '--shuffle_buffer=64', '--snapshot_steps=0,1,2'],
      cwd=elsewhere, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'VERDICT: PASS' in result.stdout
  assert (elsewhere / 'out' / 'parity.md').exists()
  with open(elsewhere / 'out' / 'graph' / 'runner.log') as f:
    assert '-m tf1compat.commands.train_graph' in f.readline()


def test_every_entry_point_has_version_and_help():
  for name in COMMANDS:
    result = run_entry(name, '--version')
    assert result.returncode == 0, (name, result.stderr)
    assert result.stdout.startswith(f'{name} (tf1compat 0.1.0): TensorFlow '), result.stdout
  result = run_entry('check_parity', '--helpfull')
  assert result.returncode == 0
  assert '--envelope_multiple' in result.stdout


def test_ci_builds_its_own_environment_and_leaves_the_users_alone():
  """.ci/run makes and removes .ci/venv only: a user who runs it keeps the .venv the README
  told them to make."""
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    script = f.read()
  commands = [line for line in script.splitlines() if not line.startswith('#')]
  assert 'venv=.ci/venv' in commands and 'rm -rf "$venv"' in commands
  assert not [line for line in commands if '.venv' in line.replace('.ci/venv', '')]
  with open(os.path.join(REPO, '.gitignore')) as f:
    assert '/.ci/venv/' in f.read().split()
