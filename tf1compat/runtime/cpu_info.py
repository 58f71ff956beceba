"""What CPU this is: its model, its cores and the vector extensions that decide its kernels.

Machines of one kind differ: one 2-core VM has AVX-512 with VNNI and BF16, another only
AVX2. TensorFlow 2.21 turns oneDNN on by default only on x86 CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX, and the kernels it then runs sum in another order and at
another speed (measured: the suite took 24 minutes on an AVX2-only Zen 3 and 11 to 14 on
an AVX-512 Zen 4). Whatever depends on this reads the machine: the CPU's flags from here
(TensorFlow-free, read from /proc/cpuinfo where it exists), oneDNN's state from
TensorFlow itself (`onednn_default`), never from a constant.

`python -m tf1compat.commands.cpu_info` prints the lot, as CI does before its tests.
"""

import os
import platform
import resource
import subprocess
import sys

# The flags whose presence changes which kernels TensorFlow and oneDNN run, as
# /proc/cpuinfo spells them.
VECTOR_FLAG_PREFIXES = ('avx', 'amx', 'fma', 'f16c', 'sse4')
ONEDNN_ENV = 'TF_ENABLE_ONEDNN_OPTS'


def _cpuinfo_fields(path='/proc/cpuinfo'):
  """{field: value} of the first processor in /proc/cpuinfo; {} where there is none."""
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(':')
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def cores():
  """The cores this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def describe(path='/proc/cpuinfo'):
  """{'model', 'cores', 'family', 'model_number', 'vector_extensions'} of this machine.

  'vector_extensions' is the sorted list of the CPU's flags that name vector
  instruction sets (AVX, AVX2, AVX-512 and its parts, AMX, FMA, F16C, SSE4); empty
  where the platform does not say (not Linux).
  """
  fields = _cpuinfo_fields(path)
  flags = fields.get('flags', '').split()
  return {'model': fields.get('model name') or platform.processor() or platform.machine(),
          'cores': cores(),
          'family': fields.get('cpu family'), 'model_number': fields.get('model'),
          'vector_extensions': sorted(f for f in flags if f.startswith(VECTOR_FLAG_PREFIXES))}


def summary(description):
  """One line: '<model>, N cores, AVX-512: yes (avx512f ...), AMX: no'."""
  extensions = description['vector_extensions']
  avx512 = [f for f in extensions if f.startswith('avx512')]
  amx = [f for f in extensions if f.startswith('amx')]
  family = ''
  if description.get('family'):
    family = f' (family {description["family"]} model {description["model_number"]})'
  return (f'{description["model"]}{family}, {description["cores"]} cores; '
          f'AVX2: {"yes" if "avx2" in extensions else "no"}; '
          f'AVX-512: {" ".join(avx512) if avx512 else "no"}; '
          f'AMX: {" ".join(amx) if amx else "no"}')


# Run in a child process (a fresh TensorFlow start); its print is that process's answer.
_ONEDNN_PROBE = ('from tensorflow.python.util import _pywrap_util_port; '
                 'print(int(_pywrap_util_port.IsMklEnabled()))')


def _probe_onednn():
  """(oneDNN's default, the CPU-seconds the probe's process took): a fresh process without
  TF_ENABLE_ONEDNN_OPTS imports TensorFlow and asks it."""
  env = {k: v for k, v in os.environ.items() if k != ONEDNN_ENV}
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  out = subprocess.run([sys.executable, '-c', _ONEDNN_PROBE], env=env, capture_output=True,
                       text=True, check=True)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return out.stdout.strip().splitlines()[-1] == '1', cpu_seconds


def onednn_default():
  """Whether TensorFlow turns oneDNN on by default on this CPU, as TensorFlow itself says
  in a fresh process without TF_ENABLE_ONEDNN_OPTS (the choice is made once, when
  TensorFlow loads). Costs a TensorFlow start (seconds)."""
  return _probe_onednn()[0]


def report_lines():
  """The lines `python -m tf1compat.commands.cpu_info` prints: the CPU, its vector
  extensions, oneDNN's default here and in this environment, and what a TensorFlow
  start costs here.

  The last is this host's speed for the test suite, whose time is mostly ~210 such
  starts (docs/performance.md): hosts are compared by it, not by the suite's minutes.
  """
  description = describe()
  default, start_seconds = _probe_onednn()
  lines = [f'cpu: {summary(description)}',
           f'oneDNN: TensorFlow\'s default on this CPU is {"on" if default else "off"}']
  forced = os.environ.get(ONEDNN_ENV)
  if forced is not None:
    lines.append(f'oneDNN: {ONEDNN_ENV}={forced} in this environment')
  lines.append(f'start-up: a process that imports TensorFlow took {start_seconds:.1f} '
               'CPU-seconds here')
  return lines
