"""The models both runners build with whichever Keras they run: the seed's ConvNet,
resnet_small, a team's own builder (plugins), and what the runners read off any of them
(keras_facts).
"""
