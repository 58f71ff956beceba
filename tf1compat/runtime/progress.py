"""Training progress for people and for batch logs.

On a terminal: one tqdm bar per epoch with loss and accuracy in the postfix, as the
seed's loop shows them. Without one (batch jobs): an absl.logging line every
`log_every` steps and at the end of each epoch, so logs stay readable and small.
check_parity's console (`say`, `RunProgress`) shows one line per phase instead.
"""

import sys

from absl import logging
from tqdm import tqdm


def on_terminal():
  """True when stdout is an interactive terminal."""
  return sys.stdout.isatty()


class EpochProgress:
  """Progress of one epoch of `total` steps, starting after `initial` done steps."""

  def __init__(self, epoch, epochs, total, initial=0, log_every=100, use_bar=None):
    self._desc = f'Epoch {epoch}/{epochs}'
    self._total = total
    self._done = initial
    self._log_every = log_every
    self._bar = None
    if on_terminal() if use_bar is None else use_bar:
      self._bar = tqdm(total=total, initial=initial, desc=self._desc, file=sys.stdout,
                       dynamic_ncols=True)

  def update(self, **metrics):
    """Advances one step; `metrics` (name -> float) are shown when they are given."""
    self._done += 1
    if self._bar is not None:
      if metrics:
        self._bar.set_postfix({k: f'{v:.4f}' for k, v in metrics.items()}, refresh=False)
      self._bar.update(1)
    elif metrics and (self._done % self._log_every == 0 or self._done == self._total):
      shown = ' '.join(f'{k}={v:.4f}' for k, v in metrics.items())
      logging.info('%s step %d/%d %s', self._desc, self._done, self._total, shown)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def say(line):
  """One line on the console of a job that reports phases (check_parity)."""
  sys.stdout.write(line + '\n')
  sys.stdout.flush()


class RunProgress:
  """A runner started by check_parity: a bar over its steps on a terminal, else a line
  when it starts and one when it ends."""

  def __init__(self, desc, total_steps, log_path):
    self._desc = desc
    self._bar = None
    if on_terminal() and total_steps:
      self._bar = tqdm(total=total_steps, desc=desc, file=sys.stdout, dynamic_ncols=True,
                       leave=True)
    else:
      say(f'{desc}: running (log: {log_path})')

  def update(self, steps_done):
    """Moves the bar to `steps_done` (a count that only grows)."""
    if self._bar is not None and steps_done > self._bar.n:
      self._bar.update(steps_done - self._bar.n)

  def close(self, exit_code, seconds):
    outcome = 'done' if exit_code == 0 else f'stopped with exit code {exit_code}'
    if self._bar is not None:
      self._bar.set_postfix_str(f'{outcome} in {seconds:.1f}s', refresh=False)
      self._bar.close()
    else:
      say(f'{self._desc}: {outcome} in {seconds:.1f}s')
