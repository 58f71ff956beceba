"""The run-directory contract, without TensorFlow or absl: what a run writes (run_files,
runlog, the recorder for a team's own loop), the config it records, the weights it starts
from (weight maps, team weights, the control's one-ulp start), how it writes (atomically,
only where folders allows) and how it fails (errors' exit codes, the signal catcher).

Imports nothing of tf1compat outside this wing, and only the standard library and numpy:
recorder/setup.py installs exactly this wing for a team's loop on Python 3.7 and up.
"""
