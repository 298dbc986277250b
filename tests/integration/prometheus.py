"""A real Prometheus server for tests: Debian's /usr/bin/prometheus on 127.0.0.1, a free port, a
storage dir of its own, given scrape targets and the rules of monitoring/prometheus/alerts.yml;
stopped (that process, and only it) when the block ends."""
from __future__ import annotations

import contextlib
import pathlib
import shutil
import socket
import subprocess
import time

import httpx
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES = REPO / 'monitoring' / 'prometheus' / 'alerts.yml'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def rules_with_for(duration: str, source: pathlib.Path = RULES) -> dict:
  """The rules of `source` as they are, but for every alert's `for:` set to `duration`: the
  only change a test makes, so a few seconds of traffic can fire an alert whose production
  `for:` is minutes (expressions, thresholds, windows and labels are the shipped ones)."""
  shipped = yaml.safe_load(source.read_text())
  changed = yaml.safe_load(source.read_text())
  for group in changed['groups']:
    for rule in group['rules']:
      if 'alert' in rule:
        rule['for'] = duration
  strip = lambda doc: [{k: v for k, v in r.items() if k != 'for'}  # noqa: E731
                       for g in doc['groups'] for r in g['rules']]
  assert strip(changed) == strip(shipped)
  return changed


class Prometheus:
  """A started server: `query`, `alerts` and `rules` read its HTTP API."""

  def __init__(self, base_url: str, process: subprocess.Popen, log: pathlib.Path):
    self.base_url, self.process, self.log = base_url, process, log
    self.http = httpx.Client(base_url=base_url, timeout=5)

  def _get(self, path: str, **params) -> dict | list:
    assert self.process.poll() is None, 'prometheus exited:\n' + self.log.read_text()[-3000:]
    reply = self.http.get(path, params=params)
    reply.raise_for_status()
    body = reply.json()
    assert body['status'] == 'success', body
    return body['data']

  def query(self, expr: str) -> list[dict]:
    """The instant vector `expr` evaluates to now: [{'metric': {...}, 'value': [t, 'v']}]."""
    return self._get('/api/v1/query', query=expr)['result']

  def alerts(self) -> list[dict]:
    """Pending and firing alerts, each with labels, annotations, state and activeAt."""
    return self._get('/api/v1/alerts')['alerts']

  def rule(self, name: str) -> dict:
    """The rule named `name` (alert or record) as the server holds it: state, health,
    lastEvaluation."""
    for group in self._get('/api/v1/rules')['groups']:
      for rule in group['rules']:
        if rule['name'] == name:
          return rule
    raise AssertionError(f'no rule {name} loaded')


@contextlib.contextmanager
def running(workdir: pathlib.Path, scrape_configs: list[dict], rules: dict,
            interval: str = '1s', timeout: float = 20):
  """Prometheus scraping `scrape_configs` and evaluating `rules` every `interval`."""
  binary = shutil.which('prometheus') or '/usr/bin/prometheus'
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'rules.yml').write_text(yaml.safe_dump(rules, sort_keys=False))
  (workdir / 'prometheus.yml').write_text(yaml.safe_dump({
      'global': {'scrape_interval': interval, 'evaluation_interval': interval},
      'rule_files': ['rules.yml'], 'scrape_configs': scrape_configs}, sort_keys=False))
  port = free_port()
  log = workdir / 'prometheus.log'
  process = subprocess.Popen(
      [binary, f'--config.file={workdir / "prometheus.yml"}',
       f'--storage.tsdb.path={workdir / "data"}', f'--web.listen-address=127.0.0.1:{port}',
       '--log.level=warn'],
      stdout=log.open('wb'), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
  server = Prometheus(f'http://127.0.0.1:{port}', process, log)
  try:
    deadline = time.monotonic() + timeout
    while True:
      assert process.poll() is None, 'prometheus exited:\n' + log.read_text()[-3000:]
      try:
        if httpx.get(server.base_url + '/-/ready', timeout=1).status_code == 200:
          break
      except httpx.TransportError:
        pass
      assert time.monotonic() < deadline, 'prometheus not ready:\n' + log.read_text()[-3000:]
      time.sleep(0.1)
    yield server
  finally:
    server.http.close()
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait(timeout=5)
