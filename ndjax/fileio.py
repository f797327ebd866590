"""File I/O at the edges: atomic writes and the cache root.

Every output ndjax writes appears either complete or not at all: it is written to a temporary
file in the destination folder (so the final `os.replace` is a same-filesystem rename) and
renamed into place only after the last byte. A killed run never leaves a half-written tally.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def cache_root() -> Path:
  """Root of ndjax's on-disk cache: $NDJAX_CACHE if set, else ~/.cache/ndjax."""
  configured = os.environ.get('NDJAX_CACHE')
  return Path(configured).expanduser() if configured else Path.home() / '.cache' / 'ndjax'


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'wb') -> Iterator[IO]:
  """Open a temporary file beside `path`; on a clean exit it replaces `path`, else it is removed."""
  if mode not in ('w', 'wb'):
    raise ValueError(f'atomic_open writes whole files; mode {mode!r} is not "w" or "wb"')
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.partial',
                             dir=os.path.dirname(path) or '.')
  try:
    os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes 0600; outputs are ordinary files
    with os.fdopen(fd, mode, **({} if 'b' in mode else {'newline': ''})) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
  """Write `data` (text or bytes) to `path` atomically."""
  with atomic_open(path, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)
