"""The CNN-visualisation toolbox: one module per method, each a pure function over (net, x)
returning arrays, with its figure drawn at the edge; `python -m ndjax.viz <method>` runs them.

Unit-based methods (top patches, deconvnet, guided backprop, feature visualisation, DeepDream,
feature inversion, t-SNE) work on every zoo model; class-based ones (occlusion, saliency, class
models, CAM, Grad-CAM) need a classifier head (e.g. mobilenet_v2 --weights=imagenet).
"""
