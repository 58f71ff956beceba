"""What a runner checks before it imports TensorFlow.

Where the run would write (--model_dir, or the --save_init_weights file), the data folder's
files and dataset.json, that the shuffle buffer and a batch fit in memory, and that
--init_weights loads. A mistake in any of them ends the run
with its one line before TensorFlow starts, which alone takes about 2.5 CPU-seconds of a
2-core EPYC. TensorFlow-free: the runners' commands call `check` before their process setup.
The backends' `run` (train/graph, train/eager) call only `check_paths` first: the data
folder and the initial weights they check again anyway (data_check, the backends' load),
together with what needs TensorFlow (every record, the model, the device).
"""

from __future__ import annotations

import os

from tf1compat.data import data_folder
from tf1compat.data import tfrecord
from tf1compat.runs import config
from tf1compat.runs import errors
from tf1compat.runs import folders
from tf1compat.runs import run_files

_FLOAT32_BYTES = 4


def check(cfg):
  """Every check here on a runner's config (config.GraphConfig or config.EagerConfig);
  raises errors.UsageError (data_folder.DataError for the data) at the first that fails."""
  check_paths(cfg)
  info = {}
  if cfg.data_dir:
    data_folder.find_files(cfg.data_dir, 'train')
    info = data_folder.dataset_info(cfg.data_dir, cfg.num_classes,
                                    cfg.allow_num_classes_mismatch)
  check_memory(cfg, cfg.num_classes or info.get('num_classes', config.CALTECH256_CLASSES))
  if cfg.init_weights:
    run_files.load_weights(cfg.init_weights)


def check_memory(cfg, num_classes):
  """Refuses a run whose record shuffle buffer and one input batch alone do not fit in the
  memory this machine has available (errors.UsageError naming the flags and the sizes).

  The buffer holds min(--shuffle_buffer, training records) serialized records (the
  pipeline caps it at the record count: data_check.DataSpec.shuffle_buffer), a batch
  --batch_size float32 images and one-hot labels. The model's activations come on top,
  so this refuses only what cannot run at all: a buffer of 1e8 records of a large dataset
  grew to 24 GB before the kernel killed the run, the host without memory meanwhile.
  """
  buffer_bytes = 0
  if cfg.data_dir:
    files = data_folder.find_files(cfg.data_dir, 'train')
    records = sum(1 for path in files for record in tfrecord.walk(path, read_data=False)
                  if not record.damage)
    if records:
      held = min(cfg.shuffle_buffer, records)
      buffer_bytes = sum(os.path.getsize(path) for path in files) * held // records
  batch_bytes = cfg.batch_size * (cfg.image_size ** 2 * 3 + num_classes) * _FLOAT32_BYTES
  available = _available_memory()
  if available is not None and buffer_bytes + batch_bytes > available:
    raise errors.UsageError(
        f'--shuffle_buffer={cfg.shuffle_buffer} holds {_gb(buffer_bytes)} of these records and '
        f'one batch (--batch_size={cfg.batch_size}, --image_size={cfg.image_size}, '
        f'{num_classes} classes) {_gb(batch_bytes)}: more than the {_gb(available)} of memory '
        'this machine has available; lower --shuffle_buffer or --batch_size/--image_size')


def _gb(size):
  return f'{size / 2**30:,.1f} GiB' if size >= 2**30 else f'{size / 2**20:,.1f} MiB'


def _available_memory():
  """Bytes of memory the kernel says a new process can use (MemAvailable), else the
  machine's physical memory, else None (not Linux)."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (OSError, ValueError):
    return None


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
      run_files.refuse_foreign(cfg.model_dir, overwrite=True)
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
