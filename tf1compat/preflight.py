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
  """Refuses what the run would write among the user's data, in the dataset cache or in
  the package (folders.check_placement): --model_dir, or --save_init_weights when given
  (then no run directory is written), which must not replace the --init_weights file.

  Checked first, before anything is read or written.
  """
  if not cfg.save_init_weights:
    folders.check_placement(cfg.model_dir, '--model_dir', [cfg.data_dir])
    return
  path = cfg.save_init_weights
  folders.check_placement(path, '--save_init_weights', [cfg.data_dir])
  if os.path.isdir(path):
    raise errors.UsageError(f'--save_init_weights={path} is a folder; name the .npz file to write')
  if cfg.init_weights and os.path.exists(path) and os.path.samefile(path, cfg.init_weights):
    raise errors.UsageError(f'--save_init_weights={path} is the --init_weights file, which is '
                            'never replaced; choose another path')
