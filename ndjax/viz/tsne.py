"""t-SNE of a layer's pooled features over the probe set, each image drawn at its embedded point.

The features are each image's globally average-pooled layer activations (`activations.pooled`,
the linear probes' features too); scikit-learn's Barnes-Hut t-SNE embeds them (cosine-like: rows scaled to unit norm) in
2-D (PCA initialisation, a fixed seed: the same picture every run). Images that the layer finds
alike land together, so the plot shows what the layer groups, as the lecture's AlexNet-fc7 maps do.
"""
from __future__ import annotations

import numpy as np

from ndjax.viz import common

THUMB_PX = 40


def embed(features: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
  """(N, K) features -> (N, 2) t-SNE coordinates. The perplexity is capped below N / 3 (sklearn
  requires perplexity < N)."""
  try:
    from sklearn.manifold import TSNE
  except ImportError:
    raise common.VizError("t-SNE needs scikit-learn: pip install 'ndjax[viz]'") from None
  n = len(features)
  if n < 3:
    raise common.VizError(f't-SNE needs at least 3 images, got {n}')
  perplexity = min(perplexity, max(1.0, (n - 1) / 3))
  x = np.asarray(features, np.float64)
  x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)     # compare directions, not scale
  return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed,
              learning_rate='auto').fit_transform(x)


def figure(points: np.ndarray, thumbs: list[np.ndarray], title: str, size: float = 11.0):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.offsetbox import AnnotationBbox, OffsetImage
  fig, ax = plt.subplots(figsize=(size, size))
  ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0)
  for (x, y), thumb in zip(points, thumbs):
    ax.add_artist(AnnotationBbox(OffsetImage(thumb, zoom=0.6), (x, y), frameon=False, pad=0))
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return fig


def thumbnail(image: np.ndarray, px: int = THUMB_PX) -> np.ndarray:
  from PIL import Image
  im = Image.fromarray(image)
  im.thumbnail((px, px), Image.Resampling.BILINEAR)
  return np.asarray(im)


def main(ctx: common.Context) -> common.Output:
  """CLI 'tsne': the first --probe_images images of the probe set (the --results folder's, else
  the built-in one) embedded from --layer's pooled features."""
  from ndjax import activations, api
  if ctx.results:
    from ndjax import results as results_lib
    from ndjax.viz import patches
    ds = patches.open_probe(results_lib.load(ctx.results[0]))
  else:
    ds = api.open_probe()
  n = min(ctx.options.probe_images, len(ds.records))
  features = activations.pooled(ctx.net.module, ds, ctx.layer, ctx.options.batch_size,
                                progress=True, indices=range(n))
  points = embed(features, ctx.options.perplexity, ctx.options.seed)
  thumbs = [thumbnail(ds.load_image(i)) for i in range(n)]
  title = (f't-SNE of {ctx.model} {ctx.layer} (global-average-pooled, {features.shape[1]} units) '
           f'over {n} probe images; perplexity {min(ctx.options.perplexity, (n - 1) / 3):g}')
  return common.Output(figure(points, thumbs, title),
                       {'points': points, 'features': features, 'images': np.arange(n)},
                       [f'embedded {n} images from {features.shape[1]}-d {ctx.layer} features'])
