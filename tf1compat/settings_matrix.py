"""check_parity --settings_matrix: the matched check once per setting the port may change.

The port of a legacy loop runs where the legacy loop did not: other defaults (XLA), other
kernels (oneDNN, TF32 on a GPU), determinism traded for speed. Each row runs the whole
matched check (legacy run, its control, the port) with one setting changed for the port
only (`--port_flags`), in a folder of its own, and reads three things: the verdict, the
port's divergence over the control's envelope, and the port's median step time against
the defaults row's. A team learns which settings its port may use and stay equivalent,
and what each costs or gains. TensorFlow-free: the runs are check_parity's subprocesses.
"""

import dataclasses
import os
import statistics

from tf1compat import atomic
from tf1compat import harness
from tf1compat import progress
from tf1compat import runlog

MARKDOWN = 'settings_matrix.md'
JSON = 'settings_matrix.json'


@dataclasses.dataclass(frozen=True)
class Row:
  """One setting of the port: its folder name, what it is, the port's extra flags."""
  name: str
  label: str
  port_flags: tuple
  gpu_only: bool = False


ROWS = (
    Row('defaults', 'the legacy run\'s settings', ()),
    Row('nodeterministic', 'op determinism off', ('--nodeterministic',)),
    Row('onednn_off', 'oneDNN off', ('--onednn=off',)),
    Row('jit_compile', 'XLA (--jit_compile)', ('--jit_compile',)),
    # TF32 and float16 only change anything on a GPU (TF32 needs Ampere or later).
    Row('tf32_off', 'TF32 off', ('--tf32=off',), gpu_only=True),
    Row('mixed_precision', 'mixed_float16', ('--mixed_precision',), gpu_only=True),
)


def _median_step_seconds(model_dir):
  seconds = runlog.read_csv(os.path.join(model_dir, runlog.STEPS_CSV))['seconds']
  # The first step traces (and compiles) the step: not what a step costs.
  return statistics.median(float(s) for s in seconds[1:]) if len(seconds) > 1 else None


def _on_gpu(report):
  return any((r.get('device') or '').startswith('GPU') for r in report['runs'])


def _result(row, report, row_dir):
  pair = report['pairs'][0]
  return {'label': row.label, 'port_flags': list(row.port_flags), 'verdict': pair['verdict'],
          'envelope_ratio': pair['envelope_ratio'],
          'settings_named': [d['field'] for d in pair['lint'] if d.get('setting')],
          'pitfalls': [p['name'] for p in pair['pitfalls']],
          'port_step_seconds': _median_step_seconds(os.path.join(row_dir, 'eager')),
          'legacy_step_seconds': _median_step_seconds(os.path.join(row_dir, 'graph')),
          'output_dir': row_dir}


def run(cfg, tolerances):
  """Runs the rows that apply on this device; returns {row name: result}.

  `cfg` is the check_parity config (its --port_flags apply to every row, the row's
  on top), `tolerances` parity.Tolerances. The defaults row runs first: where it ran
  (its run.json) decides whether the GPU rows apply. Writes settings_matrix.md/json
  into cfg.output_dir.
  """
  results = {}
  on_gpu = False
  for row in ROWS:
    if row.gpu_only and not on_gpu:
      continue
    row_dir = os.path.join(cfg.output_dir, row.name)
    progress.say(f'settings matrix: the port with {row.label}')
    report = harness.run(dataclasses.replace(
        cfg, output_dir=row_dir, settings_matrix=False,
        port_flags=cfg.port_flags + row.port_flags), tolerances)
    on_gpu = on_gpu or _on_gpu(report)
    results[row.name] = _result(row, report, row_dir)
  defaults = results['defaults']['port_step_seconds']
  for result in results.values():
    step = result['port_step_seconds']
    result['step_time_vs_defaults'] = step / defaults if step and defaults else None
  atomic.atomic_write_json(os.path.join(cfg.output_dir, JSON), results)
  atomic.atomic_write_text(os.path.join(cfg.output_dir, MARKDOWN),
                           '\n'.join(['# Settings matrix', '', *table_lines(results)]) + '\n')
  return results


def _format(value, spec):
  return '-' if value is None else format(value, spec)


def table_lines(results):
  """The table: per setting of the port, its verdict, divergence and step time."""
  lines = ['| the port with | verdict | x envelope | port step s | vs defaults | named |',
           '|---|---|---|---|---|---|']
  for result in results.values():
    named = ', '.join(result['pitfalls'] or result['settings_named']) or '-'
    lines.append(f'| {result["label"]} | {result["verdict"]} | '
                 f'{_format(result["envelope_ratio"], ".2g")} | '
                 f'{_format(result["port_step_seconds"], ".3f")} | '
                 f'{_format(result["step_time_vs_defaults"], ".2f")} | {named} |')
  return lines
