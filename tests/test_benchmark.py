"""bin/benchmark (issue 7): a smoke run with tiny settings; no timing is asserted.

The run takes every measurement once, on 32-pixel images and a few steps, and checks
that the JSON holds the issue's keys with positive figures. The runner configs the
workers receive, and the compute-only dataset hook, are checked on their own.
"""

import json

import pytest

from conftest import TINY_IMAGE_SIZE, run_entry, run_python
from tf1compat import benchmark
from tf1compat import benchmark_figures
from tf1compat import benchmark_workers
from tf1compat import config

TINY_ARGS = [f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--records=64',
             '--shuffle_buffer=32', '--repetitions=1', '--steps=2', '--warmup_steps=1',
             '--pipeline_batches=2']


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """(CompletedProcess, figures) of one tiny run of every measurement."""
  out = tmp_path_factory.mktemp('benchmark')
  json_path = str(out / 'figures.json')
  result = run_entry('benchmark', *TINY_ARGS, f'--output_dir={out / "work"}',
                     f'--json={json_path}')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(json_path) as f:
    return result, json.load(f)


def test_json_holds_every_figure(smoke):
  _, figures = smoke
  for key in ('eager_over_graph', 'fit_over_graph', 'pipeline_speedup',
              'pipeline_memory_ratio', 'eager_tf1_adam_over_graph', 'fit_tf1_adam_over_graph',
              'jit_over_eager'):
    assert figures[key] > 0, key
  assert set(figures['loop_over_compute_only']) == {'graph', 'eager', 'fit'}
  assert all(v > 0 for v in figures['loop_over_compute_only'].values())
  assert set(figures['measurements']) == set(benchmark.MEASUREMENT_NAMES)
  for name, measured in figures['measurements'].items():
    rates = measured['images_per_second']
    assert rates['repetitions'] and all(r > 0 for r in rates['repetitions']), name
    assert rates['min'] <= rates['median'] <= rates['max'], name
    assert measured['peak_rss_mb'] > 0, name
  assert figures['measurements']['eager_jit']['jit_compile'] is True
  assert figures['device']['accelerator']
  assert figures['device']['cpu_cores'] >= 1
  assert {'tensorflow', 'keras', 'tf_keras'} <= set(figures['device']['versions'])
  assert figures['settings']['num_classes'] == config.CALTECH256_CLASSES
  assert figures['settings']['records'] >= 64
  assert set(figures['targets']) == {t.key for t in benchmark_figures.TARGETS}


def test_table_shows_every_measurement_and_target(smoke):
  result, figures = smoke
  for measured in figures['measurements'].values():
    assert measured['label'] in result.stdout
  for target in benchmark_figures.TARGETS:
    assert target.label in result.stdout
  assert figures['device']['description'] in result.stdout


def test_user_data_is_read_without_its_validation_files(tiny_data_dir, tmp_path):
  json_path = str(tmp_path / 'figures.json')
  result = run_entry('benchmark', *TINY_ARGS, f'--data_dir={tiny_data_dir}',
                     '--measurements=pipeline_optimized,eager', f'--output_dir={tmp_path / "w"}',
                     f'--json={json_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(json_path) as f:
    figures = json.load(f)
  assert set(figures['measurements']) == {'pipeline_optimized', 'eager'}
  # The tiny dataset's own class count and only its training records (4 x 16).
  assert figures['settings']['num_classes'] == 4
  assert figures['settings']['records'] == 64
  assert figures['eager_over_graph'] is None


@pytest.mark.parametrize('args,message', [
    (['--measurements=nope'], '--measurements'),
    (['--data_dir=/no/such/folder'], '/no/such/folder'),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, message):
  result = run_entry('benchmark', *args, f'--output_dir={tmp_path}')
  assert result.returncode == 2, result.stderr[-3000:]
  assert message in result.stderr.strip().splitlines()[-1]
  assert 'Traceback' not in result.stderr


def test_train_specs_carry_each_runner_config_through_json(tmp_path):
  settings = config.BenchmarkConfig(image_size=TINY_IMAGE_SIZE, batch_size=8, steps=2,
                                    warmup_steps=1, repetitions=3)
  data = {'data_dir': str(tmp_path), 'num_classes': 4}
  trained = [m for m in benchmark.MEASUREMENTS if m.kind == 'train']
  assert {m.runner for m in trained} == set(benchmark_figures.LOOPS)
  for measurement in trained:
    spec = json.loads(json.dumps(benchmark.train_spec(settings, data, measurement,
                                                      str(tmp_path / measurement.name))))
    runner_config = benchmark_workers.config_from_spec(spec)
    expected = config.GraphConfig if measurement.runner == 'graph' else config.EagerConfig
    assert type(runner_config) is expected, measurement.name
    assert spec['compute_only'] == measurement.compute_only
    assert (runner_config.data_dir, runner_config.num_classes) == (str(tmp_path), 4)
    assert (runner_config.epochs, runner_config.total_steps) == (1, settings.total_steps)
    # Only the last step is snapshotted; no checkpoint or progress line within the run.
    assert runner_config.snapshot_steps == ()
    assert runner_config.snapshot_steps_within() == (settings.total_steps,)
    assert runner_config.checkpoint_every > settings.total_steps
    assert runner_config.log_every > settings.total_steps
    for switch in ('tf1_adam', 'jit_compile'):
      assert getattr(runner_config, switch, False) == (switch in measurement.switches)
    if measurement.runner != 'graph':
      assert runner_config.loop == ('fit' if measurement.runner == 'fit' else 'custom')


def test_compute_only_hook_serves_the_first_training_batch_and_leaves_validation():
  result = run_python(
      'import json\n'
      'import tensorflow as tf\n'
      'from tf1compat import benchmark_workers\n'
      'dataset = tf.data.Dataset.range(6).batch(2)\n'
      'served = benchmark_workers.one_batch_in_memory(dataset, training=True)\n'
      'kept = benchmark_workers.one_batch_in_memory(dataset, training=False)\n'
      'print(json.dumps([[b.tolist() for b in d.take(4).as_numpy_iterator()]\n'
      '                  for d in (served, kept)]))\n')
  assert result.returncode == 0, result.stderr[-3000:]
  served, kept = json.loads(result.stdout.splitlines()[-1])
  assert served == [[0, 1]] * 4
  assert kept == [[0, 1], [2, 3], [4, 5]]
