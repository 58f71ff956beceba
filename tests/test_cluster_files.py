"""examples/cluster: the Kubernetes and Slurm job files load, say what the docs say, and
start the commands with flags those commands accept (parsed in a subprocess, never run)."""

import configparser
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_python
from tf1compat.judge import matrix_cases

CLUSTER = os.path.join(REPO, 'examples', 'cluster')
MATRIX_JOB = os.path.join(CLUSTER, 'parity-matrix-job.yaml')
WORKER_JOB = os.path.join(CLUSTER, 'multi-worker-job.yaml')
SBATCH = os.path.join(CLUSTER, 'parity_matrix.sbatch')

# Imports a command's module, defines its flags and parses argv[1:] as its command line.
PARSE = '''
import importlib, sys
from absl import flags
importlib.import_module('tf1compat.commands.' + sys.argv[1]).define_flags()
flags.FLAGS(sys.argv[1:])
print('OK')
'''


def _documents(path):
  """{kind: document} of a YAML file (one document of each kind)."""
  with open(path, encoding='utf-8') as f:
    documents = [doc for doc in yaml.safe_load_all(f) if doc]
  kinds = {doc['kind']: doc for doc in documents}
  assert len(kinds) == len(documents), path
  return kinds


def _container(job):
  """The Job's one container."""
  containers = job['spec']['template']['spec']['containers']
  assert len(containers) == 1
  return containers[0]


def _fake_command(folder, name):
  """An executable `name` in `folder` that prints its arguments and TF_CONFIG as JSON."""
  path = os.path.join(folder, name)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(f'#!{sys.executable}\nimport json, os, sys\n'
            "print(json.dumps([sys.argv[1:], os.environ.get('TF_CONFIG')]))\n")
  os.chmod(path, 0o755)


def _run_script(argv, name, tmp_path, env):
  """The (arguments, TF_CONFIG) that the shell script `argv` execs the command `name` with: it
  runs with a fake `name` first on PATH."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _fake_command(str(bin_dir), name)
  full_env = {key: value for key, value in os.environ.items()
              if key not in ('CASES', 'OUTPUT_ROOT', 'TF1COMPAT_VENV', 'TF_CONFIG')}
  full_env.update(env, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=60,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout)


def matrix_job_command(tmp_path):
  """The command line of parity-matrix-job.yaml's container."""
  del tmp_path
  return _container(_documents(MATRIX_JOB)['Job'])['command']


def worker_job_command(tmp_path):
  """The command line multi-worker-job.yaml's shell script execs, worker 1's."""
  container = _container(_documents(WORKER_JOB)['Job'])
  env = {item['name']: item['value'] for item in container['env']}
  args, _ = _run_script(container['command'], 'train_eager', tmp_path,
                        dict(env, JOB_COMPLETION_INDEX='1'))
  return ['train_eager', *args]


def sbatch_command(tmp_path):
  """The command line parity_matrix.sbatch execs, the environment variables at their
  defaults (a fake virtual environment's activate puts the fake command first on PATH)."""
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'activate').write_text(f'export PATH="{venv}/bin:$PATH"\n')
  _fake_command(str(venv / 'bin'), 'parity_matrix')
  args, _ = _run_script(['bash', SBATCH], 'parity_matrix', tmp_path,
                        {'TF1COMPAT_VENV': str(venv)})
  return ['parity_matrix', *args]


def test_matrix_job():
  """parity-matrix-job.yaml: an Indexed Job, one GPU and the shared claim (ReadWriteMany) at
  /shared per pod, exit codes 1-3 fail the index, 4/130/143 retry, disruptions don't count;
  its completions and the sbatch array both cover the built-in matrix's cases."""
  kinds = _documents(MATRIX_JOB)
  job, claim = kinds['Job'], kinds['PersistentVolumeClaim']
  spec, pod = job['spec'], job['spec']['template']['spec']
  assert spec['completionMode'] == 'Indexed' and spec['backoffLimitPerIndex'] >= 1
  assert pod['restartPolicy'] == 'Never' and pod['terminationGracePeriodSeconds'] >= 60
  container = _container(job)
  assert container['resources']['limits']['nvidia.com/gpu'] == 1
  assert [m['mountPath'] for m in container['volumeMounts']] == ['/shared']
  assert pod['volumes'][0]['persistentVolumeClaim']['claimName'] == claim['metadata']['name']
  assert claim['spec']['accessModes'] == ['ReadWriteMany']
  rules = {rule['action']: rule for rule in spec['podFailurePolicy']['rules']}
  assert rules['Ignore']['onPodConditions'] == [{'type': 'DisruptionTarget'}]
  assert list(rules) == ['Ignore', 'FailIndex', 'Count']  # the first rule that matches acts
  for action, codes in (('FailIndex', [1, 2, 3]), ('Count', [4, 130, 143])):
    assert rules[action]['onExitCodes'] == {'containerName': container['name'],
                                            'operator': 'In', 'values': codes}
  n = len(matrix_cases.builtin_files(matrix_cases.CASES, True, '/data'))
  assert spec['completions'] == n
  with open(SBATCH, encoding='utf-8') as f:
    assert f'#SBATCH --array=0-{n - 1}%' in f.read()


def test_worker_job(tmp_path):
  """multi-worker-job.yaml: a headless Service and an Indexed Job of 2 workers, one GPU and
  /shared each; worker i's TF_CONFIG lists every worker at <job>-<i>.<service>:2222 (its pod's
  DNS name) and names worker i."""
  kinds = _documents(WORKER_JOB)
  service, job = kinds['Service'], kinds['Job']
  spec, pod = job['spec'], job['spec']['template']['spec']
  assert service['spec']['clusterIP'] == 'None'
  assert service['spec']['selector'].items() <= spec['template']['metadata']['labels'].items()
  assert spec['completionMode'] == 'Indexed' and spec['completions'] == spec['parallelism'] == 2
  assert pod['subdomain'] == service['metadata']['name'] and pod['restartPolicy'] == 'Never'
  container = _container(job)
  assert container['resources']['limits']['nvidia.com/gpu'] == 1
  assert [m['mountPath'] for m in container['volumeMounts']] == ['/shared']
  env = {item['name']: item['value'] for item in container['env']}
  _, tf_config = _run_script(container['command'], 'train_eager', tmp_path,
                             dict(env, JOB_COMPLETION_INDEX='1'))
  name, subdomain = job['metadata']['name'], pod['subdomain']
  assert json.loads(tf_config) == {
      'cluster': {'worker': [f'{name}-{i}.{subdomain}:2222' for i in range(2)]},
      'task': {'type': 'worker', 'index': 1}}


def test_sbatch_script():
  """parity_matrix.sbatch is valid bash, an array job that requeues and gets SIGTERM before
  its time limit."""
  proc = subprocess.run(['bash', '-n', SBATCH], capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  with open(SBATCH, encoding='utf-8') as f:
    directives = [line.split()[1] for line in f if line.startswith('#SBATCH ')]
  assert any(d.startswith('--array=') for d in directives)
  assert {'--gres=gpu:1', '--requeue', '--signal=B:TERM@120'} <= set(directives)


@pytest.mark.parametrize('command', [matrix_job_command, worker_job_command, sbatch_command])
def test_command_flags(command, tmp_path):
  """Each job file starts a console script of setup.cfg with flags it parses, and the same
  parse refuses an unknown flag (the check is not vacuous). The matrix jobs leave the case
  index to the scheduler's environment."""
  name, *args = command(tmp_path)
  setup = configparser.ConfigParser()
  setup.read(os.path.join(REPO, 'setup.cfg'))
  assert f'\n{name} = ' in setup['options.entry_points']['console_scripts']
  assert not [arg for arg in args if arg.startswith('--case_index')]
  proc = run_python(PARSE, name, *args, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == 'OK', proc.stderr[-2000:]
  proc = run_python(PARSE, name, *args, '--no_such_flag', timeout=120)
  assert proc.returncode != 0 and 'OK' not in proc.stdout
  assert 'no_such_flag' in proc.stderr
