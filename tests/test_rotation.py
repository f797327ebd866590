"""Haar rotations on SO(k) and their fractional powers (ndjax/rotation.py)."""
import jax
import numpy as np
import pytest
import scipy.stats

from ndjax import rotation

DRAWS = 2000


def _angle(q):
  """Rotation angle in [0, pi] of a 3x3 rotation: tr Q = 1 + 2 cos(theta)."""
  return np.arccos(np.clip((np.trace(q) - 1.0) / 2.0, -1.0, 1.0))


def _haar_so3_angle_cdf(theta):
  """CDF of theta under Haar on SO(3), density (1 - cos theta) / pi on [0, pi]."""
  return (theta - np.sin(theta)) / np.pi


def _angle_ks_pvalue(sampler):
  return scipy.stats.kstest([_angle(sampler(s, 3)) for s in range(DRAWS)],
                            _haar_so3_angle_cdf).pvalue


def _gaussian(seed, k):
  return np.asarray(jax.random.normal(jax.random.key(seed), (k, k)), np.float64)


def _qr_without_sign_fix(seed, k):
  """The classic mistake: Householder QR's Q as is, det forced to +1; not Haar."""
  q, _ = np.linalg.qr(_gaussian(seed, k))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def _normalised_gaussian(seed, k):
  """Another mistake: unit-norm Gaussian columns, never orthogonalised."""
  g = _gaussian(seed, k)
  return g / np.linalg.norm(g, axis=0)


@pytest.fixture(scope='module')
def q512():
  """conv5's width in VGG16; drawn once because the draw and the Schur form cost seconds here."""
  return rotation.random_rotation(0, 512)


def _det_tolerance(k):
  """LU's det of an exactly orthogonal matrix is still a product of k rounded pivots."""
  return 1e-14 * k


@pytest.mark.parametrize('k', [2, 3, 5, 64])
def test_random_rotation_is_in_so_k(k):
  q = rotation.random_rotation(7, k)
  assert q.shape == (k, k) and q.dtype == np.float64
  assert rotation.orthogonality_error(q) < 1e-12
  assert abs(rotation.determinant(q) - 1.0) < _det_tolerance(k)


def test_random_rotation_is_in_so_512(q512):
  assert q512.shape == (512, 512) and q512.dtype == np.float64
  assert rotation.orthogonality_error(q512) < 1e-12
  assert abs(rotation.determinant(q512) - 1.0) < _det_tolerance(512)


def test_random_rotation_is_deterministic_per_seed():
  np.testing.assert_array_equal(rotation.random_rotation(3, 16), rotation.random_rotation(3, 16))
  assert np.abs(rotation.random_rotation(3, 16) - rotation.random_rotation(4, 16)).max() > 0.1


def test_random_rotation_rejects_empty():
  with pytest.raises(ValueError, match='k >= 1'):
    rotation.random_rotation(0, 0)


def test_haar_angle_distribution_so3():
  assert _angle_ks_pvalue(rotation.random_rotation) > 1e-3


@pytest.mark.parametrize('wrong', [_qr_without_sign_fix, _normalised_gaussian])
def test_angle_ks_test_rejects_wrong_samplers(wrong):
  assert _angle_ks_pvalue(wrong) < 1e-6


def test_trace_moments_so10():
  """Haar on SO(k), k >= 3: E tr Q = 0 and E (tr Q)^2 = 1 (Diaconis-Shahshahani)."""
  tr = np.array([np.trace(rotation.random_rotation(s, 10)) for s in range(DRAWS)])
  se1 = tr.std() / np.sqrt(DRAWS)
  se2 = (tr ** 2).std() / np.sqrt(DRAWS)
  assert abs(tr.mean()) < 5 * se1
  assert abs((tr ** 2).mean() - 1.0) < 5 * se2


def test_endpoints_are_exact():
  q = rotation.random_rotation(1, 12)
  np.testing.assert_array_equal(rotation.fractional_power(q, 0.0), np.eye(12))
  np.testing.assert_array_equal(rotation.fractional_power(q, 1.0), q)


@pytest.mark.parametrize('a, b', [(0.3, 0.4), (0.5, 0.5), (0.7, 0.8), (1.0, 0.25), (-0.3, 0.6),
                                  (1.5, 1.5)])
def test_powers_compose(a, b):
  q = rotation.random_rotation(2, 64)
  qa, qb = rotation.fractional_power(q, a), rotation.fractional_power(q, b)
  assert np.abs(qa @ qb - rotation.fractional_power(q, a + b)).max() < 1e-9


@pytest.mark.parametrize('alpha', [0.1, 0.5, 0.9, 1.7])
def test_power_stays_in_so_k(alpha):
  qa = rotation.fractional_power(rotation.random_rotation(5, 33), alpha)
  assert rotation.orthogonality_error(qa) < 1e-12
  assert abs(rotation.determinant(qa) - 1.0) < 1e-12


def test_power_is_not_trivial():
  """Q^1/2 lies strictly between I and Q, not at either end."""
  q = rotation.random_rotation(6, 20)
  half = rotation.fractional_power(q, 0.5)
  assert np.abs(half - np.eye(20)).max() > 0.1 and np.abs(half - q).max() > 0.1


def test_square_root_k512(q512):
  half = rotation.fractional_power(q512, 0.5)
  assert rotation.orthogonality_error(half) < 1e-12
  assert abs(rotation.determinant(half) - 1.0) < _det_tolerance(512)
  assert np.abs(half @ half - q512).max() < 1e-12


def test_minus_one_pair():
  q = np.diag([-1.0, -1.0, 1.0])
  half = rotation.fractional_power(q, 0.5)
  assert np.isrealobj(half) and np.all(np.isfinite(half))
  np.testing.assert_allclose(half @ half, q, atol=1e-14)
  assert rotation.orthogonality_error(half) < 1e-14
  assert abs(rotation.determinant(half) - 1.0) < 1e-14
  assert half[2, 2] == pytest.approx(1.0) and abs(half[0, 0]) < 1e-14   # a quarter turn in (x, y)


@pytest.mark.parametrize('alpha', [0.25, 0.5, 1.3])
def test_minus_one_eigenspaces_in_a_random_basis(alpha):
  """Four -1 eigenvalues and a generic rotation block, hidden by a change of basis."""
  base = np.eye(7)
  base[:4, :4] = -np.eye(4)
  c, s = np.cos(0.8), np.sin(0.8)
  base[4:6, 4:6] = [[c, -s], [s, c]]
  u = rotation.random_rotation(9, 7)
  q = u @ base @ u.T
  qa = rotation.fractional_power(q, alpha)
  assert rotation.orthogonality_error(qa) < 1e-12
  assert abs(rotation.determinant(qa) - 1.0) < 1e-12
  q1 = rotation.fractional_power(q, 1.0 - alpha)
  assert np.abs(qa @ q1 - q).max() < 1e-9


def test_identity_stays_identity():
  np.testing.assert_allclose(rotation.fractional_power(np.eye(5), 0.37), np.eye(5), atol=1e-15)


@pytest.mark.parametrize('bad, message', [
    (2.0 * np.eye(3), 'not orthogonal'),
    (np.random.default_rng(0).normal(size=(4, 4)), 'not orthogonal'),
    (np.diag([-1.0, 1.0, 1.0]), 'reflection'),
    (np.ones((2, 3)), 'square'),
    (np.full((2, 2), np.nan), 'non-finite'),
])
def test_rejects_non_rotations(bad, message):
  with pytest.raises(ValueError, match=message):
    rotation.fractional_power(bad, 0.5)


def test_rejects_non_finite_alpha():
  with pytest.raises(ValueError, match='finite alpha'):
    rotation.fractional_power(np.eye(3), float('nan'))
