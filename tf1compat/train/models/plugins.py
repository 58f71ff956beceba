"""A team's own model (--model): loading and checking its builder.

The flag names a function as `package.module:function`, loaded as --features' parser is
(data/record_schema.py: importable in every runner process; a builder that cannot be used
ends the run before it starts with exit 2 and one line naming the fix, PluginError).

The model builder (--model; unset: the seed's ConvNet,
`tf1compat.train.models.convnet:build_model`):

    def build(keras, *, num_classes, image_size, input_tensor=None, **switches)
        -> keras.Model

- `keras`: the Keras module of the runner: tf-keras (Keras 2, graph mode) in train_graph,
  Keras 3 in train_eager. Every layer and the model come from it; a builder that
  imports keras itself would mix the two.
- `num_classes`: the output is logits [batch, num_classes] (the losses take logits).
- `image_size`: the input is [batch, image_size, image_size, 3] float32 (standardized).
- `input_tensor`: None, or in train_graph (`--wiring=input_tensor`, the default) the
  iterator's batch to build the input on, so that layer updates such as BatchNorm's
  belong to the batch trained on: `keras.Input(shape=(image_size, image_size, 3),
  tensor=input_tensor, name=...)` does both.
- `switches`, passed only where the builder declares the parameter (or takes
  **kwargs): `batch_norm` (--batch_norm), `dropout` (--dropout), `final_activation`
  (None, or 'softmax' for --final_activation=softmax), `dropout_seed` (train_graph: the
  Dropout layers' seed, which check_parity's control sets), `batch_norm_layer`
  (train_eager: None, or the class to build BatchNormalization with: TF1's variance
  update under --tf1_bn_variance, check_parity's exact mode, or synchronized moments
  under a distributed strategy) and `logits_dtype` (train_eager: None, or 'float32'
  under --mixed_precision, for the last layer). A run whose flags set a switch the
  builder does not declare is refused, rather than ignored: --batch_norm, --dropout,
  --final_activation and --dropout_seed always, `batch_norm_layer` when the model holds
  BatchNormalization layers, `logits_dtype` when its output is not float32.

It returns a functional `keras.Model` of the module it was given, with one input
[batch, image_size, image_size, 3] and one output [batch, num_classes]. A weight's key is
"<layer name>/<variable name>" (model.weight_key): in snapshots, --init_weights and
parity's comparisons. So every layer that owns weights needs an explicit `name=` that is
the same under both Kerases, and keys must be unique (the weights of a nested model or
of a layer's sublayers are keyed by the outer layer's name). Each runner builds the
model twice and refuses keys that change between the builds (Keras' automatic names,
`dense`, `dense_1`, ..., do); names that differ only between the two Kerases show when
one runner loads the other's weights (check_parity's initial weights): exit 2 listing
the keys on both sides.

TensorFlow-free: the checks take the Keras module they are given.
"""

import collections
import inspect
import sys

from tf1compat.data import record_schema
from tf1compat.runs import user_files
from tf1compat.runs import weight_map
from tf1compat.train.models import keras_facts

DEFAULT_MODEL = 'tf1compat.train.models.convnet:build_model'
# What every builder takes besides the Keras module.
REQUIRED_ARGS = ('num_classes', 'image_size', 'input_tensor')
# The switches a runner may pass, their neutral values, and the flags that set them.
SWITCHES = {
    'batch_norm': (False, '--batch_norm'),
    'dropout': (0.0, '--dropout'),
    'final_activation': (None, '--final_activation=softmax'),
    'dropout_seed': (None, '--dropout_seed'),
    'batch_norm_layer': (None, '--tf1_bn_variance (check_parity\'s exact mode) or a '
                               'distributed strategy'),
    'logits_dtype': (None, '--mixed_precision or --mixed_bfloat16'),
}
# Switches a builder may leave out as long as its model has nothing they would change.
_CHECKED_AFTER_BUILD = frozenset({'batch_norm_layer', 'logits_dtype'})
_FIX_NAMES = ('pass the same explicit name= to every layer that has weights, under tf-keras '
              'and Keras 3 alike')


def keras_label(keras):
  """'tf-keras 2.21.0' or 'Keras 3.15.1': which Keras a process builds with."""
  package = keras.__name__.split('.')[0]
  name = 'tf-keras' if package == 'tf_keras' else 'Keras'
  # tf.keras under legacy Keras is a submodule of tf_keras, which holds the version.
  return f'{name} {getattr(sys.modules.get(package), "__version__", "")}'.strip()


def _declared(builder, where):
  """The keyword parameters `builder` declares (None when it takes **kwargs); PluginError
  when it lacks a required one."""
  try:
    parameters = inspect.signature(builder).parameters.values()
  except (TypeError, ValueError):
    return None  # No readable signature (a builtin): it gets every argument.
  if any(p.kind == p.VAR_KEYWORD for p in parameters):
    return None
  names = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
  missing = [name for name in REQUIRED_ARGS if name not in names]
  if missing:
    raise record_schema.PluginError(
        f'{where}: the builder takes no {", ".join(missing)}; its signature '
        'must be build(keras, *, num_classes, image_size, input_tensor=None, '
        '...) (docs/own-migration.md, "Your own model")')
  return names


def _refused_switch(where, name):
  """The PluginError of a switch the run needs and the builder does not declare."""
  default, flag = SWITCHES[name]
  add = f'add a {name}={default!r} parameter'
  if name == 'batch_norm_layer':
    return record_schema.PluginError(
        f'{where}: its model holds BatchNormalization layers, and {flag} '
        f'needs them built from the batch_norm_layer class it passes; {add} '
        'and build them with (batch_norm_layer or '
        'keras.layers.BatchNormalization)')
  if name == 'logits_dtype':
    return record_schema.PluginError(
        f'{where}: its output is not float32 under {flag}, and the loss needs '
        f'float32 logits; {add} and pass it as the last layer\'s dtype=')
  return record_schema.PluginError(
      f'{where}: the builder takes no {name} argument, so {flag} would change '
      f'nothing; {add} that honours it, or run without {flag}')


def _dims(shape):
  """A shape as a tuple of ints and None (tf-keras graph shapes hold Dimensions)."""
  return tuple(getattr(d, 'value', d) for d in shape)


def weight_keys(model):
  """The weight keys of `model` in `model.weights` order (model.weight_items)."""
  return [key for key, _ in keras_facts.weight_items(model)]


def _has_layer(model, layer_class):
  return any(isinstance(layer, layer_class) for layer in model.layers)


def check_model(model, keras, where, *, num_classes, image_size, input_tensor=None):
  """PluginError unless `model` is what the builder contract asks for: a functional
  `keras.Model` with one image input (on `input_tensor` when given) and one
  [batch, num_classes] output, trainable weights, and unique weight keys."""
  label = keras_label(keras)
  if not isinstance(model, keras.Model):
    kind = type(model)
    raise record_schema.PluginError(
        f'{where}: the builder returned a {kind.__module__}.{kind.__qualname__},'
        f' not a {label} Model; return keras.Model(inputs, outputs) built from '
        'the keras module it is given')
  inputs, outputs = getattr(model, 'inputs', None), getattr(model, 'outputs', None)
  if not inputs or not outputs:
    raise record_schema.PluginError(
        f'{where}: the builder returned a subclassed model (no inputs and '
        'outputs); build a functional keras.Model(inputs, outputs)')
  if len(inputs) != 1 or len(outputs) != 1:
    raise record_schema.PluginError(
        f'{where}: its model has {len(inputs)} input(s) and {len(outputs)} '
        'output(s); the pipeline feeds one image batch and the loss takes one '
        'logits tensor')
  if input_tensor is not None and inputs[0] is not input_tensor:
    raise record_schema.PluginError(
        f'{where}: its model ignores input_tensor; build its input with '
        'keras.Input(shape=(image_size, image_size, 3), tensor=input_tensor)')
  image_shape = _dims(inputs[0].shape)[1:]
  if image_shape != (image_size, image_size, 3):
    raise record_schema.PluginError(
        f'{where}: its input is [batch, {", ".join(map(str, image_shape))}]; the '
        f'pipeline feeds [batch, {image_size}, {image_size}, 3] (--image_size): '
        'build the input from image_size')
  output_shape = _dims(outputs[0].shape)
  if len(output_shape) != 2 or output_shape[1] != num_classes:
    raise record_schema.PluginError(
        f'{where}: its output is [{", ".join(map(str, output_shape))}]; the '
        f'labels are one-hot over --num_classes={num_classes}: end with '
        'logits [batch, num_classes]')
  if not model.trainable_weights:
    raise record_schema.PluginError(
        f'{where}: its model has no trainable weights; there is nothing to '
        'train or compare')
  repeated = sorted(key for key, count in collections.Counter(weight_keys(model)).items()
                    if count > 1)
  if repeated:
    raise record_schema.PluginError(
        f'{where}: {len(repeated)} weight key(s) name more than one weight '
        f'({weight_map.listed(repeated)}); give every layer that has weights a '
        'unique name= (a nested model\'s or a sublayer\'s weights are keyed by '
        'the outer layer\'s name)')


def build_model(spec, keras, *, num_classes, image_size, input_tensor=None, **switches):
  """Builds the model of --model=`spec` (None: the seed's ConvNet) with `keras` and checks
  it (check_model); returns it.

  `switches` (SWITCHES) reach the builder where it declares them; a run that needs one it
  does not declare raises PluginError before building (or, for those that matter only by
  the model's layers, after).
  """
  where = f'--model={spec or DEFAULT_MODEL}'
  builder = record_schema.load('model', spec or DEFAULT_MODEL)
  declared = _declared(builder, where)
  passed = {name: value for name, value in switches.items()
            if declared is None or name in declared}
  left_out = {name for name, value in switches.items()
              if name not in passed and value != SWITCHES[name][0]}
  refused = sorted(left_out - _CHECKED_AFTER_BUILD)
  if refused:
    raise _refused_switch(where, refused[0])
  record_schema.check_call(
      builder, where, 'build(keras, *, num_classes, image_size, input_tensor=None, '
      '...)', keras, num_classes=num_classes, image_size=image_size,
      input_tensor=input_tensor, **passed)
  try:
    model = builder(keras, num_classes=num_classes, image_size=image_size,
                    input_tensor=input_tensor, **passed)
  except SystemExit as e:
    raise record_schema.exited(where, 'the builder', e) from e
  check_model(model, keras, where, num_classes=num_classes, image_size=image_size,
              input_tensor=input_tensor)
  if ('batch_norm_layer' in left_out
      and _has_layer(model, keras.layers.BatchNormalization)):
    raise _refused_switch(where, 'batch_norm_layer')
  if 'logits_dtype' in left_out and model.outputs[0].dtype != 'float32':
    raise _refused_switch(where, 'logits_dtype')
  return model


def check_stable_names(spec, build):
  """Builds the model of --model=`spec` twice (`build()` returns one) and raises
  PluginError when its weight keys change between the builds: Keras' automatic layer
  names count up with every build, and tf-keras and Keras 3 count differently."""
  first, second = (weight_keys(build()) for _ in range(2))
  if first == second:
    return
  changed = next(((a, b) for a, b in zip(first, second) if a != b), None)
  how = f'{changed[0]} became {changed[1]}' if changed else 'the number of weights changed'
  raise record_schema.PluginError(
      f'--model={spec or DEFAULT_MODEL}: its weight keys change from build to '
      f'build ({how} when built again), as Keras\' automatic layer names do, '
      f'and they would differ between the two Kerases; {_FIX_NAMES}')


def check_weight_file(spec, path, keys, keras):
  """PluginError when the .npz at `path` holds other weight keys than the model of
  --model=`spec` (`keys`, as built with `keras`): the two Kerases named its layers
  differently, or the file is another model's. The seed's ConvNet (spec None) is left to
  run_files.load_weights, which names the flags to check."""
  if spec is None:
    return
  stored = set(user_files.load_npz(path, '--init_weights=', 'write the weights again '
                                   '(--save_init_weights writes a run\'s initial weights)'))
  missing, unexpected = sorted(set(keys) - stored), sorted(stored - set(keys))
  if missing or unexpected:
    raise record_schema.PluginError(
        f'--init_weights={path}: --model={spec} names its weights otherwise under '
        f'{keras_label(keras)} than the file (only the model has: '
        f'{weight_map.listed(missing) or "none"}; only the file has: '
        f'{weight_map.listed(unexpected) or "none"}): the layer names differ between '
        f'tf-keras and Keras 3 (or the file is another model\'s); {_FIX_NAMES}')
