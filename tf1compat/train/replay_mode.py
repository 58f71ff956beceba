"""The runners' replay mode: a finished run's step once more, as a probe for the judge's
localization (judge/replay_runs.py starts the replays, judge/localize.py reads them).

    train_graph|train_eager --model_dir=RUN --replay_out=PROBE.npz [--replay_step=K]
        [--replay_batch=REF.npz] [--replay_start=REF.npz]

rebuilds RUN's model from RUN's own run.json (its flags, its thread counts), loads its
latest snapshot before step K (weights, and the optimizer's state: its slots in one form
for both frameworks, optimizers.SLOTS, and its step), trains the steps between as the
run trained them, and runs step K once more as the run ran it (the learning phase as
fed, the same kernels, loss and learning rate), on the batch of REF.npz (the reference's
probe) or on its own pipeline's batch of step K, and writes the step's probe (probes.py).
The run directory is only read; the steps update the replay's own copy.

Step 1 starts from the step-0 snapshot and the optimizer's own fresh state, which is
the state its run started from. A later step needs the optimizer's state at a snapshot:
a mistake that acts only from a later step (a rate that changed, a slot that decayed,
pitfalls.Where.at) shows where the runs part, not at step 1. By then the runs
have parted a little; so the reference's replay of a later step also writes the state it
reached just before it (start_paths: the weights, and the optimizer's state in one form
for both frameworks), and the others start from that state (--replay_start=REF.npz), each
loading the slots into its own optimizer (TF1's Momentum accumulator is Keras' divided by
minus the last rate), so that the step differs only by what the codes compute. Dropout
masks are drawn anew after the snapshot (a stateful op whose position no snapshot holds).

Model.fit's replay is the custom loop's step on the same Keras 3 model, with the
regularization losses added as fit adds them: fit's own train_step computes the same
loss, gradients and update (the pair fit vs graph is judged on it). Distributed and
mixed-precision runs are not replayed (replayable). TensorFlow-free: the twins'
replay.py (train/graph, train/eager) compute the step.
"""

import dataclasses
import hashlib
import os

import numpy as np

from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import probes
from tf1compat.runs import run_files
from tf1compat.runs import runlog

# The command that replays a run of each runner (its run.json 'runner').
RUNNER_COMMANDS = {'graph': 'train_graph', 'eager': 'train_eager', 'fit': 'train_eager'}
# The process settings a replay takes from the run's run.json 'settings' block.
_THREAD_SETTINGS = {'intra_op_threads': 'TF_NUM_INTRAOP_THREADS',
                    'inter_op_threads': 'TF_NUM_INTEROP_THREADS'}


def replayable(manifest):
  """Why the run of run.json `manifest` cannot be replayed by our runners, or None."""
  if manifest.get('runner') not in RUNNER_COMMANDS:
    return (f'it is a {manifest.get("runner")!r} run, not one of our runners\'; record a '
            'probe in the loop (RunRecorder.probe)')
  if manifest.get('replicas', 1) != 1:
    return f'it ran over {manifest.get("replicas")} replicas; a replay is one device\'s step'
  if manifest.get('dtype_policy', 'float32') != 'float32':
    return (f'it ran under {manifest.get("dtype_policy")}; a replay compares float32 steps')
  return None


def run_config(config_class, replay_cfg, runner_names):
  """The config of the complete run that replay_cfg (config.ReplayConfig) replays (its
  run.json's flags), set up to replay its step: the snapshot it starts from (start())
  as the initial weights, nothing written.

  Raises errors.UsageError when the run directory holds no complete run of one of
  `runner_names` with a step-0 snapshot, or one that is not replayable, and when the
  probe would be written into it, among the data, into the package or over a file that
  is not a probe (folders.check_output).
  """
  model_dir = replay_cfg.model_dir
  manifest = runlog.read_manifest(model_dir)
  folders.check_output(replay_cfg.output, '--replay_out', folder=False,
                       data_dirs=[(manifest or {}).get('flags', {}).get('data_dir')],
                       read_runs=[model_dir], replaceable=_is_probe)
  if manifest is None:
    raise errors.UsageError(f'--model_dir={model_dir}: no {run_files.RUN_JSON}; --replay_out '
                            'replays a run our runners made')
  runner = manifest.get('runner')
  if runner not in runner_names:
    raise errors.UsageError(f'--model_dir={model_dir} holds a {runner} run; replay it with '
                            f'{RUNNER_COMMANDS.get(runner, "its own loop (RunRecorder.probe)")}')
  if manifest.get('status') != runlog.STATUS_COMPLETE:
    raise errors.UsageError(f'--model_dir={model_dir}: the run is {manifest.get("status")}, not '
                            'complete; rerun its command to finish it before replaying it')
  why_not = replayable(manifest)
  if why_not:
    raise errors.UsageError(f'--model_dir={model_dir} cannot be replayed: {why_not}')
  if replay_cfg.step > manifest.get('global_step', 0):
    raise errors.UsageError(f'--replay_step={replay_cfg.step}: the run in --model_dir={model_dir} '
                            f'trained {manifest.get("global_step", 0)} steps')
  if replay_cfg.start:
    weights = start_paths(replay_cfg.start)[0]
    if not os.path.exists(weights):
      raise errors.UsageError(f'--replay_start={replay_cfg.start}: no start state beside it '
                              f'({weights}); give a replay of a step after the first')
  else:
    weights = run_files.snapshot_path(model_dir, start(model_dir, replay_cfg.step)[0])
  fields = {field.name for field in dataclasses.fields(config_class)}
  flags = manifest.get('flags', {})
  if 'adam_epsilon' in flags and 'epsilon' not in flags:
    # Runs from before --optimizer named Adam's epsilon so.
    flags = {**flags, 'epsilon': flags['adam_epsilon']}
  values = {name: tuple(value) if isinstance(value, list) else value
            for name, value in flags.items() if name in fields}
  cfg = dataclasses.replace(config_class(**values), model_dir=model_dir, init_weights=weights,
                            save_init_weights=None, overwrite=False)
  return cfg


def start_paths(probe_path):
  """(weights .npz, optimizer state .npz) of the state the replay written to `probe_path`
  started its step from, beside it."""
  stem = os.path.splitext(probe_path)[0]
  return f'{stem}-start-weights.npz', f'{stem}-start-optimizer.npz'


def start(model_dir, step):
  """(the snapshot step a replay of `step` starts from, the optimizer state's path there or
  None at step 0): the latest snapshot before `step` that holds the optimizer's state, or
  step 0. Raises errors.UsageError without a step-0 snapshot."""
  for snapshot in reversed(run_files.snapshot_steps_in(model_dir)):
    state = run_files.optimizer_state_path(model_dir, snapshot)
    if 0 < snapshot < step and os.path.exists(state):
      return snapshot, state
  first = run_files.snapshot_path(model_dir, 0)
  if not os.path.exists(first):
    raise errors.UsageError(f'--model_dir={model_dir} holds no step-0 snapshot ({first}); '
                            'rerun it with 0 in --snapshot_steps to replay it')
  return 0, None


def load_start(backend, replay_cfg):
  """Puts `backend` (built from run_config()'s config, the start's weights loaded) where
  the run was just before replay_cfg.step: the optimizer's state of the snapshot, the
  pipeline past it, the steps between trained; or, with replay_cfg.start, the state the
  reference's replay started from (start_paths), its pipeline past the steps before. A
  replay of a later step from its own snapshot writes the state it reached beside its
  probe."""
  if replay_cfg.start:
    # The reference's state just before the step, its weights already loaded.
    backend.load_optimizer_state(
        run_files.load_optimizer_state(start_paths(replay_cfg.start)[1]))
    backend.advance(replay_cfg.step - 1, replay_cfg.step)
    return
  start_step, state = start(replay_cfg.model_dir, replay_cfg.step)
  if state:
    backend.load_optimizer_state(run_files.load_optimizer_state(state))
  backend.advance(start_step, replay_cfg.step)
  if replay_cfg.step > 1:
    weights_path, state_path = start_paths(replay_cfg.output)
    run_files.save_weights(weights_path, backend.weights())
    run_files.save_weights(state_path, backend.optimizer_state())


def _is_probe(path):
  """Whether `path` holds a probe (a replay's, which --replay_out replaces)."""
  try:
    probes.load(path)
  except errors.UsageError:
    return False
  return True


def apply_settings(model_dir):
  """Sets this process's thread counts as the run in `model_dir` had them (run.json's
  settings), before TensorFlow is imported: a control ran with another intra-op count,
  which changes its sums."""
  manifest = runlog.read_manifest(model_dir) or {}
  for name, variable in _THREAD_SETTINGS.items():
    threads = (manifest.get('settings') or {}).get(name)
    if threads:
      os.environ[variable] = str(threads)


def batch_digest(images, labels):
  """sha256 of a batch's arrays: which batch a replay computed on."""
  digest = hashlib.sha256()
  for array in (images, labels):
    array = np.ascontiguousarray(array)
    digest.update(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def read_batch(path):
  """(images, labels) of the probe at `path` (--replay_batch): the batch to compute on."""
  batch = probes.load(path).items('input')
  if set(batch) != {'images', 'labels'}:
    raise errors.UsageError(f'--replay_batch={path}: the probe holds no batch (input/images, '
                            'input/labels); give another run\'s replay')
  return batch['images'], batch['labels']


def write_probe(replay_cfg, runner, stages, meta):
  """Writes a replay's probe: `stages` (probes.STAGES), `meta` plus what says which run and
  which batch it replays (replay_runs reuses a replay of the same)."""
  images, labels = stages['input']['images'], stages['input']['labels']
  fed = read_batch(replay_cfg.batch) if replay_cfg.batch else None
  probes.save(replay_cfg.output, stages, {
      **meta, 'runner': runner, 'step': replay_cfg.step, 'replayed_run': replay_cfg.model_dir,
      'run_json_sha256': run_files.file_sha256(os.path.join(replay_cfg.model_dir,
                                                            run_files.RUN_JSON)),
      'batch_sha256': batch_digest(images, labels),
      'fed_batch_sha256': batch_digest(*fed) if fed else None})


def probe_model(model, keras):
  """(the layers a probe records, a keras.Model on `model`'s inputs that returns each one's
  output, the index of the model's output among them); `keras` is Keras 3, the module the
  model was built with."""
  layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
  probe = keras.Model(model.inputs, [layer.output for layer in layers])
  return layers, probe, [layer.name for layer in layers].index(model.output_names[0])


def step_stages(batch, forward, losses, gradients, items, trainable, before, after):
  """probes.STAGES of one replayed step, from numpy arrays: `batch` (images, labels) it
  took, `forward` {layer name: output}, `losses` (total, data, regularization),
  `gradients` in the order of the `trainable` variables, the weights `before` and `after`
  it ({key: array}); `items` is keras_facts.weight_items of the model."""
  names = {id(variable): key for key, variable in items}
  trainable_keys = [names[id(variable)] for variable in trainable]
  return {
      'input': {'images': batch[0], 'labels': batch[1]},
      'forward': forward,
      'loss': dict(zip(('total', 'data', 'regularization'), losses)),
      'gradients': dict(zip(trainable_keys, gradients)),
      'update': {key: after[key].astype(np.float64) - before[key] for key in trainable_keys},
      'state': {key: after[key].astype(np.float64) - before[key] for key, _ in items
                if key not in trainable_keys},
  }


def layer_meta(model):
  """A probe's meta on `model`: each layer's kinds and the output layer."""
  return {'layer_kinds': {layer.name: probes.layer_kinds(layer) for layer in model.layers},
          'output_layer': model.output_names[0]}
