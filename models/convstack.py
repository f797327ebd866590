"""One Flax NNX class for plain conv/pool stacks (VGG, AlexNet), variants as specs.

A model is a list of ops in torchvision's `features.N` order, so every op's output can be tapped
by its torchvision module path, and the paper's names (conv5_3 = post-ReLU, pool5, ...) are aliases
onto those paths. torchvision's classifier (`avgpool` + `classifier.N`) follows for logits. The same
spec drives the receptive-field geometry the upsampler uses (the geometry pass of
`models/layers.py`, cross-checked against `models/geometry.py`), so the two can never disagree.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

from flax import nnx

from ndjax.models import layers
from ndjax.models.layers import PREPROCESSING, preprocess  # noqa: F401  (re-exported: public names)


@dataclasses.dataclass(frozen=True)
class Op:
  kind: str                      # 'conv' | 'bn' | 'relu' | 'pool' | 'linear' | 'dropout'
  out: int = 0                   # conv/linear output channels (linear: 0 = the number of classes)
  kernel: int = 1
  stride: int = 1
  padding: int = 0
  ceil_mode: bool = False
  rate: float = 0.5              # dropout probability


def vgg_ops(cfg: Sequence, batch_norm: bool = False) -> tuple[Op, ...]:
  """torchvision's `make_layers`: 3x3 pad-1 convs (+BN) + ReLU, 2x2 max pools."""
  ops = []
  for v in cfg:
    if v == 'M':
      ops.append(Op('pool', kernel=2, stride=2))
    else:
      ops.append(Op('conv', out=v, kernel=3, stride=1, padding=1))
      if batch_norm:
        ops.append(Op('bn', out=v))
      ops.append(Op('relu'))
  return tuple(ops)


def paper_names(ops: Sequence[Op], block_style: str) -> dict[str, int]:
  """Paper layer names -> op index. Conv names mean the POST-ReLU output (Caffe's in-place ReLU).

  'vgg': conv<block>_<n>, pool<block>. 'alexnet': conv<n>, and Caffe's pool1, pool2, pool5 (each
  pool is named after the conv before it).
  """
  names = {}
  block, within, conv_count, pool_count = 1, 0, 0, 0
  for i, op in enumerate(ops):
    if op.kind == 'conv':
      within += 1
      conv_count += 1
    elif op.kind == 'relu':
      names[f'conv{block}_{within}' if block_style == 'vgg' else f'conv{conv_count}'] = i
    elif op.kind == 'pool':
      pool_count += 1
      names[f'pool{pool_count}' if block_style == 'vgg' else f'pool{conv_count}'] = i
      block += 1
      within = 0
  return names


VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')

def alexnet_ops(widths: Sequence[int] = (64, 192, 384, 256, 256), batch_norm: bool = False,
                pool5: bool = True) -> tuple[Op, ...]:
  """torchvision's AlexNet trunk (one 'conv' per layer, max pools after conv1, conv2, conv5), with
  the paper's training variants as options: BN after every conv (`BatchNorm`), other widths
  (`GAP-Wide*`), and no pool5 (the GAP variants pool conv5 globally instead)."""
  geometry = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
  ops = []
  for n, (width, (kernel, stride, padding)) in enumerate(zip(widths, geometry), start=1):
    ops.append(Op('conv', width, kernel, stride, padding))
    if batch_norm:
      ops.append(Op('bn', out=width))
    ops.append(Op('relu'))
    if n in (1, 2) or n == 5 and pool5:
      ops.append(Op('pool', kernel=3, stride=2))
  return tuple(ops)


ALEXNET_OPS = alexnet_ops()

# torchvision's classifiers, in `classifier.N` order (Dropout(0.5): the identity in eval mode).
VGG_CLASSIFIER = (Op('linear', 4096), Op('relu'), Op('dropout'), Op('linear', 4096), Op('relu'),
                  Op('dropout'), Op('linear', 0))
ALEXNET_CLASSIFIER = (Op('dropout'), Op('linear', 4096), Op('relu'), Op('dropout'),
                      Op('linear', 4096), Op('relu'), Op('linear', 0))
# the paper's NoDropout: the same classifier with its dropout layers removed
ALEXNET_CLASSIFIER_NO_DROPOUT = tuple(op for op in ALEXNET_CLASSIFIER if op.kind != 'dropout')
# GAP variants: global average pooling of conv5 straight into one linear classifier (no fc6/fc7)
GAP_CLASSIFIER = (Op('linear', 0),)

_DESCRIPTIONS = {'conv': 'Conv2d output (pre-ReLU)', 'bn': 'BatchNorm2d output (pre-ReLU)',
                 'relu': 'ReLU output (post-ReLU)', 'pool': 'MaxPool2d output'}


class ConvStack(layers.TapModel):
  """A conv/BN/ReLU/max-pool trunk, optionally with torchvision's avgpool + classifier head.

  Parameters live in attributes named `features_<N>` / `classifier_<N>` (N = torchvision index),
  so a torchvision state_dict key `features.N.weight` maps to `features_N.kernel` one to one.
  """

  def __init__(self, ops: Sequence[Op], *, in_channels: int = 3, block_style: str = 'vgg',
               preprocessing: str = 'caffe', name: str = 'convstack',
               classifier: Sequence[Op] | None = None, pool_size: int = 7,
               num_classes: int | None = 1000, rngs: nnx.Rngs):
    self.ops = tuple(ops)
    self.classifier_ops = tuple(classifier) if classifier else ()
    self.pool_size = pool_size
    self.preprocessing = preprocessing
    self.arch = name
    init = layers.Init(rngs)
    c = in_channels
    for i, op in enumerate(self.ops):
      if op.kind == 'conv':
        # torchvision's VGG init: kaiming-normal (fan_out, relu) weights, zero biases.
        self.add_layer(f'features.{i}', layers.Conv2d(
            c, op.out, op.kernel, op.stride, op.padding,
            weight_init=init.kaiming_normal('fan_out')))
        c = op.out
      elif op.kind == 'bn':
        self.add_layer(f'features.{i}', layers.BatchNorm2d(c))
    for i, op in enumerate(self.classifier_ops):
      if op.kind == 'dropout':
        self.add_layer(f'classifier.{i}', layers.dropout(op.rate))
    self.out_channels = c
    self.aliases = {name: f'features.{i}' for name, i in paper_names(self.ops, block_style).items()}
    self.num_classes = None
    self.finish()
    if self.classifier_ops and num_classes is not None:
      self.reset_classifier(num_classes, init)

  # --- trunk and head -----------------------------------------------------------------------------
  def trunk(self, x, rec):
    for i, op in enumerate(self.ops):
      path = f'features.{i}'
      if op.kind in ('conv', 'bn'):
        x = self.run(rec, path, x, _DESCRIPTIONS[op.kind])
      elif op.kind == 'relu':
        x = rec(path, rec.relu(x), _DESCRIPTIONS['relu'])
      elif op.kind == 'pool':
        x = rec(path, layers.max_pool(x, op.kernel, op.stride, op.padding, op.ceil_mode),
                _DESCRIPTIONS['pool'])
      else:
        raise ValueError(f'{path}: op kind {op.kind!r} does not belong in a conv trunk')
    return rec('features', x, f'output of the features Sequential (= features.{len(self.ops) - 1})')

  def head(self, features, rec: layers.Recorder | None = None):
    rec = rec or layers.Recorder({})
    x = layers.flatten_nchw(layers.adaptive_avg_pool(features, self.pool_size))
    for i, op in enumerate(self.classifier_ops):
      if op.kind == 'linear':
        x = self.layer(f'classifier.{i}')(x)
      elif op.kind == 'relu':
        x = rec.relu(x)
      elif op.kind == 'dropout':
        x = rec.dropout(self.layer(f'classifier.{i}'), x)
    return x

  def head_paths(self) -> tuple[str, ...]:
    return tuple(f'classifier.{i}' for i, op in enumerate(self.classifier_ops)
                 if op.kind == 'linear')

  def build_head(self, num_classes: int, init: layers.Init) -> None:
    if not self.classifier_ops:
      raise ValueError(f'{self.arch} is a bare conv trunk; it has no classifier to build')
    # torchvision's VGG init for Linear layers: N(0, 0.01) weights, zero biases.
    width = self.out_channels * self.pool_size ** 2
    for i, op in enumerate(self.classifier_ops):
      if op.kind == 'linear':
        out = op.out or num_classes
        self.add_layer(f'classifier.{i}', layers.Linear(width, out, weight_init=init.normal(0.01)))
        width = out


vgg16 = functools.partial(ConvStack, vgg_ops(VGG16_CFG), block_style='vgg', name='vgg16',
                          classifier=VGG_CLASSIFIER, pool_size=7)
# vgg16_bn only has torch-convention weights (torchvision, CRAFT): RGB, mean/std normalised.
vgg16_bn = functools.partial(ConvStack, vgg_ops(VGG16_CFG, batch_norm=True), block_style='vgg',
                             preprocessing='torch', name='vgg16_bn', classifier=VGG_CLASSIFIER,
                             pool_size=7)
alexnet = functools.partial(ConvStack, ALEXNET_OPS, block_style='alexnet', preprocessing='torch',
                            name='alexnet', classifier=ALEXNET_CLASSIFIER, pool_size=6)
# The paper's training variants of AlexNet (Sec 3.6-3.8), for `ndjax.train`; `Repeat` is the
# baseline with another seed. Their weights come from training, not from a registry.
_alexnet_like = functools.partial(ConvStack, block_style='alexnet', preprocessing='torch')
alexnet_bn = functools.partial(_alexnet_like, alexnet_ops(batch_norm=True), name='alexnet_bn',
                               classifier=ALEXNET_CLASSIFIER, pool_size=6)
alexnet_nodropout = functools.partial(_alexnet_like, ALEXNET_OPS, name='alexnet_nodropout',
                                      classifier=ALEXNET_CLASSIFIER_NO_DROPOUT, pool_size=6)
alexnet_gap_wide = functools.partial(
    _alexnet_like, alexnet_ops((64, 192, 384, 256, 768), pool5=False), name='alexnet_gap_wide',
    classifier=GAP_CLASSIFIER, pool_size=1)
alexnet_gap_wide1024 = functools.partial(
    _alexnet_like, alexnet_ops((64, 192, 384, 256, 1024), pool5=False),
    name='alexnet_gap_wide1024', classifier=GAP_CLASSIFIER, pool_size=1)
alexnet_gap_wide2048 = functools.partial(
    _alexnet_like, alexnet_ops((64, 192, 384, 256, 2048), pool5=False),
    name='alexnet_gap_wide2048', classifier=GAP_CLASSIFIER, pool_size=1)
alexnet_gap_wideall = functools.partial(
    _alexnet_like, alexnet_ops((64, 576, 1152, 768, 768), pool5=False),
    name='alexnet_gap_wideall', classifier=GAP_CLASSIFIER, pool_size=1)
