"""Probe data: the Broden format reader/writer and probe-set generators."""
from __future__ import annotations


def open_dataset(path, check_files: bool = True):
  """A Broden-format directory, or its TFDS array_record copy (`ndjax.data.tfds_broden`)."""
  from ndjax.data import broden, tfds_broden
  if tfds_broden.is_array_record_dir(path):
    try:
      return tfds_broden.open_array_record(path)
    except ImportError as e:
      raise broden.BrodenFormatError(
          f'{path} is a TFDS array_record copy, but reading it needs the tfds extra '
          f"(pip install 'ndjax[tfds]'): {e}") from None
  return broden.open_broden(path, check_files=check_files)
