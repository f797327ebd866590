"""torchvision's GoogLeNet (Inception v1) in Flax NNX: the eval path, without the auxiliary heads.

As in torchvision: every BasicConv2d is conv (no bias) + BatchNorm (eps 1e-3) + an in-place ReLU
that is not a module, so `conv1` / `inception3a.branch1` are post-ReLU while `conv1.conv` /
`conv1.bn` are pre-ReLU; max pools use ceil_mode; branch3's "5x5" conv is 3x3 (torchvision's known
deviation from the paper, kept so its weights load); with `transform_input` (what torchvision's
ImageNet weights use) the torch-normalised input is re-normalised to (x - 0.5) / 0.5 per channel.
The auxiliary classifiers only run in training, so their weights are dropped on conversion.
Paper names: `inception_3a` ... `inception_5b`, `pool1` ... `pool4` alias the torchvision paths.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ndjax.models import layers

# (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj), torchvision's table.
INCEPTIONS = {
    'inception3a': (192, 64, 96, 128, 16, 32, 32),
    'inception3b': (256, 128, 128, 192, 32, 96, 64),
    'inception4a': (480, 192, 96, 208, 16, 48, 64),
    'inception4b': (512, 160, 112, 224, 24, 64, 64),
    'inception4c': (512, 128, 128, 256, 24, 64, 64),
    'inception4d': (512, 112, 144, 288, 32, 64, 64),
    'inception4e': (528, 256, 160, 320, 32, 128, 128),
    'inception5a': (832, 256, 160, 320, 32, 128, 128),
    'inception5b': (832, 384, 192, 384, 48, 128, 128),
}
# Max pools that follow a module, with their kernel size (all stride 2, ceil_mode).
_POOLS_AFTER = {'conv1': ('maxpool1', 3), 'conv3': ('maxpool2', 3),
                'inception3b': ('maxpool3', 3), 'inception4e': ('maxpool4', 2)}
_BASIC_CONV = 'BasicConv2d output: conv + BN + ReLU (post-ReLU)'


class GoogLeNet(layers.TapModel):

  def __init__(self, *, num_classes: int | None = 1000, transform_input: bool = True,
               preprocessing: str = 'torch', name: str = 'googlenet', rngs: nnx.Rngs):
    self.arch = name
    self.preprocessing = preprocessing
    self.transform_input = transform_input
    conv_specs = [('conv1', 3, 64, 7, 2, 3), ('conv2', 64, 64, 1, 1, 0),
                  ('conv3', 64, 192, 3, 1, 1)]
    for name_, (cin, c1, c3r, c3, c5r, c5, proj) in INCEPTIONS.items():
      conv_specs += [(f'{name_}.branch1', cin, c1, 1, 1, 0),
                     (f'{name_}.branch2.0', cin, c3r, 1, 1, 0),
                     (f'{name_}.branch2.1', c3r, c3, 3, 1, 1),
                     (f'{name_}.branch3.0', cin, c5r, 1, 1, 0),
                     (f'{name_}.branch3.1', c5r, c5, 3, 1, 1),
                     (f'{name_}.branch4.1', cin, proj, 1, 1, 0)]
    init = layers.Init(rngs)
    for path, cin, cout, kernel, stride, padding in conv_specs:
      self.add_layer(f'{path}.conv', layers.Conv2d(cin, cout, kernel, stride, padding, bias=False,
                                                   weight_init=self._weight_init(init)))
      self.add_layer(f'{path}.bn', layers.BatchNorm2d(cout, eps=1e-3))
    self.dropout = layers.dropout(0.2)     # torchvision's, before fc
    self.aliases = {f'inception_{n[9:]}': n for n in INCEPTIONS}
    self.aliases.update({f'pool{i}': f'maxpool{i}' for i in range(1, 5)})
    self.num_classes = None
    self.finish()
    if num_classes is not None:
      self.reset_classifier(num_classes, init)

  @staticmethod
  def _weight_init(init: layers.Init):
    # torchvision's GoogLeNet init: trunc_normal_(std=0.01, a=-2, b=2) for convs and the fc
    return init.trunc_normal(0.01, -2.0, 2.0)

  def input_transform(self, x):
    if not self.transform_input:
      return x
    # torchvision's _transform_input, channel by channel with its constants, for bit-level parity
    channels = [x[..., c:c + 1] * (std / 0.5) + (mean - 0.5) / 0.5
                for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))]
    return jnp.concatenate(channels, axis=-1)

  def _basic_conv(self, path: str, x, rec):
    x = self.run(rec, f'{path}.conv', x, 'Conv2d output (pre-BN, pre-ReLU)')
    x = self.run(rec, f'{path}.bn', x, 'BatchNorm2d output (pre-ReLU)')
    return rec(path, rec.relu(x), _BASIC_CONV)

  def _inception(self, path: str, x, rec):
    b1 = self._basic_conv(f'{path}.branch1', x, rec)
    b2 = self._basic_conv(f'{path}.branch2.0', x, rec)
    b2 = rec(f'{path}.branch2', self._basic_conv(f'{path}.branch2.1', b2, rec),
             'branch2 output: 1x1 reduce then 3x3 BasicConv2d (post-ReLU)')
    b3 = self._basic_conv(f'{path}.branch3.0', x, rec)
    b3 = rec(f'{path}.branch3', self._basic_conv(f'{path}.branch3.1', b3, rec),
             'branch3 output: 1x1 reduce then 3x3 BasicConv2d (post-ReLU)')
    b4 = rec(f'{path}.branch4.0', layers.max_pool(x, 3, 1, 1, ceil_mode=True),
             'MaxPool2d output (3x3, stride 1)')
    b4 = rec(f'{path}.branch4', self._basic_conv(f'{path}.branch4.1', b4, rec),
             'branch4 output: 3x3 max pool then 1x1 BasicConv2d (post-ReLU)')
    return rec(path, layers.concat([b1, b2, b3, b4]),
               'Inception output: concat of its 4 branches, each post-ReLU')

  def trunk(self, x, rec):
    for path in ('conv1', 'conv2', 'conv3'):
      x = self._basic_conv(path, x, rec)
      if path in _POOLS_AFTER:
        pool, kernel = _POOLS_AFTER[path]
        x = rec(pool, layers.max_pool(x, kernel, 2, 0, ceil_mode=True), 'MaxPool2d output')
    for path in INCEPTIONS:
      x = self._inception(path, x, rec)
      if path in _POOLS_AFTER:
        pool, kernel = _POOLS_AFTER[path]
        x = rec(pool, layers.max_pool(x, kernel, 2, 0, ceil_mode=True), 'MaxPool2d output')
    return x

  def head(self, features, rec: layers.Recorder | None = None):
    rec = rec or layers.Recorder({})
    x = layers.flatten_nchw(layers.adaptive_avg_pool(features, 1))
    return self.layer('fc')(rec.dropout(self.dropout, x))

  def head_paths(self) -> tuple[str, ...]:
    return ('fc',)

  def build_head(self, num_classes: int, init: layers.Init) -> None:
    self.add_layer('fc', layers.Linear(1024, num_classes, weight_init=self._weight_init(init),
                                       bias_init=init.torch_default_bias(1024)))


googlenet = GoogLeNet
