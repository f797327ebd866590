"""The streaming threshold equals numpy.quantile over all values, bit for bit."""
import jax.numpy as jnp
import numpy as np
import pytest

from ndjax import thresholds


@pytest.mark.parametrize('seed', range(6))
def test_streaming_equals_numpy_quantile(seed):
  rng = np.random.default_rng(seed)
  for _ in range(40):
    b, h, w, k = rng.integers(1, 6), rng.integers(1, 6), rng.integers(1, 6), int(rng.integers(1, 5))
    nb = int(rng.integers(1, 5))
    tau = float(rng.choice([0.005, 0.01, 0.2, 0.5, 0.9, 0.999, 1e-4, rng.uniform(0, 1)]))
    batches = [rng.standard_normal((b, h, w, k)).astype(np.float32) for _ in range(nb)]
    if seed % 2:           # post-ReLU maps: many exact zeros, ties at the threshold
      batches = [np.maximum(x, 0) for x in batches]
    n = nb * b * h * w
    stream = thresholds.StreamingThreshold(k, n, tau)
    for x in batches:
      stream.update(jnp.asarray(x))
    got = stream.result()
    ref = np.quantile(np.concatenate([x.reshape(-1, k) for x in batches]), 1 - tau, axis=0)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_buffer_is_small_and_padding_is_ignored():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((50, 14, 14, 8)).astype(np.float32)
  tau = 0.005
  n = 48 * 14 * 14                     # the last two images are padding
  stream = thresholds.StreamingThreshold(8, x.shape[0] * 14 * 14, tau)
  assert stream.m < n / 50             # a top-m buffer, never all values
  valid = np.arange(50) < 48
  x[~valid] = 1e6                      # padding values must not leak into the buffer
  for s in range(0, 50, 16):
    stream.update(jnp.asarray(x[s:s + 16]), valid[s:s + 16])
  ref = np.quantile(x[:48].reshape(-1, 8), 1 - tau, axis=0)
  np.testing.assert_array_equal(stream.result(), ref)


def test_buffer_size_covers_both_order_statistics():
  for n in [1, 2, 3, 10, 199, 1000, 196000, 12_000_000]:
    for tau in [1e-5, 0.005, 0.01, 0.3, 0.99]:
      m = thresholds.buffer_size(n, tau)
      v = (n - 1) * (1 - tau)
      assert n - 1 - np.floor(v) < m or m == n         # prev position within the top m
      assert m <= n


def test_tau_out_of_range():
  with pytest.raises(ValueError):
    thresholds.StreamingThreshold(1, 10, 0.0)
  with pytest.raises(ValueError):
    thresholds.StreamingThreshold(1, 10, 1.0)
