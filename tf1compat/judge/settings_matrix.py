"""check_parity --settings_matrix: the matched check once per setting the port may change.

The port of a legacy loop runs where the legacy loop did not: other defaults (XLA), other
kernels (oneDNN, TF32 on a GPU), determinism traded for speed. Each row runs the whole
matched check (legacy run, its control, the port) with one setting changed for the port
only (`--port_flags`), in a folder of its own, and reads three things: the verdict, the
port's divergence over the control's envelope, and the port's median step time against
the defaults row's and against the legacy Session's. A team learns which settings its port
may use and stay equivalent, what each costs or gains, and the fastest that PASSes.
TensorFlow-free: the runs are check_parity's subprocesses.

Which rows apply is read from the defaults row's own runs, never assumed: oneDNN is on
by default on some x86 CPUs and off on others (TensorFlow 2.21 turns it on only where
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX exist), so the oneDNN row is the one that
changes what the port ran with (`onednn_off` where it ran with oneDNN, `onednn_on`
where not), the GPU rows apply where the defaults row ran on a GPU, and the bfloat16 rows
where the hardware computes in bfloat16.
"""

import dataclasses
import os
import statistics

from tf1compat.judge import harness
from tf1compat.runs import atomic
from tf1compat.runs import run_files
from tf1compat.runs import runlog
from tf1compat.runtime import cpu_info
from tf1compat.runtime import progress

MARKDOWN = 'settings_matrix.md'
JSON = 'settings_matrix.json'


@dataclasses.dataclass(frozen=True)
class Row:
  """One setting of the port: its folder name, what it is, the port's extra flags."""
  name: str
  label: str
  port_flags: tuple
  gpu_only: bool = False


DEFAULTS = Row('defaults', 'the legacy run\'s settings', ())
ONEDNN_ROWS = {True: Row('onednn_off', 'oneDNN off', ('--onednn=off',)),
               False: Row('onednn_on', 'oneDNN on', ('--onednn=on',))}
OTHER_ROWS = (
    Row('nodeterministic', 'op determinism off', ('--nodeterministic',)),
    Row('jit_compile', 'XLA (--jit_compile)', ('--jit_compile',)),
    # TF32 and float16 only change anything on a GPU (TF32 needs Ampere or later).
    Row('tf32_off', 'TF32 off', ('--tf32=off',), gpu_only=True),
    Row('mixed_precision', 'mixed_float16', ('--mixed_precision',), gpu_only=True),
)
# bfloat16 pays where the hardware multiplies in it: GPUs, and CPUs with AVX512_BF16 or AMX.
# Elsewhere TensorFlow emulates it (oneDNN refuses bfloat16 without AVX-512 and falls back
# to Eigen), slower than float32, so the rows would only show a cost.
BFLOAT16_ROWS = (
    Row('mixed_bfloat16', 'mixed_bfloat16', ('--mixed_bfloat16',)),
    Row('mixed_bfloat16_jit', 'mixed_bfloat16 with XLA', ('--mixed_bfloat16', '--jit_compile')),
)
BFLOAT16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def _ran_on_gpu(port_manifest):
  return (port_manifest.get('device') or '').startswith('GPU')


def bfloat16_pays(port_manifest, vector_extensions):
  """Whether the port's device computes in bfloat16 natively: a GPU, or a CPU whose
  `vector_extensions` (cpu_info.describe) include AVX512_BF16 or AMX."""
  return _ran_on_gpu(port_manifest) or bool(set(BFLOAT16_CPU_FLAGS) & set(vector_extensions))


def rows_after_defaults(port_manifest, vector_extensions):
  """The rows to run after the defaults row, given its port's run.json and the CPU's
  vector extensions: the oneDNN row that changes the port's oneDNN as it ran, the GPU rows
  where it ran on a GPU, and the bfloat16 rows where bfloat16 pays."""
  onednn = ONEDNN_ROWS[bool(port_manifest['settings']['onednn'])]
  return [OTHER_ROWS[0], onednn,
          *(row for row in OTHER_ROWS[1:] if _ran_on_gpu(port_manifest) or not row.gpu_only),
          *(BFLOAT16_ROWS if bfloat16_pays(port_manifest, vector_extensions) else ())]


def _median_step_seconds(model_dir):
  seconds = runlog.read_csv(os.path.join(model_dir, run_files.STEPS_CSV))['seconds']
  # The first step traces (and compiles) the step: not what a step costs.
  return statistics.median(float(s) for s in seconds[1:]) if len(seconds) > 1 else None


def _result(row, report, row_dir):
  pair = report['pairs'][0]
  legacy, port = (r['path'] for r in report['runs'][:2])
  return {'label': row.label, 'port_flags': list(row.port_flags), 'verdict': pair['verdict'],
          'envelope_ratio': pair['envelope_ratio'],
          'settings_named': [d['field'] for d in pair['lint'] if d.get('setting')],
          'pitfalls': [p['name'] for p in pair['pitfalls']],
          'port_step_seconds': _median_step_seconds(port),
          'legacy_step_seconds': _median_step_seconds(legacy),
          'output_dir': row_dir}


def run(cfg, tolerances):
  """Runs the rows that apply on this device; returns {row name: result}.

  `cfg` is the check_parity config (its --port_flags apply to every row, the row's
  on top), `tolerances` parity.Tolerances. The defaults row runs first: its port's
  run.json decides the oneDNN row and whether the GPU rows apply. Writes
  settings_matrix.md (the CPU and oneDNN's default found, then the table) and .json
  into cfg.output_dir.
  """
  results = {}
  shared = {}

  def run_row(row):
    row_dir = os.path.join(cfg.output_dir, row.name)
    progress.say(f'settings matrix: the port with {row.label}')
    report = harness.run(dataclasses.replace(
        cfg, output_dir=row_dir, settings_matrix=False,
        port_flags=cfg.port_flags + row.port_flags), tolerances, reuse=shared)
    results[row.name] = _result(row, report, row_dir)
    return report

  defaults = run_row(DEFAULTS)
  # Every row changes the port only: the defaults row's legacy run and control, from
  # the same initial weights, serve them all (two runners fewer per row).
  shared['graph'] = defaults['runs'][0]['path']
  for control in defaults['controls']:
    shared[os.path.basename(control)] = control
  cfg = dataclasses.replace(cfg, init_weights=defaults['init_weights'])
  port = runlog.read_manifest(defaults['runs'][1]['path'])
  onednn_default = bool(port['settings']['onednn'])
  progress.say(f'settings matrix: the defaults row ran with oneDNN '
               f'{"on" if onednn_default else "off"}; its row turns it '
               f'{"off" if onednn_default else "on"}')
  cpu = cpu_info.describe()
  extensions = cpu['vector_extensions']
  for row in rows_after_defaults(port, extensions):
    run_row(row)
  defaults_step = results['defaults']['port_step_seconds']
  # Every row shares the defaults row's legacy run: one Session step time for all of them.
  session_step = results['defaults']['legacy_step_seconds']
  for result in results.values():
    step = result['port_step_seconds']
    result['step_time_vs_defaults'] = step / defaults_step if step and defaults_step else None
    result['step_time_vs_session'] = step / session_step if step and session_step else None
  atomic.atomic_write_json(os.path.join(cfg.output_dir, JSON), results)
  machine = [f'Measured on {cpu_info.summary(cpu)}.',
             f'oneDNN: TensorFlow\'s default on this CPU is '
             f'{"on" if cpu_info.onednn_default() else "off"}; the port ran with it '
             f'{"on" if onednn_default else "off"} in the defaults row'
             + (f' ({cpu_info.ONEDNN_ENV}={os.environ[cpu_info.ONEDNN_ENV]} here)'
                if cpu_info.ONEDNN_ENV in os.environ else '')
             + f', so the oneDNN row turns it {"off" if onednn_default else "on"}.',
             'bfloat16: ' + (
                 'the rows run (the port ran on a GPU, or this CPU has '
                 f'{" or ".join(BFLOAT16_CPU_FLAGS)}).' if bfloat16_pays(port, extensions)
                 else f'no row: this CPU has neither {" nor ".join(BFLOAT16_CPU_FLAGS)}, '
                      'so TensorFlow would emulate bfloat16, slower than float32.')]
  atomic.atomic_write_text(os.path.join(cfg.output_dir, MARKDOWN), '\n'.join(
      ['# Settings matrix', '', *machine, '', *table_lines(results), '',
       fastest_line(results)]) + '\n')
  return results


def _format(value, spec):
  return '-' if value is None else format(value, spec)


def table_lines(results):
  """The table: per setting of the port, its verdict, divergence and step time, against
  the defaults row's port and against the legacy Session's (the defaults row's legacy run,
  which every row shares)."""
  lines = ['| the port with | verdict | x envelope | port step s | vs defaults | vs Session '
           '| named |',
           '|---|---|---|---|---|---|---|']
  for result in results.values():
    named = ', '.join(result['pitfalls'] or result['settings_named']) or '-'
    lines.append(f'| {result["label"]} | {result["verdict"]} | '
                 f'{_format(result["envelope_ratio"], ".2g")} | '
                 f'{_format(result["port_step_seconds"], ".3f")} | '
                 f'{_format(result["step_time_vs_defaults"], ".2f")} | '
                 f'{_format(result["step_time_vs_session"], ".2f")} | {named} |')
  return lines


def fastest_passing(results):
  """The name of the row whose port PASSed with the shortest step, None if none did."""
  passed = [name for name, result in results.items()
            if result['verdict'] == 'PASS' and result['port_step_seconds']]
  return min(passed, key=lambda name: results[name]['port_step_seconds'], default=None)


def fastest_line(results):
  """One line naming the fastest row that PASSed and its speed against the Session."""
  name = fastest_passing(results)
  if name is None:
    return 'fastest setting that PASSes: none (no row PASSed with a step time)'
  ratio = results[name]['step_time_vs_session']
  speed = f': {1 / ratio:.2f}x the legacy Session\'s speed' if ratio else ''
  return f'fastest setting that PASSes: {results[name]["label"]} ({name}){speed}'
