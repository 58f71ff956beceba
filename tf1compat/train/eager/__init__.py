"""The TF2 port: a `tf.function` custom loop (backend), what it computes in Keras 3
(model_fn), the replay of a step (replay) and Keras model.fit on the same backend (fit).
Twin of train/graph/: the same file names and, for the same steps, the same function names.
"""
