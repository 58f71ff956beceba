"""The verdict: check_parity's runner jobs and their run (runner_jobs, harness), the tiers
and their calibration, the frameworks' own differences, the diagnosis against the
catalogued pitfalls, the localization of a FAIL and the replays it rests on, the report
and its TensorBoard events, the false-alarm and settings matrices, and the legacy
TensorFlow 1.15 environment.

May import train/, data/, runtime/ and runs/.
"""
