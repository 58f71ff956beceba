"""Array by array, whether two .npz files agree: python compare_npz.py A.npz B.npz"""

import sys

import numpy as np

with np.load(sys.argv[1]) as a, np.load(sys.argv[2]) as b:
  for key in a.files:
    x, y = a[key].astype(np.float64), b[key].astype(np.float64)
    scale = max(np.linalg.norm(x), np.linalg.norm(y), 1e-30)
    same = 'identical' if np.array_equal(a[key], b[key]) else 'differs'
    print(f'{key:32s} {same:9s} ||a-b||/||a|| {np.linalg.norm(x - y) / scale:.2e}  '
          f'max |a-b| {np.abs(x - y).max():.2e}')
