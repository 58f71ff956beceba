"""The catalogue of what makes a port differ that is not the frameworks' doing.

A pitfall is a catalogued migration mistake: the runners that make it and the
arguments that inject it (check_parity's --pitfall, harness), the model switches it
needs to show (harness, matrix), the tiers whose evidence names it, where a replay of
one step finds the codes part when it is made (localize.py) and its fix (parity's
diagnosis, the report). A setup problem is a comparison that cannot hold, named before
any pitfall. TensorFlow-free.
"""

from __future__ import annotations

import dataclasses

from tf1compat.runs import config
from tf1compat.runs import optimizers

@dataclasses.dataclass(frozen=True)
class Where:
  """Where a replay of one training step finds two codes part when a mistake is made.

  `stage`: the first stage outside the envelope (probes.STAGES), or None for a mistake
  that acts outside one step (running metrics, later steps' learning rates). `layers`
  (forward): the first layer of one of these kinds ('output': the model's output
  layer). `part` (loss): the part of the loss that differs first. `at`: the step whose
  replay shows it: 'first'; 'rate_change', the first step whose learning rate differs
  from the step before's (a mistake in how the rate is applied); 'late', the last
  common snapshot step (an epsilon that matters once a slot has decayed or grown).
  """
  stage: str | None
  layers: tuple = ()
  part: str | None = None
  at: str = 'first'


@dataclasses.dataclass(frozen=True, **config.KEYWORD_ONLY)
class Problem:
  """A named cause of a difference: which tiers' evidence names it, where a replay of one
  step finds it, and its fix."""
  # The tiers whose evidence names it (config, step, curve, semantics): the first unless
  # the diagnosis found it in another.
  judged_by: tuple
  where: Where
  fix: str


@dataclasses.dataclass(frozen=True, **config.KEYWORD_ONLY)
class Pitfall(Problem):
  """A migration mistake check_parity can inject into the runner that makes it."""
  runners: tuple  # 'graph', or the port's 'eager' and 'fit'
  args: tuple = ()  # added to those runners' arguments
  omits: tuple = ()  # flags check_parity sets for every runner, left out in those runners'
  # What the model or the run must have for it to show, one of them enough: the switches
  # 'batch_norm' and 'dropout', or 'regularization' (regularized weights),
  # 'batch_norm_momentum' (BatchNorm at another momentum than Keras' default) and
  # 'lr_schedule' (--lr_decay_steps).
  needs: tuple = ()
  # check_parity's config -> more arguments for those runners, made from the values every
  # runner gets (None: none).
  args_from_config: object = None
  # The algorithms (optimizers.ALGORITHMS) whose mistake it is; () for any.
  optimizers: tuple = ()
  # The port's Keras backend it is made on (check_parity --port_backend); None for any.
  port_backend: str | None = None


def applies_to(pitfall, optimizer):
  """Whether `pitfall` can be made with --optimizer `optimizer`."""
  return not pitfall.optimizers or optimizers.ALGORITHMS[optimizer][0] in pitfall.optimizers


def _keep_prob_args(cfg):
  """The port's Dropout rate when the legacy keep_prob (1 - its rate) is taken for a rate."""
  return (f'--dropout={1 - cfg.dropout:.6g}',)


PITFALLS = {
    'adam_epsilon': Pitfall(
        # The port keeps Keras' own epsilon.
        runners=('eager', 'fit'), omits=('epsilon',), judged_by=('config',),
        where=Where('update'), optimizers=('adam',),
        fix='Pass the legacy epsilon explicitly: keras.optimizers.Adam(epsilon=1e-8) '
            '(TF1 AdamOptimizer default) instead of Keras\' 1e-7.'),
    # The optimizers' own differences (docs/optimizers.md): each read in TensorFlow's
    # training_ops and tf.compat.v1.train sources and Keras 3's optimizers, and measured
    # one step at a time before it entered the catalogue.
    'rmsprop_zero_start': Pitfall(
        # rmsprop.py's _create_slots: the `rms` slot starts at ones (init_ops.ones_initializer);
        # Keras 3's RMSprop adds its velocity with zeros: at rho 0.9 its first update is
        # sqrt(1 / (1 - rho)) = 3.2x TF1's for a small gradient (google-deepmind/optax#49:
        # papers tuned on TF1's RMSProp replicated only with its ones start;
        # tensorflow/tensorflow#40670, huggingface/pytorch-image-models#225).
        runners=('eager', 'fit'), args=('--notf1_rmsprop_start',), judged_by=('config',),
        where=Where('update'), optimizers=('rmsprop',),
        fix='Start the mean square at one, as TF1\'s RMSPropOptimizer does: build the '
            'optimizer (optimizer.build(model.trainable_variables)) and assign ones to its '
            '`velocity` variables before the first step (tf1compat.train.tf1_kernels.TF1RMSprop '
            'does it in build); Keras starts them at zero (google-deepmind/optax#49).'),
    'rmsprop_epsilon': Pitfall(
        # RMSPropOptimizer(epsilon=1e-10) vs keras.optimizers.RMSprop(epsilon=1e-7), both
        # inside the square root: invisible while the mean square is near its start of one,
        # it shows as the mean square decays towards (1 - rho) g^2 (tensorflow/tensorflow#58412,
        # keras-team/keras#17391: where each framework puts epsilon).
        runners=('eager', 'fit'), omits=('epsilon',), judged_by=('config',),
        where=Where('update', at='late'), optimizers=('rmsprop',),
        fix='Pass the legacy epsilon explicitly: keras.optimizers.RMSprop(epsilon=1e-10) '
            '(TF1 RMSPropOptimizer default) instead of Keras\' 1e-7.'),
    'adadelta_epsilon': Pitfall(
        # AdadeltaOptimizer(epsilon=1e-8) vs keras.optimizers.Adadelta(epsilon=1e-7), inside
        # both square roots of the update: the first update is sqrt(10) = 3.2x TF1's
        # (tensorflow/tensorflow#36785: Keras' Adadelta defaults).
        runners=('eager', 'fit'), omits=('epsilon',), judged_by=('config',),
        where=Where('update'), optimizers=('adadelta',),
        fix='Pass the legacy epsilon explicitly: keras.optimizers.Adadelta(epsilon=1e-8) '
            '(TF1 AdadeltaOptimizer default) instead of Keras\' 1e-7.'),
    'adagrad_epsilon': Pitfall(
        # TF1's ApplyAdagrad divides by sqrt(accum); Keras 3's Adagrad by sqrt(accum + 1e-7).
        # With the accumulator starting at 0.1 the update differs by 5e-7 relative: the
        # config tier names it, the numbers barely can (keras-team/keras#17391).
        runners=('eager', 'fit'), omits=('epsilon',), judged_by=('config',),
        where=Where('update', at='late'), optimizers=('adagrad',),
        fix='Pass epsilon=0 to keras.optimizers.Adagrad: TF1\'s AdagradOptimizer has no '
            'epsilon, Keras adds 1e-7 to the accumulator.'),
    'momentum_rate_change': Pitfall(
        # TF1's ApplyMomentum: accum = m * accum + g; var -= lr * accum. Keras' SGD:
        # m = m * momentum - lr * g; var += m. Equal under one rate; once the schedule
        # changes the rate, TF1 rescales every past gradient by the new rate
        # (cjlin1/simpleNN#7: Keras' SGD for MomentumOptimizer, equal only under a constant
        # rate; keras-team/keras#13971: the two forms).
        runners=('eager', 'fit'), args=('--notf1_momentum',), needs=('lr_schedule',),
        judged_by=('config',),
        where=Where('update', at='rate_change'), optimizers=('momentum',),
        fix='Apply TF1\'s momentum form under a changing rate: a keras.optimizers.SGD '
            'subclass whose update_step runs tf.raw_ops.ResourceApplyMomentum (accum = '
            'momentum * accum + g; var -= lr * accum), as tf1compat.train.tf1_kernels.'
            'TF1Momentum does; Keras\' SGD keeps each step\'s own rate in its momentum '
            '(cjlin1/simpleNN#7).'),
    'metrics_never_reset': Pitfall(
        runners=('graph',), args=('--reset_metrics=never',), judged_by=('semantics',),
        where=Where(None),
        fix='Reset the metric local variables at every epoch start '
            '(sess.run(metrics_reset_op)); Keras: metric.reset_state().'),
    'skip_update_ops': Pitfall(
        runners=('graph',), args=('--noupdate_ops',), needs=('batch_norm',),
        judged_by=('semantics',),
        where=Where('state'),
        fix='Create the train op under tf.control_dependencies(model.updates) so '
            'BatchNormalization moving statistics are updated.'),
    'model_call_wiring': Pitfall(
        runners=('graph',), args=('--wiring=model_call',), needs=('batch_norm',),
        judged_by=('semantics',),
        where=Where('state'),
        fix='Build the model on the iterator tensor, Input(tensor=features), '
            'instead of calling model(features), so its update ops are the ones run.'),
    'no_learning_phase': Pitfall(
        runners=('graph',), args=('--nofeed_learning_phase',), needs=('batch_norm', 'dropout'),
        # Dropout that never acted (the control's masks) or a first batch loss that differs.
        judged_by=('semantics', 'step'),
        where=Where('forward', layers=('BatchNormalization', 'Dropout')),
        fix='Feed tf.keras.backend.learning_phase(): 1 in training steps (TF2: '
            'model(x, training=True)).'),
    'double_softmax': Pitfall(
        runners=('eager', 'fit'), args=('--final_activation=softmax',), judged_by=('config',),
        where=Where('forward', layers=('output',)),
        fix='Return logits from the model (no final softmax) when the loss takes '
            'logits, or use from_logits=False with a softmax output.'),
    # Citations: the issue threads where teams made each mistake.
    'keep_prob_as_rate': Pitfall(
        # TF1's tf.nn.dropout(x, keep_prob) keeps keep_prob; TF2's tf.nn.dropout(x, rate)
        # and Keras' Dropout(rate) drop rate. A positional 0.8 keeps 80% in TF1 and drops
        # 80% in TF2 (google-research/bert#1089, google-research/google-research#369), and
        # a keep_prob copied into a rate does the same (hunkim/DeepLearningZeroToAll#204,
        # pudae/tensorflow-densenet#22).
        runners=('eager', 'fit'), args_from_config=_keep_prob_args, needs=('dropout',),
        judged_by=('config',),
        where=Where('forward', layers=('Dropout',)),
        fix='Pass rate = 1 - keep_prob: TF1\'s tf.nn.dropout(x, keep_prob) keeps keep_prob, '
            'keras.layers.Dropout(rate) and TF2\'s tf.nn.dropout(x, rate) drop rate (see '
            'google-research/bert#1089, hunkim/DeepLearningZeroToAll#204).'),
    'from_logits_lost': Pitfall(
        # keras.losses.categorical_crossentropy(y, logits) with its default
        # from_logits=False divides the logits by their sum and clips them to
        # [1e-7, 1 - 1e-7] as probabilities, without a warning (keras-team/tf-keras#47,
        # xiph/LPCNet#97, cleverhans-lab/cleverhans#25).
        runners=('eager', 'fit'), args=('--loss=keras_categorical_probs',),
        judged_by=('config',),
        where=Where('loss', part='data'),
        fix='Pass from_logits=True when the model returns logits: '
            'keras.losses.categorical_crossentropy(y, logits, from_logits=True) or '
            'CategoricalCrossentropy(from_logits=True); its default False takes the logits '
            'for probabilities, silently (keras-team/tf-keras#47).'),
    'accuracy_metric_class': Pitfall(
        # model.compile(metrics=[keras.metrics.Accuracy()]) for the string 'accuracy':
        # Accuracy compares labels and outputs element by element, about 0 on one-hot
        # labels and logits (keras-team/keras#18796, keras-team/tf-keras#15,
        # tensorflow/tensorflow#38004). Keras 3.15 resolves the string 'accuracy' to
        # CategoricalAccuracy here (measured), so the string itself is no mistake.
        runners=('fit',), args=('--fit_accuracy=Accuracy',), judged_by=('step', 'curve'),
        where=Where(None),
        fix='Compile with keras.metrics.CategoricalAccuracy() (what the string \'accuracy\' '
            'resolves to for one-hot labels): keras.metrics.Accuracy() compares labels and '
            'outputs element by element and shows about 0 on logits (keras-team/keras#18796).'),
    'regularization_dropped': Pitfall(
        # A custom TF2 loop whose loss is the data loss alone: Keras keeps the
        # regularizers' penalties in model.losses, which fit adds and a GradientTape loop
        # must add itself (hunglc007/tensorflow-yolov4-tflite#369,
        # pythonlessons/TensorFlow-2.x-YOLOv3#165, tensorflow/tensorflow#21237: TF's own
        # eager DenseNet example, tensorflow/tensorflow#30866).
        runners=('eager',), args=('--noadd_regularization_losses',),
        needs=('regularization',), judged_by=('config',),
        where=Where('loss', part='regularization'),
        fix='Add the model\'s regularization losses to the loss of a custom loop: '
            'loss = data_loss + tf.add_n(model.losses) (under a tf.distribute strategy '
            'tf.nn.scale_regularization_loss of that sum); fit adds them itself '
            '(hunglc007/tensorflow-yolov4-tflite#369, tensorflow/tensorflow#21237).'),
    'lr_schedule_per_epoch': Pitfall(
        # tf.compat.v1.train.exponential_decay(lr, global_step, ...) decays every step;
        # keras.callbacks.LearningRateScheduler is called once per epoch with the epoch
        # index, so a step schedule ported into it holds each epoch's first rate
        # (Rochester-NRT/RocAlphaGo#148, stickeritis/sticker#145, tensorflow/tensorflow#52529:
        # decay_steps counts steps, not epochs).
        runners=('fit',), args=('--fit_lr_schedule=epoch_callback',), needs=('lr_schedule',),
        judged_by=('step',),
        where=Where(None),
        fix='Keep a per-step schedule per step: pass a '
            'keras.optimizers.schedules.LearningRateSchedule (e.g. ExponentialDecay with the '
            'same decay_steps, evaluated on optimizer.iterations) as the optimizer\'s '
            'learning_rate instead of a LearningRateScheduler callback, which fit calls once '
            'per epoch (Rochester-NRT/RocAlphaGo#148, stickeritis/sticker#145).'),
    'bn_momentum_default': Pitfall(
        # TF1's tf.contrib.layers.batch_norm / slim decay defaults to 0.999, Keras'
        # BatchNormalization momentum to 0.99: a port that writes BatchNormalization()
        # moves the moving statistics 10x faster (keras-team/keras#6839,
        # cleverhans-lab/entangled-watermark#4, tensorlayer/TensorLayer#104).
        runners=('eager', 'fit'), args=('--nokeep_bn_momentum',),
        needs=('batch_norm_momentum',),
        judged_by=('config',),
        where=Where('state'),
        fix='Pass the legacy decay as the momentum: keras.layers.BatchNormalization('
            'momentum=0.999) for tf.contrib.layers.batch_norm\'s default decay (Keras\' own '
            'default is 0.99; momentum = decay, keras-team/keras#6839); check epsilon too.'),
    'jax_state_dropped': Pitfall(
        # A JAX train step written after jax.value_and_grad's simplest form, loss alone
        # out of the loss function: model.stateless_call also returns the new
        # non-trainable variables (BatchNorm's moving statistics, the Dropout layers'
        # seed), which the step must hand to the next one, as Keras' own JAX trainer does.
        # Dropped, the moving statistics stay at their start (inference runs on them) and
        # Dropout draws the same mask at every step. keras.io's own guide to distributed
        # training with JAX, BatchNorm and Dropout in its model, did not carry them
        # (keras-team/keras#20378).
        runners=('eager',), args=('--nokeep_non_trainable_state',), needs=('batch_norm',),
        port_backend='jax', judged_by=('semantics',),
        where=Where('state'),
        fix='Return the non-trainable state from the loss function and carry it: outputs, '
            'non_trainable = model.stateless_call(trainable, non_trainable, x, '
            'training=True); jax.value_and_grad(loss_fn, has_aux=True); the next step gets '
            'the new non_trainable (BatchNorm moving statistics, the Dropout seed; '
            'keras-team/keras#20378).'),
}

SETUP_PROBLEMS = {
    'different_inputs': Problem(
        judged_by=('config',),
        where=Where('input'),
        fix='Train both jobs on the same batches: fit the port on '
            'keras_callback.recorded_batches(LEGACY_RUN), watched, or make the two pipelines '
            'read the same examples in the same order (files, shuffle seed, batch size); '
            'batches/digests.csv of each run holds every step\'s digest.'),
    'different_data': Problem(
        judged_by=('config',),
        where=Where('forward'),
        fix='Train every run on the same records: point each at the same --data_dir (the '
            'same files, copied whole), with the same --on_bad_record; run.json\'s data '
            'block names each run\'s folder and records.'),
    'different_start': Problem(
        judged_by=('config',),
        where=Where('forward'),
        fix='Give every runner the same initial weights: write them once with '
            '--save_init_weights and pass that file as --init_weights to each run '
            '(check_parity does this).'),
}
