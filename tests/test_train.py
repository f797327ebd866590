"""ndjax.train: the step against torch's SGD, learning, byte-identical resumption, snapshots that
the dissection loads, the schedule of snapshots, and the built-in task."""
from __future__ import annotations


import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ndjax import api
from ndjax.models import convstack
from ndjax.ported_weights import checkpoint, registry, torch_state
from ndjax.train import input_pipeline, train
from tests.conftest import CATS, LABELS, random_images

TINY_OPS = (convstack.Op('conv', 6, 3, 1, 1), convstack.Op('relu'),
            convstack.Op('pool', kernel=2, stride=2), convstack.Op('conv', 8, 3, 1, 1),
            convstack.Op('relu'))


def tiny(classes=3, seed=0):
  return convstack.ConvStack(TINY_OPS, preprocessing='torch', name='tiny',
                             classifier=(convstack.Op('linear', 0),), pool_size=1,
                             num_classes=classes, rngs=nnx.Rngs(seed))


def config(**overrides):
  c = ml_collections.ConfigDict(dict(
      model='alexnet', seed=0, dataset='probe_task', image_size=16, train_images=0, test_images=0,
      batch_size=8, total_steps=8, optimizer='sgd', learning_rate=0.05, momentum=0.9,
      weight_decay=5e-4, warmup_steps=2, schedule='cosine', label_smoothing=0.0, log_every=1,
      eval_every=4, checkpoint_every=2, snapshots='log', init_from=''))
  c.update(overrides)
  return c


def toy_data(n=48, size=16, classes=3, seed=0):
  """Each class a colour plus noise: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n).astype(np.int32)
  colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]])[:classes]
  images = colours[labels][:, None, None, :] + rng.normal(0, 30, (n, size, size, 3))
  images = np.clip(images, 0, 255).astype(np.uint8)
  split = lambda a, b: input_pipeline.Split(images[a:b], labels[a:b], size)
  return input_pipeline.Data(split(0, n - 16), split(n - 16, n), ['red', 'green', 'blue'][:classes])


def run_with_tiny(workdir, cfg, data, monkeypatch):
  monkeypatch.setattr(train, 'create_model', lambda c, k: tiny(k, c.seed))
  return train.Run(cfg, workdir, data, progress=False)


def test_train_step_equals_torch_sgd():
  """Two steps (momentum engaged) of ndjax's step on a tiny net = torch.optim.SGD with the same
  weights, lr, momentum and weight decay: loss and every updated weight."""
  torch = pytest.importorskip('torch')
  model = tiny()
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, 1, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
                            torch.nn.Conv2d(6, 8, 3, 1, 1), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(8, 3)).double()
  names = {'0': 'features.0', '3': 'features.3', '7': 'classifier.0'}
  state = {f'{names[k.split(".")[0]]}.{k.split(".")[1]}': v.numpy()
           for k, v in net.state_dict().items()}
  torch_state.load_state_dict(model, state, source='torch test net')
  model.preprocessing = 'none'                   # torch weights set torch's; this net takes raw
  cfg = config(learning_rate=0.1, warmup_steps=0, schedule='constant')
  opt = nnx.Optimizer(model, train.optimizer(cfg), wrt=nnx.Param)
  torch_opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  rng = np.random.default_rng(0)
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  model.train()
  for step in range(2):
    images = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, 4).astype(np.int32)
    loss, _ = train.train_step(model, opt, images, labels, jax.random.key(step))
    torch_opt.zero_grad()
    x = torch.tensor(images.transpose(0, 3, 1, 2), dtype=torch.float64)
    ref = torch.nn.functional.cross_entropy(net(x), torch.tensor(labels, dtype=torch.long))
    ref.backward()
    torch_opt.step()
    assert float(loss) == pytest.approx(ref.item(), rel=1e-5)
  ours = checkpoint._flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  theirs = {'features_0.kernel': net[0].weight, 'features_0.bias': net[0].bias,
            'features_3.kernel': net[3].weight, 'features_3.bias': net[3].bias,
            'classifier_0.kernel': net[7].weight, 'classifier_0.bias': net[7].bias}
  for name, tensor in theirs.items():
    t = tensor.detach().numpy()
    t = t.transpose(2, 3, 1, 0) if t.ndim == 4 else t.T if t.ndim == 2 else t
    np.testing.assert_allclose(np.asarray(ours[name]), t, rtol=2e-5, atol=2e-6, err_msg=name)
  start = checkpoint._flatten(before)
  assert min(np.abs(np.asarray(ours[k]) - start[k]).max() for k in theirs) > 1e-4   # it moved


def test_training_lowers_the_loss(tmp_path, monkeypatch):
  run = run_with_tiny(tmp_path, config(total_steps=30, eval_every=30, snapshots=''), toy_data(),
                      monkeypatch)
  run.train()
  train_rows = [r for r in _rows(tmp_path) if r['split'] == 'train']
  assert len(train_rows) == 30
  assert float(train_rows[-1]["loss"]) < float(train_rows[0]["loss"]) / 3
  assert float(train.accuracy_table(tmp_path)[-1]['accuracy']) > 0.9


def _rows(workdir):
  import csv
  with open(workdir / 'metrics.csv') as f:
    return list(csv.DictReader(f))


def _variables(run):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state((run.model, run.opt))))


def test_a_killed_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
  data = toy_data()
  cfg = config(total_steps=8, checkpoint_every=2)
  straight = run_with_tiny(tmp_path / 'a', cfg, data, monkeypatch)
  straight.train()
  killed = run_with_tiny(tmp_path / 'b', cfg, data, monkeypatch)
  killed.train(stop_at=5)                            # checkpoints at 2, 4, 5; "killed" after 5
  again = run_with_tiny(tmp_path / 'b', cfg, data, monkeypatch)
  assert again.step == 0
  again.train()
  assert again.step == 8
  a, b = _variables(straight), _variables(again)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
  strip = lambda p: [line.rsplit(',', 1)[0] for line in open(p).read().splitlines()]
  assert strip(tmp_path / 'a' / 'metrics.csv') == strip(tmp_path / 'b' / 'metrics.csv')


def test_snapshots_load_into_the_dissection(tmp_path, monkeypatch, broden_factory):
  data = toy_data()
  run = run_with_tiny(tmp_path, config(total_steps=5), data, monkeypatch)
  run.train(stop_at=2)
  in_memory = nnx.clone(run.model)
  run.train()
  assert sorted(int(p.name) for p in (tmp_path / 'snapshots').iterdir()) == [0, 1, 2, 5]
  loaded = tiny()
  registry.load_weights(loaded, str(tmp_path / 'snapshots' / '2'))
  in_memory.eval()
  ds = api.open_probe(broden_factory(CATS, LABELS, random_images(np.random.default_rng(0), 6)))
  a = api.dissect(in_memory, ds, ['features.4'], tau=0.1, batch_size=3, progress=False)
  b = api.dissect(loaded, ds, ['features.4'], tau=0.1, batch_size=3, progress=False)
  np.testing.assert_array_equal(a.layers['features.4'].thresholds, b.layers['features.4'].thresholds)
  for key, value in a.layers['features.4'].counts.as_dict().items():
    np.testing.assert_array_equal(value, getattr(b.layers['features.4'].counts, key))
  assert not np.array_equal(a.layers['features.4'].thresholds,
                            api.dissect(tiny(), ds, ['features.4'], tau=0.1, batch_size=3,
                                        progress=False).layers['features.4'].thresholds)


def test_snapshot_steps_are_log_spaced():
  assert train.snapshot_steps(1000, 'log') == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
  assert train.snapshot_steps(3000, 'log')[-3:] == [1000, 2000, 3000]
  assert train.snapshot_steps(7, '') == []


def test_batches_are_a_function_of_seed_and_step():
  a = [input_pipeline.batch_indices(50, 8, 3, s) for s in range(12)]
  b = [input_pipeline.batch_indices(50, 8, 3, s) for s in range(12)]
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  epoch0 = np.concatenate(a[:6])
  assert len(set(epoch0.tolist())) == 48                    # no repeats within an epoch
  assert not np.array_equal(a[0], a[6])                     # a new permutation next epoch
  assert not np.array_equal(a[0], input_pipeline.batch_indices(50, 8, 4, 0))


def test_builtin_task_is_deterministic_and_labels_what_is_drawn():
  from ndjax.fileio import cache_root
  from ndjax.probes import composite, ingredients
  try:
    catalogue = composite.load_catalogue(ingredients.ensure_ingredients(cache_root(),
                                                                        progress=False))
  except ingredients.IngredientError as e:
    pytest.skip(f'probe ingredients unavailable: {e}')
  classes = input_pipeline.task_classes(catalogue)
  assert len(classes) >= 10
  seed = input_pipeline.TASK_SEEDS['probe_task']['train']
  seen = 0
  for index in range(12):
    image, name = input_pipeline.task_example(catalogue, seed, index, 64)
    again, same = input_pipeline.task_example(catalogue, seed, index, 64)
    assert np.array_equal(image, again) and name == same
    _, masks, _, _ = composite.render(catalogue, seed, index, 64, 64)
    layers = masks.get('object', [])
    if name is None:
      assert len(layers) < 2                                # no group layer: no cut-out
      continue
    seen += 1
    group = layers[1]                                       # the Broden group layer, full res
    numbers, counts = np.unique(group[group > 0], return_counts=True)
    by_number = {n: label for label, n in catalogue.number.items()}
    assert by_number[int(numbers[np.argmax(counts)])] == name
  assert seen >= 4


def test_material_task_labels_the_largest_material():
  """The fine-tuning label set: the class is the material covering the most pixels, read back
  from the probe generator's own material mask of the same composite."""
  from ndjax.fileio import cache_root
  from ndjax.probes import composite, ingredients
  try:
    catalogue = composite.load_catalogue(ingredients.ensure_ingredients(cache_root(),
                                                                        progress=False))
  except ingredients.IngredientError as e:
    pytest.skip(f'probe ingredients unavailable: {e}')
  task = 'probe_task_material'
  classes = input_pipeline.task_classes(catalogue, task)
  assert len(classes) >= 10 and len(set(classes) & set(input_pipeline.task_classes(catalogue))) <= 1
  seed = input_pipeline.TASK_SEEDS[task]['train']
  by_number = {n: label for label, n in catalogue.number.items()}
  seen = 0
  for index in range(16):
    _, name = input_pipeline.task_example(catalogue, seed, index, 64, task)
    _, masks, _, _ = composite.render(catalogue, seed, index, 64, 64)
    if name is None:
      assert 'material' not in masks
      continue
    seen += 1
    material = masks['material'][0]
    numbers, counts = np.unique(material[material > 0], return_counts=True)
    assert by_number[int(numbers[np.argmax(counts)])] == name and name in classes
  assert seen >= 5


def test_rerun_with_another_config_is_refused(tmp_path, monkeypatch):
  """A workdir holds one run: another learning rate is refused (naming the field); how often to
  log or checkpoint may change; a field an older config lacked counts as its default."""
  import json
  data = toy_data()
  run_with_tiny(tmp_path, config(total_steps=2), data, monkeypatch).train()
  with pytest.raises(train.TrainError, match="learning_rate: 0.05 -> 0.1"):
    run_with_tiny(tmp_path, config(total_steps=2, learning_rate=0.1), data, monkeypatch).train()
  run_with_tiny(tmp_path, config(total_steps=2, log_every=2, checkpoint_every=1), data,
                monkeypatch).train()
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['log_every'] == 2
  del saved['label_smoothing']                             # an older config without the field
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  run_with_tiny(tmp_path, config(total_steps=2, log_every=2, checkpoint_every=1), data,
                monkeypatch).train()
  (tmp_path / 'config.json').write_text('{"trunc')
  with pytest.raises(train.TrainError, match='cannot read'):
    run_with_tiny(tmp_path, config(total_steps=2), data, monkeypatch).train()


@pytest.mark.parametrize('size,kernel,stride,ceil', [(6, 3, 2, False), (7, 3, 2, True),
                                                     (13, 3, 2, False)])
def test_max_pool_gradient_equals_torch(size, kernel, stride, ceil):
  """AlexNet at 112 px pools a 6x6 map with kernel 3 stride 2: the last row and column are in no
  window. The forward and the gradient (which a negative padding used to break) equal torch's."""
  torch = pytest.importorskip('torch')
  from ndjax.models import layers
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  out = layers.max_pool(x, kernel, stride, 0, ceil)
  weights = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
  grad = jax.grad(lambda v: (layers.max_pool(v, kernel, stride, 0, ceil) * weights).sum())(x)
  t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  t_out = torch.nn.functional.max_pool2d(t, kernel, stride, 0, ceil_mode=ceil)
  (t_out * torch.tensor(weights.transpose(0, 3, 1, 2))).sum().backward()
  np.testing.assert_allclose(np.asarray(out), t_out.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(grad), t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6)


def _toy_tfds(data_dir):
  """A prepared TFDS image-classification dataset on disk (array_record, PNG-encoded images of
  odd sizes, a ClassLabel): what `tfds build` leaves for a user. Built with PNG bytes, which needs
  no TensorFlow (tfds.testing.mock_data encodes its random images with TensorFlow, which the test
  extra does not install)."""
  import io
  import tensorflow_datasets as tfds
  from PIL import Image

  class NdjaxToyClasses(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(names=['ant', 'bee', 'cat'])}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(0, 20), 'test': self._generate_examples(1, 7)}

    def _generate_examples(self, seed, n):
      rng = np.random.default_rng(seed)
      for i in range(n):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), np.uint8)).save(out, format='PNG')
        yield i, {'image': out.getvalue(), 'label': int(rng.integers(3))}

  NdjaxToyClasses(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return 'ndjax_toy_classes'


def test_tfds_dataset_through_data_source(tmp_path):
  """A prepared TFDS classification dataset read through tfds.data_source: the labels (read
  without decoding the images) and the centre-cropped, resized images equal the records', the
  class names come from the metadata, and a missing dataset is one clear error."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from PIL import Image
  name = _toy_tfds(tmp_path / 'tfds')
  data = input_pipeline.get_data(config(dataset=f'tfds:{name}', image_size=16),
                                 str(tmp_path / 'tfds'))
  assert data.classes == ['ant', 'bee', 'cat']
  for split, n in ((data.train, 20), (data.test, 7)):
    source = tfds.data_source(name, split='train' if n == 20 else 'test',
                              data_dir=str(tmp_path / 'tfds'))
    assert len(split) == len(source) == n
    np.testing.assert_array_equal(split.labels, [int(source[i]['label']) for i in range(n)])
  images, labels = data.train.get(np.array([3, 11]))
  assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
  raw = tfds.data_source(name, split='train', data_dir=str(tmp_path / 'tfds'))[11]['image']
  h, w = raw.shape[:2]
  assert h > w == 30                                       # a centre crop of the rows
  top = (h - w) // 2
  expected = np.asarray(Image.fromarray(raw[top:top + w]).resize((16, 16), Image.BILINEAR))
  np.testing.assert_array_equal(images[1], expected)
  np.testing.assert_array_equal(labels, data.train.labels[[3, 11]])
  with pytest.raises(input_pipeline.DataError, match='cannot open TFDS dataset'):
    input_pipeline.get_data(config(dataset='tfds:no_such_dataset_here'), str(tmp_path))
