"""What a runner checks before it imports TensorFlow.

Where the run would write (--model_dir, or the --save_init_weights file), the data folder's
files and dataset.json, and that --init_weights loads. A mistake in any of them ends the run
with its one line before TensorFlow starts, which alone takes about 2.5 CPU-seconds of a
2-core EPYC. TensorFlow-free: the runners' commands call `check` before their process setup.
graph_loop.run and eager_loop.run call only `check_paths` first: the data folder and the
initial weights they check again anyway (data_check, the backends' load), together with what
needs TensorFlow (every record, the model, the device).
"""

from __future__ import annotations

import os

from tf1compat import data_folder
from tf1compat import errors
from tf1compat import folders
from tf1compat import runlog


def check(cfg):
  """Every check here on a runner's config (config.GraphConfig or config.EagerConfig);
  raises errors.UsageError (data_folder.DataError for the data) at the first that fails."""
  check_paths(cfg)
  if cfg.data_dir:
    data_folder.find_files(cfg.data_dir, 'train')
    data_folder.dataset_info(cfg.data_dir, cfg.num_classes, cfg.allow_num_classes_mismatch)
  if cfg.init_weights:
    runlog.load_weights(cfg.init_weights)


def check_paths(cfg):
  """Refuses what the run would write where tf1compat must not (folders.check_output):
  --model_dir (with --overwrite: one holding files no run wrote, which it would not
  delete), or --save_init_weights when given (then no run directory is written),
  which must name a .npz file, never the --init_weights file, and an existing file only
  with --overwrite.

  Checked first, before anything is read or written.
  """
  if not cfg.save_init_weights:
    folders.check_output(cfg.model_dir, '--model_dir', folder=True, data_dirs=[cfg.data_dir])
    if cfg.overwrite:
      # RunLog.open checks it again under the folder's lock.
      runlog.refuse_foreign(cfg.model_dir, overwrite=True)
    return
  path = cfg.save_init_weights
  if not path.endswith('.npz'):
    raise errors.UsageError(f'--save_init_weights={path}: name a .npz file (numpy writes that '
                            'format only)')
  if cfg.init_weights and os.path.exists(path) and os.path.samefile(path, cfg.init_weights):
    raise errors.UsageError(f'--save_init_weights={path} is the --init_weights file, which is '
                            'never replaced; choose another path')
  folders.check_output(path, '--save_init_weights', folder=False, data_dirs=[cfg.data_dir],
                       overwrite=cfg.overwrite)
