"""torchvision's ResNet (v1.5: a Bottleneck's stride sits on its 3x3 conv2) in Flax NNX.

Module paths are torchvision's: `conv1`, `bn1`, `relu`, `maxpool`, `layer<s>`, `layer<s>.<b>` (a
block, post-ReLU), `layer<s>.<b>.conv1` ... `.bn3`, `.downsample.0/1`. A block's `relu` module runs
two (BasicBlock) or three (Bottleneck) times; its path means the last call, the block output.
Paper names: `conv1` is torchvision's own (the Conv2d); the Caffe ResNet blob names
`res2a`...`res5c` (post-ReLU block outputs, `b1`..`bN` numbering for the 101/152-layer nets) and
`pool1` alias onto them.
"""
from __future__ import annotations

import functools
import string
from typing import Sequence

from flax import nnx

from ndjax.models import layers

def caffe_block_names(stage: int, blocks: int) -> list[str]:
  """Caffe ResNet blob names of a stage: res2a, res2b, ... or, past 6 blocks, res4a, res4b1, ..."""
  if blocks <= 6:
    return [f'res{stage}{string.ascii_lowercase[i]}' for i in range(blocks)]
  return [f'res{stage}a'] + [f'res{stage}b{i}' for i in range(1, blocks)]


class ResNet(layers.TapModel):

  def __init__(self, block: str, stage_blocks: Sequence[int], *, name: str,
               num_classes: int | None = 1000, preprocessing: str = 'torch', rngs: nnx.Rngs):
    if block not in ('basic', 'bottleneck'):
      raise ValueError(f'block must be basic or bottleneck, got {block!r}')
    self.block = block
    self.stage_blocks = tuple(stage_blocks)
    self.expansion = 1 if block == 'basic' else 4
    self.arch = name
    self.preprocessing = preprocessing

    init = layers.Init(rngs)
    # torchvision's init: kaiming-normal (fan_out, relu) convs; BN weight 1, bias 0.
    conv = functools.partial(layers.Conv2d, bias=False, weight_init=init.kaiming_normal('fan_out'))
    bn = layers.BatchNorm2d
    self.add_layer('conv1', conv(3, 64, 7, 2, 3))
    self.add_layer('bn1', bn(64))
    inplanes = 64
    self.strides = {}
    for s, blocks in enumerate(self.stage_blocks, start=1):
      planes = 64 * 2 ** (s - 1)
      for b in range(blocks):
        path = f'layer{s}.{b}'
        stride = 2 if (b == 0 and s > 1) else 1
        self.strides[path] = stride
        out = planes * self.expansion
        if block == 'basic':
          self.add_layer(f'{path}.conv1', conv(inplanes, planes, 3, stride, 1))
          self.add_layer(f'{path}.bn1', bn(planes))
          self.add_layer(f'{path}.conv2', conv(planes, planes, 3, 1, 1))
          self.add_layer(f'{path}.bn2', bn(planes))
        else:
          self.add_layer(f'{path}.conv1', conv(inplanes, planes, 1))
          self.add_layer(f'{path}.bn1', bn(planes))
          self.add_layer(f'{path}.conv2', conv(planes, planes, 3, stride, 1))
          self.add_layer(f'{path}.bn2', bn(planes))
          self.add_layer(f'{path}.conv3', conv(planes, out, 1))
          self.add_layer(f'{path}.bn3', bn(out))
        if stride != 1 or inplanes != out:
          self.add_layer(f'{path}.downsample.0', conv(inplanes, out, 1, stride))
          self.add_layer(f'{path}.downsample.1', bn(out))
        inplanes = out
    self.features_out = inplanes

    self.aliases = {'pool1': 'maxpool'}
    for s, blocks in enumerate(self.stage_blocks, start=1):
      for b, caffe in enumerate(caffe_block_names(s + 1, blocks)):
        self.aliases[caffe] = f'layer{s}.{b}'
    self.num_classes = None
    self.finish()
    if num_classes is not None:
      self.reset_classifier(num_classes, init)

  def _block(self, path: str, x, rec):
    identity = x
    convs = 2 if self.block == 'basic' else 3
    out = x
    for i in range(1, convs + 1):
      out = self.run(rec, f'{path}.conv{i}', out)
      out = self.run(rec, f'{path}.bn{i}', out)
      if i < convs:
        out = rec(f'{path}.relu', rec.relu(out), 'ReLU output (post-ReLU)')
    if self.has_layer(f'{path}.downsample.0'):
      identity = self.run(rec, f'{path}.downsample.0', x)
      identity = self.run(rec, f'{path}.downsample.1', identity)
      rec(f'{path}.downsample', identity, 'downsample Sequential output (BatchNorm2d, shortcut)')
    out = layers.add(out, identity)
    out = rec(f'{path}.relu', rec.relu(out), 'ReLU output (post-ReLU)')
    kind = 'BasicBlock' if self.block == 'basic' else 'Bottleneck'
    return rec(path, out, f'ResNet {kind} output: ReLU(residual branch + shortcut) (post-ReLU)')

  def trunk(self, x, rec):
    x = self.run(rec, 'conv1', x)
    x = self.run(rec, 'bn1', x)
    x = rec('relu', rec.relu(x), 'ReLU output (post-ReLU)')
    x = rec('maxpool', layers.max_pool(x, 3, 2, 1), 'MaxPool2d output')
    for s, blocks in enumerate(self.stage_blocks, start=1):
      for b in range(blocks):
        x = self._block(f'layer{s}.{b}', x, rec)
      x = rec(f'layer{s}', x, 'ResNet stage output (post-ReLU)')
    return x

  def head(self, features, rec: layers.Recorder | None = None):
    return self.layer('fc')(layers.flatten_nchw(layers.adaptive_avg_pool(features, 1)))

  def head_paths(self) -> tuple[str, ...]:
    return ('fc',)

  def build_head(self, num_classes: int, init: layers.Init) -> None:
    # torch.nn.Linear's default init
    self.add_layer('fc', layers.Linear(
        self.features_out, num_classes, weight_init=init.torch_default(),
        bias_init=init.torch_default_bias(self.features_out)))


resnet18 = functools.partial(ResNet, 'basic', (2, 2, 2, 2), name='resnet18')
resnet50 = functools.partial(ResNet, 'bottleneck', (3, 4, 6, 3), name='resnet50')
resnet152 = functools.partial(ResNet, 'bottleneck', (3, 8, 36, 3), name='resnet152')
