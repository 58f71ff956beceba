"""Shared flag definitions: the forwarded list and the validators' one-line errors."""

from conftest import run_entry, run_python


def test_common_flags_list_matches_the_definitions():
  code = r'''
from absl import flags
from tf1compat import flags as f
f.define_data_flags()
f.define_training_flags('graph')
print(','.join(sorted(fl.name for fl in flags.FLAGS.get_flags_for_module('tf1compat.flags'))))
print(','.join(sorted(f.COMMON_FLAGS)))
'''
  result = run_python(code)
  assert result.returncode == 0, result.stderr
  defined, listed = result.stdout.split()
  assert defined == listed


def test_bad_flag_values_exit_2_with_one_line():
  for args, message in ((['--batch_size=0'], '--batch_size=0'),
                        (['--snapshot_steps=1,x'], '--snapshot_steps'),
                        (['--image_size=16'], '--image_size=16'),
                        (['--pitfall=nope'], '--pitfall')):
    result = run_entry('check_parity', *args)
    assert result.returncode == 2, (args, result.stderr)
    assert message in result.stderr
    assert 'Traceback' not in result.stderr
