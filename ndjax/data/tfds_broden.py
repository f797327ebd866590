r"""Broden-format probe sets as tensorflow-datasets `array_record` copies.

  python -m ndjax.data.tfds_broden --src=/path/to/broden1_224 --out=/path/to/broden1_224_ar

A copy holds every index.csv row as one record (the image file and its mask PNGs byte for byte),
written by a TFDS builder whose manual_dir is the Broden directory, plus `ndjax_broden.json` with
the dataset's metadata. A few large files read faster than ~200k small ones, over a network file
system or object store (any path etils.epath opens) as well as on local disk, and they can be
read again and again without re-parsing the csv files.

Reading needs tensorflow-datasets and array_record only, never TensorFlow: the copy is written in
the `array_record` file format and read through `tfds.data_source` (random access, numpy). The
reader, `open_array_record`, is a `BrodenDataset`: same records in the same (index.csv) order,
and it decodes to exactly the same arrays, because the stored bytes are the original files and
they are decoded by the same code path as the directory reader.

The extra is optional (`pip install 'ndjax[tfds]'`): this module imports without it, so a caller
can always ask `is_array_record_dir`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import pathlib
import shutil
import sys
import uuid
from typing import Any

import numpy as np
from tqdm import tqdm

from ndjax import cli
from ndjax.data.broden import BrodenDataset, BrodenFormatError, ImageRecord, open_broden

TFDS_NAME = 'ndjax_broden'           # the builder's registered name and its folder in a copy
TFDS_VERSION = '1.0.0'
TFDS_SPLIT = 'probe'                 # one split, every index.csv row (Broden's train/val is kept
                                     # per record: the engine dissects on all images)
METADATA_FILE = 'ndjax_broden.json'  # written last, so its presence marks a finished copy
METADATA_FORMAT = 'ndjax-broden-array-record'
METADATA_VERSION = 1
RECORD_FIELDS = [field.name for field in dataclasses.fields(ImageRecord)]
INSTALL_HINT = "pip install 'ndjax[tfds]' (tensorflow-datasets and array-record; no TensorFlow)"


def is_array_record_dir(path: str | os.PathLike) -> bool:
  """True if `path` is a finished copy made by `build_array_record` (needs no TFDS to answer)."""
  from etils import epath
  try:
    return (epath.Path(path) / METADATA_FILE).is_file()
  except OSError:
    return False


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise BrodenFormatError(f'array_record copies need tensorflow-datasets ({e}): '
                            f'{INSTALL_HINT}') from None
  return tfds


@functools.cache
def builder_class():
  """The TFDS builder, defined on first use so that this module imports without TFDS.

  Cached: defining the class registers its name with TFDS, which allows it once per process.
  """
  tfds = _import_tfds()

  class NdjaxBroden(tfds.core.GeneratorBasedBuilder):
    """Every row of a Broden index.csv as one record, the image and mask files byte for byte."""

    VERSION = tfds.core.Version(TFDS_VERSION)
    RELEASE_NOTES = {TFDS_VERSION: 'Image and mask files stored as their original bytes.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ('Pass a Broden-format directory (index.csv, label.csv, '
                                    'category.csv, c_<category>.csv, images/) as manual_dir.')

    def _info(self):
      # DatasetInfo directly, not dataset_info_from_configs: the latter wants a TFDS package folder
      # (README, CITATIONS.bib) beside the builder's source file
      features = tfds.features
      return tfds.core.DatasetInfo(
          builder=self,
          description='A Broden-format probe set (Network Dissection), one record per image.',
          features=features.FeaturesDict({
              # row of index.csv, from 0: records come back in key-hash order, this restores it
              'index': features.Scalar(np.int64),
              'image_path': features.Text(),       # relative to images/, as in index.csv
              'image': features.Tensor(shape=(), dtype=np.object_),         # file bytes
              'masks': features.Tensor(shape=(None,), dtype=np.object_),    # PNG bytes per layer
              'image_labels': features.Tensor(shape=(None,), dtype=np.int32),
          }),
      )

    def _split_generators(self, dl_manager):
      source = open_broden(os.fspath(dl_manager.manual_dir))
      return {TFDS_SPLIT: self._generate_examples(source)}

    def _generate_examples(self, source: BrodenDataset):
      images = source.root / 'images'
      for i, rec in enumerate(source.records):
        yield i, {
            'index': i,
            'image_path': rec.image,
            'image': (images / rec.image).read_bytes(),
            'masks': [(images / rel).read_bytes() for rel in rec.mask_files],
            'image_labels': np.asarray(rec.image_labels, np.int32),
        }

  return NdjaxBroden


@contextlib.contextmanager
def _tfds_console(tfds, progress: bool):
  """TFDS prints to stdout and keeps a global progress-bar switch; keep stdout for our one line."""
  from tensorflow_datasets.core.utils import tqdm_utils
  # TFDS has a setter but no getter for its switch: read it to restore the caller's choice
  was_shown = getattr(tqdm_utils, '_active', True)
  tfds.display_progress_bar(progress)
  sink = sys.stderr if progress else io.StringIO()
  try:
    with contextlib.redirect_stdout(sink):
      yield
  finally:
    tfds.display_progress_bar(was_shown)


def _data_source(tfds, data_dir: Any, version: str):
  return tfds.data_source(f'{TFDS_NAME}:{version}', split=TFDS_SPLIT, data_dir=os.fspath(data_dir),
                          download=False)


def _record_positions(source, n_records: int, progress: bool) -> list[int]:
  """Data-source position of each index.csv row (TFDS stores records in key-hash order)."""
  positions = [-1] * n_records
  for pos in tqdm(range(len(source)), desc='indexing array_record copy', file=sys.stderr,
                  disable=not progress, unit='img'):
    index = int(source[pos]['index'])
    if not 0 <= index < n_records or positions[index] != -1:
      raise BrodenFormatError(f'array_record copy holds index {index} twice or out of range')
    positions[index] = pos
  if -1 in positions:
    raise BrodenFormatError(f'array_record copy lacks image {positions.index(-1)}')
  return positions


def build_array_record(src_broden_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       progress: bool = True) -> pathlib.Path:
  """Writes an array_record copy of a Broden directory to out_dir, atomically.

  Everything is written to a temporary folder beside out_dir and renamed into place at the end,
  so out_dir either does not exist or is a complete copy. Raises BrodenFormatError (bad source)
  or FileExistsError (out_dir taken), each with a one-line message.
  """
  src, out = pathlib.Path(src_broden_dir), pathlib.Path(out_dir)
  if out.exists():
    raise FileExistsError(f'{out} already exists; choose a new output directory')
  source = open_broden(src)           # every structural check before any writing
  tfds = _import_tfds()
  builder_cls = builder_class()
  out.parent.mkdir(parents=True, exist_ok=True)
  # not mkdtemp: its 0700 mode would stay on the finished copy; mkdir honours the umask
  tmp = out.parent / f'.{out.name}.incomplete-{uuid.uuid4().hex[:12]}'
  tmp.mkdir()
  try:
    with _tfds_console(tfds, progress):
      builder = builder_cls(data_dir=os.fspath(tmp), file_format='array_record')
      builder.download_and_prepare(
          download_dir=os.fspath(tmp / 'downloads'),
          download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(src),
                                                       try_download_gcs=False))
    shutil.rmtree(tmp / 'downloads', ignore_errors=True)   # a manual_dir build downloads nothing
    positions = _record_positions(_data_source(tfds, tmp, TFDS_VERSION), len(source.records),
                                  progress)
    metadata = {
        'format': METADATA_FORMAT,
        'format_version': METADATA_VERSION,
        'tfds_name': TFDS_NAME,
        'tfds_version': TFDS_VERSION,
        'tfds_split': TFDS_SPLIT,
        'source': str(src.resolve()),
        'categories': source.categories,
        'label_names': source.label_names,
        'primary': source.primary.tolist(),
        'record_fields': RECORD_FIELDS,
        'records': [dataclasses.astuple(rec) for rec in source.records],
        'positions': positions,
    }
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, separators=(',', ':')))
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


@dataclasses.dataclass
class ArrayRecordBroden(BrodenDataset):
  """A BrodenDataset read from an array_record copy; `root` is the copy's directory.

  Thread-safe: array_record's data source shares one thread-safe reader per shard, and decoding
  touches no shared state, so the loader's decode threads can call load_image/load_labels at once.
  """
  source: Any = dataclasses.field(kw_only=True)            # tfds data source: position -> example
  positions: np.ndarray = dataclasses.field(kw_only=True)  # int64 (n_images,): position of image i

  def _example(self, i: int) -> dict:
    example = self.source[int(self.positions[i])]
    if int(example['index']) != i:
      raise BrodenFormatError(f'{self.root}: the record for image {i} holds image '
                              f'{int(example["index"])}; the copy is inconsistent, rebuild it')
    return example

  def load_image(self, i: int) -> np.ndarray:
    """uint8 RGB (ih, iw, 3) at native size, decoded as BrodenDataset decodes the file."""
    rec = self.records[i]
    return self.decode_image(io.BytesIO(self._example(i)['image']), f'{rec.image} in {self.root}', rec)

  def _mask_labels(self, data: bytes, rel: str, rec: ImageRecord) -> np.ndarray:
    """One label layer as int32 global label numbers, checked like BrodenDataset's."""
    return self.decode_mask(io.BytesIO(data), f'{rel} in {self.root}', rec)

  def load_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (layers int32 (L, sh, sw) of global label numbers, image-level labels int32 (I,))."""
    rec = self.records[i]
    masks = self._example(i)['masks']
    if len(masks) != len(rec.mask_files):
      raise BrodenFormatError(f'{self.root}: image {i} has {len(masks)} mask layers stored but '
                              f'{len(rec.mask_files)} listed; the copy is inconsistent, rebuild it')
    layers = [self._mask_labels(data, rel, rec) for data, rel in zip(masks, rec.mask_files)]
    stack = (np.stack(layers) if layers else np.zeros((0, rec.sh, rec.sw), np.int32))
    return stack, np.asarray(rec.image_labels, np.int32)


def open_array_record(path: str | os.PathLike) -> ArrayRecordBroden:
  """Opens a copy made by build_array_record: metadata now, records lazily, in index.csv order."""
  from etils import epath
  root = epath.Path(path)
  if not is_array_record_dir(root):
    raise BrodenFormatError(f'{root} is not an array_record copy (no {METADATA_FILE}); make one '
                            'with python -m ndjax.data.tfds_broden --src=BRODEN_DIR --out=DIR')
  try:
    meta = json.loads((root / METADATA_FILE).read_text())
  except (OSError, ValueError) as e:
    raise BrodenFormatError(f'{root / METADATA_FILE} is unreadable: {e}') from None
  if (meta.get('format'), meta.get('format_version')) != (METADATA_FORMAT, METADATA_VERSION):
    raise BrodenFormatError(f'{root / METADATA_FILE}: format {meta.get("format")!r} version '
                            f'{meta.get("format_version")!r}; this ndjax reads '
                            f'{METADATA_FORMAT!r} version {METADATA_VERSION}')
  tfds = _import_tfds()
  builder_class()                     # registers the name that tfds.data_source looks up
  source = _data_source(tfds, root, meta['tfds_version'])
  if meta.get('record_fields') != RECORD_FIELDS:
    raise BrodenFormatError(f'{root / METADATA_FILE} stores records as {meta.get("record_fields")}, '
                            f'this ndjax as {RECORD_FIELDS}: rebuild the copy')
  records = [ImageRecord(**{name: tuple(value) if isinstance(value, list) else value
                            for name, value in zip(RECORD_FIELDS, row)})
             for row in meta['records']]
  if len(source) != len(records):
    raise BrodenFormatError(f'{root}: {len(source)} records stored but {len(records)} listed in '
                            f'{METADATA_FILE}; the copy is inconsistent, rebuild it')
  return ArrayRecordBroden(root=root, categories=list(meta['categories']),
                           label_names=list(meta['label_names']),
                           primary=np.asarray(meta['primary'], np.int32), records=records,
                           source=source, positions=np.asarray(meta['positions'], np.int64))


def _folder_size(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob('*') if f.is_file())


def _main() -> None:
  """The command line; flags are defined here, not at import, so that importing this module
  from another absl program (the ndjax CLI) adds no flags that could clash with its own."""
  from absl import app, flags, logging
  flags.DEFINE_string('src', None, 'Broden-format directory to copy (index.csv, label.csv, ...).')
  flags.DEFINE_string('out', None, 'Directory to create for the array_record copy (must not '
                      'exist yet).')
  flags.DEFINE_bool('progress', True, 'Show progress bars on stderr.')
  flags.mark_flags_as_required(['src', 'out'])
  FLAGS = flags.FLAGS

  def main(argv: list[str]) -> None:
    del argv
    if not FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)    # TFDS logs each step at INFO: keep stderr readable
    try:
      out = build_array_record(FLAGS.src, FLAGS.out, progress=FLAGS.progress)
    except (OSError, ValueError) as e:      # BrodenFormatError is a ValueError
      cli.fail(str(e) or type(e).__name__)
    n_images = len(json.loads((out / METADATA_FILE).read_text())['records'])
    print(f'{out}: {n_images} images in array_record, {_folder_size(out) / 2**20:.1f} MiB')

  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  _main()
