"""The array_record copy of a Broden directory reads back exactly as the directory does."""
import concurrent.futures
import subprocess
import sys
import textwrap
import pathlib

import numpy as np
import pytest
from flax import nnx

from ndjax.models import convstack
from ndjax import dissect
from ndjax.data import broden, tfds_broden
from ndjax.probes import synthetic
from tests.conftest import CATS, LABELS, random_images


@pytest.fixture(scope='module')
def synthetic_pair(tmp_path_factory):
  """A small generated probe set and its array_record copy, built once for the module."""
  tmp = tmp_path_factory.mktemp('tfds_broden')
  src = synthetic.generate(tmp / 'p', n_images=24, seed=0, progress=False)
  out = tfds_broden.build_array_record(src, tmp / 'p_ar', progress=False)
  return src, out


def assert_same_dataset(ds: broden.BrodenDataset, copy: tfds_broden.ArrayRecordBroden) -> None:
  assert copy.categories == ds.categories
  assert copy.label_names == ds.label_names
  np.testing.assert_array_equal(copy.primary, ds.primary)
  assert copy.primary.dtype == ds.primary.dtype
  assert copy.records == ds.records                 # same rows, same (index.csv) order
  assert (copy.num_labels, copy.max_layers(), copy.max_image_labels()) == \
         (ds.num_labels, ds.max_layers(), ds.max_image_labels())
  np.testing.assert_array_equal(copy.known, ds.known)
  for i in range(len(ds.records)):
    image, image_copy = ds.load_image(i), copy.load_image(i)
    assert image_copy.dtype == image.dtype == np.uint8
    np.testing.assert_array_equal(image_copy, image, err_msg=f'image {i}')
    (layers, labels), (layers_copy, labels_copy) = ds.load_labels(i), copy.load_labels(i)
    assert layers_copy.dtype == layers.dtype == np.int32 and labels_copy.dtype == np.int32
    assert layers_copy.shape == layers.shape
    np.testing.assert_array_equal(layers_copy, layers, err_msg=f'labels {i}')
    np.testing.assert_array_equal(labels_copy, labels, err_msg=f'image labels {i}')


def test_copy_equals_directory(synthetic_pair):
  src, out = synthetic_pair
  ds, copy = broden.open_broden(src), tfds_broden.open_array_record(out)
  assert isinstance(copy, broden.BrodenDataset)
  # the stored order really is shuffled (key-hash order), so the re-sort is doing work
  assert list(copy.positions) != list(range(len(copy.records)))
  assert_same_dataset(ds, copy)
  assert 'tensorflow' not in sys.modules


def test_mixed_sizes_and_formats(broden_factory, tmp_path):
  """Interleaved sizes (the engine groups by size), JPEG and PNG, image-level and 0 labels."""
  items = random_images(np.random.default_rng(3), 10)
  for item in items[::3]:
    item['jpg'] = True
  src = broden_factory(CATS, LABELS, items)
  ds = broden.open_broden(src)
  copy = tfds_broden.open_array_record(tfds_broden.build_array_record(src, tmp_path / 'ar',
                                                                      progress=False))
  assert len({r.size_key for r in ds.records}) == 2 and ds.max_image_labels() > 0
  assert_same_dataset(ds, copy)


def test_dissection_identical_on_both_readers(synthetic_pair):
  src, out = synthetic_pair
  ops = (convstack.Op('conv', 4, 3, 2, 0), convstack.Op('relu'))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(0))
  cfg = dissect.DissectConfig(layers=('features.1',), batch_size=4, progress=False)
  results = [dissect.dissect(model, ds, cfg) for ds in
             (broden.open_broden(src), tfds_broden.open_array_record(out))]
  ref, got = (r.layers['features.1'] for r in results)
  assert results[1].images_used == results[0].images_used == 24
  np.testing.assert_array_equal(got.thresholds, ref.thresholds)
  for key, value in got.counts.as_dict().items():
    np.testing.assert_array_equal(value, ref.counts.as_dict()[key], err_msg=key)
  assert 'tensorflow' not in sys.modules


def test_concurrent_reads(synthetic_pair):
  """The loader decodes from several threads at once: every thread must get its own image."""
  _, out = synthetic_pair
  copy = tfds_broden.open_array_record(out)
  order = [i for _ in range(4) for i in range(len(copy.records))]
  expected = [copy.load_image(i) for i in range(len(copy.records))]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    got = list(pool.map(copy.load_image, order))
  for i, image in zip(order, got):
    np.testing.assert_array_equal(image, expected[i])


def test_marker_and_bad_paths(synthetic_pair, tmp_path):
  src, out = synthetic_pair
  assert tfds_broden.is_array_record_dir(out)
  assert not tfds_broden.is_array_record_dir(src)
  assert not tfds_broden.is_array_record_dir(tmp_path / 'missing')
  with pytest.raises(broden.BrodenFormatError, match='not an array_record copy'):
    tfds_broden.open_array_record(src)
  with pytest.raises(FileExistsError, match='already exists'):
    tfds_broden.build_array_record(src, out, progress=False)
  with pytest.raises(broden.BrodenFormatError, match='does not exist'):
    tfds_broden.build_array_record(tmp_path / 'missing', tmp_path / 'ar', progress=False)
  assert list(tmp_path.iterdir()) == []            # nothing half-written left behind


def test_build_is_atomic(synthetic_pair, tmp_path, monkeypatch):
  src, _ = synthetic_pair

  def broken(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(tfds_broden, '_record_positions', broken)
  with pytest.raises(OSError, match='disk full'):
    tfds_broden.build_array_record(src, tmp_path / 'ar', progress=False)
  assert list(tmp_path.iterdir()) == []


def test_works_with_tensorflow_unimportable(tmp_path):
  """Build and read with tensorflow hidden from every import finder, as where it is absent."""
  script = textwrap.dedent(f"""
      import sys

      class HideTensorFlow:
        # every finder answers "no such module" for tensorflow, as where it is not installed
        # (not sys.modules['tensorflow'] = None: TFDS takes any entry there as TF loaded)
        def __init__(self, finder):
          self.finder = finder

        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] == 'tensorflow':
            return None
          return self.finder.find_spec(name, path, target)

        def __getattr__(self, attr):
          return getattr(self.finder, attr)

      sys.meta_path[:] = [HideTensorFlow(f) if hasattr(f, 'find_spec') else f
                          for f in sys.meta_path]
      import importlib.util
      assert importlib.util.find_spec('tensorflow') is None
      import numpy as np
      from ndjax.data import broden, tfds_broden
      from ndjax.probes import synthetic
      src = synthetic.generate({str(tmp_path / 'p')!r}, n_images=3, seed=1, progress=False)
      copy = tfds_broden.open_array_record(
          tfds_broden.build_array_record(src, {str(tmp_path / 'ar')!r}, progress=False))
      ds = broden.open_broden(src)
      for i in range(3):
        assert np.array_equal(copy.load_image(i), ds.load_image(i))
        assert np.array_equal(copy.load_labels(i)[0], ds.load_labels(i)[0])
      assert 'tensorflow' not in sys.modules
      print('ok')
  """)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == 'ok'


def test_cli(synthetic_pair, tmp_path):
  src, _ = synthetic_pair
  run = lambda *args: subprocess.run([sys.executable, '-m', 'ndjax.data.tfds_broden', *args],
                                     capture_output=True, text=True, timeout=120)
  good = run(f'--src={src}', f'--out={tmp_path / "ar"}', '--noprogress')
  assert good.returncode == 0, good.stderr[-2000:]
  assert good.stdout.count('\n') == 1 and '24 images' in good.stdout
  assert tfds_broden.is_array_record_dir(tmp_path / 'ar')
  for args in ([f'--src={tmp_path / "missing"}', f'--out={tmp_path / "ar2"}'],
               [f'--src={src}', f'--out={tmp_path / "ar"}'],          # exists
               [f'--src={src}']):                                     # no --out
    bad = run(*args)
    assert bad.returncode != 0
    assert bad.stderr.strip().count('\n') == 0 and bad.stderr.startswith('error: '), bad.stderr
    assert bad.stdout == ''


def test_cli_dissects_an_array_record_copy(tmp_path):
  """`--dataset` accepts the array_record copy and gives the same tally as the directory."""
  from ndjax.data import tfds_broden
  from ndjax.probes import synthetic
  src = synthetic.generate(tmp_path / 'p', n_images=12, seed=1, progress=False)
  copy = tfds_broden.build_array_record(src, tmp_path / 'ar', progress=False)
  tallies = []
  for name, path in (('dir', src), ('ar', copy)):
    r = subprocess.run([sys.executable, '-m', 'ndjax.main', '--model=alexnet', '--weights=random',
                        f'--dataset={path}', f'--outdir={tmp_path / name}', '--noprogress',
                        '--batch_size=4'], capture_output=True, text=True, timeout=600,
                       cwd=str(pathlib.Path(__file__).parents[1]))
    assert r.returncode == 0, r.stderr
    tallies.append((tmp_path / name / 'alexnet_random_s0' / 'conv5' / 'tally.csv').read_text())
    assert (tmp_path / name / 'alexnet_random_s0' / 'conv5' / 'report.html').exists()
  assert tallies[0] == tallies[1]
