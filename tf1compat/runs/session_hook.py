"""A TF1 job recorded by a SessionRunHook: MonitoredTrainingSession, Estimator, or a Session.

TF1 teams instrument training with `tf.compat.v1.train.SessionRunHook`s; the recording
hook is one more. Given the loss tensor (and, optionally, the batch's features and
labels tensors, a batch-accuracy tensor and layer outputs), it records every run of the
session as one training step into a run directory that compare_runs judges:

    hook = session_hook.recording_hook('runs/tf1', loss, features=features, labels=labels)
    with tf.compat.v1.train.MonitoredTrainingSession(hooks=[hook]) as sess:  # or
    estimator.train(input_fn, hooks=[hook])   # (inside model_fn: EstimatorSpec(training_hooks=))

What it reads off the graph and the session, not from the team: the optimizer (the
class, every hyperparameter and the slots, from the train op's `Apply*` kernels), each
step's loss and learning rate, the trainable variables and BatchNorm's moving
statistics (snapshots at step 0, at the due steps and at the end), the versions and
the device. With `features`, every step's batch is hashed and the first steps' are
stored (batch_record.py), so that the port can train on exactly those batches. With
`outputs` ({layer name: tensor}), step 1 is probed for compare_runs --localize.

A plain Session loop gets the same by wrapping its session: `sess = RecordedSession(sess,
hook)`. Works on TensorFlow 1.15 and on tf.compat.v1 in TensorFlow 2.x; the module
imports no TensorFlow itself (the job's own, already imported, is used), so the recorder
distribution stays TensorFlow-free.
"""

import functools

import numpy as np

from tf1compat.runs import batch_record
from tf1compat.runs import errors
from tf1compat.runs import optimizers
from tf1compat.runs import recorder
from tf1compat.runs import team_models

# tf.compat.v1.train's optimizers apply their update with one kernel per variable;
# the kernel's type names the optimizer (the Resource* twins for resource variables).
_OPTIMIZERS = {
    'ApplyGradientDescent': 'GradientDescentOptimizer',
    'ApplyMomentum': 'MomentumOptimizer',
    'ApplyAdam': 'AdamOptimizer',
    'ApplyRMSProp': 'RMSPropOptimizer',
    'ApplyCenteredRMSProp': 'RMSPropOptimizer',
    'ApplyAdagrad': 'AdagradOptimizer',
    'ApplyAdagradV2': 'AdagradOptimizer',
    'ApplyAdadelta': 'AdadeltaOptimizer',
    'ApplyFtrl': 'FtrlOptimizer',
    'ApplyFtrlV2': 'FtrlOptimizer',
    'ApplyProximalAdagrad': 'ProximalAdagradOptimizer',
    'ApplyProximalGradientDescent': 'ProximalGradientDescentOptimizer',
    # tf-keras' SGD with momentum in a graph-mode job.
    'ApplyKerasMomentum': 'SGD',
}
# The kernels' scalar inputs, named as run.json's optimizer block names them.
_HYPERPARAMETERS = {'lr': 'learning_rate', 'alpha': 'learning_rate', 'beta1': 'beta_1',
                    'beta2': 'beta_2', 'epsilon': 'epsilon', 'momentum': 'momentum',
                    'rho': 'rho', 'l1': 'l1', 'l2': 'l2', 'l2_shrinkage': 'l2_shrinkage',
                    'lr_power': 'learning_rate_power'}
# The inputs that are neither the variable, a hyperparameter nor the gradient: Adam's
# beta powers are variables too, not slots.
_NOT_SLOTS = frozenset({'var', 'grad', 'delta', 'beta1_power', 'beta2_power'})
_GRADIENT_INPUTS = ('grad', 'delta')


def _tensorflow():
  return team_models.loaded_module('tensorflow', 'session_hook')


def graph_optimizer(graph):
  """What the graph's train op applies: {'name', 'kernel', 'use_nesterov', 'slots',
  'hyperparameters': {field: tensor}, 'gradients': {variable name: tensor},
  'learning_rate': tensor or None}, or None where the graph applies no tf.compat.v1.train
  optimizer.

  Raises errors.UsageError for a graph that applies two optimizers' kernels.
  """
  found = {}
  for op in graph.get_operations():
    kind = op.type[len('Resource'):] if op.type.startswith('Resource') else op.type
    if kind in _OPTIMIZERS:
      found.setdefault(kind, []).append(op)
  if not found:
    return None
  names = {_OPTIMIZERS[kind] for kind in found}
  if len(names) > 1:
    raise errors.UsageError(f'session_hook: the graph applies {", ".join(sorted(names))}; '
                            'record a job with one optimizer')
  kind, ops = next(iter(found.items()))
  args = [arg.name for arg in ops[0].op_def.input_arg]
  hyperparameters = {_HYPERPARAMETERS[arg]: ops[0].inputs[i] for i, arg in enumerate(args)
                     if arg in _HYPERPARAMETERS}
  slots = [arg for arg in args if arg not in _NOT_SLOTS and arg not in _HYPERPARAMETERS]
  gradients = {}
  for op in ops:
    inputs = dict(zip(args, op.inputs))
    variable = team_models.variable_name(inputs['var'].op)
    gradients[variable] = next(inputs[arg] for arg in _GRADIENT_INPUTS if arg in inputs)
  attributes = ops[0].node_def.attr
  nesterov = attributes['use_nesterov'].b if 'use_nesterov' in attributes else None
  return {'name': _OPTIMIZERS[kind], 'kernel': ops[0].type, 'use_nesterov': nesterov,
          'centered': kind == 'ApplyCenteredRMSProp', 'slots': slots,
          'hyperparameters': hyperparameters, 'gradients': gradients,
          'learning_rate': hyperparameters.get('learning_rate')}


def _run_config(optimizer, values, batch_size, graph, options):
  """RunConfig of a hooked job: the optimizer as its kernels read (what no kernel input says,
  such as RMSProp's mean square starting at one, is the framework's: optimizers.DEFAULTS),
  whether the graph holds BatchNorm's moving statistics, the team's options."""
  graph_seed = graph.seed
  batch_norm = any(team_models.variable_name(v).endswith('moving_variance')
                   for v in graph.get_collection('variables'))
  # Without an optimizer the graph applies, nothing of one is recorded.
  fields = {'optimizer': None, 'learning_rate': None}
  extra = {}
  if optimizer is not None:
    fields['optimizer'] = optimizer['name']
    hyperparameters = {}
    for name, value in values.items():
      value = optimizers.short(float(value))
      if name in ('learning_rate', 'beta_1', 'beta_2', 'epsilon'):
        fields[name] = value
      else:
        hyperparameters[name] = value
    fields['algorithm'] = optimizers.algorithm_of(optimizer['name'])
    if optimizer['kernel'].endswith('ApplyKerasMomentum'):
      fields['algorithm'] = 'momentum'
      hyperparameters['momentum_accumulates'] = optimizers.STEPS
    if fields['algorithm'] == 'momentum' and optimizer['use_nesterov'] is not None:
      hyperparameters['nesterov'] = optimizer['use_nesterov']
    if fields['algorithm'] == 'rmsprop':
      hyperparameters['centered'] = optimizer['centered']
    fields['hyperparameters'] = hyperparameters
    extra.update(optimizer_kernel=optimizer['kernel'], optimizer_slots=optimizer['slots'])
  seed = options['seed'] if options['seed'] is not None else graph_seed
  return recorder.RunConfig(
      framework='tf1', batch_norm=batch_norm, batch_size=batch_size, loss=options['loss_name'],
      from_logits=None, final_activation=None, seed=seed,
      steps_per_epoch=options['steps_per_epoch'],
      data_id=options['data_id'], init_weights=options['start_weights'],
      extra={**extra, **(options['extra'] or {})}, **fields)


class _RecordingHook:
  """The recording hook's work; recording_hook() makes it a SessionRunHook of the job's
  TensorFlow."""

  def __init__(self, model_dir, loss, features, labels, accuracy, outputs, options):
    self.model_dir = model_dir
    self._loss = loss
    self._features = features
    self._labels = labels
    self._accuracy = accuracy
    self._outputs = outputs
    self._options = options
    self._optimizer = None
    self._rec = None
    self._start = None
    self._start_step = 0
    self._values = {}

  @property
  def recorder(self):
    """The RunRecorder, from the first step on (None before it)."""
    return self._rec

  def begin(self):
    """Reads the optimizer off the graph before it is finalized."""
    self._optimizer = graph_optimizer(self._loss.graph)

  def after_create_session(self, session, coord=None):
    """Loads `start_weights` where given, then keeps step 0's weights and the optimizer's
    hyperparameters (the constants and the schedules' first values); a job restored at
    step k records on from step k + 1."""
    del coord
    # A job restored from its checkpoint resumes its record at the checkpoint's step
    # (the rows after it are redone; RunRecorder needs steps_per_epoch for that) and keeps
    # the weights it restored.
    global_step = _tensorflow().compat.v1.train.get_global_step(self._loss.graph)
    self._start_step = int(session.run(global_step)) if global_step is not None else 0
    if not self._start_step:
      if self._options['start_weights']:
        team_models.assign_session_weights(
            session, team_models.load_weights(self._options['start_weights'],
                                              self._options['weight_map']))
      self._start = team_models.session_weights(session)
    if self._optimizer is not None:
      self._values = dict(zip(self._optimizer['hyperparameters'], session.run(
          list(self._optimizer['hyperparameters'].values()))))

  def before_run(self, run_context):
    """Adds the loss, the batch, the learning rate (and step 1's probe) to the run."""
    del run_context
    tf = _tensorflow()
    fetches = {'loss': self._loss}
    if self._accuracy is not None:
      fetches['accuracy'] = self._accuracy
    if self._features is not None:
      fetches['features'] = self._features
    if self._labels is not None:
      fetches['labels'] = self._labels
    if self._optimizer is not None and self._optimizer['learning_rate'] is not None:
      fetches['learning_rate'] = self._optimizer['learning_rate']
    if self._outputs and self._optimizer is not None and self._rec is None and (
        not self._start_step):
      fetches['probe'] = {'outputs': self._outputs, 'gradients': self._optimizer['gradients']}
    return tf.compat.v1.train.SessionRunArgs(fetches)

  def _open(self, batch):
    batch_size = None
    if batch is not None:
      arrays = batch_record.flatten(*batch)
      batch_size = int(np.shape(next(iter(arrays.values())))[0])
    config = _run_config(self._optimizer, self._values, batch_size, self._loss.graph,
                         self._options)
    self._rec = recorder.RunRecorder(
        self.model_dir, config, overwrite=self._options['overwrite'],
        start_step=self._start_step, stored_batches=self._options['stored_batches'],
        max_batch_bytes=self._options['max_batch_bytes'])
    if not self._start_step:
      self._rec.snapshot(0, self._start)

  def after_run(self, run_context, run_values):
    """Records the step; snapshots the weights when due, probes step 1."""
    values = run_values.results
    batch = ((values['features'], values.get('labels')) if 'features' in values else None)
    if self._rec is None:
      self._open(batch)
    rec = self._rec
    try:
      step = rec.record_step(values['loss'], values.get('accuracy'),
                             learning_rate=values.get('learning_rate'), batch=batch)
    except errors.NumericFault:
      run_context.request_stop()
      raise
    if 'probe' in values:
      rec.probe(step, batch=batch or (None, None), loss=values['loss'], **values['probe'])
    if rec.snapshot_due(step):
      rec.snapshot(step, team_models.session_weights(run_context.session))
    spe = rec.config.steps_per_epoch
    if spe and step % spe == 0:
      rec.record_epoch()

  def end(self, session):
    """Closes the last epoch and marks the run complete with the final weights."""
    rec = self._rec
    if rec is None:
      raise errors.UsageError(f'session_hook: the job ended before its first step; '
                              f'{self.model_dir} was not written')
    if rec.epoch_open and not rec.config.steps_per_epoch:
      rec.record_epoch()
    rec.finish(team_models.session_weights(session))


@functools.lru_cache(maxsize=None)
def _hook_class(base):
  return type('RecordingHook', (_RecordingHook, base), {})


def recording_hook(model_dir, loss, *, features=None, labels=None, accuracy=None,
                   outputs=None, steps_per_epoch=None, data_id=None, loss_name=None, seed=None,
                   start_weights=None, weight_map=None, overwrite=False,
                   stored_batches=batch_record.DEFAULT_STORED_STEPS,
                   max_batch_bytes=batch_record.DEFAULT_MAX_BYTES, extra=None):
  """A tf.compat.v1.train.SessionRunHook that records the job into `model_dir`.

  `loss`: the trained scalar (the sum of a model's losses, as the train op minimizes
  it). `features`, `labels`: the tensors the step's batch arrives in (an iterator's
  get_next() or placeholders; a tensor or a dict of tensors each): every step's batch is
  hashed, and the first `stored_batches` (at most `max_batch_bytes` on disk) are stored
  for keras_callback.recorded_batches. `accuracy`: a batch-accuracy tensor, where the
  model has one (none is recorded otherwise). `outputs`: {layer name: tensor}, to probe
  step 1. `steps_per_epoch`: where epochs end (default: the whole job is one epoch).
  `data_id`: what the data is, in words (the config lint compares it). `seed`: default
  the graph's (tf.compat.v1.set_random_seed). `loss_name`: the
  loss's kind, as the port's record names it. `start_weights`: an .npz ({variable name:
  array}, renamed by `weight_map`) loaded after the session's own initialization: the
  control run's one-ulp start (team_models.control_start), or any common start.
  """
  tf = _tensorflow()
  options = dict(steps_per_epoch=steps_per_epoch, data_id=data_id or 'hashed batches',
                 loss_name=loss_name, seed=seed, start_weights=start_weights,
                 weight_map=weight_map, overwrite=overwrite, stored_batches=stored_batches,
                 max_batch_bytes=max_batch_bytes, extra=extra)
  if not hasattr(loss, 'graph'):
    raise errors.UsageError(f'recording_hook: loss is a {type(loss).__name__}, not a graph '
                            'tensor; pass the loss tensor the train op minimizes')
  return _hook_class(tf.compat.v1.train.SessionRunHook)(
      model_dir, loss, features, labels, accuracy, outputs, options)


class RecordedSession:
  """A plain Session loop's session with the recording hook: every `run` is a training
  step recorded as under MonitoredTrainingSession. `close()` (or the end of a `with`)
  marks the run complete; the wrapped session stays the team's to close."""

  def __init__(self, session, hook):
    self._session = session
    self._hook = hook
    hook.begin()
    hook.after_create_session(session, None)

  def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
    """session.run of `fetches` and the hook's fetches in one run; returns `fetches`'."""
    tf = _tensorflow()
    context = tf.compat.v1.train.SessionRunContext((fetches, feed_dict), self._session)
    args = self._hook.before_run(context)
    results = self._session.run({'job': fetches, 'hook': args.fetches}, feed_dict=feed_dict,
                                options=options, run_metadata=run_metadata)
    self._hook.after_run(context, tf.compat.v1.train.SessionRunValues(
        results=results['hook'], options=options, run_metadata=run_metadata))
    return results['job']

  def close(self):
    """Marks the run complete (the hook's end)."""
    self._hook.end(self._session)

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if error is None:
      self.close()
    elif self._hook.recorder is not None:
      self._hook.recorder.fail(f'{kind.__name__}: {error}')
    return False
