"""A team's own model and record schema, outside the package (tests/test_plugins.py).

`build` follows plugins' builder contract: --model=team_model:build with tests/ on
PYTHONPATH. `parse` and `parse_pixels` follow its parser contract (--features).
`convnet_conv3_elu` is a port of the seed's ConvNet with an uncatalogued mistake. The
other builders break the contract one way each.
"""

import tensorflow as tf

from tf1compat.train.models import convnet

# The convolution convnet_conv3_elu activates otherwise.
ELU_LAYER = 3
# The team's records: 'photo/encoded' JPEG bytes and 'photo/class', numbered from 1;
# the pixel variant stores decoded pixels and their shape.
ENCODED, CLASS = 'photo/encoded', 'photo/class'
PIXELS, SHAPE = 'photo/pixels', 'photo/shape'


def build(keras, *, num_classes, image_size, input_tensor=None, batch_norm_layer=None,
          logits_dtype=None):
  """A small ConvNet with BatchNorm and a max-pooled head, every weighted layer named."""
  inputs = keras.Input(shape=(image_size, image_size, 3), tensor=input_tensor, name='pixels')
  x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False, name='stem')(inputs)
  x = (batch_norm_layer or keras.layers.BatchNormalization)(name='stem_bn')(x)
  x = keras.layers.ReLU(name='stem_relu')(x)
  x = keras.layers.Conv2D(32, 3, strides=2, activation='relu', name='block')(x)
  x = keras.layers.GlobalMaxPooling2D(name='pool')(x)
  outputs = keras.layers.Dense(num_classes, dtype=logits_dtype, name='head')(x)
  return keras.Model(inputs, outputs, name='team_net')


def convnet_conv3_elu(keras, *, num_classes, image_size, input_tensor=None):
  """The seed's ConvNet (train/models/convnet.py) as a port with a mistake no catalogue holds:
  conv3 activates with ELU instead of ReLU. Same layers, names and shapes, so it loads
  the seed's weights; check_parity gives it to the port only (--port_flags=--model=...)."""
  inputs = keras.Input(shape=(image_size, image_size, 3), tensor=input_tensor, name='images')
  x = inputs
  for index, filters in enumerate(convnet.CONV_FILTERS, start=1):
    x = keras.layers.Conv2D(filters, (3, 3), strides=(2, 2), kernel_initializer='he_normal',
                            activation='elu' if index == ELU_LAYER else 'relu',
                            name=f'conv{index}')(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  outputs = keras.layers.Dense(num_classes, kernel_initializer='he_normal', name='logits')(x)
  return keras.Model(inputs, outputs, name='convnet')


def auto_named(keras, *, num_classes, image_size, input_tensor=None):
  """Leaves the layer names to Keras: dense, dense_1, ... change from build to build."""
  inputs = keras.Input(shape=(image_size, image_size, 3), tensor=input_tensor)
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def per_keras_names(keras, *, num_classes, image_size, input_tensor=None):
  """Names its head after the Keras it runs under: stable in a process, not across both."""
  inputs = keras.Input(shape=(image_size, image_size, 3), tensor=input_tensor, name='pixels')
  x = keras.layers.GlobalAveragePooling2D(name='pool')(inputs)
  head = 'head_tf_keras' if keras.__name__.startswith('tf_keras') else 'head_keras'
  return keras.Model(inputs, keras.layers.Dense(num_classes, name=head)(x))


def returns_layer(keras, *, num_classes, image_size, input_tensor=None):
  """Returns a layer instead of a model."""
  del image_size, input_tensor  # Not a model: nothing to build them into.
  return keras.layers.Dense(num_classes, name='head')


NOT_CALLABLE = 42


def parse(serialized):
  """The team's schema: (JPEG bytes, class numbered from 0)."""
  features = tf.io.parse_single_example(serialized, {
      ENCODED: tf.io.FixedLenFeature([], tf.string),
      CLASS: tf.io.FixedLenFeature([], tf.int64)})
  return features[ENCODED], features[CLASS] - 1


def parse_pixels(serialized):
  """The pixel variant: (decoded uint8 image [H, W, 3], class numbered from 0)."""
  features = tf.io.parse_single_example(serialized, {
      PIXELS: tf.io.FixedLenFeature([], tf.string),
      SHAPE: tf.io.FixedLenFeature([3], tf.int64),
      CLASS: tf.io.FixedLenFeature([], tf.int64)})
  image = tf.reshape(tf.io.decode_raw(features[PIXELS], tf.uint8), features[SHAPE])
  return image, tf.cast(features[CLASS] - 1, tf.int32)


def parse_label_only(serialized):
  """Breaks the parser contract: returns the label alone."""
  return tf.io.parse_single_example(serialized, {CLASS: tf.io.FixedLenFeature([], tf.int64)})
