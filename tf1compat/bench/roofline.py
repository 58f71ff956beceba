"""bin/benchmark's roofline (issue 16.3): FLOPs per training step and the device's peak.

FLOP convention. A multiply-add counts as 2 FLOPs, and only the kernels' products are
counted: a Conv2D layer costs 2 x Kh x Kw x Cin x Cout x Hout x Wout per image forward
(Cin per group), a Dense layer 2 x in x out (per position, on inputs of rank > 2).
Biases, activations, pooling, the loss and the optimizer's update are left out: they
are linear in the activations or the weights, not in both: TF's profiler counts 2.3
MFLOP of them per image in the seed model's step at 224 px against 1.41 GFLOP (0.16%).

A training step is the forward pass, each layer's weight gradient (a product as large
as its forward one) and each layer's input gradient (as large again), but only where
something before the layer has trainable weights: the first convolution's input is the
image, whose gradient nobody asks for and TensorFlow never runs. So a step costs
3 x forward less the first layer's forward, per image: for the seed model at 224 px,
3 x 0.4729 - 0.0426 = 1.376 GFLOP.

TensorFlow's own count (`tf.compat.v1.profiler`'s float_ops over a traced step on one
image, summed over the ops the step's outputs depend on) agrees on the forward pass to
the FLOP (its Conv2D and MatMul ops: 472,915,840 at 224 px) and is 2.5% higher on the
step (1.411 GFLOP): its formula for a strided convolution's gradients counts
Hin x Win / stride^2 positions (112 x 112 for conv1) where the layer has Hout x Wout
(111 x 111), which makes its products 2.4% more, and it adds the biases and the like.
The traced graph also holds conv1's input gradient (the gradient function makes both),
which the step prunes: the profiler's total over the whole graph, 1.454 GFLOP, counts
it.

The peak is a large square matmul (`MATMUL_SIZE`) timed after warm-up: float32 on the
CPU; float32, float16 and bfloat16 on a GPU, where TensorFlow runs float32 matmuls and
convolutions as TensorFloat-32 unless told otherwise (the JSON says which).

TensorFlow is imported inside the functions that need it, after the worker's process
setup.
"""

import math
import time

from tf1compat.runtime import cpu_info

CONVENTION = ('2 FLOPs per multiply-add of Conv2D and Dense kernels; training step = '
              'forward + weight gradients + input gradients of the layers after the first '
              'weighted one (3 x forward less the first layer); biases, activations, '
              'pooling, loss and optimizer not counted')
# A 2048-square float32 matmul takes about 80 ms on 2 CPU cores at 218 GFLOP/s; no size
# from 1024 to 4096 was consistently faster within this VM's noise (166 to 363 GFLOP/s
# under load). 8192 keeps a GPU's tensor cores busy for milliseconds per call, far above
# the eager dispatch (microseconds).
MATMUL_SIZE = {'CPU': 2048, 'GPU': 8192}
PEAK_DTYPES = {'CPU': ('float32',), 'GPU': ('float32', 'float16', 'bfloat16')}
# Calls before timing: oneDNN's or cuBLAS' kernel selection and buffers.
PEAK_WARMUP_CALLS = 2
# Seconds per timed window: the peak costs the benchmark seconds, not minutes.
PEAK_WINDOW_SECONDS = 0.5


def _product(values):
  return math.prod(int(v) for v in values)


def layer_flops(keras, model):
  """The FLOPs of `model` per image, from its Conv2D and Dense layers (see CONVENTION).

  `keras` is the Keras module the model was built with (Keras 3 or tf-keras); the
  layers are walked in `model.layers` order, which is topological in a functional
  model. A layer with another kind of kernel raises ValueError rather than count as
  free.

  Returns {'forward_per_image', 'training_per_image', 'layers': {name: forward FLOPs}}.
  """
  forward, training, layers = 0, 0, {}
  weights_before = False  # Whether an input gradient is needed from here on.
  for layer in model.layers:
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      if getattr(layer, 'kernel', None) is not None:
        raise ValueError(f'layer {layer.name} ({type(layer).__name__}) has a kernel but no '
                         'FLOP formula')
      continue
    if getattr(layer, 'data_format', 'channels_last') != 'channels_last':
      raise ValueError(f'layer {layer.name}: FLOPs are counted for channels_last only')
    # Kernel (Kh, Kw, Cin / groups, Cout) or (in, out); one product per output position.
    flops = 2 * _product(layer.kernel.shape) * _product(layer.output.shape[1:-1])
    layers[layer.name] = flops
    forward += flops
    training += flops
    if layer.trainable:
      training += flops  # The weight gradient.
    if weights_before:
      training += flops  # The input gradient.
    weights_before = weights_before or layer.trainable
  return {'forward_per_image': forward, 'training_per_image': training, 'layers': layers}


def graph_flops(graph):
  """TensorFlow's FLOP count of the ops that `graph`'s outputs depend on, by op type.

  `graph` is a traced tf.function's graph; the profiler's registered float_ops
  statistics count each op, and ops that nothing returned depends on (pruned when the
  function runs) are left out. Returns ({op type: FLOPs}, the profiler's total over
  every op).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  builder = tf.compat.v1.profiler.ProfileOptionBuilder
  options = builder(builder.float_operation()).with_empty_output().build()
  profile = tf.compat.v1.profiler.profile(graph=graph, cmd='scope', options=options)
  needed, pending = set(), [t.op for t in graph.outputs]
  while pending:
    op = pending.pop()
    if op.name not in needed:
      needed.add(op.name)
      pending.extend(t.op for t in op.inputs)
      pending.extend(op.control_inputs)
  by_type = {}
  for node in profile.children:
    if node.name in needed and node.total_float_ops:
      op_type = graph.get_operation_by_name(node.name).type
      by_type[op_type] = by_type.get(op_type, 0) + node.total_float_ops
  return by_type, profile.total_float_ops


def tensorflow_flops(model, per_example_loss, image_size, num_classes):
  """TensorFlow's own count of `model`'s FLOPs per image (graph_flops of traced steps).

  `per_example_loss(labels, outputs)` is the runner's loss; the step is its gradient
  with respect to the trainable weights on one image. Returns {'forward_per_image',
  'training_per_image', 'forward_by_op', 'training_by_op' ({op type: FLOPs}),
  'training_graph_per_image'} (the last: every op of the traced step, pruned ones
  included).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
  labels = tf.TensorSpec([1, num_classes], tf.float32)

  @tf.function(input_signature=[images])
  def forward(batch):
    return model(batch, training=True)

  @tf.function(input_signature=[images, labels])
  def step(batch, targets):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(per_example_loss(targets, model(batch, training=True)))
    return tape.gradient(loss, model.trainable_variables)

  forward_by_op, _ = graph_flops(forward.get_concrete_function().graph)
  training_by_op, graph_total = graph_flops(step.get_concrete_function().graph)
  return {'forward_per_image': sum(forward_by_op.values()),
          'training_per_image': sum(training_by_op.values()),
          'forward_by_op': forward_by_op, 'training_by_op': training_by_op,
          'training_graph_per_image': graph_total}


def matmul_gflops(dtype, size, repetitions):
  """GFLOP/s of `repetitions` windows of square `size` matmuls in `dtype` (2 x size^3
  FLOPs each), on TensorFlow's default device, after warm-up.

  A window runs as many calls as fit in about PEAK_WINDOW_SECONDS (sized on one timed
  call) and ends by reading one element of the last product, which waits for a GPU's
  queue to drain.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.cast(tf.random.stateless_normal([size, size], seed=(1, 2)), dtype)
  b = tf.cast(tf.random.stateless_normal([size, size], seed=(3, 4)), dtype)

  def timed(calls):
    started = time.perf_counter()
    for _ in range(calls):
      product = tf.linalg.matmul(a, b)
    product[0, 0].numpy()
    return time.perf_counter() - started

  timed(PEAK_WARMUP_CALLS)
  calls = max(1, round(PEAK_WINDOW_SECONDS / timed(1)))
  return [2 * size ** 3 * calls / timed(calls) / 1e9 for _ in range(repetitions)]


def measure_peak(repetitions):
  """The device's matmul peak: {'device' ('CPU' or 'GPU'), 'matmul_size',
  'tensor_float_32', 'onednn', 'vector_extensions' (the CPU's, cpu_info), 'gflops':
  {dtype: [GFLOP/s of each window]}}.

  A CPU's peak depends on its widest vector unit and on whether oneDNN or Eigen runs the
  matmul: the figures say which, as this process ran.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  device = 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'
  size = MATMUL_SIZE[device]
  return {'device': device, 'matmul_size': size,
          'tensor_float_32': tf.config.experimental.tensor_float_32_execution_enabled(),
          'onednn': bool(_pywrap_util_port.IsMklEnabled()),
          'vector_extensions': cpu_info.describe()['vector_extensions'],
          'gflops': {dtype: matmul_gflops(dtype, size, repetitions)
                     for dtype in PEAK_DTYPES[device]}}
