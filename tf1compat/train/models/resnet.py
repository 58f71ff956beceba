"""A second built-in model: a small ResNet with BatchNorm, Dropout and L2 regularizers.

What it exercises that the seed's ConvNet does not: kernel regularizers, whose losses a
TF1 loop on `Input(tensor=...)` and a TF2 custom loop must add to the loss by hand
(`model.losses`) and fit adds itself; BatchNormalization with the TF1 contrib/slim
decay 0.999 instead of Keras' default momentum 0.99; residual additions and 1x1
projection shortcuts. Built with whichever Keras the runner passes, layer names fixed so
that both Kerases key the weights alike:

    --model=tf1compat.train.models.resnet:resnet_small

It always normalizes, so it takes no `batch_norm` switch (--batch_norm is refused with
it); --dropout adds a Dropout layer before the logits.
"""

# Filters of the stem and of each stage's residual block; every stage after the first
# halves the resolution.
STAGE_FILTERS = (16, 32, 64)
# The L2 factor of every kernel (the ResNet papers' ImageNet weight decay, as
# tf.keras.regularizers.l2 in legacy code wrote it).
WEIGHT_DECAY = 1e-4
# tf.contrib.layers.batch_norm's default decay, which TF1 ResNets kept; Keras' default
# momentum is 0.99.
BATCH_NORM_MOMENTUM = 0.999
BATCH_NORM_EPSILON = 1e-3


def resnet_small(keras, *, num_classes, image_size, input_tensor=None, dropout=0.0,
                 final_activation=None, batch_norm_layer=None, logits_dtype=None,
                 dropout_seed=None):
  """Builds a stem convolution, one residual block per stage, global pooling and logits.

  Args:
    keras: the Keras module of the calling process (tf-keras in the graph runner, Keras 3
      in the eager runner).
    num_classes: width of the logits.
    image_size: side of the square RGB input.
    input_tensor: a graph tensor to build the input on (tf-keras only), so that
      BatchNormalization's updates belong to the batch trained on.
    dropout: rate of a Dropout layer before the logits (0 for none).
    final_activation: None for logits, 'softmax' for probabilities.
    batch_norm_layer: the BatchNormalization class (default
      keras.layers.BatchNormalization), called with momentum, epsilon and name.
    logits_dtype: dtype of the logits layer (float32 under mixed precision).
    dropout_seed: the Dropout layer's own seed (None: from the process's seeds).

  Returns:
    A functional `Model` named 'resnet_small'.
  """
  normalization = batch_norm_layer or keras.layers.BatchNormalization

  def conv(x, filters, kernel, strides, name):
    # No bias: the BatchNormalization after it subtracts the batch mean.
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, padding='same', use_bias=False,
        kernel_initializer='he_normal',
        kernel_regularizer=keras.regularizers.l2(WEIGHT_DECAY), name=name)(x)

  def norm(x, name):
    return normalization(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                         name=name)(x)

  def block(x, filters, strides, name):
    shortcut = x
    y = conv(x, filters, 3, strides, f'{name}_conv1')
    y = keras.layers.Activation('relu', name=f'{name}_relu1')(norm(y, f'{name}_bn1'))
    y = norm(conv(y, filters, 3, 1, f'{name}_conv2'), f'{name}_bn2')
    if strides != 1 or x.shape[-1] != filters:
      shortcut = norm(conv(x, filters, 1, strides, f'{name}_proj'), f'{name}_proj_bn')
    y = keras.layers.Add(name=f'{name}_add')([y, shortcut])
    return keras.layers.Activation('relu', name=f'{name}_relu2')(y)

  if input_tensor is not None:
    inputs = keras.layers.Input(tensor=input_tensor, name='images')
  else:
    inputs = keras.layers.Input(shape=(image_size, image_size, 3), name='images')
  x = conv(inputs, STAGE_FILTERS[0], 3, 2, 'stem_conv')
  x = keras.layers.Activation('relu', name='stem_relu')(norm(x, 'stem_bn'))
  for index, filters in enumerate(STAGE_FILTERS, start=1):
    x = block(x, filters, 1 if index == 1 else 2, f'stage{index}')
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  if dropout > 0:
    x = keras.layers.Dropout(dropout, seed=dropout_seed, name='dropout')(x)
  dtype_arg = {'dtype': logits_dtype} if logits_dtype else {}
  outputs = keras.layers.Dense(
      num_classes, activation=final_activation, kernel_initializer='he_normal',
      kernel_regularizer=keras.regularizers.l2(WEIGHT_DECAY), name='logits',
      **dtype_arg)(x)
  return keras.Model(inputs, outputs, name='resnet_small')
