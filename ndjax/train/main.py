"""python -m ndjax.train --config=ndjax/train/configs/default.py --workdir=DIR [--config.FIELD=V]

Trains the config's model (optax), checkpoints with Orbax (a rerun of the same command resumes
from the newest checkpoint), writes metrics.csv and log-spaced weight snapshots for dissection.
"""
from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'training config file (a Python file with '
                                'get_config())', lock_config=True)
flags.DEFINE_string('workdir', None, 'where checkpoints, snapshots and metrics.csv go')
flags.DEFINE_string('tfds_data_dir', None, 'data_dir of prepared TFDS datasets (tfds:<name>)')
flags.DEFINE_bool('progress', True, 'show a progress bar')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    sys.exit(f'ndjax.train: unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE')
  from ndjax.train import input_pipeline, train
  try:
    run = train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.tfds_data_dir,
                                   FLAGS.progress)
  except (train.TrainError, input_pipeline.DataError) as e:
    sys.exit(f'ndjax.train: {e}')
  print(f'{run.config.model}: {run.step} steps in {run.workdir}; '
        f'snapshots {", ".join(map(str, run.snapshots)) or "none"}')
