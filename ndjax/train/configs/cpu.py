"""The `cpu` preset's training run: AlexNet on the built-in task at 112 px, sized so that a study
(all its variants trained and their snapshots dissected) takes about an hour on 2 CPU cores.

800 steps of 64 images = 8.5 epochs of the 6,000 rendered training images; ~0.7 s a step for
AlexNet on a 2-core AMD EPYC (GAP-Wide ~0.55 s, GAP-WideAll ~2.3 s)."""
from ndjax.train.configs import default


def get_config():
  c = default.get_config()
  c.image_size = 112
  c.train_images = 6000
  c.test_images = 1000
  c.batch_size = 64
  c.total_steps = 800
  c.learning_rate = 0.02
  c.warmup_steps = 50
  c.eval_every = 200
  c.checkpoint_every = 100
  c.log_every = 20
  return c
