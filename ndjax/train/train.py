"""The train step (jit-compiled, data parallel over the local devices) and the training loop.

State = the model's variables (nnx.Param weights, nnx.BatchStat running statistics) + the optax
state + the step. Everything that varies between steps is a pure function of (config.seed, step):
the batch (`input_pipeline.batch_indices`) and the dropout key (`fold_in(seed, step)`). So a run
killed at any point and rerun with the same command resumes from its newest Orbax checkpoint to
the same bytes an uninterrupted run reaches.

Layout of a workdir:
  checkpoints/<step>/   Orbax CheckpointManager: the rolling train state (the newest few)
  snapshots/<step>/     ndjax weight checkpoints at log-spaced steps (0, 1, 2, 5, 10, 20, 50, ...
                        and the last): `python -m ndjax.main --model=<variant> --weights=<dir>`
  metrics.csv           step, split, loss, accuracy, learning rate, seconds (appended as it goes)
  config.json           the run's config
"""
from __future__ import annotations

import csv
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from ndjax import distributed, fileio
from ndjax import models
from ndjax.ported_weights import checkpoint as weights_ckpt
from ndjax.ported_weights import registry
from ndjax.train import input_pipeline


# Config fields that change when things happen, not what is computed: a rerun may change them.
CADENCE_FIELDS = ('log_every', 'eval_every', 'checkpoint_every')


class TrainError(ValueError):
  """A run that cannot start as configured; the message says what to do."""


# --- pieces -----------------------------------------------------------------------------------------
def create_model(config, num_classes: int):
  """The config's model (a zoo name or variant) with a `num_classes` head, from `config.seed`;
  `config.init_from` (a snapshot or weights) replaces its variables, the head re-initialised
  when the class counts differ (fine-tuning to another task)."""
  if config.model not in models.MODELS:
    raise TrainError(f'unknown model {config.model!r}; valid: {", ".join(sorted(models.MODELS))}')
  model = models.MODELS[config.model](rngs=nnx.Rngs(config.seed), num_classes=num_classes)
  if config.init_from:
    try:
      registry.load_weights(model, config.init_from)
    except registry.WeightsError as e:
      raise TrainError(f'init_from={config.init_from}: {e}') from None
    model.reset_classifier(num_classes, None)
  return model


def schedule(config) -> optax.Schedule:
  warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
  if config.schedule == 'cosine':
    after = optax.cosine_decay_schedule(config.learning_rate,
                                        max(config.total_steps - config.warmup_steps, 1))
  elif config.schedule == 'constant':
    after = optax.constant_schedule(config.learning_rate)
  else:
    raise TrainError(f'schedule={config.schedule!r}: use cosine or constant')
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def optimizer(config) -> optax.GradientTransformation:
  lr = schedule(config)
  if config.optimizer == 'sgd':       # torch's SGD(weight_decay=): decay added to the gradient
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(lr, momentum=config.momentum))
  if config.optimizer == 'adam':
    return optax.adamw(lr, weight_decay=config.weight_decay)
  raise TrainError(f'optimizer={config.optimizer!r}: use sgd or adam')


def loss_fn(model, images, labels, key, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy of a train-mode forward (dropout from `key`) -> (loss, logits)."""
  logits = model.forward(model.preprocess(images), logits=True,
                         rngs=nnx.Rngs(dropout=key))['logits']
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean(), logits


@functools.partial(nnx.jit, static_argnames=('label_smoothing',))
def train_step(model, opt: nnx.Optimizer, images, labels, key, label_smoothing: float = 0.0):
  """One optax step in place on `model` (train mode) and `opt`; -> (loss, accuracy)."""
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, images, labels, key, label_smoothing)
  opt.update(model, grads)
  return loss, (jnp.argmax(logits, -1) == labels).mean()


@nnx.jit
def eval_step(model, images, labels, valid):
  """(summed loss, correct count) over the `valid` examples of an eval-mode forward."""
  logits = model.forward(model.preprocess(images), logits=True)['logits']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return (jnp.where(valid, loss, 0).sum(),
          jnp.where(valid, jnp.argmax(logits, -1) == labels, False).sum())


def snapshot_steps(total: int, spec: str) -> list[int]:
  """'log': 0, 1, 2, 5, 10, 20, 50, ... below `total`, and `total` itself; '' : none."""
  if not spec:
    return []
  if spec != 'log':
    raise TrainError(f'snapshots={spec!r}: use log or an empty string')
  steps, scale = [0], 1
  while scale < total:
    steps += [s * scale for s in (1, 2, 5) if s * scale < total]
    scale *= 10
  return sorted(set(steps + [total]))


def evaluate(model, split: input_pipeline.Split, batch_size: int, put) -> tuple[float, float]:
  """(mean loss, accuracy) over the whole split, eval mode; the last batch padded (one shape)."""
  model.eval()
  loss, correct, n = 0.0, 0, len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    images, labels = split.get(np.where(valid, idx, 0))
    l, c = eval_step(model, *put(images, labels), jnp.asarray(valid))
    loss, correct = loss + float(l), correct + int(c)
  model.train()
  return loss / n, correct / n


# --- the run ------------------------------------------------------------------------------------------
class Run:
  """One training run in `workdir`: model, optimiser, checkpoints, snapshots, metrics."""

  def __init__(self, config, workdir, data: input_pipeline.Data, progress: bool = True):
    self.config, self.data, self.progress = config, data, progress
    self.workdir = pathlib.Path(workdir).absolute()
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.model = create_model(config, len(data.classes))
    self.model.train()
    self.opt = nnx.Optimizer(self.model, optimizer(config), wrt=nnx.Param)
    self.mesh = distributed.local_mesh()
    if self.mesh is not None and config.batch_size % self.mesh.size:
      raise TrainError(f'batch_size {config.batch_size} must be a multiple of the '
                       f'{self.mesh.size} local devices')
    self.manager = ocp.CheckpointManager(
        self.workdir / 'checkpoints',
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))
    self.snapshots = snapshot_steps(config.total_steps, config.snapshots)
    self.step = 0

  # state <-> Orbax
  def _state(self):
    return nnx.to_pure_dict(nnx.state((self.model, self.opt)))

  def restore(self) -> None:
    latest = self.manager.latest_step()
    if latest is None:
      return
    state = nnx.state((self.model, self.opt))
    restored = self.manager.restore(latest, args=ocp.args.StandardRestore(self._state()))
    nnx.replace_by_pure_dict(state, restored)
    nnx.update((self.model, self.opt), state)
    self.step = latest

  def save(self) -> None:
    self.manager.save(self.step, args=ocp.args.StandardSave(self._state()), force=True)
    self.manager.wait_until_finished()

  def snapshot(self) -> None:
    target = self.workdir / 'snapshots' / str(self.step)
    if target.exists():
      return
    self.model.eval()
    weights_ckpt.save_checkpoint(self.model, target, source=f'ndjax.train {self.workdir} step '
                                 f'{self.step}', source_sha256='')
    self.model.train()

  def put(self, images, labels):
    if self.mesh is None:
      return jnp.asarray(images), jnp.asarray(labels)
    sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec('batch'))
    return jax.device_put(images, sharding), jax.device_put(labels, sharding)

  def log(self, row: dict) -> None:
    path = self.workdir / 'metrics.csv'
    new = not path.is_file()
    with open(path, 'a', newline='') as f:
      writer = csv.DictWriter(f, ['step', 'split', 'loss', 'accuracy', 'learning_rate', 'seconds'])
      if new:
        writer.writeheader()
      writer.writerow(row)

  def _check_config(self, path) -> None:
    """Refuse a workdir holding a run of another config. Fields that only say how often to log,
    evaluate or checkpoint may change; a field the old config lacks counts as its default."""
    from ndjax.train.configs import default
    try:
      old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise TrainError(f'cannot read {path} ({e}); delete the workdir to start over') from None
    new, defaults = self.config.to_dict(), default.get_config().to_dict()
    diff = [f'{k}: {old.get(k, defaults.get(k))!r} -> {new.get(k, defaults.get(k))!r}'
            for k in sorted(set(old) | set(new)) if k not in CADENCE_FIELDS
            and old.get(k, defaults.get(k)) != new.get(k, defaults.get(k))]
    if diff:
      raise TrainError(f'{self.workdir} holds a run of another config ({", ".join(diff)}); give '
                       'this run its own --workdir, or delete that folder to start over')

  def train(self, stop_at: int | None = None) -> dict:
    """Train to config.total_steps (or `stop_at`, for tests of resumption); -> last metrics."""
    c = self.config
    config_path = self.workdir / 'config.json'
    if config_path.is_file():
      self._check_config(config_path)
    fileio.atomic_write(config_path, json.dumps(c.to_dict(), indent=1, sort_keys=True).encode())
    self.restore()
    end = c.total_steps if stop_at is None else min(stop_at, c.total_steps)
    lr = schedule(c)
    root = jax.random.key(c.seed)
    t0, last = time.perf_counter(), {}
    bar = tqdm(total=end, initial=self.step, desc=f'train {c.model}', unit='step',
               disable=not self.progress)
    if self.step in self.snapshots:
      self.snapshot()
    while self.step < end:
      idx = input_pipeline.batch_indices(len(self.data.train), c.batch_size, c.seed, self.step)
      images, labels = self.data.train.get(idx)
      loss, acc = train_step(self.model, self.opt, *self.put(images, labels),
                             jax.random.fold_in(root, self.step), label_smoothing=c.label_smoothing)
      self.step += 1
      bar.update()
      if self.step % c.log_every == 0 or self.step == end:
        last = dict(step=self.step, split='train', loss=float(loss), accuracy=float(acc),
                    learning_rate=float(lr(self.step - 1)), seconds=time.perf_counter() - t0)
        self.log(last)
        bar.set_postfix(loss=f'{float(loss):.3f}', acc=f'{float(acc):.2f}')
      if self.step % c.eval_every == 0 or self.step == c.total_steps:
        loss_t, acc_t = evaluate(self.model, self.data.test, c.batch_size, self.put)
        self.log(dict(step=self.step, split='test', loss=loss_t, accuracy=acc_t,
                      learning_rate=float(lr(self.step - 1)), seconds=time.perf_counter() - t0))
      if self.step in self.snapshots:
        self.snapshot()
      if self.step % c.checkpoint_every == 0 or self.step == end:
        self.save()
    bar.close()
    return last


def train_and_evaluate(config, workdir, tfds_data_dir: str | None = None,
                       progress: bool = True) -> Run:
  data = input_pipeline.get_data(config, tfds_data_dir, progress)
  run = Run(config, workdir, data, progress)
  run.train()
  return run


def accuracy_table(workdir) -> list[dict]:
  """metrics.csv rows of the test split (for experiments)."""
  path = pathlib.Path(workdir) / 'metrics.csv'
  with open(path) as f:
    return [row for row in csv.DictReader(f) if row['split'] == 'test']

