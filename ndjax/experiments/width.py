"""Do wider layers give more detectors? (paper Sec 3.8, Fig 24)

Trains the preset's baseline AlexNet, AlexNet-GAP-Wide (fc layers removed, conv5 widened to 768,
global average pooling + a linear classifier) and AlexNet-GAP-WideAll (conv2-conv4 widened 3x
too), plus GAP-Wide with conv5 at each of --widths (1024, 2048), dissects each one's last
snapshot at --layer, and sets unique detectors per category beside test accuracy. The paper:
accuracy within 0.5 %, many more detectors; no further gain above 768.

python -m ndjax.experiments.width --preset=cpu
python -m ndjax.experiments.width --preset=cpu --widths=1024,2048
"""
from __future__ import annotations

from absl import flags

from ndjax.experiments import common, training

FLAGS = flags.FLAGS
flags.DEFINE_list('widths', [], 'Further conv5 widths of GAP-Wide (each a registered model '
                  'alexnet_gap_wide<W>: 1024, 2048).')


def variants(widths) -> list[tuple[str, dict]]:
  from ndjax import models
  out = [('baseline', dict(model='alexnet')), ('GAP-Wide 768', dict(model='alexnet_gap_wide')),
         ('GAP-WideAll', dict(model='alexnet_gap_wideall'))]
  for w in widths:
    name = f'alexnet_gap_wide{w}'
    if name not in models.MODELS:
      known = sorted(m[len('alexnet_gap_wide'):] for m in models.MODELS
                     if m.startswith('alexnet_gap_wide') and m[len('alexnet_gap_wide'):].isdigit())
      raise common.ExperimentError(f'--widths: no model {name}; registered widths: '
                                   f'{", ".join(known)}')
    out.append((f'GAP-Wide {w}', dict(model=name)))
  return out


def main(argv):
  del argv
  exp = common.Experiment('width')
  training.compare(exp, training.Study(exp), variants(FLAGS.widths), 'fig24_width',
                   f'unique detectors at {FLAGS.layer}')


if __name__ == '__main__':
  common.run(main)
