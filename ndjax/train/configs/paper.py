"""The `paper` preset: the paper's AlexNet-Places training (Sec 3.6: Caffe AlexNet on Places205,
batch 256, SGD with momentum 0.9, weight decay 5e-4, base learning rate 0.01, 300,000 iterations),
here on Places365 (TFDS `places365_small`, 256 px images, prepared under --tfds_data_dir) at
torchvision AlexNet's 224 px input, for an accelerator. The paper's step schedule (lr / 10 every
100,000 iterations) is replaced by a cosine decay over the same length."""
from ndjax.train.configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'tfds:places365_small'
  c.image_size = 224
  c.batch_size = 256
  c.total_steps = 300_000
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.warmup_steps = 0
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 2_000
  return c
