"""Does regularisation change interpretability? (paper Sec 3.6, Fig 17)

Trains the preset's baseline AlexNet, its repeats from other seeds, AlexNet without dropout and
AlexNet with BatchNorm after every conv (or reuses them), dissects each one's last snapshot at
--layer, and sets unique detectors per category beside test accuracy. The paper: repeats alike,
NoDropout more texture and fewer object detectors, BatchNorm far fewer detectors.

python -m ndjax.experiments.regularization --preset=cpu
"""
from __future__ import annotations

from absl import flags

from ndjax.experiments import common, training

FLAGS = flags.FLAGS
flags.DEFINE_integer('repeats', 2, 'Repeats of the baseline from seeds 1..N.')


def variants(repeats: int) -> list[tuple[str, dict]]:
  out = [('baseline', dict(model='alexnet', seed=0))]
  out += [(f'repeat{s}', dict(model='alexnet', seed=s)) for s in range(1, repeats + 1)]
  return out + [('nodropout', dict(model='alexnet_nodropout', seed=0)),
                ('batchnorm', dict(model='alexnet_bn', seed=0))]


def main(argv):
  del argv
  if FLAGS.repeats < 0:
    raise common.ExperimentError(f'--repeats={FLAGS.repeats} must be >= 0')
  exp = common.Experiment('regularization')
  training.compare(exp, training.Study(exp), variants(FLAGS.repeats), 'fig17_regularization',
                   f'unique detectors at {FLAGS.layer}')


if __name__ == '__main__':
  common.run(main)
