"""Both exact selections equal numpy.quantile over all values, bit for bit: the one-pass top-m set
(floor cut + partition) and the two-pass, fixed-memory histogram selection."""
import jax.numpy as jnp
import numpy as np
import pytest

from ndjax import thresholds

KINDS = [thresholds.StreamingThreshold, thresholds.HistogramThreshold]


def select(kind, batches, k, n, tau, valids=None):
  """Run one selection over `batches` ((B, h, w, k) arrays) the way the pipeline does."""
  valids = valids or [None] * len(batches)
  stream = kind(k, n, tau)
  for x, v in zip(batches, valids):
    stream.update(jnp.asarray(x), v)
  if stream.needs_refine:
    stream.start_refine()
    for x, v in zip(reversed(batches), reversed(valids)):      # pass B in any order
      stream.refine(x, v)
  return stream


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('seed', range(6))
def test_streaming_equals_numpy_quantile(kind, seed):
  rng = np.random.default_rng(seed)
  for _ in range(25):
    b, h, w, k = rng.integers(1, 6), rng.integers(1, 6), rng.integers(1, 6), int(rng.integers(1, 5))
    nb = int(rng.integers(1, 5))
    tau = float(rng.choice([0.005, 0.01, 0.2, 0.5, 0.9, 0.999, 1e-4, rng.uniform(0, 1)]))
    batches = [rng.standard_normal((b, h, w, k)).astype(np.float32) for _ in range(nb)]
    if seed % 2:           # post-ReLU maps: many exact zeros, ties at the threshold
      batches = [np.maximum(x, 0) for x in batches]
    if seed == 4:          # few distinct values: ties everywhere, negative and positive
      batches = [np.round(x * 2) / 2 for x in batches]
    n = nb * b * h * w
    got = select(kind, batches, k, n, tau).result()
    ref = np.quantile(np.concatenate([x.reshape(-1, k) for x in batches]), 1 - tau, axis=0)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize('images', [40, 160, 640])
@pytest.mark.parametrize('relu', [False, True])
def test_larger_sets_both_paths_agree_with_numpy(images, relu):
  """Many batches, so the floor cut, the pending folds and the histogram bins all get work."""
  rng = np.random.default_rng(images)
  k, tau = 6, 0.005
  # units on different scales: heavy tails, a tiny-valued unit, a constant-ish unit
  scale = np.array([1, 10, 1e-3, 1e-30, 1, 100], np.float32)
  x = (rng.standard_t(3, (images, 9, 9, k)) * scale).astype(np.float32)
  x[..., 4] = np.round(x[..., 4])
  if relu:
    x = np.maximum(x, 0)
  batches = [x[s:s + 8] for s in range(0, images, 8)]
  n = images * 81
  # one Python-float q per call: an array of q would make numpy interpolate in float64
  ref = [np.quantile(x.reshape(-1, k), 1 - t, axis=0) for t in (tau, 0.02)]
  for kind in KINDS:
    sel = select(kind, batches, k, n, (tau, 0.02))
    np.testing.assert_array_equal(sel.result(tau), ref[0])
    np.testing.assert_array_equal(sel.result(0.02), ref[1])


def test_buffer_is_small_and_padding_is_ignored():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((50, 14, 14, 8)).astype(np.float32)
  tau = 0.005
  n = 48 * 14 * 14                     # the last two images are padding
  valid = np.arange(50) < 48
  x[~valid] = 1e6                      # padding values must not leak into the buffer
  batches = [x[s:s + 16] for s in range(0, 50, 16)]
  valids = [valid[s:s + 16] for s in range(0, 50, 16)]
  ref = np.quantile(x[:48].reshape(-1, 8), 1 - tau, axis=0)
  for kind in KINDS:
    sel = select(kind, batches, 8, 50 * 14 * 14, tau, valids)
    np.testing.assert_array_equal(sel.result(), ref)
  stream = thresholds.StreamingThreshold(8, 50 * 14 * 14, tau)
  assert stream.m < n / 50             # a top-m set, never all values
  for b, v in zip(batches, valids):
    stream.update(b, v)
  np.testing.assert_array_equal(stream.buffer, -np.sort(-x[:48].reshape(-1, 8).T)[:, :stream.m])


def test_floor_cut_drops_what_cannot_enter():
  """After the set is full, a batch below every unit's floor adds nothing to keep."""
  stream = thresholds.StreamingThreshold(3, 5000, 0.01)        # m = 51 < the 100 values
  stream.update(np.full((1, 10, 10, 3), 5.0, np.float32) + np.arange(100, dtype=np.float32)
                .reshape(1, 10, 10, 1))
  stream._fold()
  assert thresholds.above_floor(np.zeros((500, 3), np.float32), stream._floor) is None
  block = thresholds.above_floor(np.array([[1000, 0, 0], [0, 0, 2000]], np.float32),
                                 stream._floor)
  np.testing.assert_array_equal(block, [[1000], [-np.inf], [2000]])


def test_float_keys_preserve_order_and_invert():
  rng = np.random.default_rng(0)
  special = np.array([-np.inf, -3e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 1.0, 3e38, np.inf],
                     np.float32)
  v = np.concatenate([special, rng.standard_normal(10_000).astype(np.float32) * 1e3,
                      rng.standard_normal(1000).astype(np.float32) * 1e-40])
  keys = thresholds.float_keys(v)
  order = np.argsort(keys, kind='stable')
  assert np.all(np.diff(v[order]) >= 0)
  np.testing.assert_array_equal(thresholds.key_floats(keys).view(np.uint32), v.view(np.uint32))


def test_histogram_memory_is_fixed():
  small = thresholds.HistogramThreshold.bytes_needed(64, 10**6, (0.005,))
  huge = thresholds.HistogramThreshold.bytes_needed(64, 3 * 10**9, (0.005,))
  assert small == huge
  assert thresholds.StreamingThreshold.bytes_needed(64, 3 * 10**9, (0.005,)) > 50 * huge


def test_buffer_size_covers_both_order_statistics():
  for n in [1, 2, 3, 10, 199, 1000, 196000, 12_000_000]:
    for tau in [1e-5, 0.005, 0.01, 0.3, 0.99]:
      m = thresholds.buffer_size(n, tau)
      v = (n - 1) * (1 - tau)
      assert n - 1 - np.floor(v) < m or m == n         # prev position within the top m
      assert m <= n


@pytest.mark.parametrize('kind', KINDS)
def test_tau_out_of_range(kind):
  with pytest.raises(ValueError):
    kind(1, 10, 0.0)
  with pytest.raises(ValueError):
    kind(1, 10, 1.0)
