"""t-SNE: the pooled features are the layer's spatial means (brute force), and the embedding keeps
planted clusters apart."""
from __future__ import annotations

import types

import numpy as np
import pytest

from ndjax import activations, models
from ndjax.viz import tsne
from tests.conftest import photo_like_images

pytest.importorskip('sklearn')


def test_pooled_features_are_the_spatial_means_of_the_layer():
  model = models.build('alexnet', seed=0)
  images = [*photo_like_images(3, 64, seed=1), *photo_like_images(2, 80, seed=2)]  # two sizes
  ds = types.SimpleNamespace(records=list(range(5)), load_image=lambda i: images[i])
  ours = activations.pooled(model, ds, 'conv3', batch_size=2, progress=False)
  by_hand = np.stack([np.asarray(model(im[None], ['conv3'])['conv3'], np.float64)[0].mean((0, 1))
                      for im in images])
  np.testing.assert_allclose(ours, by_hand, rtol=1e-5, atol=1e-6 * np.abs(by_hand).max())
  some = activations.pooled(model, ds, 'conv3', progress=False, indices=[4, 0])
  np.testing.assert_allclose(some, by_hand[[4, 0]], rtol=1e-5, atol=1e-6 * np.abs(by_hand).max())


def test_embedding_keeps_planted_clusters_apart_and_is_seeded():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 1, (3, 64))
  labels = np.repeat(np.arange(3), 30)
  features = np.abs(centres[labels] + 0.05 * rng.normal(0, 1, (90, 64)))
  points = tsne.embed(features, perplexity=10, seed=0)
  assert points.shape == (90, 2)
  d = np.linalg.norm(points[:, None] - points[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  neighbours = np.argsort(d, axis=1)[:, :5]
  assert (labels[neighbours] == labels[:, None]).mean() == 1.0     # every 5-NN in its cluster
  np.testing.assert_array_equal(points, tsne.embed(features, perplexity=10, seed=0))
  small = tsne.embed(features[:9], perplexity=30, seed=0)           # perplexity capped below N
  assert small.shape == (9, 2)
