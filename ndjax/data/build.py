"""Builds a probe set on disk.

  python -m ndjax.data.build --probe=synthetic --out=DIR [--n_images=1000 --seed=0]

Prints one line: the path, the image count and the labels per category. Bad arguments print one
line and exit non-zero, without a traceback.
"""
from __future__ import annotations

import csv
import pathlib
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum('probe', None, ['synthetic'], 'Which probe set to build.')
flags.DEFINE_string('out', None, 'Directory to create (must not exist yet).')
flags.DEFINE_integer('n_images', 1000, 'Number of images.', lower_bound=1)
flags.DEFINE_integer('seed', 0, 'Random seed; the same seed gives byte-identical output.')
flags.DEFINE_integer('workers', None, 'Rendering processes (default: up to 2).', lower_bound=1)
flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr.')
flags.mark_flags_as_required(['probe', 'out'])


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag is one line on stderr instead of a usage dump."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  if len(rest) > 1:
    _fail(f'unexpected arguments: {" ".join(rest[1:])}')
  return rest


def summary_line(path: pathlib.Path) -> str:
  with open(path / 'category.csv', newline='') as f:
    counts = {row['name']: int(row['count']) for row in csv.DictReader(f)}
  with open(path / 'index.csv', newline='') as f:
    n_images = sum(1 for _ in csv.DictReader(f))
  per_category = ', '.join(f'{name} {count}' for name, count in counts.items())
  return f'{path}: {n_images} images; labels per category: {per_category}'


def main(argv: list[str]) -> None:
  del argv
  from ndjax.data import synthetic     # after flag parsing: --help stays instant
  out = pathlib.Path(FLAGS.out)
  if out.exists():
    _fail(f'{out} already exists; choose a new --out')
  try:
    path = synthetic.generate(out, n_images=FLAGS.n_images, seed=FLAGS.seed,
                              progress=FLAGS.progress, workers=FLAGS.workers)
  except (OSError, ValueError) as e:
    _fail(str(e).splitlines()[0])
  print(summary_line(path))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
