"""check_parity --settings_matrix: the matched check once per setting of the port (CPU rows)."""

import json
import os

from conftest import run_entry, tiny_run_flags
from tf1compat import runlog
from tf1compat import settings_matrix


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
  # No GPU here: the GPU rows (TF32, mixed precision) do not apply.
  assert sorted(rows) == ['defaults', 'jit_compile', 'nodeterministic', 'onednn_off']
  assert rows['defaults']['verdict'] == 'PASS' and rows['defaults']['settings_named'] == []
  assert rows['defaults']['step_time_vs_defaults'] == 1.0
  # Each row's port really ran with its setting (its own run.json), and the lint named it.
  ports = {name: runlog.read_manifest(os.path.join(out, name, 'eager')) for name in rows}
  assert ports['nodeterministic']['deterministic'] is False
  assert ports['onednn_off']['settings']['onednn'] is False
  assert ports['onednn_off']['settings']['onednn'] != ports['defaults']['settings']['onednn']
  assert ports['jit_compile']['jit_compile'] is True
  assert rows['nodeterministic']['settings_named'] == ['deterministic']
  assert rows['onednn_off']['settings_named'] == ['oneDNN']
  assert rows['jit_compile']['settings_named'] == ['jit_compile']
  with open(os.path.join(out, settings_matrix.MARKDOWN)) as f:
    table = f.read()
  assert all(rows[name]['label'] in table for name in rows)
  assert 'table: ' in result.stdout
