"""TF1's kernels in Keras 3: the port's switches that remove the framework differences, and
the optimizers that compute what TF1's do where no Keras argument can say it.

A matched port still differs from the legacy loop by float rounding in two places
(docs/parity.md, "Exact mode"): Keras 3's Adam and its BatchNormalization compute TF1's formulas
with other ops. `TF1Adam` (`--tf1_adam`) and `TF1BatchNormalization`
(`--tf1_bn_variance`) run TF1's own kernels from a Keras 3 model, so that a matched
comparison with the graph runner is bit for bit on CPU. `TF1Momentum` and `TF1RMSprop` are
the exact port of TF1's MomentumOptimizer under a changing rate and of its RMSPropOptimizer
(docs/optimizers.md). Keras 3 only.

On Keras 3's other backends (the JAX port, `train_eager --backend=jax`) TensorFlow's kernels
cannot run inside the compiled step: each class computes TF1's formula instead, in TF1's
order of operations with keras.ops, which XLA compiles and rounds its own way
(docs/jax-port.md, `xla_rounding`). FTRL has no such formula here: on those
backends TF1Ftrl is Keras' Ftrl, whose formula is TF1's with other ops.
"""

import keras
from keras import ops
import tensorflow as tf

# tf.nn.fused_batch_norm's floor on epsilon, which tf-keras' fused path goes through.
_FUSED_BN_MIN_EPSILON = 1.001e-5


def _complement(value, dtype):
  """1 - `value` computed in `dtype`, as TF1's kernels compute T(1) - beta (Python's
  1 - 0.9 rounds to another float32 than float32's 1 - float32(0.9))."""
  return 1 - ops.cast(value, dtype)


def on_tensorflow():
  """Whether Keras runs on TensorFlow, where TF1's own kernels can run in the step."""
  return keras.backend.backend() == 'tensorflow'


class TF1BatchNormalization(keras.layers.BatchNormalization):
  """BatchNormalization computed as TF1's fused batch norm (`--tf1_bn_variance`).

  tf-keras in graph mode runs the fused kernel, which normalizes with the biased batch
  variance but returns the Bessel-corrected one (var * n / (n - 1), n = batch x height
  x width) for the moving variance, and updates the moving statistics as
  `moving -= (moving - value) * (1 - momentum)`. Keras 3 uses the biased variance and
  unfused ops, which also round differently (docs/parity.md, `bn_moving_variance`). This
  layer runs the same kernel (`FusedBatchNormV3`, whose gradient TF registers) and the
  same update, so a matched comparison with the graph runner is exact. Masked, renorm
  and non-image inputs fall back to the base class.
  """

  def call(self, inputs, training=None, mask=None):
    if mask is not None or self.renorm or len(inputs.shape) != 4 or self.axis % 4 != 3:
      return super().call(inputs, training=training, mask=mask)
    training = bool(training) and self.trainable
    if not on_tensorflow():
      return self._formula(inputs, training)
    x = tf.cast(inputs, tf.float32)
    gamma = self.gamma.value if self.scale else tf.ones(x.shape[-1:], tf.float32)
    beta = self.beta.value if self.center else tf.zeros(x.shape[-1:], tf.float32)
    replicas = tf.distribute.get_replica_context()
    if training and replicas is not None and replicas.num_replicas_in_sync > 1:
      outputs, mean, variance = self._synchronized(x, gamma, beta, replicas)
      self._update_moving_statistics(mean, variance)
      return tf.cast(outputs, self.compute_dtype)
    outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=self.moving_mean.value,
        variance=self.moving_variance.value,
        epsilon=max(self.epsilon, _FUSED_BN_MIN_EPSILON), exponential_avg_factor=1.0,
        data_format='NHWC', is_training=training)
    if training:
      self._update_moving_statistics(mean, variance)
    return tf.cast(outputs, self.compute_dtype)

  def _formula(self, inputs, training):
    """The fused kernel's computation in keras.ops, in its order: normalized with the
    batch's biased variance, the moving variance fed the Bessel-corrected one."""
    x = ops.cast(inputs, 'float32')
    epsilon = max(self.epsilon, _FUSED_BN_MIN_EPSILON)
    gamma = self.gamma.value if self.scale else ops.ones(x.shape[-1:], 'float32')
    beta = self.beta.value if self.center else ops.zeros(x.shape[-1:], 'float32')
    if not training:
      mean, variance = self.moving_mean.value, self.moving_variance.value
    else:
      mean, variance = ops.moments(x, axes=[0, 1, 2])
      count = x.shape[0] * x.shape[1] * x.shape[2]
      self._update_moving_statistics(mean, variance * (count / (count - 1.0)))
    # The fused kernel's order: (x - mean) * (rsqrt(variance + epsilon) * gamma) + beta.
    # keras.ops.batch_normalization's x * inv + (beta - mean * inv) cancels where the mean is
    # large beside the spread: against TF1's kernel on one layer (tests/kernel_steps.py),
    # its outputs were 42 ulps apart, these 2.
    outputs = (x - mean) * (ops.rsqrt(variance + epsilon) * gamma) + beta
    return ops.cast(outputs, self.compute_dtype)

  def _synchronized(self, x, gamma, beta, replicas):
    """Normalizes with the moments of the global batch, all replicas together.

    The fused kernel sees only its replica's rows; the single-device run's math needs
    the whole batch's moments (the role of Keras' `synchronized=True`). Returns the
    outputs, the mean and TF1's Bessel-corrected variance of the global batch.
    """
    axes = [0, 1, 2]
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    total, total_squares, count = replicas.all_reduce(
        tf.distribute.ReduceOp.SUM,
        [tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes), count])
    mean = total / count
    variance = tf.maximum(total_squares / count - tf.square(mean), 0.0)
    outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma,
                                        max(self.epsilon, _FUSED_BN_MIN_EPSILON))
    return outputs, mean, variance * count / (count - 1.0)

  def _update_moving_statistics(self, mean, variance):
    # In graph mode the learning phase is a placeholder, so tf-keras takes momentum
    # as a float32 tensor and computes 1 - momentum in float32, not in Python.
    decay = (ops.convert_to_tensor(1.0, 'float32')
             - ops.convert_to_tensor(self.momentum, 'float32'))
    self.moving_mean.assign_sub((self.moving_mean.value - mean) * decay)
    self.moving_variance.assign_sub((self.moving_variance.value - variance) * decay)


class TF1Adam(keras.optimizers.Adam):
  """Keras 3 Adam applied through TF1's fused `ApplyAdam` kernel (`--tf1_adam`).

  The formula is Adam's either way; what differs is float rounding. TF1's
  AdamOptimizer feeds the kernel beta powers kept as variables and multiplied by beta
  once per step; Keras computes `beta ** t` and the update with separate ops. The
  results differ by an ulp at the first step, and Adam's normalization amplifies that
  chaotically. Through the same kernel with the same accumulators, a Keras 3 loop
  matches the graph runner bit for bit on CPU.
  """

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    # Updated once per step, not per replica: the first replica's value is the value.
    self._beta_1_power = self.add_variable(
        (), initializer=keras.initializers.Constant(self.beta_1), name='beta_1_power',
        aggregation='only_first_replica')
    self._beta_2_power = self.add_variable(
        (), initializer=keras.initializers.Constant(self.beta_2), name='beta_2_power',
        aggregation='only_first_replica')

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    if not on_tensorflow():
      m, v = self._momentums[index], self._velocities[index]
      gradient = ops.cast(gradient, dtype)
      rate = (ops.cast(learning_rate, dtype) * ops.sqrt(1 - self._beta_2_power.value)
              / (1 - self._beta_1_power.value))
      self.assign(m, m + (gradient - m) * _complement(self.beta_1, dtype))
      self.assign(v, v + (ops.square(gradient) - v) * _complement(self.beta_2, dtype))
      self.assign(variable, variable - m.value * rate / (ops.sqrt(v.value) + self.epsilon))
      return
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=self._momentums[index].value.handle,
        v=self._velocities[index].value.handle,
        beta1_power=tf.cast(self._beta_1_power.value, dtype),
        beta2_power=tf.cast(self._beta_2_power.value, dtype),
        lr=tf.cast(learning_rate, dtype), beta1=tf.constant(self.beta_1, dtype),
        beta2=tf.constant(self.beta_2, dtype), epsilon=tf.constant(self.epsilon, dtype),
        grad=tf.cast(gradient, dtype), use_locking=False)

  def _backend_apply_gradients(self, grads, trainable_variables):
    super()._backend_apply_gradients(grads, trainable_variables)
    # After every variable's update, as TF1's AdamOptimizer._finish does.
    self._beta_1_power.assign(self._beta_1_power * self.beta_1)
    self._beta_2_power.assign(self._beta_2_power * self.beta_2)


class TF1Momentum(keras.optimizers.SGD):
  """Keras 3 SGD with momentum applied as TF1's MomentumOptimizer (`--tf1_momentum`).

  TF1's `ApplyMomentum` accumulates gradients and multiplies the sum by the current rate
  (`accum = momentum * accum + g; var -= lr * accum`, Nesterov `var -= lr * g + lr *
  momentum * accum`); Keras' SGD accumulates steps already scaled by their own rate (`m =
  momentum * m - lr * g; var += m`). Under one constant rate the two are the same
  algorithm; once a schedule changes the rate, TF1 rescales every past gradient by the
  new rate and Keras does not (the momentum_rate_change pitfall). This class runs TF1's
  kernel on Keras' accumulator variables.
  """

  momentum_accumulates = 'gradients'

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    if not on_tensorflow():
      accumulator, rate = self.momentums[index], ops.cast(learning_rate, dtype)
      gradient = ops.cast(gradient, dtype)
      self.assign(accumulator, accumulator * self.momentum + gradient)
      step = (gradient * rate + accumulator.value * self.momentum * rate if self.nesterov
              else accumulator.value * rate)
      self.assign(variable, variable - step)
      return
    tf.raw_ops.ResourceApplyMomentum(
        var=variable.handle, accum=self.momentums[index].value.handle,
        lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
        momentum=tf.constant(self.momentum, dtype), use_locking=False,
        use_nesterov=self.nesterov)


class TF1RMSprop(keras.optimizers.RMSprop):
  """Keras 3 RMSprop whose mean square starts at one, as TF1's RMSPropOptimizer's does
  (`--tf1_rmsprop_start`), applied through TF1's ApplyRMSProp kernel where `fused`
  (`--tf1_optimizer_kernel`).

  TF1 creates the `rms` slot with ones_initializer, Keras its `velocity` with zeros: the
  first steps of Keras' are up to sqrt(1 / (1 - rho)) = 3.2x larger (rho 0.9), and the
  difference fades as rho ** t (the rmsprop_zero_start pitfall). Keras' own update is
  TF1's formula (epsilon inside the square root, the centered variant's mean gradient,
  the momentum accumulating rate-scaled steps) with other ops, which round otherwise:
  measured at check_parity's defaults, the val_loss of epoch 3 5.5% apart (the band is
  5%) while the losses of the first 59 steps stayed within 0.82x the controls'. TF1's
  kernel (which always keeps a momentum slot) rounds as the graph runner does.
  """

  mean_square_start = 1.0

  def __init__(self, *args, fused=False, **kwargs):
    super().__init__(*args, **kwargs)
    self.fused = fused

  def build(self, var_list):
    # RMSprop.build's slots, the mean square created at one: an assign after Keras' build
    # would run inside fit's traced step, which builds the optimizer, at every step.
    if self.built:
      return
    keras.optimizers.Optimizer.build(self, var_list)
    self._velocities = self.add_optimizer_variables(var_list, 'velocity', initializer='ones')
    self._momentums = (self.add_optimizer_variables(var_list, 'momentum')
                       if self.momentum > 0 else [])
    self._average_gradients = (self.add_optimizer_variables(var_list, 'average_gradient')
                               if self.centered else [])
    # TF1's kernel keeps a momentum slot even at momentum 0.
    self._tf1_momentums = (self.add_optimizer_variables(var_list, 'momentum')
                           if self.fused and not self._momentums else [])

  def update_step(self, gradient, variable, learning_rate):
    if not self.fused:
      return super().update_step(gradient, variable, learning_rate)
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    momentums = self._momentums or self._tf1_momentums
    if not on_tensorflow():
      self._formula_step(ops.cast(gradient, dtype), variable, ops.cast(learning_rate, dtype),
                         index, momentums[index])
      return
    scalars = dict(lr=tf.cast(learning_rate, dtype), rho=tf.constant(self.rho, dtype),
                   momentum=tf.constant(self.momentum, dtype),
                   epsilon=tf.constant(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
                   use_locking=False)
    ms, mom = self._velocities[index].value.handle, momentums[index].value.handle
    if self.centered:
      tf.raw_ops.ResourceApplyCenteredRMSProp(
          var=variable.handle, mg=self._average_gradients[index].value.handle, ms=ms,
          mom=mom, **scalars)
    else:
      tf.raw_ops.ResourceApplyRMSProp(var=variable.handle, ms=ms, mom=mom, **scalars)


  def _formula_step(self, gradient, variable, rate, index, momentum):
    """ApplyRMSProp's (ApplyCenteredRMSProp's) formula in keras.ops."""
    mean_square = self._velocities[index]
    decay = _complement(self.rho, gradient.dtype)
    self.assign(mean_square, mean_square + (ops.square(gradient) - mean_square) * decay)
    denominator = mean_square.value + self.epsilon
    if self.centered:
      mean_gradient = self._average_gradients[index]
      self.assign(mean_gradient, mean_gradient + (gradient - mean_gradient) * decay)
      denominator = mean_square.value - ops.square(mean_gradient.value) + self.epsilon
    self.assign(momentum, momentum * self.momentum + ops.rsqrt(denominator) * rate * gradient)
    self.assign(variable, variable - momentum.value)


class TF1SGD(keras.optimizers.SGD):
  """Keras 3 SGD without momentum through TF1's ApplyGradientDescent kernel
  (`--tf1_optimizer_kernel`): the same formula, TF1's rounding."""

  def update_step(self, gradient, variable, learning_rate):
    if not on_tensorflow():
      # Keras' SGD without momentum is ApplyGradientDescent's formula.
      return super().update_step(gradient, variable, learning_rate)
    dtype = variable.dtype
    tf.raw_ops.ResourceApplyGradientDescent(
        var=variable.handle, alpha=tf.cast(learning_rate, dtype),
        delta=tf.cast(gradient, dtype), use_locking=False)


class TF1Adagrad(keras.optimizers.Adagrad):
  """Keras 3 Adagrad through TF1's ApplyAdagrad kernel, or ApplyAdagradV2 where it has an
  epsilon (`--tf1_optimizer_kernel`): TF1's AdagradOptimizer has none."""

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    if not on_tensorflow():
      accumulator, gradient = self._accumulators[index], ops.cast(gradient, dtype)
      self.assign(accumulator, accumulator + ops.square(gradient))
      rate = ops.cast(learning_rate, dtype)
      step = (gradient * rate / (ops.sqrt(accumulator.value) + self.epsilon) if self.epsilon
              else gradient * rate * ops.rsqrt(accumulator.value))
      self.assign(variable, variable - step)
      return
    args = dict(var=variable.handle, accum=self._accumulators[index].value.handle,
                lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
                use_locking=False, update_slots=True)
    if self.epsilon:
      tf.raw_ops.ResourceApplyAdagradV2(epsilon=tf.constant(self.epsilon, dtype), **args)
    else:
      tf.raw_ops.ResourceApplyAdagrad(**args)


class TF1Adadelta(keras.optimizers.Adadelta):
  """Keras 3 Adadelta through TF1's ApplyAdadelta kernel (`--tf1_optimizer_kernel`)."""

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    if not on_tensorflow():
      accumulator, updates = self._accumulated_grads[index], self._accumulated_delta_vars[index]
      gradient = ops.cast(gradient, dtype)
      decay = _complement(self.rho, dtype)
      self.assign(accumulator, accumulator * self.rho + ops.square(gradient) * decay)
      update = (ops.sqrt(updates + self.epsilon) * ops.rsqrt(accumulator.value + self.epsilon)
                * gradient)
      self.assign(variable, variable - update * ops.cast(learning_rate, dtype))
      self.assign(updates, updates * self.rho + ops.square(update) * decay)
      return
    tf.raw_ops.ResourceApplyAdadelta(
        var=variable.handle, accum=self._accumulated_grads[index].value.handle,
        accum_update=self._accumulated_delta_vars[index].value.handle,
        lr=tf.cast(learning_rate, dtype), rho=tf.constant(self.rho, dtype),
        epsilon=tf.constant(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
        use_locking=False)


class TF1Ftrl(keras.optimizers.Ftrl):
  """Keras 3 Ftrl through TF1's ApplyFtrl kernel, ApplyFtrlV2 with an L2 shrinkage, as
  FtrlOptimizer applies them with beta 0 (`--tf1_optimizer_kernel`)."""

  def update_step(self, gradient, variable, learning_rate):
    if not on_tensorflow():
      return super().update_step(gradient, variable, learning_rate)
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    args = dict(var=variable.handle, accum=self._accumulators[index].value.handle,
                linear=self._linears[index].value.handle, grad=tf.cast(gradient, dtype),
                lr=tf.cast(learning_rate, dtype),
                l1=tf.constant(self.l1_regularization_strength, dtype),
                l2=tf.constant(self.l2_regularization_strength, dtype),
                lr_power=tf.constant(self.learning_rate_power, dtype), use_locking=False)
    if self.l2_shrinkage_regularization_strength > 0:
      tf.raw_ops.ResourceApplyFtrlV2(
          l2_shrinkage=tf.constant(self.l2_shrinkage_regularization_strength, dtype), **args)
    else:
      tf.raw_ops.ResourceApplyFtrl(**args)
