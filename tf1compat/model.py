"""The seed's ConvNet, built with whichever Keras the calling process uses.

The graph runner passes tf-keras (Keras 2, `TF_USE_LEGACY_KERAS=1`), the eager runner
Keras 3. Layer names are fixed here so both models name their weights identically:
the weight key of a variable is "<layer name>/<variable name>", e.g. "conv1/kernel",
"bn1/moving_variance", "logits/bias".
"""

CONV_FILTERS = (64, 64, 128, 256)
MIN_IMAGE_SIZE = 31  # Four valid 3x3 convolutions with stride 2 need at least 31 pixels.


def build_model(keras, *, num_classes, image_size, batch_norm=False, dropout=0.0,
                final_activation=None, input_tensor=None, batch_norm_layer=None,
                logits_dtype=None, dropout_seed=None):
  """Builds the seed's 4-layer ConvNet + global average pooling + Dense logits.

  Args:
    keras: the Keras module of the calling process (`tf.keras` under legacy Keras in
      the graph runner, `keras` 3 in the eager runner).
    num_classes: width of the last Dense layer.
    image_size: side of the square RGB input.
    batch_norm: insert BatchNormalization between each convolution and its ReLU.
    dropout: rate of a Dropout layer before the logits (0 for none).
    final_activation: None for logits (the seed's low-level loop), 'softmax' for the
      seed's model.fit variant.
    input_tensor: a graph tensor to build the input layer on (`Input(tensor=...)`,
      tf-keras only), so that layer updates such as BatchNormalization's are part of
      `model.updates` for the tensors actually trained on.
    batch_norm_layer: the BatchNormalization class to use (default
      `keras.layers.BatchNormalization`), e.g. the eager runner's TF1-variance variant.
    logits_dtype: dtype of the last Dense layer (e.g. 'float32' under a mixed-precision
      policy, so that the loss sees float32 logits); None for the global policy.
    dropout_seed: the Dropout layer's own seed (None: from the process's seeds).

  Returns:
    A functional `Model` named 'convnet'.
  """
  if input_tensor is not None:
    inputs = keras.layers.Input(tensor=input_tensor, name='images')
  else:
    inputs = keras.layers.Input(shape=(image_size, image_size, 3), name='images')
  x = inputs
  for index, filters in enumerate(CONV_FILTERS, start=1):
    # BatchNormalization subtracts the batch mean, so a bias before it gets a gradient of
    # pure round-off noise, which Adam normalizes into full-size random steps.
    x = keras.layers.Conv2D(
        filters, (3, 3), strides=(2, 2), kernel_initializer='he_normal',
        activation=None if batch_norm else 'relu', use_bias=not batch_norm,
        name=f'conv{index}')(x)
    if batch_norm:
      x = (batch_norm_layer or keras.layers.BatchNormalization)(name=f'bn{index}')(x)
      x = keras.layers.Activation('relu', name=f'relu{index}')(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  if dropout > 0:
    x = keras.layers.Dropout(dropout, seed=dropout_seed, name='dropout')(x)
  dtype_arg = {'dtype': logits_dtype} if logits_dtype else {}
  outputs = keras.layers.Dense(num_classes, activation=final_activation,
                               kernel_initializer='he_normal', name='logits', **dtype_arg)(x)
  return keras.Model(inputs, outputs, name='convnet')


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
