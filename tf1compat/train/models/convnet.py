"""The seed's ConvNet, built with whichever Keras the calling process uses.

The graph runner passes tf-keras (Keras 2, `TF_USE_LEGACY_KERAS=1`), the eager runner
Keras 3. Layer names are fixed here so both models name their weights identically:
the weight key of a variable (keras_facts.weight_key) is "<layer name>/<variable name>",
e.g. "conv1/kernel", "bn1/moving_variance", "logits/bias".
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
