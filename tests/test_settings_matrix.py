"""check_parity --settings_matrix: the matched check once per setting of the port (CPU rows)."""

import json
import os
import statistics

import pytest

from conftest import run_entry, run_python, tiny_run_flags
from tf1compat.judge import settings_matrix
from tf1compat.runs import runlog
from tf1compat.runtime import cpu_info


# Opt-in (pytest -m matrix): a check per row, 50 s of the default suite's time.
@pytest.mark.matrix
def test_settings_matrix_runs_the_cpu_rows_and_writes_its_table(tiny_data_dir,
                                                                graph_init_weights, tmp_path):
  out = str(tmp_path / 'matrix')
  flags = [f for f in tiny_run_flags(tiny_data_dir, 'unused') if not f.startswith('--model_dir')]
  # Given initial weights: otherwise the legacy runner writes the same file into each
  # row's folder, a process per row.
  result = run_entry('check_parity', *flags, '--epochs=1', '--settings_matrix',
                     f'--init_weights={graph_init_weights}', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, settings_matrix.JSON)) as f:
    rows = json.load(f)
  # oneDNN's default depends on the CPU (and TF_ENABLE_ONEDNN_OPTS): the oneDNN row is the
  # one that changes what the defaults row ran with, as TensorFlow recorded it.
  defaults_onednn = runlog.read_manifest(os.path.join(out, 'defaults', 'eager'))[
      'settings']['onednn']
  onednn_row = 'onednn_off' if defaults_onednn else 'onednn_on'
  # No GPU here: the GPU rows (TF32, mixed precision) do not apply; the bfloat16 rows only
  # where this CPU multiplies in bfloat16.
  bfloat16_rows = [row.name for row in settings_matrix.BFLOAT16_ROWS] if (
      settings_matrix.bfloat16_pays({'device': 'CPU'}, cpu_info.describe()['vector_extensions'])
  ) else []
  assert sorted(rows) == sorted(['defaults', 'jit_compile', 'nodeterministic', onednn_row,
                                 *bfloat16_rows])
  assert rows['defaults']['verdict'] == 'PASS' and rows['defaults']['settings_named'] == []
  assert rows['defaults']['step_time_vs_defaults'] == 1.0
  # The speed column: every row's port step over the shared legacy run's, from steps.csv.
  legacy_steps = [float(s) for s in runlog.read_csv(os.path.join(
      out, 'defaults', 'graph', 'steps.csv'))['seconds'][1:]]
  assert rows['defaults']['step_time_vs_session'] == pytest.approx(
      rows['defaults']['port_step_seconds'] / statistics.median(legacy_steps))
  # Each row's port really ran with its setting (its own run.json), and the lint named it.
  ports = {name: runlog.read_manifest(os.path.join(out, name, 'eager')) for name in rows}
  assert ports['nodeterministic']['deterministic'] is False
  assert ports[onednn_row]['settings']['onednn'] is (not defaults_onednn)
  assert ports['jit_compile']['jit_compile'] is True
  assert rows['nodeterministic']['settings_named'] == ['deterministic']
  assert rows[onednn_row]['settings_named'] == ['oneDNN']
  assert rows['jit_compile']['settings_named'] == ['jit_compile']
  # The rows change the port only: they share the defaults row's legacy run and control.
  for name in rows:
    with open(os.path.join(out, name, 'parity.json')) as f:
      report = json.load(f)
    assert report['runs'][0]['path'] == os.path.join(out, 'defaults', 'graph')
    assert report['controls'] == [os.path.join(out, 'defaults', 'control')]
    assert os.path.exists(os.path.join(out, name, 'graph')) == (name == 'defaults')
  with open(os.path.join(out, settings_matrix.MARKDOWN)) as f:
    table = f.read()
  assert all(rows[name]['label'] in table for name in rows)
  # The table names the CPU and the default it found.
  assert cpu_info.describe()['model'] in table
  assert f'the port ran with it {"on" if defaults_onednn else "off"} in the defaults row' in table
  assert 'table: ' in result.stdout
  fastest = settings_matrix.fastest_passing(rows)
  assert f'fastest setting that PASSes: {rows[fastest]["label"]} ({fastest})' in table


@pytest.mark.parametrize('default_on', [True, False])
def test_the_onednn_row_changes_what_the_defaults_row_ran_with(default_on):
  port = {'device': 'CPU', 'settings': {'onednn': default_on}}
  rows = [row.name for row in settings_matrix.rows_after_defaults(port, ['avx2', 'fma'])]
  assert rows == ['nodeterministic', 'onednn_off' if default_on else 'onednn_on', 'jit_compile']
  gpu_port = {**port, 'device': 'GPU:0'}
  on_gpu = [row.name for row in settings_matrix.rows_after_defaults(gpu_port, ['avx2'])]
  assert on_gpu[-4:] == ['tf32_off', 'mixed_precision', 'mixed_bfloat16', 'mixed_bfloat16_jit']


@pytest.mark.parametrize('extensions,offered', [
    (['avx2', 'avx512f', 'avx512_vnni'], False),
    (['avx2', 'avx512f', 'avx512_bf16'], True),
    (['avx2', 'amx_bf16', 'amx_tile'], True),
])
def test_the_bfloat16_rows_run_where_the_cpu_multiplies_in_bfloat16(extensions, offered):
  port = {'device': 'CPU', 'settings': {'onednn': True}}
  rows = {row.name: row.port_flags
          for row in settings_matrix.rows_after_defaults(port, extensions)}
  assert ('mixed_bfloat16' in rows) is offered and ('mixed_bfloat16_jit' in rows) is offered
  assert 'mixed_precision' not in rows and 'tf32_off' not in rows
  if offered:
    assert rows['mixed_bfloat16_jit'] == ('--mixed_bfloat16', '--jit_compile')


def _row(verdict, port_step, session_step=0.02):
  return {'label': 'l', 'verdict': verdict, 'envelope_ratio': 0.5, 'pitfalls': [],
          'settings_named': [], 'port_step_seconds': port_step,
          'step_time_vs_defaults': None,
          'step_time_vs_session': port_step / session_step if port_step else None}


def test_the_report_names_the_fastest_row_that_passes_and_its_speed_over_the_session():
  results = {'defaults': _row('PASS', 0.021), 'jit_compile': _row('FAIL', 0.005),
             'mixed_bfloat16': _row('PASS', 0.0125), 'nodeterministic': _row('PASS', None)}
  assert settings_matrix.fastest_passing(results) == 'mixed_bfloat16'
  # 0.02 s a Session step over 0.0125 s: 1.6 times its speed.
  assert settings_matrix.fastest_line(results).endswith("(mixed_bfloat16): 1.60x the legacy "
                                                        "Session's speed")
  assert '| l | PASS | 0.5 | 0.013 | - | 0.62 | - |' in settings_matrix.table_lines(results)
  assert settings_matrix.fastest_passing({'jit_compile': _row('FAIL', 0.005)}) is None


@pytest.mark.parametrize('forced', ['0', '1'])
def test_recorded_onednn_is_what_tensorflow_runs_with(forced):
  """run.json's settings.onednn (what the lint, the matrix and the calibration read) comes
  from TensorFlow, not from a constant: it follows TF_ENABLE_ONEDNN_OPTS either way."""
  proc = run_python('import json; from tf1compat.runtime import numerics; '
                    'print(json.dumps(numerics.settings()))',
                    env={cpu_info.ONEDNN_ENV: forced})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1])['onednn'] is (forced == '1')
