"""bin/benchmark: the measurements (benchmark), their workers, one per process (workers),
the figures and targets (benchmark_figures) and the device's roofline.

May import train/, data/, runtime/ and runs/; the judge and the benchmark import neither
the other.
"""
