"""cpu_info: the CPU's model and vector extensions read from the machine, oneDNN's default
from TensorFlow (what .ci/run prints before the tests)."""

import re

from conftest import run_python
from tf1compat.runtime import cpu_info

# /proc/cpuinfo's first processor on the two CPUs this project's machines have had.
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni

processor\t: 1
flags\t\t: avx512f
"""
ZEN4 = ZEN3.replace('model\t\t: 1', 'model\t\t: 17').replace(
    'sha_ni', 'avx512f avx512dq avx512_bf16 avx512_vnni sha_ni')


def test_describe_reads_the_first_processor(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text(ZEN3)
  zen3 = cpu_info.describe(str(path))
  assert zen3['model'] == 'AMD EPYC 7B13' and (zen3['family'], zen3['model_number']) == ('25', '1')
  assert zen3['vector_extensions'] == ['avx', 'avx2', 'f16c', 'fma', 'sse4_1', 'sse4_2']
  assert zen3['cores'] == cpu_info.cores() >= 1
  assert 'AVX2: yes; AVX-512: no; AMX: no' in cpu_info.summary(zen3)
  path.write_text(ZEN4)
  zen4 = cpu_info.summary(cpu_info.describe(str(path)))
  assert '(family 25 model 17)' in zen4
  assert 'AVX-512: avx512_bf16 avx512_vnni avx512dq avx512f;' in zen4


def test_describe_without_cpuinfo_still_names_the_machine(tmp_path):
  description = cpu_info.describe(str(tmp_path / 'missing'))
  assert description['model'] and description['vector_extensions'] == []


def test_the_report_names_the_default_and_the_forced_setting():
  proc = run_python('from tf1compat.commands import cpu_info as command; command.main()',
                    env={cpu_info.ONEDNN_ENV: '0'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == f'cpu: {cpu_info.summary(cpu_info.describe())}'
  assert lines[1] in ("oneDNN: TensorFlow's default on this CPU is on",
                      "oneDNN: TensorFlow's default on this CPU is off")
  assert lines[2] == 'oneDNN: TF_ENABLE_ONEDNN_OPTS=0 in this environment'
  # This host's speed for the suite: the CPU time of the probe's TensorFlow start.
  start_up = re.fullmatch(r'start-up: a process that imports TensorFlow took ([0-9.]+) '
                          r'CPU-seconds here', lines[3])
  assert start_up and float(start_up.group(1)) > 0, lines[3]
