"""TensorBoard event files written without TensorFlow: the comparison's own series.

check_parity's output folder is a TensorBoard log directory: each runner's run
directory holds its own event file (train/*, epoch/*), and `comparison/*` what a
person looks at to judge the pair: each port's step-wise divergence from the legacy
run, the control's envelope and the limit, overlaid on one chart. Uses TensorBoard's
protos and our TFRecord framing, so the TensorFlow-free report can write it.
"""

import os
import socket
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2

from tf1compat.data import tfrecord
from tf1compat.judge import calibration

COMPARISON_DIR = 'comparison'
_EVENTS_PREFIX = 'events.out.tfevents.'


class ScalarWriter:
  """Appends scalar events to one new event file in `folder`."""

  def __init__(self, folder):
    os.makedirs(folder, exist_ok=True)
    self.path = os.path.join(
        folder, f'{_EVENTS_PREFIX}{int(time.time())}.{socket.gethostname()}.{os.getpid()}')
    self._file = open(self.path, 'wb')
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event):
    self._file.write(tfrecord.frame(event.SerializeToString()))

  def scalar(self, tag, step, value):
    """One point of the series `tag`."""
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, simple_value=float(value))])
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def close(self):
    self._file.close()


def _replace_writer(folder):
  """A ScalarWriter for `folder`, after removing the event files an earlier report left."""
  if os.path.isdir(folder):
    for name in os.listdir(folder):
      if name.startswith(_EVENTS_PREFIX):
        os.remove(os.path.join(folder, name))
  return ScalarWriter(folder)


def _write_series(folder, loss, weights):
  """divergence/loss ({step: value}) and divergence/weights into a run of their own."""
  writer = _replace_writer(folder)
  try:
    for step, value in loss:
      writer.scalar('divergence/loss', step, value)
    for step, value in weights:
      writer.scalar('divergence/weights', step, value)
  finally:
    writer.close()
  return writer.path


def write_comparison(report, output_dir):
  """Writes the comparison series of a parity report as TensorBoard runs.

  Each is a run under output_dir/comparison/ with the tags divergence/loss (relative
  batch-loss difference from the reference, every step) and divergence/weights (the
  largest per-variable difference at each snapshot), so TensorBoard overlays them on
  one chart each: one run per compared runner (comparison/eager, comparison/fit), and
  with a control comparison/control (its envelope) and comparison/limit
  (envelope_multiple times the floored envelope). Earlier files are replaced. Returns
  the paths written.
  """
  base = os.path.join(output_dir, COMPARISON_DIR)
  paths = []
  for pair in report['pairs']:
    loss = enumerate(pair['step_tier']['whole_run_relative_difference'], start=1)
    weights = [(e['step'], e['max_relative_difference'])
               for e in pair['weight_tier']['per_step']]
    name = os.path.basename(os.path.normpath(pair['other']))
    paths.append(_write_series(os.path.join(base, name), loss, weights))
  envelope = report.get('calibration')
  if envelope:
    multiple = report['tolerances']['envelope_multiple']
    loss = list(enumerate(envelope['loss'], start=1))
    weights = sorted((int(s), v) for s, v in envelope['weights'].items())

    def limit(series):
      return [(s, multiple * max(v, calibration.ROUNDING_FLOOR)) for s, v in series]

    paths.append(_write_series(os.path.join(base, 'control'), loss, weights))
    paths.append(_write_series(os.path.join(base, 'limit'), limit(loss), limit(weights)))
  return paths
