"""The catalogue of what makes a port differ that is not the frameworks' doing.

A pitfall is a catalogued migration mistake: the runners that make it and the
arguments that inject it (check_parity's --pitfall, harness), the model switches it
needs to show (harness, matrix), the tiers whose evidence names it and its fix
(parity's diagnosis, the report). A setup problem is a comparison that cannot hold,
named before any pitfall. TensorFlow-free.
"""

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
  """A named cause of a difference: which tiers' evidence names it, and its fix."""
  # The tiers whose evidence names it (config, step, semantics): the first unless the
  # diagnosis found it in another.
  judged_by: tuple
  fix: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pitfall(Problem):
  """A migration mistake check_parity can inject into the runner that makes it."""
  runners: tuple  # 'graph', or the port's 'eager' and 'fit'
  args: tuple = ()  # added to those runners' arguments
  omits: tuple = ()  # flags check_parity sets for every runner, left out in those runners'
  needs: tuple = ()  # model switches of which one must be on for it to show


PITFALLS = {
    'adam_epsilon': Pitfall(
        # The port keeps Keras' own epsilon.
        runners=('eager', 'fit'), omits=('adam_epsilon',), judged_by=('config',),
        fix='Pass the legacy epsilon explicitly: keras.optimizers.Adam(epsilon=1e-8) '
            '(TF1 AdamOptimizer default) instead of Keras\' 1e-7.'),
    'metrics_never_reset': Pitfall(
        runners=('graph',), args=('--reset_metrics=never',), judged_by=('semantics',),
        fix='Reset the metric local variables at every epoch start '
            '(sess.run(metrics_reset_op)); Keras: metric.reset_state().'),
    'skip_update_ops': Pitfall(
        runners=('graph',), args=('--noupdate_ops',), needs=('batch_norm',),
        judged_by=('semantics',),
        fix='Create the train op under tf.control_dependencies(model.updates) so '
            'BatchNormalization moving statistics are updated.'),
    'model_call_wiring': Pitfall(
        runners=('graph',), args=('--wiring=model_call',), needs=('batch_norm',),
        judged_by=('semantics',),
        fix='Build the model on the iterator tensor, Input(tensor=features), '
            'instead of calling model(features), so its update ops are the ones run.'),
    'no_learning_phase': Pitfall(
        runners=('graph',), args=('--nofeed_learning_phase',), needs=('batch_norm', 'dropout'),
        # Dropout that never acted (the control's masks) or a first batch loss that differs.
        judged_by=('semantics', 'step'),
        fix='Feed tf.keras.backend.learning_phase(): 1 in training steps (TF2: '
            'model(x, training=True)).'),
    'double_softmax': Pitfall(
        runners=('eager', 'fit'), args=('--final_activation=softmax',), judged_by=('config',),
        fix='Return logits from the model (no final softmax) when the loss takes '
            'logits, or use from_logits=False with a softmax output.'),
}

SETUP_PROBLEMS = {
    'different_start': Problem(
        judged_by=('config',),
        fix='Give every runner the same initial weights: write them once with '
            '--save_init_weights and pass that file as --init_weights to each run '
            '(check_parity does this).'),
}
