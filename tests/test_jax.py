"""The port on Keras 3's JAX backend (train_eager --backend=jax, check_parity
--port_backend=jax): judged against the legacy loop like the TensorFlow port, its exact
switches against TF1's own kernels, and its refusals.

Skipped, saying why, where JAX is not installed (the test extra installs it); the
refusal without JAX runs everywhere. The interrupted JAX run is test_reliability's.
"""

import json
import os

import numpy as np
import pytest

from conftest import REPO, TINY_IMAGE_SIZE, requires_jax, run_entry, run_python
from tf1compat.judge import pitfalls
from tf1compat.runs import errors

# With BatchNormalization: the exact switches' formula of TF1's fused kernel, and what
# jax_state_dropped needs.
TINY = [f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=2',
        '--steps_per_epoch=6', '--shuffle_buffer=64', '--snapshot_steps=0,1,2,5', '--batch_norm']
# Each pitfall checked on the JAX port, and where the replay of step 1 finds it: adam_epsilon
# as on TensorFlow, and the JAX port's own.
JAX_PITFALLS = {'adam_epsilon': ('update', 'conv1/kernel'),
                'jax_state_dropped': ('state', 'bn1/moving_mean')}


def _check(tiny_data_dir, output_dir, *args):
  result = run_entry('check_parity', f'--data_dir={tiny_data_dir}', f'--output_dir={output_dir}',
                     '--port_backend=jax', *TINY, *args)
  path = os.path.join(output_dir, 'parity.json')
  report = None
  if os.path.exists(path):
    with open(path) as f:
      report = json.load(f)
  return result, report


@pytest.fixture(scope='module')
def checks(tiny_data_dir, tmp_path_factory):
  """The matched check of the JAX port (custom loop and fit), then in the same folder
(the legacy run and its control reused) each pitfall of JAX_PITFALLS in the custom loop:
{name: (result, parity.json)}."""
  out = str(tmp_path_factory.mktemp('jax_check') / 'check')
  done = {'matched': _check(tiny_data_dir, out, '--with_fit')}
  for pitfall in JAX_PITFALLS:
    done[pitfall] = _check(tiny_data_dir, out, f'--pitfall={pitfall}', '--overwrite')
  return done


@requires_jax
def test_the_matched_jax_port_passes_with_xla_rounding_named(checks):
  result, report = checks['matched']
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'VERDICT: PASS' in result.stdout
  assert 'eager: the JAX port, custom loop' in result.stdout
  assert [run['runner'] for run in report['runs']] == ['graph', 'eager', 'fit']
  for pair in report['pairs']:
    assert pair['verdict'] == 'PASS'
    # The step tier judged, against the controls.
    assert pair['tiers']['step']['judged'] and pair['step_tier']['calibrated']
    assert 'xla_rounding' in pair['framework_differences']
  for run in report['runs'][1:]:
    with open(os.path.join(run['path'], 'run.json')) as f:
      manifest = json.load(f)
    assert manifest['versions']['keras_backend'] == 'jax'
    assert manifest['kernels']['adam'] == 'tf1_formula_xla'


@requires_jax
@pytest.mark.parametrize('pitfall', JAX_PITFALLS)
def test_a_pitfall_in_the_jax_port_fails_named_and_localized(checks, pitfall):
  result, report = checks[pitfall]
  assert result.returncode == errors.EXIT_PARITY_FAIL, result.stdout[-3000:]
  assert report['pitfalls'][0] == pitfall
  assert 'reusing the complete run' in result.stdout  # the legacy run and its control
  [pair] = report['pairs']
  assert pair['other_label'] == 'eager:eager' and pair['verdict'] == 'FAIL'
  assert pair['pitfalls'][0]['name'] == pitfall
  assert pair['pitfalls'][0]['fix'] == pitfalls.PITFALLS[pitfall].fix
  where = pair['where']
  assert (where['first']['stage'], where['first']['name']) == JAX_PITFALLS[pitfall]
  assert f'where: {where["summary"]}' in result.stdout


@requires_jax
def test_the_exact_switches_compute_tf1s_kernels_on_jax(tmp_path):
  """tests/kernel_steps.py on each backend: TF1's kernels on TensorFlow, the formulas
  of tf1_kernels.py on JAX (the oracle is TF1's own kernel)."""
  results = {}
  for backend in ('tensorflow', 'jax'):
    path = str(tmp_path / f'{backend}.npz')
    proc = run_python(f'import runpy, sys; sys.argv = ["kernel_steps", {path!r}]; '
                      f'runpy.run_path({os.path.join(REPO, "tests", "kernel_steps.py")!r}, '
                      'run_name="__main__")', env={'KERAS_BACKEND': backend})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(path) as npz:
      results[backend] = {key: npz[key] for key in npz.files}
  assert len(results['jax']) == 13
  for key, expected in results['tensorflow'].items():
    got = results['jax'][key]
    # float32 rounding of a few operations apart at most (rsqrt against 1/sqrt).
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max(),
                               err_msg=key)


def test_backend_jax_without_jax_is_one_line_exit_2(tmp_path):
  """Where JAX is not installed (here: hidden), --backend=jax and --port_backend=jax end
  with one line and exit 2 before anything starts."""
  hide = ('import importlib.util, runpy, sys; find = importlib.util.find_spec; '
          'importlib.util.find_spec = lambda name, *a: None if name == "jax" else find(name, *a); '
          'sys.argv = [sys.argv[1], *sys.argv[2:]]; runpy.run_module(sys.argv[0], '
          'run_name="__main__")')
  for module, flag in (('tf1compat.commands.train_eager', '--backend=jax'),
                       ('tf1compat.commands.check_parity', '--port_backend=jax')):
    out = str(tmp_path / module.rsplit('.', 1)[1])
    folder_flag = '--model_dir' if module.endswith('train_eager') else '--output_dir'
    proc = run_python(hide, module, flag, f'{folder_flag}={out}')
    assert proc.returncode == errors.EXIT_USAGE, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "needs JAX, which is not installed: pip install 'tf1compat[jax]'" in lines[-1]
    assert 'Traceback' not in proc.stderr
    assert not os.path.exists(out)


def test_what_the_jax_port_does_not_run_is_refused_by_its_flags(tmp_path):
  proc = run_entry('train_eager', '--backend=jax', '--strategy=mirrored',
                   f'--model_dir={tmp_path / "run"}')
  assert proc.returncode == errors.EXIT_USAGE
  assert '--backend=jax trains in float32 on one device' in proc.stderr
  assert 'Traceback' not in proc.stderr
