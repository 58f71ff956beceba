"""tf1compat: a legacy TF1 graph-mode training loop, its TF2 port, and a parity harness.

Importing the package or any of its modules sets up nothing: the graph runner's entry
point (`bin/train_graph`) does the process-wide TF1 setup before importing TensorFlow.
"""

__version__ = '0.1.0'
