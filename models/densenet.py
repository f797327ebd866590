"""torchvision's DenseNet in Flax NNX (densenet161: growth 48, blocks 6/12/36/24, 96 stem features).

Module paths are torchvision's: `features.conv0` ... `features.pool0`,
`features.denseblock<i>.denselayer<j>` (its output is the `growth` NEW feature maps, conv2's output,
pre-BN/ReLU), `.norm1/.relu1/.conv1/.norm2/.relu2/.conv2`, `features.denseblock<i>` (the concat,
in torchvision's order: block input first, then each layer's new maps in order),
`features.transition<i>` (+ `.norm/.relu/.conv/.pool`), `features.norm5` and `features` (= norm5,
pre-ReLU). DenseNet.forward then applies an in-place F.relu that is no module: its output, the
final features after that ReLU, is tappable as `relu5` (the default layer).
"""
from __future__ import annotations

import functools
from typing import Sequence

from flax import nnx

from ndjax.models import layers

class DenseNet(layers.TapModel):

  def __init__(self, growth_rate: int, block_config: Sequence[int], num_init_features: int, *,
               bn_size: int = 4, name: str, num_classes: int | None = 1000,
               preprocessing: str = 'torch', rngs: nnx.Rngs):
    self.arch = name
    self.preprocessing = preprocessing
    self.block_config = tuple(block_config)
    init = layers.Init(rngs)
    # torchvision's DenseNet init: kaiming-normal (fan_in) convs, BN 1/0, zero Linear bias.
    conv = functools.partial(layers.Conv2d, bias=False, weight_init=init.kaiming_normal('fan_in'))
    bn = layers.BatchNorm2d
    self.add_layer('features.conv0', conv(3, num_init_features, 7, 2, 3))
    self.add_layer('features.norm0', bn(num_init_features))
    features = num_init_features
    for i, num_layers in enumerate(self.block_config, start=1):
      for j in range(1, num_layers + 1):
        path = f'features.denseblock{i}.denselayer{j}'
        inputs = features + (j - 1) * growth_rate
        self.add_layer(f'{path}.norm1', bn(inputs))
        self.add_layer(f'{path}.conv1', conv(inputs, bn_size * growth_rate, 1))
        self.add_layer(f'{path}.norm2', bn(bn_size * growth_rate))
        self.add_layer(f'{path}.conv2', conv(bn_size * growth_rate, growth_rate, 3, 1, 1))
      features += num_layers * growth_rate
      if i != len(self.block_config):
        self.add_layer(f'features.transition{i}.norm', bn(features))
        self.add_layer(f'features.transition{i}.conv', conv(features, features // 2, 1))
        features //= 2
    self.add_layer('features.norm5', bn(features))
    self.features_out = features
    self.aliases = {}
    self.num_classes = None
    self.finish()
    if num_classes is not None:
      self.reset_classifier(num_classes, init)

  def _dense_layer(self, path: str, inputs: list, rec):
    x = layers.concat(inputs)
    x = self.run(rec, f'{path}.norm1', x, 'BatchNorm2d of the concatenated inputs (pre-ReLU)')
    x = rec(f'{path}.relu1', rec.relu(x), 'ReLU output (post-ReLU)')
    x = self.run(rec, f'{path}.conv1', x, 'Conv2d output: 1x1 bottleneck (pre-BN/ReLU)')
    x = self.run(rec, f'{path}.norm2', x, 'BatchNorm2d output (pre-ReLU)')
    x = rec(f'{path}.relu2', rec.relu(x), 'ReLU output (post-ReLU)')
    x = self.run(rec, f'{path}.conv2', x, 'Conv2d output: the new feature maps (pre-BN/ReLU)')
    return rec(path, x, 'DenseNet layer output: its new feature maps (conv2, pre-BN/ReLU)')

  def trunk(self, x, rec):
    x = self.run(rec, 'features.conv0', x, 'Conv2d output (pre-BN/ReLU)')
    x = self.run(rec, 'features.norm0', x, 'BatchNorm2d output (pre-ReLU)')
    x = rec('features.relu0', rec.relu(x), 'ReLU output (post-ReLU)')
    x = rec('features.pool0', layers.max_pool(x, 3, 2, 1), 'MaxPool2d output')
    for i, num_layers in enumerate(self.block_config, start=1):
      block = f'features.denseblock{i}'
      maps = [x]
      for j in range(1, num_layers + 1):
        maps.append(self._dense_layer(f'{block}.denselayer{j}', maps, rec))
      x = rec(block, layers.concat(maps),
              'DenseBlock output: concat of its input and every layer\'s new maps (pre-BN/ReLU)')
      if i != len(self.block_config):
        path = f'features.transition{i}'
        x = self.run(rec, f'{path}.norm', x, 'BatchNorm2d output (pre-ReLU)')
        x = rec(f'{path}.relu', rec.relu(x), 'ReLU output (post-ReLU)')
        x = self.run(rec, f'{path}.conv', x, 'Conv2d output: 1x1 compression')
        x = rec(f'{path}.pool', layers.avg_pool(x, 2, 2), 'AvgPool2d output')
        x = rec(path, x, 'Transition output: BN, ReLU, 1x1 conv, 2x2 average pool')
    x = self.run(rec, 'features.norm5', x, 'BatchNorm2d output: final features (pre-ReLU)')
    x = rec('features', x, 'output of the features Sequential (= features.norm5, pre-ReLU)')
    return rec('relu5', rec.relu(x), 'final features after DenseNet.forward\'s F.relu '
               '(not a module; post-ReLU): what the classifier pools')

  def head(self, features, rec: layers.Recorder | None = None):
    return self.layer('classifier')(layers.flatten_nchw(layers.adaptive_avg_pool(features, 1)))

  def head_paths(self) -> tuple[str, ...]:
    return ('classifier',)

  def build_head(self, num_classes: int, init: layers.Init) -> None:
    self.add_layer('classifier', layers.Linear(self.features_out, num_classes,
                                               weight_init=init.torch_default()))


densenet161 = functools.partial(DenseNet, 48, (6, 12, 36, 24), 96, name='densenet161')
