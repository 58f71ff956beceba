"""Calibrated tolerances: how far two *correct* runs drift apart, measured by control runs.

Float training is chaotic: a one-ulp difference in one weight grows to a 1e-2 loss
difference within a few dozen steps, and on a GPU nothing is bit-exact. A fixed
tolerance therefore either fails a correct port on a long run or lets a real mistake
through on a short one. Instead, the reference runner is run again (a *control*); its
divergence from the reference, step by step, is the envelope of correct divergence for
this model, data, machine, settings and run length. A port is judged against a multiple
of the widest envelope of its controls.

Three kinds of control, because correct runs part in more than one way (docs/parity.md
has the measurements). One differs once: its start one ulp away (runs/nudge.py), under
another reduction order and with other Dropout masks (runner_jobs.control_job). The
others, run before a FAIL on numbers alone stands (runner_jobs.escalation_jobs), differ at
every step: each weight one ulp up or down after every step, or oneDNN turned the other
way, as a port whose kernels round differently does. On real images the trajectories can fork at a
single step (a ReLU whose input sits at zero over a whole flat region, an Adam update of
a gradient that is rounding noise), and which branch a run takes is a coin toss between
correct runs: one control alone often took the reference's branch while a correct port
took the other, a false FAIL.

TensorFlow-free (numpy only): the harness writes the control's initial weights and
parity judges finished run directories with it.
"""

import dataclasses
import math

import numpy as np

# float32's relative rounding step (2**-23): the floor of every envelope, so that a
# control that happens to stay bit-identical for a while does not turn a port's
# last-bit difference into a failure.
ROUNDING_FLOOR = 2.0 ** -23
# Measured on the false-alarm matrix (docs/parity.md): correct ports stay within 2x
# of the envelope where it is judged; the pitfall the step tier judges stands at 1.2e6x.
ENVELOPE_MULTIPLE = 10.0
# The control's divergence beyond which two correct runs are no longer step-wise
# predictable (its growth is exponential up to ~1e-2, then saturates at ~0.1 for weights
# and ~0.5 for losses); step and weight tiers are judged up to there.
HORIZON_LEVEL = 1e-3
# Past the horizon trajectories are different draws of the same training: the curves of
# a correct port differ from the reference about as much as the control's do.
CURVE_MULTIPLE = 3.0


def relative_difference(a, b):
  """|a - b| / |a| elementwise, with 0/0 = 0 (for scalar series such as batch losses)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = np.abs(a)
  with np.errstate(divide='ignore', invalid='ignore'):
    rel = np.abs(a - b) / scale
  rel[(scale == 0) & (a == b)] = 0.0
  rel[(scale == 0) & (a != b)] = np.inf
  return rel


def variable_difference(a, b):
  """||a - b|| / max(||a||, ||b||) over one variable (L2 norms).

  Norm-based, so that a variable whose entries sit near zero (a zero-initialised
  bias) gives a meaningful number instead of the ratio of two round-off values.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = float(np.linalg.norm(a - b))
  if diff == 0:
    return 0.0
  scale = max(float(np.linalg.norm(a)), float(np.linalg.norm(b)))
  return diff / scale if scale > 0 else math.inf


def running_max(values):
  """The envelope of a divergence series: it never shrinks once two runs have parted."""
  return np.maximum.accumulate(np.asarray(values, np.float64)) if len(values) else np.zeros(0)


def horizon(steps, envelope, level=HORIZON_LEVEL):
  """The last of `steps` before the envelope first exceeds `level` (0: none)."""
  last = 0
  for step, value in zip(steps, envelope):
    if value > level:
      break
    last = step
  return last


@dataclasses.dataclass
class Envelope:
  """The controls' divergence from the reference, as the judge uses it (the widest of
  them at each step).

  controls: the controls' labels.
  loss: running max of the relative batch-loss difference, one value per step.
  weights: {snapshot step: running max over steps of the largest per-variable difference}.
  curves: {epochs.csv series: running max of the controls' curve difference}.
  loss_horizon / weight_horizon: the last step each tier is judged at (the loss tier
  always judges step 1, the loss of the initial weights).
  """
  controls: list
  loss: list
  weights: dict
  curves: dict
  loss_horizon: int
  weight_horizon: int

  def loss_scale(self, step):
    """max(envelope, floor) at `step` (1-based); past the control's end, its last value."""
    values = self.loss or [0.0]
    return max(values[min(step, len(values)) - 1], ROUNDING_FLOOR)

  def weight_scale(self, step):
    """max(envelope, floor) at snapshot `step`."""
    known = [s for s in sorted(self.weights) if s <= step]
    return max(self.weights[known[-1]] if known else 0.0, ROUNDING_FLOOR)

  def as_dict(self):
    return dataclasses.asdict(self)


def weight_divergence(snapshots_a, snapshots_b, steps, excluded=()):
  """{step: {variable: difference}} over `steps`; `snapshots_*` map a step to {key: array}."""
  out = {}
  for step in steps:
    a, b = snapshots_a(step), snapshots_b(step)
    out[step] = {key: variable_difference(a[key], b[key])
                 for key in sorted(a) if key in b and key not in excluded}
  return out


def _enveloped(controls, loss, weights, curves, level):
  """An Envelope of running-max series, its horizons found at `level`."""
  loss = running_max(loss)
  steps = sorted(weights)
  weights = dict(zip(steps, running_max([weights[s] for s in steps]).tolist()))
  # Step 0 is the nudge itself, not a divergence: the horizon starts after it.
  trained = [s for s in steps if s > 0]
  return Envelope(
      controls=list(controls), loss=loss.tolist(), weights=weights,
      curves={name: running_max(diff).tolist() for name, diff in curves.items()},
      loss_horizon=max(1, horizon(range(1, len(loss) + 1), loss, level)),
      weight_horizon=horizon(trained, [weights[s] for s in trained], level))


def measure(control_label, reference_losses, control_losses, weight_diffs, curve_diffs,
            level=HORIZON_LEVEL):
  """The Envelope from one control's divergences.

  `weight_diffs` is weight_divergence(reference, control); `curve_diffs` maps an
  epochs.csv series to the control's per-epoch difference in the curve tier's units.
  """
  n = min(len(reference_losses), len(control_losses))
  return _enveloped([control_label], relative_difference(reference_losses[:n],
                                                         control_losses[:n]),
                    {s: max(d.values(), default=0.0) for s, d in weight_diffs.items()},
                    curve_diffs, level)


def widest(envelopes, level=HORIZON_LEVEL):
  """One Envelope, the largest of `envelopes` at every step (and snapshot, and epoch),
  its horizons found anew: the port is judged against what any correct run showed.

  The loss series cover the steps all controls ran; the weights the snapshot steps
  all of them hold.
  """
  n = min(len(e.loss) for e in envelopes)
  steps = set.intersection(*(set(e.weights) for e in envelopes))
  names = set.intersection(*(set(e.curves) for e in envelopes))
  epochs = {name: min(len(e.curves[name]) for e in envelopes) for name in names}
  return _enveloped(
      [label for e in envelopes for label in e.controls],
      np.max([e.loss[:n] for e in envelopes], axis=0) if n else np.zeros(0),
      {s: max(e.weights[s] for e in envelopes) for s in steps},
      {name: np.max([e.curves[name][:epochs[name]] for e in envelopes], axis=0)
       for name in names}, level)
