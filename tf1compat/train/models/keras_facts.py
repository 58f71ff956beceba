"""What the runners read off any Keras model, the seed's or a team's: its weights' keys,
its BatchNorm layers and run.json's model summary.

Works with whichever Keras the model was built with (tf-keras, TF 1.15's tf.keras,
Keras 3): each function that asks for layer classes takes that module.
"""


def weight_key(layer, variable):
  """The snapshot key of `variable` owned by `layer`: "<layer name>/<variable name>".

  tf-keras names variables "conv1/kernel:0", Keras 3 "kernel": both give "conv1/kernel".
  """
  short_name = variable.name.split('/')[-1].split(':')[0]
  return f'{layer.name}/{short_name}'


def weight_items(model):
  """[(key, variable)] for every weight of `model`, in `model.weights` order."""
  key_of = {}
  for layer in model.layers:
    for variable in layer.weights:
      key_of[id(variable)] = weight_key(layer, variable)
  return [(key_of[id(v)], v) for v in model.weights]


def _layers(model):
  """Every layer of `model`, those of nested models included."""
  for layer in model.layers:
    yield layer
    if hasattr(layer, 'layers'):
      yield from _layers(layer)


def batch_norm_layers(model, keras):
  """The keras.layers.BatchNormalization layers of `model`, nested models included;
  `keras` is the module the model was built with."""
  return [layer for layer in _layers(model)
          if isinstance(layer, keras.layers.BatchNormalization)]


def summary(model, keras):
  """run.json's model_summary: what of the model's make-up a port may change unseen.

  The BatchNormalization layers' momentum and epsilon, the Dropout layers, and how many
  regularization losses the model holds (model.losses: a loop on Input(tensor=...) or
  a custom TF2 loop must add them to its loss itself). `keras` is the module the
  model was built with. Under Keras 2 (tf-keras, TF 1.15's tf.keras) also whether the
  BatchNorm layers run the fused kernel, which each version chooses by its own rules.
  """
  layers = list(_layers(model))
  batch_norms = batch_norm_layers(model, keras)
  out = {
      'batch_norm_layers': len(batch_norms),
      'batch_norm_momentum': sorted({float(layer.momentum) for layer in batch_norms}),
      'batch_norm_epsilon': sorted({float(layer.epsilon) for layer in batch_norms}),
      'dropout_layers': sum(isinstance(layer, keras.layers.Dropout) for layer in layers),
      'regularization_losses': len(model.losses),
  }
  if batch_norms and all(hasattr(layer, 'fused') for layer in batch_norms):
    out['batch_norm_fused'] = sorted({bool(layer.fused) for layer in batch_norms})
  return out
