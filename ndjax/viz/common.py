"""What every visualisation shares: the model as pure functions, the photos, class names, output.

The methods are pure functions over (net, x) where `net` is a `Net` (the model split into its
graph and its parameters, so `jax.jit`/`jax.grad` see the parameters as arrays) and `x` is the
model's preprocessed float NHWC input (`net.preprocess(uint8 RGB images)`). Figures are drawn at
the edge (`figure_*` helpers, the CLI in `ndjax.viz.__main__`); nothing here reads flags.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# scikit-image's bundled photos (one pinned wheel, fetched by checksum like the registered weights:
# the same bytes whatever Python runs; the wheel is never installed)
SCIKIT_IMAGE_WHEEL = dict(
    package='scikit-image', version='0.25.2',
    sha256='a17e17eb8562660cc0d31bb55643a4da996a81944b82c54805c91b3fe66f4824',
    pip_args=('--platform=manylinux_2_17_x86_64', '--python-version=3.12',
              '--implementation=cp', '--abi=cp312'))
PHOTOS = {name: f'skimage/data/{name}.{ext}' for name, ext in (
    ('chelsea', 'png'), ('coffee', 'png'), ('astronaut', 'png'), ('rocket', 'jpg'),
    ('motorcycle_left', 'png'), ('horse', 'png'), ('hubble_deep_field', 'jpg'))}


class VizError(ValueError):
  """Bad input to a visualisation, one line for the user (unknown photo, class, unit...)."""


# --- the model as pure functions --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Net:
  """A zoo model (TapModel contract) split for jit/grad: `apply(state, x, taps, **forward_kw)`.

  The graph is static, the parameters (`state`) are an argument, so one compiled function serves
  every call and gradients w.r.t. the input never rebuild the model.
  """
  module: object
  graphdef: object
  state: object

  @classmethod
  def of(cls, module) -> 'Net':
    module = getattr(module, 'module', module)        # an api.LoadedModel or the nnx model
    module.eval()
    graphdef, state = nnx.split(module)
    return cls(module, graphdef, state)

  def apply(self, state, x, taps: Sequence[str] = (), **forward_kw) -> dict:
    return nnx.merge(self.graphdef, state).forward(x, tuple(taps), **forward_kw)

  def preprocess(self, images_uint8) -> jax.Array:
    return self.module.preprocess(images_uint8)

  def deprocess(self, x) -> jax.Array:
    from ndjax.models import layers
    return layers.deprocess(x, self.module.preprocessing)

  def has_head(self) -> bool:
    return self.module.has_head()

  @property
  def num_classes(self) -> int | None:
    return self.module.num_classes if self.module.has_head() else None

  def channels(self, layer: str) -> int:
    return self.module.channels(layer)

  def check_unit(self, layer: str, unit: int) -> None:
    try:
      k = self.module.channels(layer)
    except KeyError as e:
      raise VizError(e.args[0]) from None
    if not 0 <= unit < k:
      raise VizError(f'unit {unit} is out of range for {layer} ({k} units: 0..{k - 1})')

  def check_head(self, method: str) -> None:
    if not self.has_head():
      raise VizError(f'{method} needs a classifier head, and this {self.module.arch} has none '
                     '(use e.g. --model=mobilenet_v2 --weights=imagenet)')


@functools.cache
def logits_fn(net: Net) -> Callable:
  """(state, x) -> (B, classes) logits, jit-compiled once per net."""
  return jax.jit(lambda state, x: net.apply(state, x, logits=True)['logits'])


@functools.partial(jax.jit, static_argnums=0)
def class_probability(net: Net, state, x, classes) -> jax.Array:
  """(B,) softmax probability of each image's target class (titles, printed lines, occlusion)."""
  p = jax.nn.softmax(net.apply(state, x, logits=True)['logits'], axis=-1)
  return jnp.take_along_axis(p, jnp.asarray(classes)[:, None], axis=1)[:, 0]


def unit_objective(acts: jax.Array, unit: int, keep: str = 'mean') -> jax.Array:
  """(B,) score of one unit from its (B, h, w, K) layer output: 'mean' over the map, 'max' (its
  strongest position), or 'sum'."""
  a = acts[..., unit]
  if keep == 'mean':
    return a.mean(axis=(1, 2))
  if keep == 'max':
    return a.max(axis=(1, 2))
  if keep == 'sum':
    return a.sum(axis=(1, 2))
  raise VizError(f'unknown unit reduction {keep!r}; valid: mean, max, sum')


# --- photos -------------------------------------------------------------------------------------------
def photo_path(name: str) -> pathlib.Path:
  """One of scikit-image's bundled photos (`PHOTOS`), fetched by checksum into the cache."""
  from ndjax.ported_weights import fetch
  if name not in PHOTOS:
    raise VizError(f'unknown photo {name!r}; valid: {", ".join(PHOTOS)} or an image file path')
  try:
    return fetch.fetch_wheel_files(members=(PHOTOS[name],), **SCIKIT_IMAGE_WHEEL)[0]
  except fetch.WeightsError as e:
    raise VizError(str(e)) from None


def eval_crop(image, size: int = 224) -> np.ndarray:
  """torchvision's ImageNet eval transform on a PIL image: shorter side to size * 256/224
  (bilinear), centre size x size crop -> uint8 (size, size, 3) RGB."""
  from PIL import Image
  image = image.convert('RGB')
  scale = round(size * 256 / 224) / min(image.size)
  image = image.resize((round(image.width * scale), round(image.height * scale)),
                       Image.Resampling.BILINEAR)
  left, top = (image.width - size) // 2, (image.height - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


def load_images(specs: Sequence[str], size: int = 224) -> tuple[np.ndarray, list[str]]:
  """Photo names (`PHOTOS`) or image files -> (uint8 (N, size, size, 3), names)."""
  from PIL import Image, UnidentifiedImageError
  images, names = [], []
  for spec in specs:
    path = pathlib.Path(spec)
    if not path.is_file():
      path = photo_path(spec)
    try:
      with Image.open(path) as im:
        images.append(eval_crop(im, size))
    except (UnidentifiedImageError, OSError) as e:
      raise VizError(f'{spec}: not a readable image ({e})') from None
    names.append(path.stem)
  if not images:
    raise VizError('no images given; name photos (e.g. chelsea) or image files')
  return np.stack(images), names


# --- classes ----------------------------------------------------------------------------------------
@functools.cache
def imagenet_classes() -> tuple[str, ...]:
  """ImageNet-1k class names in torchvision's index order."""
  text = (pathlib.Path(__file__).with_name('imagenet_classes.txt')).read_text()
  return tuple(line for line in text.splitlines() if line)


def class_names(num_classes: int | None) -> tuple[str, ...] | None:
  return imagenet_classes() if num_classes == 1000 else None


def resolve_class(spec: str | int, num_classes: int) -> int:
  """A class index, or (1000-class models) an ImageNet class name, case-insensitive."""
  text = str(spec).strip()
  if text.lstrip('-').isdigit():
    index = int(text)
    if not 0 <= index < num_classes:
      raise VizError(f'class {index} is out of range (the model has {num_classes} classes)')
    return index
  names = class_names(num_classes)
  if names is None:
    raise VizError(f'class {text!r}: give a class index (0..{num_classes - 1}); names are known '
                   'for the 1000 ImageNet classes only')
  lowered = [n.lower() for n in names]
  if text.lower() in lowered:
    return lowered.index(text.lower())
  import difflib
  close = difflib.get_close_matches(text.lower(), lowered, n=3)
  hint = f' (did you mean {", ".join(names[lowered.index(c)] for c in close)}?)' if close else ''
  raise VizError(f'unknown ImageNet class {text!r}{hint}')


def class_label(index: int, num_classes: int | None) -> str:
  names = class_names(num_classes)
  return f'{index} {names[index]}' if names else f'class {index}'


# --- display --------------------------------------------------------------------------------------
def normalise(a, percentile: float = 99.5, signed: bool | None = None) -> np.ndarray:
  """Scale a map or image-sized gradient into [0, 1] for display: divide by its `percentile`-th
  absolute value (robust to a few huge pixels), clip. signed: 0 maps to 0.5 (mid grey); None:
  signed when the input has negative values."""
  a = np.asarray(a, np.float32)
  scale = np.percentile(np.abs(a), percentile) or 1.0
  if signed or (signed is None and (a < 0).any()):
    return np.clip(0.5 + 0.5 * a / scale, 0, 1)
  return np.clip(a / scale, 0, 1)


def to_uint8(rgb_0_255) -> np.ndarray:
  return np.clip(np.rint(np.asarray(rgb_0_255, np.float32)), 0, 255).astype(np.uint8)


def upsample_map(heat, hw: tuple[int, int]) -> np.ndarray:
  """A coarse (h, w) map bilinearly resized to the image (for overlays only)."""
  heat = np.asarray(heat, np.float32)
  return np.asarray(jax.image.resize(jnp.asarray(heat), tuple(hw), 'bilinear'))


@dataclasses.dataclass
class Output:
  """What a method's `main` returns to the CLI: the figure, the arrays behind it, lines to print."""
  figure: object                               # matplotlib Figure
  arrays: dict[str, np.ndarray]
  lines: list[str] = dataclasses.field(default_factory=list)
  csv: list[str] | None = None                 # a table's CSV lines (header first), saved as .csv


def save_output(out: Output, stem: str | os.PathLike, fmt: str = 'png') -> list[pathlib.Path]:
  """Write <stem>.<fmt> (the figure), <stem>.npz (its arrays) and, for a table, <stem>.csv, each
  atomically."""
  from ndjax import fileio
  stem = pathlib.Path(stem)
  stem.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  out.figure.savefig(buf, format=fmt, dpi=110, bbox_inches='tight')
  figure_path = stem.with_name(stem.name + f'.{fmt}')
  fileio.atomic_write(str(figure_path), buf.getvalue())
  arrays_path = stem.with_name(stem.name + '.npz')
  buf = io.BytesIO()
  np.savez_compressed(buf, **{k: np.asarray(v) for k, v in out.arrays.items()})
  fileio.atomic_write(str(arrays_path), buf.getvalue())
  import matplotlib.pyplot as plt
  plt.close(out.figure)
  paths = [figure_path, arrays_path]
  if out.csv is not None:
    csv_path = stem.with_name(stem.name + '.csv')
    fileio.atomic_write(str(csv_path), ''.join(line + '\n' for line in out.csv))
    paths.append(csv_path)
  return paths


def grid_figure(rows: Sequence[Sequence[np.ndarray]], row_titles: Sequence[str] = (),
                col_titles: Sequence[str] = (), cmap: str | None = None, title: str = '',
                cell: float = 2.2):
  """A grid of images (each HxW or HxWx3 in [0, 1] or uint8), axes off; row titles stand left of
  their row, horizontally, in a margin sized to the longest."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  n_rows, n_cols = len(rows), max(1, max(len(r) for r in rows))
  margin = 0.075 * max((len(t) for t in row_titles), default=0)       # inches of row titles
  top = 0.45 if title else 0.05
  head = 0.3 if col_titles else 0.0
  width, height = margin + cell * n_cols, top + head + cell * n_rows
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
  fig.subplots_adjust(left=margin / width, right=0.995, bottom=0.005,
                      top=1 - (top + head) / height, wspace=0.04, hspace=0.12 if col_titles else 0.04)
  for i, row in enumerate(rows):
    for j in range(n_cols):
      ax = axes[i][j]
      ax.axis('off')
      if j < len(row) and row[j] is not None:
        flat = np.ndim(row[j]) == 2
        ax.imshow(row[j], cmap=(cmap or 'gray') if flat else None,
                  vmin=0 if flat else None, vmax=1 if flat else None)
      if i == 0 and j < len(col_titles):
        ax.set_title(col_titles[j], fontsize=8)
    if i < len(row_titles):
      axes[i][0].text(-0.05, 0.5, row_titles[i], transform=axes[i][0].transAxes, va='center',
                      ha='right', fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height)
  return fig


def caption(ax, text: str) -> None:
  """Write `text` inside an image's axes, bottom left, on a dark box (grid cells have no room for
  per-cell titles)."""
  ax.text(0.02, 0.02, text, transform=ax.transAxes, ha='left', va='bottom', fontsize=7,
          color='white', bbox=dict(facecolor='black', alpha=0.6, pad=1.5, linewidth=0))


def overlay(image_uint8: np.ndarray, heat01: np.ndarray, alpha: float = 0.5,
            cmap: str = 'jet') -> np.ndarray:
  """An image with a [0, 1] heat map (image-sized or coarser: resized bilinearly) blended over
  it -> float RGB in [0, 1]."""
  import matplotlib
  heat01 = np.asarray(heat01, np.float32)
  if heat01.shape != image_uint8.shape[:2]:
    heat01 = np.clip(upsample_map(heat01, image_uint8.shape[:2]), 0, 1)
  colour = matplotlib.colormaps[cmap](heat01)[..., :3]
  return (1 - alpha) * image_uint8.astype(np.float32) / 255 + alpha * colour


# --- what the CLI hands a method ----------------------------------------------------------------------
@dataclasses.dataclass
class Options:
  """Every method's knobs, with the CLI's defaults (each method reads the ones it has)."""
  keep: str = 'max'                 # deconvnet/guided: 'map' (the unit's whole map) or 'max'
  window: int = 32                  # occlusion: square side in input pixels
  stride: int = 8                   # occlusion: step in input pixels
  baseline: float = 0.0             # occlusion: the square's value in model input space (0: mean grey)
  steps: int | None = None          # optimisation steps (class model, inversion, DeepDream per
  lr: float | None = None           # octave) and their step size; None: each method's default
  l2: float = 1e-4                  # class model: L2 decay of the image (Simonyan's lambda)
  blur_every: int = 0               # class model: Yosinski's Gaussian blur every k steps (0: off)
  blur_sigma: float = 0.5
  clip_norm_pct: float = 0.0        # class model: zero pixels whose norm is below this percentile
  clip_contrib_pct: float = 0.0     # class model: zero pixels whose contribution is below it
  tv_weight: float = 0.01           # inversion: total-variation weight
  alpha: float = 6.0                # inversion: the alpha of the alpha-norm regulariser
  alpha_weight: float = 1e-5        # inversion: its weight
  octaves: int = 4                  # DeepDream
  octave_scale: float = 1.4
  jitter: int = 16
  seed: int = 0
  top: int | None = None            # patches (9), views (3), analyses (5): how many
  concept: str | None = None        # analyses: a concept label
  perplexity: float = 30.0          # t-SNE
  probe_images: int = 500           # t-SNE: the first N probe-set images
  batch_size: int = 16


@dataclasses.dataclass
class Context:
  """A method's inputs: the model, the photos, what to look at, and the options.

  images are uint8 RGB (N, S, S, 3) (empty for methods that start from noise or read results);
  unit None means 'not given'; target is the class as given (index or ImageNet name) or None for
  each image's predicted class; results are dissection layer folders (patches, t-SNE, analyses).
  """
  net: Net | None
  model: str
  weights: str
  layer: str | None
  unit: int | None
  target: str | None
  images: np.ndarray
  image_names: list[str]
  results: list[str]
  options: Options

  def need_unit(self, method: str) -> int:
    if self.unit is None:
      raise VizError(f'{method} looks at one unit: give --unit (and --layer)')
    self.net.check_unit(self.layer, self.unit)
    return self.unit

  def classes(self, x) -> np.ndarray:
    """(N,) the target class per image: the one given, else each image's predicted class."""
    if self.target is not None:
      return np.full(len(x), resolve_class(self.target, self.net.num_classes), np.int32)
    return np.asarray(logits_fn(self.net)(self.net.state, x)).argmax(1).astype(np.int32)
