"""The `smoke` preset: AlexNet on the built-in task at 64 px for a dozen steps, a minutes-long check
that a study runs end to end (the tests use it). Its numbers mean nothing."""
from ndjax.train.configs import cpu


def get_config():
  c = cpu.get_config()
  c.image_size = 64
  c.train_images = 256
  c.test_images = 64
  c.batch_size = 16
  c.total_steps = 12
  c.warmup_steps = 2
  c.eval_every = 6
  c.checkpoint_every = 6
  c.log_every = 2
  return c
