"""Upsampling: `center` equals torch's bilinear (align_corners=False); `rf` equals hand geometry."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax.models import convstack, geometry
from ndjax import upsample


def _torch_bilinear(x: np.ndarray, out_hw) -> np.ndarray:
  torch = pytest.importorskip('torch')
  t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  y = torch.nn.functional.interpolate(t, size=out_hw, mode='bilinear', align_corners=False,
                                      antialias=False)
  return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('map_hw,image_hw,mask_hw', [
    ((14, 14), (224, 224), (112, 112)),     # VGG16 conv5_3 on broden1_224
    ((13, 13), (227, 227), (113, 113)),     # AlexNet conv5 on broden1_227
    ((224, 224), (224, 224), (112, 112)),   # conv1 at full size: shrinking, no antialias
    ((7, 10), (200, 300), (50, 75)),        # non-square, odd sizes
    ((3, 1), (30, 10), (17, 9)),
])
def test_center_equals_torch(map_hw, image_hw, mask_hw):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *map_hw, 5)).astype(np.float32)
  wy, wx = upsample.matrices('center', map_hw, image_hw, mask_hw, None)
  got = np.asarray(upsample.upsample(jnp.asarray(x), jnp.asarray(wy), jnp.asarray(wx)))
  ref = _torch_bilinear(x, mask_hw)
  np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)


def test_rf_geometry_by_hand_unpadded_strided():
  # conv k5 s2 p0, then conv k3 s2 p0: unit j of layer 1 covers input [2j, 2j+4] -> centre
  # 2j + 2.5; unit j of layer 2 covers layer-1 units [2j, 2j+2] -> centre of layer-1 unit 2j+1
  # = 2(2j+1) + 2.5 = 4j + 4.5.
  ops = (convstack.Op('conv', 4, 5, 2, 0), convstack.Op('relu'), convstack.Op('conv', 4, 3, 2, 0))
  assert geometry.rf_centres(ops, 0) == (2.5, 2.0)
  assert geometry.rf_centres(ops, 2) == (4.5, 4.0)
  # AlexNet conv1: k11 s4 p2 -> centre 4j - 2 + 5.5 = 4j + 3.5
  assert geometry.rf_centres(convstack.ALEXNET_OPS, 0) == (3.5, 4.0)


def test_rf_upsampling_by_hand_differs_from_center():
  ops = (convstack.Op('conv', 4, 5, 2, 0), convstack.Op('relu'), convstack.Op('conv', 4, 3, 2, 0))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(0))
  image, mask = 40, 20                          # map: (40-5)//2+1 = 18, (18-3)//2+1 = 8
  h = 8
  origin, spacing = model.rf_geometry('features.2')
  wy, _ = upsample.matrices('rf', (h, h), (image, image), (mask, mask), (origin, spacing))
  x = np.random.default_rng(3).standard_normal(h)
  got = wy.astype(np.float64) @ x
  for m in range(mask):
    # mask pixel m's centre (m + 0.5) is image coordinate (m + 0.5) * 2; unit centres 4j + 4.5
    pos = ((m + 0.5) * image / mask - 4.5) / 4.0
    pos = min(max(pos, 0.0), h - 1)
    lo = int(np.floor(pos)); hi = min(lo + 1, h - 1); f = pos - lo
    assert got[m] == pytest.approx((1 - f) * x[lo] + f * x[hi], abs=1e-6)
  wc, _ = upsample.matrices('center', (h, h), (image, image), (mask, mask), None)
  assert np.abs(wc - wy).max() > 0.1          # the two modes really differ here


def test_rf_equals_center_on_vgg16():
  model = convstack.vgg16(rngs=nnx.Rngs(0))
  for layer, size in [('conv5_3', 14), ('conv4_3', 28), ('pool5', 7)]:
    rf = model.rf_geometry(layer)
    a = upsample.matrices('rf', (size, size), (224, 224), (112, 112), rf)
    b = upsample.matrices('center', (size, size), (224, 224), (112, 112), None)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_bilinear_never_exceeds_input_max():
  x = np.random.default_rng(0).standard_normal((1, 5, 6, 3)).astype(np.float32)
  wy, wx = upsample.matrices('rf', (5, 6), (80, 96), (40, 48), (9.0, 16.0))
  y = np.asarray(upsample.upsample(jnp.asarray(x), jnp.asarray(wy), jnp.asarray(wx)))
  assert (y.max(axis=(1, 2)) <= x.max(axis=(1, 2)) + 1e-6).all()


@pytest.mark.parametrize('mode,map_hw,image_hw,mask_hw,rf', [
    ('center', (14, 14), (224, 224), (112, 112), None),       # VGG16 conv5_3
    ('center', (224, 224), (224, 224), (112, 112), None),     # conv1_2: larger than the mask
    ('rf', (13, 13), (227, 227), (113, 113), (15.5, 16.0)),   # AlexNet-like conv5 grid
    ('rf', (5, 6), (80, 96), (40, 48), (9.0, 16.0)),
    ('center', (7, 9), (50, 70), (25, 35), None),
])
def test_two_taps_equal_the_dense_matrices(mode, map_hw, image_hw, mask_hw, rf):
  """The pipeline's gather form reads the same two sources with the same weights as the dense
  bilinear matrices, and thresholds to the same masks (random maps and a plateau at T)."""
  wy, wx = upsample.matrices(mode, map_hw, image_hw, mask_hw, rf)
  for w in (wy, wx):
    lo, hi, w_lo, w_hi = upsample.two_taps(w)
    rebuilt = np.zeros_like(w)
    rows = np.arange(len(w))
    np.add.at(rebuilt, (rows, lo), w_lo)
    np.add.at(rebuilt, (rows, hi), w_hi)
    np.testing.assert_array_equal(rebuilt, w)
  rng = np.random.default_rng(0)
  acts = rng.standard_normal((3, *map_hw, 6)).astype(np.float32)
  acts[2] = np.float32(0.7)                                   # a plateau exactly at T
  acts[2, 1, 1] = 2.0
  thr = np.full(6, 0.7, np.float32)
  dense = upsample.threshold_masks(jnp.asarray(acts), jnp.asarray(thr), jnp.asarray(wy), jnp.asarray(wx))
  taps = tuple(tuple(jnp.asarray(a) for a in upsample.two_taps(m)) for m in (wy, wx))
  fast = upsample.threshold_masks(jnp.asarray(acts), jnp.asarray(thr), *taps)
  np.testing.assert_array_equal(np.asarray(fast), np.asarray(dense))
  assert np.asarray(fast)[2].sum() > 0 and np.asarray(fast)[:2].any()


def test_two_taps_refuses_a_matrix_that_is_not_bilinear():
  with pytest.raises(ValueError, match='bilinear'):
    upsample.two_taps(np.ones((3, 4), np.float32))
