"""The port on Keras 3's JAX backend (train_eager --backend=jax): a `jax.jit` custom loop
(backend), what it computes on JAX (model_fn), the replay of a step (replay); model.fit is
train/fit.py's. Twin of train/eager/: the same file names and, for the same steps, the same
function names. Imported only in a process whose Keras runs on JAX (process.use_keras3).
"""
