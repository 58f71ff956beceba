"""Training: the driver behind one interface (training.Backend, training.train), its twins
graph/ (the legacy TF1 loop) and eager/ (the TF2 port and model.fit), the models, TF1's
kernels under Keras 3, checkpoints, distribution, and the runners' replay mode.

May import data/, runtime/ and runs/.
"""
