"""Baseline AlexNet on the built-in task at 112 px: the `cpu` preset's training run."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = 'alexnet'            # any name in ndjax.models.MODELS (the variants included)
  c.seed = 0                     # init, data order and dropout
  c.dataset = 'probe_task'       # built-in task, or 'tfds:<name>' (prepared under --tfds_data_dir)
  c.image_size = 112
  c.train_images = 6000          # built-in task only: images rendered once into the cache
  c.test_images = 1000
  c.batch_size = 64
  c.total_steps = 3000
  c.optimizer = 'sgd'            # 'sgd' (momentum) or 'adam'
  c.learning_rate = 0.02
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.warmup_steps = 100
  c.schedule = 'cosine'          # 'cosine' or 'constant' (after warmup)
  c.label_smoothing = 0.0
  c.log_every = 50               # metrics.csv rows (train loss / accuracy)
  c.eval_every = 500             # test accuracy
  c.checkpoint_every = 250       # the rolling checkpoint that a rerun resumes from
  c.snapshots = 'log'            # 'log': 0, 1, 2, 5, 10, 20, 50, ... and the last; or '' (none)
  c.init_from = ''               # fine-tuning: a snapshot directory to start from (head reset)
  return c
