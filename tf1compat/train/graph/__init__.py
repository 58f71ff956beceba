"""The legacy runner: a TF1 graph and its Session (backend), what the graph computes
(model_fn) and the replay of a step (replay). Twin of train/eager/: the same file names
and, for the same steps, the same function names.
"""
