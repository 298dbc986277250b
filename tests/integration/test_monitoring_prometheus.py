"""monitoring/prometheus/alerts.yml in a real Prometheus server scraping a running connector
(against the session's Firestore emulator): with healthy traffic (200s and 404s) the error-rate
alert is not firing; when Firestore stops answering, the connector answers 503, and Prometheus
reports ConnectorHighErrorRate firing through /api/v1/alerts. The rules are the shipped ones but
for every alert's `for:`, set to 0s (tests/integration/prometheus.py, rules_with_for)."""
import concurrent.futures
import contextlib
import datetime as dt
import itertools
import threading

import httpx
import uvicorn
from google.cloud import firestore

from connector.app import create_app
from connector.config import Settings
from connector.store import DocumentStore
from tests.integration import helpers, prometheus
from tests.integration.test_connector_api import document

PROJECT = 'demo-local'
KEY = 'k-monitoring-0123456789abcdef'
ALERT = 'ConnectorHighErrorRate'
RATIO = 'job:connector_requests_5xx:ratio_rate5m'


@contextlib.contextmanager
def connector(app, port: int):
  """The connector app on uvicorn in a thread until the block ends; an httpx client on it."""
  server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port, log_level='warning'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  base = f'http://127.0.0.1:{port}'
  helpers.wait_for(lambda: _healthy(base), 20, 'the connector to answer /healthz', every=0.1)
  try:
    with httpx.Client(base_url=base, timeout=10,
                      headers={'Authorization': f'Bearer {KEY}'}) as client:
      yield client
  finally:
    server.should_exit = True
    thread.join(timeout=10)


def _healthy(base: str) -> bool:
  try:
    return httpx.get(base + '/healthz', timeout=1).status_code == 200
  except httpx.TransportError:
    return False


def _value(samples: list[dict], **labels) -> float | None:
  for sample in samples:
    if all(sample['metric'].get(k) == v for k, v in labels.items()):
      return float(sample['value'][1])
  return None


def test_the_error_rate_alert_fires_when_the_connector_answers_5xx(local_stack, local_stack_dir,
                                                                 unique_name, tmp_path):
  db = firestore.Client(project=PROJECT)
  db.collection(unique_name).document('c1').set(document('c1'))
  port = prometheus.free_port()
  settings = Settings(project=PROJECT, collection=unique_name, api_keys=(KEY,), port=port)
  # A short Firestore timeout: while the emulator is paused each lookup is a 503 within 0.6 s.
  store = DocumentStore(PROJECT, '(default)', unique_name, timeout=0.3)
  scrape = [{'job_name': 'connector', 'authorization': {'credentials': KEY},
             'static_configs': [{'targets': [f'127.0.0.1:{port}']}]}]
  unknown = (f'nobody{i}' for i in itertools.count())  # never cached: each one asks Firestore

  def healthy_round(client):
    assert client.get('/v1/customers/c1/personalization').status_code == 200
    assert client.get(f'/v1/customers/{next(unknown)}/personalization').status_code == 404

  # Prometheus first: its first scrape comes about 5 s after it starts (2.42 applies its
  # targets every 5 s), time the connector's start-up overlaps.
  rules = prometheus.rules_with_for('0s')
  with prometheus.running(tmp_path / 'prometheus', scrape, rules) as prom, \
      connector(create_app(settings, store=store), port) as client:
    # Healthy traffic until the rule has judged it: a ratio of 0 over enough requests to count.
    for _ in range(15):
      healthy_round(client)

    def judged():
      healthy_round(client)
      enough = prom.query('sum by (job) (increase(connector_requests_total'
                          '{endpoint!~"/healthz|/readyz|/metrics"}[5m])) >= 20')
      return _value(prom.query(RATIO), job='connector') == 0 and enough
    helpers.wait_for(judged, 30, 'Prometheus to evaluate the healthy traffic', every=0.1)
    evaluated = prom.rule(ALERT)['lastEvaluation']
    helpers.wait_for(
        lambda: healthy_round(client) or prom.rule(ALERT)['lastEvaluation'] != evaluated,
        10, 'one more evaluation of the alert', every=0.05)
    assert prom.rule(ALERT)['health'] == 'ok'
    assert prom.rule(ALERT)['state'] == 'inactive'
    assert not [a for a in prom.alerts() if a['labels']['alertname'] == ALERT]

    # Firestore stops answering: lookups of uncached customers are 503s.
    statuses = []
    paused_at = dt.datetime.now(dt.timezone.utc)
    with helpers.paused(local_stack_dir, 'firestore'), \
        concurrent.futures.ThreadPoolExecutor(8) as pool:
      def firing():
        statuses.extend(pool.map(
            lambda customer: client.get(f'/v1/customers/{customer}/personalization').status_code,
            [next(unknown) for _ in range(8)]))
        return [a for a in prom.alerts()
                if a['labels']['alertname'] == ALERT and a['state'] == 'firing']
      [alert] = helpers.wait_for(firing, 30, f'{ALERT} to fire', every=0.05)
    assert set(statuses) == {503}
    assert alert['labels'] == {'alertname': ALERT, 'job': 'connector', 'severity': 'critical',
                               'service': 'connector'}
    assert 'of send-time API answers are 5xx' in alert['annotations']['summary']
    assert dt.datetime.fromisoformat(alert['activeAt'].replace('Z', '+00:00')) >= paused_at
    assert _value(prom.query(RATIO), job='connector') > 0.05
