"""The layer report: its numbers against the dissection's outputs, and the page in real headless Chromium.

The inputs are a real (small) dissection made by the CLI: AlexNet with random weights (whose `rf`
upsampling differs from plain bilinear, so the mask check means something) on 16 images of the
embedded procedural probe set. The browser is Debian's Chromium, driven over the DevTools protocol
on a pipe (`--remote-debugging-pipe`): no driver, no port, no extra Python package.
"""
import base64
import collections
import csv
import fcntl
import html.parser
import io
import json
import os
import pathlib
import select
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

from ndjax import report, results, topk
from ndjax.data import broden
from tests.conftest import dissected_runs

SCREENSHOT_COPY = pathlib.Path('/tmp/ndjax_report_screenshot.png')
# the closed network's start flags (env notes): no background traffic, no sandbox as root
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--hide-scrollbars', '--mute-audio')


@pytest.fixture(scope='module')
def layer_dir(tmp_path_factory):
  layer = dissected_runs(tmp_path_factory)[1] / 'conv5'
  report.write_report(layer)
  return layer


def _results(layer):
  return json.loads((layer / 'results.json').read_text())


def _tally_recount(layer) -> dict[tuple[str, str], int]:
  """Detector units per (category, label), counted from tally.csv."""
  threshold = _results(layer)['iou_threshold']
  with open(layer / 'tally.csv', newline='') as f:
    return dict(collections.Counter((r['category'], r['label']) for r in csv.DictReader(f)
                                    if float(r['score']) > threshold))


class _Elements(html.parser.HTMLParser):
  """Start tags (with attributes) of the report, for checks without a browser."""

  def __init__(self):
    super().__init__()
    self.tags = []
    self.text = collections.defaultdict(str)

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))

  def handle_data(self, data):
    if self.tags:
      tag, attrs = self.tags[-1]
      if 'id' in attrs:
        self.text[attrs['id']] += data


def _parse(path):
  parser = _Elements()
  parser.feed(path.read_text())
  return parser


def test_summary_bars_and_self_contained(layer_dir):
  page = _parse(layer_dir / report.REPORT_NAME)
  printed = (layer_dir.parent / 'done').read_text().splitlines()
  assert page.text['summary'].strip() in printed       # the very line the CLI printed
  assert page.text['summary'].startswith('conv5: ')
  bars = {(a['data-category'], a['data-label']): int(a['data-count'])
          for t, a in page.tags if t == 'rect' and a.get('class') == 'bar'}
  assert bars == _tally_recount(layer_dir) and bars
  # every unit has a row and a page; nothing is fetched from anywhere
  units = [u['unit'] for u in _results(layer_dir)['units']]
  rows = [int(a['data-unit']) for t, a in page.tags if t == 'tr' and 'data-unit' in a]
  assert sorted(rows) == units
  assert sorted(int(a['id'][5:]) for t, a in page.tags
                if t == 'section' and a.get('id', '').startswith('unit-')) == units
  for tag, attrs in page.tags:
    for key in ('src', 'href'):
      value = attrs.get(key)
      assert value is None or value.startswith(('data:', '#')), (tag, key, value[:60])
    assert tag not in ('link', 'iframe') and not (tag == 'script' and 'src' in attrs)
  assert not [p for p in os.listdir(layer_dir) if p.startswith('.tmp')]


def test_mask_overlays_equal_unit_mask(layer_dir):
  """Every drawn mask is exactly `topk.unit_mask` of that unit on that image, in rank order."""
  results = _results(layer_dir)
  top = np.load(layer_dir / 'topk.npz')
  ds = broden.open_broden(results['resolved']['dataset'])
  mode, rf = results['upsample']['mode'], tuple(results['upsample']['rf_geometry'])
  page = _parse(layer_dir / report.REPORT_NAME)
  drawn = collections.defaultdict(list)
  unit = None
  for tag, attrs in page.tags:
    if tag == 'tr' and 'data-unit' in attrs:
      unit = int(attrs['data-unit'])
    elif tag == 'img' and attrs.get('class') == 'mask':
      drawn[unit].append((int(attrs['data-image']), int(attrs['data-rank']), attrs['src']))
  fired = 0
  # a spread of units (best, worst, every 16th): one unit_mask call per image is the slow part
  by_iou = sorted(results['units'], key=lambda u: -u['iou'])
  for u in by_iou[:8] + by_iou[-4:] + results['units'][::16]:
    n = u['unit']
    expect = [int(i) for i in top['images'][n - 1, :10] if i >= 0]
    assert [i for i, _, _ in drawn[n]] == expect
    assert [r for _, r, _ in drawn[n]] == list(range(len(expect)))
    for (i, r, src) in drawn[n]:
      rec = ds.records[i]
      h, w = top['map_hw'][n - 1, r]
      want = topk.unit_mask(top['maps'][n - 1, r, :h, :w], u['threshold'], (rec.ih, rec.iw),
                            (rec.sh, rec.sw), mode, rf)
      png = Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1])))
      assert png.mode == 'P'
      got = np.asarray(png) != report.VEIL            # not veiled = the unit fires there
      np.testing.assert_array_equal(got, want, err_msg=f'unit {n} image {i}')
      fired += int(want.any() and not want.all())
  assert fired > 100                                   # real masks, not all-on or all-off


def test_report_without_topk_or_probe(layer_dir, tmp_path):
  """No topk.npz, or a probe set moved away: the page is still written, with a note."""
  for name in ('results.json', 'tally.csv'):
    shutil.copy(layer_dir / name, tmp_path / name)
  path = report.write_report(tmp_path)
  text = path.read_text()
  assert 'No topk.npz' in text and 'class="mask"' not in text and text.count('data-unit=') == 256
  shutil.copy(layer_dir / 'topk.npz', tmp_path / 'topk.npz')
  doc = _results(layer_dir)
  doc['resolved']['dataset'] = str(tmp_path / 'moved')
  (tmp_path / 'results.json').write_text(json.dumps(doc))
  text = report.write_report(tmp_path, k=3).read_text()
  assert 'Probe images unavailable' in text and 'class="mask"' not in text
  # one probe image damaged since the dissection: left out, said so, the rest drawn
  probe = tmp_path / 'probe'
  shutil.copytree(_results(layer_dir)['resolved']['dataset'], probe)
  top = np.load(layer_dir / 'topk.npz')
  damaged = int(top['images'][0, 0])
  rec = broden.open_broden(probe).records[damaged]
  (probe / 'images' / rec.image).write_bytes(b'not an image')
  doc['resolved']['dataset'] = str(probe)
  (tmp_path / 'results.json').write_text(json.dumps(doc))
  text = report.write_report(tmp_path, k=3).read_text()
  assert '1 probe image(s) could not be read' in text
  assert f'data-image="{damaged}"' not in text
  assert text.count('class="mask"') == int(np.sum(top['images'][:, :3] >= 0)) - int(
      np.sum(top['images'][:, :3] == damaged))



def _view_page(layer_dir, root, folder, view):
  """A view folder with the plain layer's results.json and tally.csv, its view record changed."""
  path = root / 'run' / folder
  path.mkdir(parents=True)
  shutil.copy(layer_dir / 'tally.csv', path / 'tally.csv')
  doc = dict(_results(layer_dir), folder=folder, view=view)
  (path / 'results.json').write_text(json.dumps(doc))
  return _parse(report.write_report(path)), path


def test_view_pages_say_what_the_view_is(layer_dir, tmp_path):
  """Title, summary line and a view line name the folder and the view; a plain page has none."""
  plain = (layer_dir / report.REPORT_NAME).read_text()
  run = layer_dir.parent.name
  assert f'<h1>Network Dissection: {run} / conv5</h1>' in plain and 'id="view"' not in plain
  rotation = {'name': 'rot_s3_a0.5_tau0.01', 'kind': 'rotation', 'tau': 0.01, 'seed': 3,
              'alpha': 0.5, 'units': 256, 'orthogonality_error': 3e-07, 'det': 1.0}
  page, path = _view_page(layer_dir, tmp_path, 'conv5@rot_s3_a0.5_tau0.01', rotation)
  text = (path / report.REPORT_NAME).read_text()
  assert f'<h1>Network Dissection: {run} / conv5@rot_s3_a0.5_tau0.01</h1>' in text
  assert page.text['summary'].startswith('conv5@rot_s3_a0.5_tau0.01: ')
  # the same counts as the plain layer's summary, only the name differs
  assert page.text['summary'].strip().split(': ', 1)[1] == _parse(
      layer_dir / report.REPORT_NAME).text['summary'].strip().split(': ', 1)[1]
  line = page.text['view']
  assert line.startswith('View rot_s3_a0.5_tau0.01: rotation Q^0.5 ')
  assert 'seed 3' in line and '256 units' in line and 'tau 0.01' in line
  assert '; tau 0.01; ' in text and '; tau [' not in text     # the view's tau, not the flag list
  directions = {'name': 'dir_mydirs', 'kind': 'directions', 'tau': 0.005,
                'file': '/data/mydirs.npy', 'sha256': 'ab' * 32, 'shape': [256, 7]}
  page, _ = _view_page(layer_dir, tmp_path, 'conv5@dir_mydirs', directions)
  assert page.text['view'].startswith('View dir_mydirs: 7 directions from /data/mydirs.npy '
                                      '(sha256 abababababab), thresholded at tau 0.005')
  with pytest.raises(results.ResultsError, match='holds no results.json'):
    report.write_report(tmp_path)

# ---- the page in real headless Chromium -------------------------------------------------------

def _chromium_binary() -> str:
  """Debian's Chromium, installed with apt-get when missing (as root); else skip, saying why."""
  found = shutil.which('chromium')
  if found:
    return found
  if os.geteuid() != 0 or not shutil.which('apt-get'):
    pytest.skip('no chromium on PATH, and apt-get as root is not available to install it')
  env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
  log = []
  for cmd in (['apt-get', 'update', '-q'], ['apt-get', 'install', '-y', '-q', 'chromium']):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    log.append(f'{" ".join(cmd)} -> {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}')
    if r.returncode:
      break
  found = shutil.which('chromium')
  if not found:
    pytest.skip('chromium could not be installed: ' + ' | '.join(log))
  return found


class Chromium:
  """Headless Chromium over the DevTools protocol on a pipe: JSON messages ending in NUL, the
  browser reading fd 3 and writing fd 4."""

  def __init__(self, binary: str, profile: pathlib.Path, log: pathlib.Path):
    to_browser_r, self._to_browser = os.pipe()
    self._from_browser, from_browser_w = os.pipe()
    # move the child's ends above 10 so `3<&A 4>&B` cannot overwrite one with the other
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
    for fd in (to_browser_r, from_browser_w):
      os.close(fd)
    args = [*CHROMIUM_FLAGS, f'--user-data-dir={profile}', '--remote-debugging-pipe',
            '--window-size=1400,1000', 'about:blank']
    self._log = open(log, 'wb')
    # bash for the fd plumbing (dash takes single-digit fds only): preexec_fn is unsafe in a
    # process with threads, and jax starts some
    self.proc = subprocess.Popen(
        [shutil.which('bash') or '/bin/bash', '-c',
         f'exec "$0" "$@" 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-',
         binary, *args], pass_fds=high, stdin=subprocess.DEVNULL, stdout=self._log,
        stderr=self._log)
    for fd in high:
      os.close(fd)
    self._next_id, self._buffer, self.events = 0, b'', []
    self.session = None

  def _read_message(self, timeout: float) -> dict:
    while b'\0' not in self._buffer:
      ready, _, _ = select.select([self._from_browser], [], [], timeout)
      if not ready:
        raise TimeoutError(f'no message from chromium in {timeout} s')
      chunk = os.read(self._from_browser, 1 << 20)
      if not chunk:
        raise ConnectionError(f'chromium closed the pipe (exit {self.proc.poll()})')
      self._buffer += chunk
    message, self._buffer = self._buffer.split(b'\0', 1)
    return json.loads(message)

  def call(self, method: str, timeout: float = 60, browser_level: bool = False, **params):
    self._next_id += 1
    message = {'id': self._next_id, 'method': method, 'params': params}
    if self.session and not browser_level:
      message['sessionId'] = self.session
    os.write(self._to_browser, json.dumps(message).encode() + b'\0')
    while True:
      reply = self._read_message(timeout)
      if reply.get('id') == self._next_id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply['result']
      self.events.append(reply)

  def wait_event(self, method: str, timeout: float = 60) -> dict:
    for i, event in enumerate(self.events):
      if event.get('method') == method:
        return self.events.pop(i)
    while True:
      event = self._read_message(timeout)
      if event.get('method') == method:
        return event
      self.events.append(event)

  def open_page(self, width: int, height: int):
    target = self.call('Target.createTarget', url='about:blank')['targetId']
    self.session = self.call('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
    self.call('Page.enable')
    self.call('Network.enable')
    self.call('Emulation.setDeviceMetricsOverride', width=width, height=height,
              deviceScaleFactor=1, mobile=False)

  def navigate(self, url: str):
    self.events.clear()
    self.call('Page.navigate', url=url)
    self.wait_event('Page.loadEventFired', timeout=120)

  def js(self, expression: str):
    result = self.call('Runtime.evaluate', expression=expression, returnByValue=True,
                       awaitPromise=True)
    if 'exceptionDetails' in result:
      raise RuntimeError(f'{expression}: {result["exceptionDetails"]}')
    return result['result'].get('value')

  def wait_for(self, expression: str, timeout: float = 20):
    """Poll a JS expression until it is truthy (events such as hashchange run as later tasks)."""
    value = self.js(f"""new Promise((resolve) => {{ const end = Date.now() + {timeout * 1000};
      (function poll() {{ const v = ({expression});
        if (v || Date.now() > end) resolve(v); else setTimeout(poll, 20); }})(); }})""")
    assert value, f'timed out waiting for {expression}'
    return value

  def click(self, selector: str):
    """A real mouse click (pressed + released) at the centre of the element."""
    x, y = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
      e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
      return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
    for kind in ('mousePressed', 'mouseReleased'):
      self.call('Input.dispatchMouseEvent', type=kind, x=x, y=y, button='left', clickCount=1)

  def screenshot(self, path: pathlib.Path):
    data = self.call('Page.captureScreenshot', format='png')['data']
    path.write_bytes(base64.b64decode(data))

  def close(self):
    try:
      self.call('Browser.close', browser_level=True, timeout=10)
    except (OSError, TimeoutError, ConnectionError, RuntimeError):
      pass
    try:
      self.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    os.close(self._to_browser)
    os.close(self._from_browser)
    self._log.close()


@pytest.fixture
def browser(tmp_path):
  binary = _chromium_binary()
  chrome = Chromium(binary, pathlib.Path(tempfile.mkdtemp(prefix='profile_', dir=tmp_path)),
                    tmp_path / 'chromium.log')
  try:
    chrome.call('Browser.getVersion', browser_level=True, timeout=60)
  except (TimeoutError, ConnectionError) as e:
    chrome.close()
    pytest.skip(f'{binary} did not start: {e}; log: '
                f'{(tmp_path / "chromium.log").read_text(errors="replace")[-400:]}')
  chrome.open_page(1400, 1000)
  yield chrome
  chrome.close()


ROWS_JS = """Array.from(document.querySelectorAll('#units tbody tr')).filter(r => !r.hidden)
  .map(r => [parseInt(r.dataset.unit), parseFloat(r.dataset.iou), r.dataset.category])"""


def test_report_in_chromium(layer_dir, browser, tmp_path):
  results = _results(layer_dir)
  units = results['units']
  page = layer_dir / report.REPORT_NAME
  browser.navigate(page.as_uri())

  # the grid shows every unit, each with its strip of decoded mask images
  rows = browser.js(ROWS_JS)
  assert sorted(r[0] for r in rows) == [u['unit'] for u in units]
  top = np.load(layer_dir / 'topk.npz')
  masks = browser.js("""Array.from(document.querySelectorAll('#units .strip img.mask')).map(i =>
    [i.complete && i.naturalWidth > 0, i.getBoundingClientRect().height,
     i.getBoundingClientRect().width, parseInt(i.dataset.image)])""")
  assert len(masks) == int(np.sum(top['images'][:, :10] >= 0))
  assert all(ok for ok, *_ in masks) and all(h == report.STRIP_PX for _, h, _, _ in masks)
  records = broden.open_broden(results['resolved']['dataset']).records
  for _, h, w, i in masks:         # each image keeps its own shape
    assert abs(w - h * records[i].iw / records[i].ih) < 1
  assert browser.js("document.getElementById('shown').textContent") == str(len(units))
  # the bar graph the browser draws holds tally.csv's counts, bar heights in proportion
  bars = browser.js("""Array.from(document.querySelectorAll('#bargraph rect.bar')).map(b =>
    [b.dataset.category, b.dataset.label, parseInt(b.dataset.count), b.getBBox().height])""")
  assert {(c, l): n for c, l, n, _ in bars} == _tally_recount(layer_dir)
  scale = max(h for *_, h in bars) / max(n for _, _, n, _ in bars)
  assert all(abs(h - n * scale) < 0.02 for _, _, n, h in bars)

  # sorting: real clicks on the headers reorder the rows in the DOM
  browser.click('th[data-key=unit]')
  assert [r[0] for r in browser.js(ROWS_JS)] == sorted(u['unit'] for u in units)
  browser.click('th[data-key=iou]')
  assert browser.js("document.querySelector('th[data-key=iou]').getAttribute('aria-sort')") == 'descending'
  rows = browser.js(ROWS_JS)
  assert [r[1] for r in rows] == sorted((u['iou'] for u in units), reverse=True)
  assert rows[0][0] == max(units, key=lambda u: (u['iou'], -u['unit']))['unit']
  browser.click('th[data-key=iou]')
  assert [r[1] for r in browser.js(ROWS_JS)] == sorted(u['iou'] for u in units)
  browser.click('th[data-key=label]')
  assert browser.js("""Array.from(document.querySelectorAll('#units tbody tr')).map(r => r.dataset.label)
    .every((l, i, a) => i === 0 || a[i - 1].localeCompare(l) <= 0)""")

  # filtering by category: only that category's units remain visible, and the count says so
  category = collections.Counter(u['category'] for u in units).most_common(1)[0][0]
  browser.js(f"""(() => {{ const s = document.getElementById('category');
    s.value = {json.dumps(category)}; s.dispatchEvent(new Event('change')); }})()""")
  rows = browser.js(ROWS_JS)
  assert sorted(r[0] for r in rows) == sorted(u['unit'] for u in units if u['category'] == category)
  assert browser.js("document.getElementById('shown').textContent") == str(len(rows))
  browser.js("""(() => { const s = document.getElementById('category'); s.value = '';
    s.dispatchEvent(new Event('change')); })()""")
  browser.click('th[data-key=iou]')                     # best units first for the screenshot
  browser.js('window.scrollTo(0, 0)')
  shot = tmp_path / 'report.png'
  browser.screenshot(shot)

  # a unit's page: its top-5 concepts per category, and its strip, over the grid
  best = max(units, key=lambda u: (u['iou'], -u['unit']))
  browser.click(f'#row-{best["unit"]} a')
  assert browser.js('location.hash') == f'#unit-{best["unit"]}'
  browser.wait_for(f"document.querySelectorAll('#unit-{best['unit']} .big-strip img').length")
  shown = browser.js(f"""(() => {{ const p = document.getElementById('unit-{best["unit"]}');
    return [getComputedStyle(p).display, p.getBoundingClientRect().width,
      Array.from(p.querySelectorAll('table.concepts tbody tr')).map(r =>
        Array.from(r.cells).map(c => c.textContent.trim())),
      Array.from(p.querySelectorAll('.big-strip img.mask')).map(i => [
        i.getBoundingClientRect().height, i.getBoundingClientRect().width,
        parseInt(i.dataset.image)])]; }})()""")
  display, width, table, strip = shown
  assert display == 'block' and width > 800
  want = [[cat] + [f'{broden.display_name(l)} {iou:.3f}' for l, iou in best['top_concepts'].get(cat, [])]
          for cat in report.category_order(results['unique_detectors'])]
  assert [row[:len(w)] for row, w in zip(table, want)] == want
  assert len(strip) == int(np.sum(top['images'][best['unit'] - 1, :10] >= 0))
  for h, w, i in strip:
    assert h == 2 * report.STRIP_PX and abs(w - h * records[i].iw / records[i].ih) < 1
  unit_shot = tmp_path / 'report_unit.png'
  browser.screenshot(unit_shot)

  # nothing but the file itself and inline data was requested
  urls = [e['params']['request']['url'] for e in browser.events
          if e.get('method') == 'Network.requestWillBeSent']
  assert all(u.startswith(('file:', 'data:')) for u in urls), [u[:80] for u in urls]

  for path in (shot, unit_shot):
    with Image.open(path) as im:
      assert im.size == (1400, 1000)
      assert len(np.unique(np.asarray(im.convert('RGB')).reshape(-1, 3), axis=0)) > 1000
  shutil.copy(shot, SCREENSHOT_COPY)
  shutil.copy(unit_shot, SCREENSHOT_COPY.with_name('ndjax_report_unit_screenshot.png'))
  print(f'screenshots: {shot}, {unit_shot} (copied to {SCREENSHOT_COPY})')
