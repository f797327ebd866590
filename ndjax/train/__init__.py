"""Training the paper's network variants with optax, checkpointed and snapshotted with Orbax.

In the style of flax's examples/imagenet: `main.py` is the absl glue, `train.py` the jit-compiled
train step and loop, `input_pipeline.py` the data, `configs/` one Python file per run. Snapshots at
log-spaced steps are ndjax weight checkpoints, so the dissection loads them like any other weights.
The engine (`ndjax/`) never imports this package.
"""
