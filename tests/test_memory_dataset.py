"""An in-memory probe set (`ndjax.data.memory.from_arrays`) is the directory it would be written as.

Why: the pipeline must not care where a probe set lives. The same random arrays are written as a
Broden directory (by the tests' own writer, independent of ndjax's) and handed to from_arrays;
everything the pipeline reads from either, and what a dissection computes from it, must agree
exactly, and bad arrays must fail as the directory reader fails: one line naming the problem.
"""
import numpy as np
import pytest
from flax import nnx

from ndjax import api, dissect
from ndjax.data import broden, memory
from ndjax.models import convstack
from ndjax.probes.broden_writer import BrodenWriter
from tests.conftest import CATS, LABELS, make_broden, random_images

NAMES = {n: name for n, (name, _) in LABELS.items()}
CATEGORY_OF = {n: cat for n, (_, cat) in LABELS.items()}


def _items(n=11, seed=5):
  items = random_images(np.random.default_rng(seed), n)
  seen = {int(v) for it in items for layers in it['masks'].values() for a in layers
          for v in np.unique(a)} | {v for it in items for v in sum(it['image_labels'].values(), [])}
  assert set(LABELS) <= seen          # every label occurs: computed primaries cover all labels
  return items


def _from_items(items, **kwargs):
  return memory.from_arrays([it['image'] for it in items], [it['masks'] for it in items],
                            [it['image_labels'] for it in items], CATS, NAMES, **kwargs)


def _pair(tmp_path, items, **kwargs):
  return broden.open_broden(make_broden(tmp_path / 'broden', CATS, LABELS, items)), \
      _from_items(items, **kwargs)


def test_reads_like_the_directory(tmp_path):
  items = _items()
  on_disk, in_memory = _pair(tmp_path, items)
  assert in_memory.root is None
  assert in_memory.categories == on_disk.categories
  assert in_memory.label_names == on_disk.label_names
  np.testing.assert_array_equal(in_memory.known, on_disk.known)
  np.testing.assert_array_equal(in_memory.primary, on_disk.primary)
  assert in_memory.num_labels == on_disk.num_labels
  assert in_memory.max_layers() == on_disk.max_layers() == 4            # color, object, 2 parts
  assert in_memory.max_image_labels() == on_disk.max_image_labels() == 1
  for i, (mine, theirs) in enumerate(zip(in_memory.records, on_disk.records)):
    assert mine.size_key == theirs.size_key
    assert mine.image_labels == theirs.image_labels
    assert len(mine.mask_files) == len(theirs.mask_files)
    np.testing.assert_array_equal(in_memory.load_image(i), on_disk.load_image(i))
    for a, b in zip(in_memory.load_labels(i), on_disk.load_labels(i)):
      assert a.dtype == b.dtype == np.int32
      np.testing.assert_array_equal(a, b)
    for rel, layer in zip(mine.mask_files, in_memory.load_labels(i)[0]):
      np.testing.assert_array_equal(in_memory.load_mask(rel, mine), layer)


def test_given_categories_and_plain_lists(tmp_path):
  """Untagged layer lists with each label's category: the same arrays, the same primaries."""
  items = _items()
  on_disk = broden.open_broden(make_broden(tmp_path / 'broden', CATS, LABELS, items))
  flat = memory.from_arrays(
      np.stack([it['image'] for it in items[::2]]),        # one (N, H, W, 3) array, one size
      [sum(it['masks'].values(), []) for it in items[::2]],
      [sum(it['image_labels'].values(), []) for it in items[::2]],
      CATS, [NAMES[n] for n in sorted(NAMES)],
      label_categories=[CATEGORY_OF[n] for n in sorted(NAMES)])
  np.testing.assert_array_equal(flat.primary, on_disk.primary)
  for i, j in enumerate(range(0, len(items), 2)):
    for a, b in zip(flat.load_labels(i), on_disk.load_labels(j)):
      np.testing.assert_array_equal(a, b)


def test_arrays_are_copied_and_read_only():
  items = _items()
  ds = _from_items(items)
  before = ds.load_image(0).copy()
  items[0]['image'][:] = 0
  items[0]['masks']['color'][0][:] = 1
  np.testing.assert_array_equal(ds.load_image(0), before)
  assert not ds.load_image(0).flags.writeable and not ds.load_labels(0)[0].flags.writeable
  assert (ds.load_labels(0)[0][0] != 1).any()


def test_primary_rule_matches_the_reader(tmp_path):
  """Labels in several categories: the largest coverage wins, a tie goes to the later category.

  The directory comes from ndjax's own writer, whose c_<category>.csv coverages are what the
  rule reads; from_arrays must compute the same coverages from the same arrays.
  """
  cats = ['scene', 'object', 'part', 'texture']
  labels = ['car', 'wheel', 'door', 'beach-s', 'striped']      # 1..5
  rng = np.random.default_rng(3)
  obj = np.zeros((2, 10, 12), np.int64)
  obj[0, :5], obj[0, 5:8], obj[1, :2] = 1, 2, 2     # wheel: 0.3 + 0.2 of the object masks ...
  obj[0, 8] = 4                                     # beach-s: 0.1 of an object mask, ...
  part = np.zeros((2, 10, 12), np.int64)
  part[0, :1], part[0, 1:3], part[1, :4] = 2, 3, 3  # ... wheel: but 0.1 of the part masks
  striped = np.full((10, 12), 5)                    # striped: whole image in scene, by pixels
  masks = [{'object': [obj[0]], 'part': [part[0]], 'scene': [4]},      # ... beach-s: 1 in scene
           {'object': [obj[1]], 'part': [part[1]], 'scene': [5, striped], 'texture': [5]}]  # a tie
  images = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in masks]
  with BrodenWriter(tmp_path / 'written', labels, categories=cats, image_format='png',
                    mask_size=(10, 12)) as writer:
    for image, m in zip(images, masks):
      writer.add(image, m)
  on_disk = broden.open_broden(tmp_path / 'written')
  in_memory = memory.from_arrays(
      images, [{c: [a for a in v if not isinstance(a, int)] for c, v in m.items()} for m in masks],
      [{c: [a for a in v if isinstance(a, int)] for c, v in m.items()} for m in masks],
      cats, labels)
  np.testing.assert_array_equal(in_memory.primary, on_disk.primary)
  np.testing.assert_array_equal(in_memory.primary, [-1, 1, 1, 2, 0, 3])
  assert [r.size_key for r in in_memory.records] == [r.size_key for r in on_disk.records]


def _model():
  ops = (convstack.Op('conv', 6, 3, 1, 1), convstack.Op('relu'),
         convstack.Op('pool', kernel=2, stride=2))
  return convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(2))


def test_dissection_is_identical(tmp_path):
  on_disk, in_memory = _pair(tmp_path, _items())
  model = _model()
  cfg = dissect.DissectConfig(layers=('features.1', 'features.2'), tau=0.1, batch_size=4,
                              progress=False, topk=3)
  ref, out = (dissect.dissect(model, ds, cfg) for ds in (on_disk, in_memory))
  assert out.images_used == ref.images_used == 11 and not out.bad_images
  assert [(r.layer, r.view.name) for r in out.results] == \
      [(r.layer, r.view.name) for r in ref.results]
  for mine, theirs in zip(out.results, ref.results):
    np.testing.assert_array_equal(mine.thresholds, theirs.thresholds)
    assert set(mine.counts.as_dict()) == {'inter', 'label_pixels', 'act_paper', 'act_lite',
                                          'act_pixels'}
    for key, value in mine.counts.as_dict().items():
      np.testing.assert_array_equal(value, theirs.counts.as_dict()[key], err_msg=key)
    assert mine.counts.label_pixels.sum() > 0 and mine.counts.inter.sum() > 0
    np.testing.assert_array_equal(mine.top.images, theirs.top.images)
    np.testing.assert_array_equal(mine.top.values, theirs.top.values)

  # the outputs are written from the object; the report draws its strips from it
  lines = api.write_outputs(out, in_memory, str(tmp_path / 'run'), model=model, topk=3)
  assert len(lines) == 2
  page = (tmp_path / 'run' / 'features.2' / 'report.html').read_text()
  assert 'unavailable' not in page and 'background-image:url' in page
  # a report rebuilt later from the folder alone has no path to reopen, and says so
  from ndjax import report
  page = report.write_report(tmp_path / 'run' / 'features.2', k=3).read_text()
  assert 'unavailable' in page and 'background-image:url' not in page


def _bad(change):
  """from_arrays on a small valid set with one argument changed by `change(kwargs)`."""
  rng = np.random.default_rng(0)
  kwargs = dict(
      images=[rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)],
      label_layers=[{'object': [np.ones((4, 4), np.int32)]}, {'part': [np.full((4, 4), 2)]}, {}],
      image_labels=[{'scene': [3]}, {}, {'scene': [0]}],
      categories=['object', 'part', 'scene'], labels=['car', 'wheel', 'beach-s'])
  assert memory.from_arrays(**kwargs).records[2].image_labels == ()    # the valid one is valid
  change(kwargs)
  with pytest.raises(broden.BrodenFormatError) as info:
    memory.from_arrays(**kwargs)
  return str(info.value)


def _set(key, value):
  return lambda kw: kw.update({key: value})


def _entry(key, i, value):
  return lambda kw: kw[key].__setitem__(i, value)


BAD = {
    'float image': (_entry('images', 1, np.zeros((8, 8, 3), np.float32)),
                    'image 1 (image1) is float32 (8, 8, 3); images must be uint8 (H, W, 3)'),
    'gray image': (_entry('images', 0, np.zeros((8, 8), np.uint8)),
                   'image 0 (image0) is uint8 (8, 8)'),
    'float layer': (_entry('label_layers', 0, {'object': [np.ones((4, 4))]}),
                    'image 0 (image0) layer 0 (object) is float64 (4, 4); label layers must be '
                    'integer (sh, sw)'),
    '3-d layer': (_entry('label_layers', 0, [np.ones((4, 4, 3), np.int32)]), 'integer (sh, sw)'),
    'unknown label': (_entry('label_layers', 1, {'part': [np.full((4, 4), 9)]}),
                      'image 1 (image1) layer 0 (part) holds label 9, which is not in labels'),
    'negative label': (_entry('label_layers', 1, {'part': [np.full((4, 4), -1)]}),
                       'holds label -1, which is not in labels'),
    'label in a gap': (lambda kw: kw.update(labels={1: 'car', 3: 'beach-s'}),
                       'image 1 (image1) layer 0 (part) holds label 2, which is not in labels'),
    'unknown image label': (_entry('image_labels', 0, {'scene': [7]}),
                            'image 0 (image0) image-level label 7 is not in labels'),
    'non-integer image label': (_entry('image_labels', 0, {'scene': [1.0]}),
                                'image label 1.0 is not an integer'),
    'layers of two sizes': (_entry('label_layers', 0, {'object': [np.ones((4, 4), int)],
                                                       'part': [np.ones((4, 5), int)]}),
                            'image 0 (image0) layer 1 (part) is 5x4 but its layer 0 says 4x4'),
    'layer vs mask_sizes': (_set('mask_sizes', (4, 6)), 'layer 0 (object) is 4x4 but mask_sizes '
                            'says 6x4'),
    'too few layers': (lambda kw: kw['label_layers'].pop(),
                       'label_layers has 2 entries but there are 3 images'),
    'too many image labels': (lambda kw: kw['image_labels'].append([]),
                              'image_labels has 4 entries but there are 3 images'),
    'names': (_set('names', ['a', 'b']), 'names has 2 entries but there are 3 images'),
    'unknown category': (_entry('label_layers', 0, {'bogus': [np.ones((4, 4), int)]}),
                         "image 0 (image0) label_layers has category 'bogus', which is not in "
                         'categories'),
    'no images': (lambda kw: kw.update(images=[], label_layers=[], image_labels=[]),
                  'images is empty'),
    'category twice': (_set('categories', ['object', 'part', 'object']), 'lists a name twice'),
    'untagged, no categories': (_entry('label_layers', 0, [np.ones((4, 4), int)]),
                                'image 0 (image0) gives labels without categories: pass '
                                'label_categories'),
    'label category unknown': (_set('label_categories', ['object', 'part', 'sky']),
                               "label 3 (beach-s) has category 'sky', which is not in categories"),
    'label category missing': (_set('label_categories', {1: 'object', 2: 'part'}),
                               'label_categories lacks label 3 (beach-s)'),
    'label zero': (_set('labels', {0: 'none', 1: 'car'}), 'label number 0 must be an integer'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_arrays_fail_in_one_line(case):
  change, expected = BAD[case]
  message = _bad(change)
  assert '\n' not in message and message.startswith('from_arrays: ')
  assert expected in message
