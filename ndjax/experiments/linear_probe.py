"""Discriminative power of a layer, rotated or not: linear classifiers on its pooled features.

The paper (Sec 3.2) checks that rotating conv5 does not change what the layer can tell apart:
a linear classifier on the rotated features is as accurate (51.9 % vs 51.7 %). Here:

  features  each image's globally average-pooled layer activations, (N, K); pooling is linear, so
            the rotated layer's pooled features are exactly `features @ Q`;
  targets   per image, the label of category --probe_category (default object) covering the most
            mask pixels (image-level labels of that category first); on the composite probe set
            that is the object GROUP of the largest cut-out (bird, fruit, ...), since a group label
            covers at least its members' pixels. Classes seen in fewer than --min_class_images
            images are dropped, with their images;
  split     a seeded half/half permutation of the remaining images (train / test);
  solvers   ridge regression on one-hot targets (closed form) and full-batch gradient descent on
            softmax cross-entropy from a zero init, both equivariant to rotations (an isotropic
            penalty, one global feature scale), so rotated and unrotated accuracies must agree
            to rounding: a test that the rotation is applied where it should be; and optax Adam
            from seeded random inits with shuffled minibatches, which is not equivariant (per-
            coordinate step sizes), reported as mean +- std over seeds, as the paper's SGD was.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ProbeData:
  features: np.ndarray            # (N, K) float64 pooled activations of the images kept
  targets: np.ndarray             # (N,) class index
  classes: list[str]              # class index -> label name
  images: np.ndarray              # (N,) probe-set image index
  train: np.ndarray               # bool (N,)


def pooled_features(module, ds, layer: str, batch_size: int = 8, progress: bool = True):
  """(N_images, K) float64 global average of `layer` per image (`activations.pooled`)."""
  from ndjax import activations
  return activations.pooled(module, ds, layer, batch_size, progress)


def image_targets(ds, category: str) -> np.ndarray:
  """(N_images,) global label number of each image's `category` label covering the most pixels
  (an image-level label of that category wins), 0 where there is none."""
  if category not in ds.categories:
    raise ValueError(f'--probe_category={category} is not a category of the probe set '
                     f'({", ".join(ds.categories)})')
  c = ds.categories.index(category)
  in_category = np.asarray(ds.primary) == c
  targets = np.zeros(len(ds.records), np.int64)
  for i in range(len(ds.records)):
    layers, image_labels = ds.load_labels(i)
    chosen = [int(j) for j in image_labels if in_category[j]]
    if chosen:
      targets[i] = chosen[0]
      continue
    values, counts = np.unique(layers[layers > 0], return_counts=True)
    keep = in_category[values]
    if keep.any():
      values, counts = values[keep], counts[keep]
      targets[i] = int(values[np.argmax(counts)])        # ties: the lower label number
  return targets


def make_probe_data(features: np.ndarray, targets: np.ndarray, label_names, min_images: int,
                    seed: int) -> ProbeData:
  numbers, counts = np.unique(targets[targets > 0], return_counts=True)
  kept = numbers[counts >= min_images]
  if len(kept) < 2:
    raise ValueError(f'fewer than 2 classes have >= {min_images} images: the linear probe '
                     'needs a larger probe set or a smaller --min_class_images')
  images = np.flatnonzero(np.isin(targets, kept))
  index = {int(n): k for k, n in enumerate(kept)}
  order = np.random.default_rng(seed).permutation(len(images))
  train = np.zeros(len(images), bool)
  train[order[: len(images) // 2]] = True
  return ProbeData(features[images].astype(np.float64),
                   np.array([index[int(t)] for t in targets[images]]),
                   [label_names[int(n)] for n in kept], images, train)


def _scaled(x: np.ndarray, train: np.ndarray) -> np.ndarray:
  """Centred on the training mean and divided by ONE scalar (the mean training-row norm): a
  rotation commutes with both, per-coordinate standardisation would not."""
  x = x - x[train].mean(axis=0)
  return x / max(float(np.linalg.norm(x[train], axis=1).mean()), 1e-12)


def ridge_accuracy(data: ProbeData, features: np.ndarray, penalty: float = 1e-3) -> float:
  """Test accuracy of ridge regression on one-hot targets (closed form, float64)."""
  predicted = ridge_predictions(data, features, penalty)
  return float(np.mean(predicted == data.targets[~data.train]))


def ridge_predictions(data: ProbeData, features: np.ndarray, penalty: float = 1e-3) -> np.ndarray:
  """Predicted class of every test image by ridge regression on one-hot targets."""
  x = _scaled(features, data.train)
  tr = data.train
  y = np.eye(len(data.classes))[data.targets[tr]]
  gram = x[tr].T @ x[tr]
  lam = penalty * np.trace(gram) / gram.shape[0]
  w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), x[tr].T @ (y - y.mean(axis=0)))
  return np.argmax(x[~tr] @ w + y.mean(axis=0), axis=1)


def gd_accuracy(data: ProbeData, features: np.ndarray, steps: int = 300,
                learning_rate: float = 2.0) -> float:
  """Full-batch gradient descent on softmax cross-entropy from W = 0, b = 0 (float64)."""
  import jax
  import jax.numpy as jnp
  with jax.enable_x64(True):
    x = jnp.asarray(_scaled(features, data.train))
    tr = jnp.asarray(data.train)
    y = jax.nn.one_hot(jnp.asarray(data.targets), len(data.classes), dtype=jnp.float64)

    def loss(params):
      w, b = params
      logits = x @ w + b
      per_image = -jnp.sum(y * jax.nn.log_softmax(logits), axis=1)
      return jnp.sum(jnp.where(tr, per_image, 0.0)) / jnp.sum(tr)

    @jax.jit
    def train(params):
      def step(params, _):
        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), None
      return jax.lax.scan(step, params, None, length=steps)[0]

    w, b = train((jnp.zeros((x.shape[1], len(data.classes)), jnp.float64),
                  jnp.zeros(len(data.classes), jnp.float64)))
    predicted = np.asarray(jnp.argmax(x @ w + b, axis=1))
  return float(np.mean(predicted[~data.train] == data.targets[~data.train]))


def adam_accuracy(data: ProbeData, features: np.ndarray, seed: int, epochs: int = 60,
                  batch: int = 64, learning_rate: float = 1e-2) -> float:
  """optax Adam on softmax cross-entropy, random init N(0, 0.01) and shuffled minibatches from
  `seed` (float32, like a standard training run)."""
  import jax
  import jax.numpy as jnp
  import optax
  x = _scaled(features, data.train).astype(np.float32)
  xt, yt = x[data.train], data.targets[data.train]
  k, classes = x.shape[1], len(data.classes)
  key = jax.random.key(seed)
  params = (0.01 * jax.random.normal(key, (k, classes)), jnp.zeros(classes))
  optimizer = optax.adam(learning_rate)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, xb, yb):
    def loss(params):
      logits = xb @ params[0] + params[1]
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    grads = jax.grad(loss)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    order = rng.permutation(len(xt))
    for start in range(0, len(order), batch):
      idx = order[start:start + batch]
      params, state = step(params, state, xt[idx], yt[idx])
  predicted = np.argmax(x[~data.train] @ np.asarray(params[0]) + np.asarray(params[1]), axis=1)
  return float(np.mean(predicted == data.targets[~data.train]))
