"""Weights one ulp away: the start of check_parity's control and of a team's (control_start).

numpy only, like the rest of runs/: a team's own loop nudges its weights with it.
"""

import numpy as np

# The seed of the one-ulp directions; a fixed one keeps the control reproducible.
NUDGE_SEED = 20261125


def nudge_weights(weights, seed=NUDGE_SEED):
  """{key: array} with every non-zero float moved by one ulp, up or down at random (from
  `seed`, an int or a sequence of ints: (seed, step) for a nudge after each step).

  This is the smallest change any correct port brings (one rounding difference in
  each weight). Zeros stay zero: the next representable number beside 0 is a
  denormal, which CPUs and GPUs may flush back to 0.
  """
  rng = np.random.default_rng(seed)
  nudged = {}
  for key in sorted(weights):
    value = np.asarray(weights[key])
    if not np.issubdtype(value.dtype, np.floating):
      nudged[key] = value
      continue
    direction = np.where(rng.random(value.shape) < 0.5, -np.inf, np.inf).astype(value.dtype)
    nudged[key] = np.where(value != 0, np.nextafter(value, direction), value).astype(value.dtype)
  return nudged
