"""Opt-in (pytest -m browser): TensorBoard served on 127.0.0.1 over a check_parity output
folder, its time-series page loaded in headless Chromium, a screenshot written beside
the report. Needs a chromium binary (Debian: apt-get install chromium)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import TINY_IMAGE_SIZE, run_entry

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for(port, seconds):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    with socket.socket() as s:
      if s.connect_ex(('127.0.0.1', port)) == 0:
        return True
    time.sleep(0.5)
  return False


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason='no chromium binary (apt-get install chromium)')
def test_tensorboard_shows_the_runs_overlaid(tiny_data_dir, tmp_path):
  out = tmp_path / 'check_parity'
  result = run_entry('check_parity', f'--data_dir={tiny_data_dir}', f'--output_dir={out}',
                     f'--image_size={TINY_IMAGE_SIZE}', '--batch_size=8', '--epochs=2',
                     '--steps_per_epoch=6', '--shuffle_buffer=64', '--with_fit')
  assert result.returncode == 0, result.stdout[-3000:]
  port = _free_port()
  server = subprocess.Popen(
      [sys.executable, '-m', 'tensorboard.main', f'--logdir={out}', '--host=127.0.0.1',
       f'--port={port}'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    assert _wait_for(port, 60), 'TensorBoard did not start within 60 s'
    screenshot = out / 'tensorboard.png'
    subprocess.run(
        [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
         '--window-size=1600,1200', '--virtual-time-budget=30000',
         f'--screenshot={screenshot}',
         f'http://127.0.0.1:{port}/#scalars&tagFilter=loss'],
        capture_output=True, timeout=120, check=False)
    assert screenshot.exists() and os.path.getsize(screenshot) > 20000
  finally:
    server.terminate()
    server.wait(timeout=30)
