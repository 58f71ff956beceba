"""Training: the driver behind one interface (training.Backend, training.train), its twins
graph/ (the legacy TF1 loop), eager/ (the TF2 port) and jax/ (the port on Keras 3's JAX
backend), model.fit on either Keras 3 backend, the models, TF1's kernels under Keras 3,
checkpoints, distribution, and the runners' replay mode.

May import data/, runtime/ and runs/.
"""
