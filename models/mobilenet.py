"""torchvision's MobileNetV2 (width 1.0) in Flax NNX.

Module paths are torchvision's: `features.0` and `features.18` are Conv2dNormActivation
Sequentials (`.0` conv, `.1` BN, `.2` ReLU6: the Sequential's output is post-ReLU6);
`features.1` ... `features.17` are InvertedResidual blocks whose output is the linear bottleneck
(no activation) plus, when the shape allows, the block input; inside, `.conv` is the Sequential
(expand CNA if t != 1, depthwise CNA, 1x1 linear conv, BN). `features` (the default layer) is
features.18's post-ReLU6 output.
"""
from __future__ import annotations

import functools

from flax import nnx

from ndjax.models import layers

# t (expansion), c (output channels), n (blocks), s (first block's stride): torchvision's table.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_CNA = 'Conv2dNormActivation output: conv + BN + ReLU6 (post-ReLU6)'


class MobileNetV2(layers.TapModel):

  def __init__(self, *, num_classes: int | None = 1000, preprocessing: str = 'torch',
               name: str = 'mobilenet_v2', rngs: nnx.Rngs):
    self.arch = name
    self.preprocessing = preprocessing
    init = layers.Init(rngs)
    # torchvision's MobileNetV2 init: kaiming-normal (fan_out) convs, BN 1/0, Linear N(0, 0.01) / 0.
    conv = functools.partial(layers.Conv2d, bias=False, weight_init=init.kaiming_normal('fan_out'))
    bn = layers.BatchNorm2d
    self.blocks = []    # (path, in, out, stride, expansion) per InvertedResidual

    def cna(path, cin, cout, kernel, stride=1, groups=1):
      self.add_layer(f'{path}.0', conv(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups))
      self.add_layer(f'{path}.1', bn(cout))

    cna('features.0', 3, 32, 3, 2)
    cin, index = 32, 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
      for i in range(n):
        path, stride, hidden = f'features.{index}', (s if i == 0 else 1), cin * t
        step = 0
        if t != 1:
          cna(f'{path}.conv.{step}', cin, hidden, 1)
          step += 1
        cna(f'{path}.conv.{step}', hidden, hidden, 3, stride, groups=hidden)
        self.add_layer(f'{path}.conv.{step + 1}', conv(hidden, c, 1))
        self.add_layer(f'{path}.conv.{step + 2}', bn(c))
        self.blocks.append((path, cin, c, stride, t))
        cin, index = c, index + 1
    self.last_features = f'features.{index}'
    cna(self.last_features, cin, 1280, 1)
    self.blocks = tuple(self.blocks)
    self.add_layer('classifier.0', layers.dropout(0.2))     # torchvision's, before the Linear
    self.aliases = {}
    self.num_classes = None
    self.finish()
    if num_classes is not None:
      self.reset_classifier(num_classes, init)

  def _cna(self, path: str, x, rec):
    x = self.run(rec, f'{path}.0', x, 'Conv2d output (pre-BN/ReLU6)')
    x = self.run(rec, f'{path}.1', x, 'BatchNorm2d output (pre-ReLU6)')
    x = rec(f'{path}.2', rec.relu6(x), 'ReLU6 output (post-ReLU6)')
    return rec(path, x, _CNA)

  def _inverted_residual(self, path: str, cin: int, cout: int, stride: int, t: int, x, rec):
    out, step = x, 0
    if t != 1:
      out = self._cna(f'{path}.conv.{step}', out, rec)
      step += 1
    out = self._cna(f'{path}.conv.{step}', out, rec)
    out = self.run(rec, f'{path}.conv.{step + 1}', out, 'Conv2d output: 1x1 linear projection')
    out = self.run(rec, f'{path}.conv.{step + 2}', out, 'BatchNorm2d output (linear bottleneck)')
    out = rec(f'{path}.conv', out, 'conv Sequential output: the linear bottleneck (no activation)')
    if stride == 1 and cin == cout:
      return rec(path, layers.add(out, x),
                 'InvertedResidual output: block input + linear bottleneck (no activation)')
    return rec(path, out, 'InvertedResidual output: the linear bottleneck (no activation)')

  def trunk(self, x, rec):
    x = self._cna('features.0', x, rec)
    for path, cin, cout, stride, t in self.blocks:
      x = self._inverted_residual(path, cin, cout, stride, t, x, rec)
    x = self._cna(self.last_features, x, rec)
    return rec('features', x, 'output of the features Sequential (= features.18, post-ReLU6)')

  def head(self, features, rec: layers.Recorder | None = None):
    rec = rec or layers.Recorder({})
    x = layers.flatten_nchw(layers.adaptive_avg_pool(features, 1))
    return self.layer('classifier.1')(rec.dropout(self.layer('classifier.0'), x))

  def head_paths(self) -> tuple[str, ...]:
    return ('classifier.1',)

  def build_head(self, num_classes: int, init: layers.Init) -> None:
    self.add_layer('classifier.1', layers.Linear(1280, num_classes, weight_init=init.normal(0.01)))


mobilenet_v2 = MobileNetV2
