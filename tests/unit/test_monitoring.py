"""monitoring/: the Prometheus rules pass `promtool check rules` and their `promtool test rules`
cases (every alert firing on some series and silent on others); the rules and the Grafana
dashboard name only metrics the services expose (read from their registries in-process); the
Grafana dashboard is importable; the Cloud Monitoring dashboard and alert policies parse as the
client's own types with unknown fields refused, name metric types Google publishes, and name
only Beam metrics the pipeline reports."""
import asyncio
import json
import pathlib
import re
import shutil
import subprocess

import httpx
import pytest
import yaml
from google.cloud import monitoring_dashboard_v1, monitoring_v3
from google.protobuf import json_format
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from transforms import metrics as beam_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
MONITORING = REPO / 'monitoring'
RULES = MONITORING / 'prometheus' / 'alerts.yml'
RULE_TESTS = MONITORING / 'prometheus' / 'alerts.test.yml'
GRAFANA = MONITORING / 'grafana' / 'services.json'
CLOUD_DASHBOARD = MONITORING / 'cloud' / 'dataflow-dashboard.json'
POLICIES = sorted((MONITORING / 'cloud' / 'policies').glob('*.json'))
# Series the services do not expose that the rules and the dashboard may read: Prometheus's own
# `up`, and Pub/Sub's backlog age from Cloud Monitoring through stackdriver_exporter (the
# services cannot see their subscription's backlog; docs/OPERATIONS.md).
EXTERNAL = {
    'up': 'prometheus',
    'stackdriver_pubsub_subscription_pubsub_googleapis_com_subscription_oldest_unacked_message_age':
        'stackdriver_exporter',
}
# The Google Cloud metric types the Cloud Monitoring files use, with their monitored resource,
# kind and value type as Google's metrics list gives them.
GOOGLE_METRICS = {
    'dataflow.googleapis.com/job/system_lag': ('dataflow_job', 'GAUGE', 'INT64'),
    'dataflow.googleapis.com/job/data_watermark_age': ('dataflow_job', 'GAUGE', 'INT64'),
    'dataflow.googleapis.com/job/user_counter': ('dataflow_job', 'GAUGE', 'DOUBLE'),
    'pubsub.googleapis.com/subscription/oldest_unacked_message_age':
        ('pubsub_subscription', 'GAUGE', 'INT64'),
    'pubsub.googleapis.com/subscription/num_undelivered_messages':
        ('pubsub_subscription', 'GAUGE', 'INT64'),
}
# Aligners Cloud Monitoring accepts only for DELTA and CUMULATIVE metrics.
NOT_FOR_GAUGES = {'ALIGN_DELTA', 'ALIGN_RATE'}
# How Dataflow names a Beam distribution's parts in user_counter's metric_name.
DISTRIBUTION_PARTS = ('MEAN', 'MAX', 'MIN', 'COUNT')


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
  tool = shutil.which('promtool')
  assert tool, 'promtool is missing: `make venv` installs Debian\'s prometheus package'
  return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def rules() -> list[dict]:
  return [rule for group in yaml.safe_load(RULES.read_text())['groups'] for rule in group['rules']]


def grafana_targets(dashboard: dict) -> list[tuple[dict, dict]]:
  """(panel, target) for every query of every panel, rows' nested panels included."""
  found = []
  for panel in dashboard['panels']:
    for inner in [panel, *panel.get('panels', [])]:
      found.extend((inner, target) for target in inner.get('targets', []))
  return found


# ---- PromQL: the metric names an expression reads ------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r'\{[^{}]*\}')
_RANGES = re.compile(r'\[[^\]]*\]')
_GROUPING = re.compile(r'\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)')
_NAME = re.compile(r'(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()')
_KEYWORDS = {'and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring',
             'group_left', 'group_right', 'inf', 'nan'}
GRAFANA_VARIABLES = {'$__rate_interval': '5m', '$__interval': '1m', '$__range': '1h'}


def metric_names(expr: str) -> set[str]:
  """The metric names a PromQL expression selects. Hand-written rather than a PromQL parser
  library: promtool (the real parser) checks each expression's syntax in these tests, and what
  is left to find, the identifiers in selector position, takes these few rules."""
  expr = with_grafana_values(expr)
  for pattern in (_STRINGS, _MATCHERS, _RANGES, _GROUPING):
    expr = pattern.sub(' ', expr)
  return {name for name in _NAME.findall(expr) if name not in _KEYWORDS}


def test_metric_names_finds_selectors_only():
  expr = ('histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{le!="0.5", x=~"y|z"}'
          '[5m]))) / on(job) group_left(team) sum without (instance) (b_total offset 1h) > bool 2e3'
          ' or vector(0) and c:recorded:ratio unless ignoring(q) d[$__rate_interval]')
  assert metric_names(expr) == {'a_seconds_bucket', 'b_total', 'c:recorded:ratio', 'd'}


def check_syntax(exprs: list[str], tmp_path: pathlib.Path) -> None:
  """Every expression parses (promtool checks them as recording rules)."""
  exprs = [with_grafana_values(e) for e in exprs]
  file = tmp_path / 'exprs.yml'
  file.write_text(yaml.safe_dump({'groups': [{'name': 'exprs', 'rules': [
      {'record': f'check:expr{i}', 'expr': e} for i, e in enumerate(exprs)]}]}))
  result = promtool('check', 'rules', str(file))
  assert result.returncode == 0, result.stdout + result.stderr


def with_grafana_values(expr: str) -> str:
  """Grafana's interval variables replaced by durations, so promtool can parse the query."""
  for variable, value in GRAFANA_VARIABLES.items():
    expr = expr.replace(variable, value)
  return expr


# ---- what the services expose -----------------------------------------------------------------

def _samples(text: str) -> dict[str, str]:
  """Exposition text -> {sample name: family name}, for every sample a family can have (a
  counter or histogram with labels shows no samples until first used)."""
  suffixes = {'counter': ('_total', '_created'), 'gauge': ('',), 'untyped': ('',),
              'histogram': ('_bucket', '_count', '_sum', '_created'),
              'summary': ('', '_count', '_sum', '_created'), 'info': ('_info',),
              'stateset': ('',), 'gaugehistogram': ('_bucket', '_gcount', '_gsum')}
  return {family.name + suffix: family.name for family in text_string_to_metric_families(text)
          for suffix in suffixes[family.type]}


def connector_metrics() -> str:
  from connector.app import create_app
  from connector.config import Settings
  key = 'k-monitoring-0123456789'
  app = create_app(Settings(project='demo-local', api_keys=(key,)))

  async def scrape():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url='http://connector') as client:
      reply = await client.get('/metrics', headers={'Authorization': f'Bearer {key}'})
      assert reply.status_code == 200
      return reply.text
  return asyncio.run(scrape())


def collector_metrics() -> str:
  from collector.app import Collector
  from collector.config import Settings
  settings = Settings.from_sources([], {'COLLECTOR_PROJECT': 'demo-local',
                                        'COLLECTOR_TOPIC': 'events',
                                        'COLLECTOR_WRITE_KEYS': 'wk_web_0123:web'})
  return generate_latest(Collector(settings).registry).decode()


def trigger_metrics() -> str:
  from connector import triggers
  return generate_latest(triggers.Metrics().registry).decode()


def sync_metrics() -> str:
  from connector.sync.worker import Metrics
  return generate_latest(Metrics().registry).decode()


@pytest.fixture(scope='module')
def exposed() -> dict[str, dict[str, str]]:
  """Per service, {sample name: family}."""
  return {'connector': _samples(connector_metrics()), 'collector': _samples(collector_metrics()),
          'trigger-worker': _samples(trigger_metrics()), 'sync-worker': _samples(sync_metrics())}


def test_each_service_exposes_what_the_alerts_need(exposed):
  """The families the issue names, by service (a rename in a service fails here first)."""
  needed = {
      'connector': {'connector_requests_total', 'connector_request_seconds_bucket',
                    'connector_redis_lookups_total', 'connector_redis_breaker_open',
                    'connector_document_age_seconds_bucket'},
      'collector': {'collector_requests_total', 'collector_publish_seconds_bucket',
                    'collector_events_refused_total', 'collector_events_accepted_total'},
      'trigger-worker': {'triggers_messages_total', 'triggers_webhook_requests_total',
                         'triggers_webhook_seconds_bucket', 'triggers_oldest_message_age_seconds'},
      'sync-worker': {'sync_items_dead_lettered_total', 'sync_requests_total',
                      'sync_request_seconds_bucket', 'sync_oldest_message_age_seconds'},
  }
  for service, names in needed.items():
    assert names <= set(exposed[service]), (service, names - set(exposed[service]))


# ---- Prometheus rules ---------------------------------------------------------------------------

def test_promtool_checks_the_rules():
  result = promtool('check', 'rules', str(RULES))
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'SUCCESS' in result.stdout


def test_promtool_rule_tests_pass():
  result = promtool('test', 'rules', RULE_TESTS.name, cwd=RULE_TESTS.parent)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'SUCCESS' in result.stdout


def test_every_alert_has_a_firing_case_and_a_silent_one():
  alerts = {rule['alert'] for rule in rules() if 'alert' in rule}
  firing, silent = set(), set()
  for case in yaml.safe_load(RULE_TESTS.read_text())['tests']:
    for check in case.get('alert_rule_test', []):
      (firing if check.get('exp_alerts') else silent).add(check['alertname'])
  assert alerts == firing, ('without a firing case', alerts - firing)
  assert alerts == silent, ('without a silent case', alerts - silent)
  assert len(alerts) >= 20


def test_every_alert_has_a_for_duration_severity_and_runbook():
  for rule in rules():
    if 'alert' in rule:
      assert re.fullmatch(r'\d+[smh]', rule['for']), rule['alert']
      assert rule['labels']['severity'] in ('critical', 'warning'), rule['alert']
      assert rule['annotations']['runbook'].endswith(rule['alert']), rule['alert']
      assert rule['annotations']['summary'], rule['alert']


def test_every_alert_is_explained_in_the_operations_doc():
  doc = (REPO / 'docs' / 'OPERATIONS.md').read_text()
  section = doc.split('## Dashboards and alerts', 1)[1].split('\n## ', 1)[0]
  names = [rule['alert'] for rule in rules() if 'alert' in rule]
  names += [json.loads(p.read_text())['documentation']['content'].rsplit('`', 2)[1]
            for p in POLICIES]
  missing = [name for name in names if f'`{name}`' not in section]
  assert not missing, missing


def test_rules_read_only_metrics_the_services_expose(exposed):
  recorded = {rule['record'] for rule in rules() if 'record' in rule}
  known = set(EXTERNAL).union(*exposed.values())
  for rule in rules():
    unknown = metric_names(rule['expr']) - known - recorded
    assert not unknown, (rule.get('alert') or rule.get('record'), unknown)


def test_the_example_prometheus_config_is_valid(tmp_path):
  """promtool check config, with the credential files it names in place (and the rules)."""
  config = MONITORING / 'prometheus' / 'prometheus.example.yml'
  shutil.copy(config, tmp_path / config.name)
  shutil.copy(RULES, tmp_path / RULES.name)
  parsed = yaml.safe_load(config.read_text())
  for scrape in parsed['scrape_configs']:
    secret = scrape.get('authorization', {}).get('credentials_file')
    if secret:
      (tmp_path / secret).parent.mkdir(parents=True, exist_ok=True)
      (tmp_path / secret).write_text('placeholder\n')
  result = promtool('check', 'config', config.name, cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  # The job names ServiceDown and the dashboard select on are the ones scraped.
  jobs = {scrape['job_name'] for scrape in parsed['scrape_configs']}
  assert {'connector', 'collector', 'trigger-worker', 'sync-worker'} <= jobs


# ---- Grafana ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def grafana() -> dict:
  return json.loads(GRAFANA.read_text())


def test_grafana_dashboard_is_importable(grafana):
  assert grafana['title'] and grafana['uid'] and isinstance(grafana['schemaVersion'], int)
  [variable] = [v for v in grafana['templating']['list'] if v['type'] == 'datasource']
  assert (variable['name'], variable['query']) == ('datasource', 'prometheus')
  ids = [panel['id'] for panel in grafana['panels']]
  assert len(ids) == len(set(ids))
  occupied = set()
  for panel in grafana['panels']:
    pos = panel['gridPos']
    assert pos['w'] >= 1 and pos['h'] >= 1 and pos['x'] + pos['w'] <= 24, panel['title']
    cells = {(x, y) for x in range(pos['x'], pos['x'] + pos['w'])
             for y in range(pos['y'], pos['y'] + pos['h'])}
    assert not cells & occupied, f'{panel["title"]} overlaps another panel'
    occupied |= cells
    if panel['type'] == 'row':
      continue
    assert panel['datasource'] == {'type': 'prometheus', 'uid': '${datasource}'}, panel['title']
    assert panel['targets'] and panel['description'], panel['title']
    refs = [target['refId'] for target in panel['targets']]
    assert len(refs) == len(set(refs)), panel['title']
    for target in panel['targets']:
      assert target['datasource']['uid'] == '${datasource}' and target['expr'].strip()
  rows = [panel['title'] for panel in grafana['panels'] if panel['type'] == 'row']
  assert len(rows) >= 4  # one per service, at least


def test_grafana_queries_parse_and_read_only_exposed_metrics(grafana, exposed, tmp_path):
  exprs = [target['expr'] for _, target in grafana_targets(grafana)]
  check_syntax(exprs, tmp_path)
  known = set(EXTERNAL).union(*exposed.values())
  for panel, target in grafana_targets(grafana):
    unknown = metric_names(target['expr']) - known
    assert not unknown, (panel['title'], unknown)
  # Every service has panels.
  used = set().union(*(metric_names(e) for e in exprs))
  for service, samples in exposed.items():
    assert used & set(samples), f'no panel for the {service}'


def test_every_metric_an_alert_reads_is_on_the_grafana_dashboard(grafana, exposed):
  family = {sample: name for samples in exposed.values() for sample, name in samples.items()}
  family.update({name: name for name in EXTERNAL})
  recorded = {rule['record'] for rule in rules() if 'record' in rule}
  alerting = set().union(*(metric_names(rule['expr']) for rule in rules())) - recorded
  shown = set().union(*(metric_names(t['expr']) for _, t in grafana_targets(grafana)))
  missing = {family[name] for name in alerting} - {family.get(name, name) for name in shown}
  assert not missing, missing


# ---- Cloud Monitoring ---------------------------------------------------------------------------

def beam_metric_names() -> tuple[set[str], set[str]]:
  """(counters, distributions) the pipeline reports: the transforms.metrics constants the code
  passes to metrics.counter / metrics.distribution."""
  kinds = {'counter': set(), 'distribution': set()}
  for source in [*(REPO / 'transforms').rglob('*.py'), *(REPO / 'pipeline').rglob('*.py')]:
    for kind, constant in re.findall(r'metrics\.(counter|distribution)\(metrics\.([A-Z_]+)\)',
                                     source.read_text()):
      kinds[kind].add(getattr(beam_metrics, constant))
  return kinds['counter'], kinds['distribution']


def _alternatives(pattern: str) -> list[str]:
  """'a|b' or 'prefix_(A|B)' -> the names it matches (the only regex forms used here)."""
  grouped = re.fullmatch(r'([\w]*)\(([\w|]+)\)', pattern)
  if grouped:
    return [grouped[1] + part for part in grouped[2].split('|')]
  assert re.fullmatch(r'[\w|]+', pattern), f'unexpected metric_name pattern {pattern!r}'
  return pattern.split('|')


def user_counter_names(text: str) -> list[str]:
  """The metric_name values a filter or a PromQL query selects."""
  names = []
  for value in re.findall(r'metric_name"?\s*=~?\s*"([^"]+)"', text):
    names += _alternatives(value)
  for value in re.findall(r'metric\.labels?\."?metric_name"?\s*=\s*monitoring\.regex\.'
                          r'full_match\("([^"]+)"\)', text):
    names += _alternatives(value)
  return names


def check_user_counter_names(names: list[str], where: str) -> None:
  counters, distributions = beam_metric_names()
  assert names, where
  for name in names:
    base, _, part = name.rpartition('_')
    ok = name in counters or (part in DISTRIBUTION_PARTS and base in distributions)
    assert ok, f'{where}: {name} is not a counter or distribution the pipeline reports'


def check_filter(text: str, where: str, aligners=()) -> None:
  """A Cloud Monitoring filter names one metric type Google publishes, on its resource, with
  aligners its kind accepts; user_counter filters name the pipeline's own metrics."""
  [metric_type] = re.findall(r'metric\.type\s*=\s*"([^"]+)"', text)
  assert metric_type in GOOGLE_METRICS, f'{where}: unknown metric type {metric_type}'
  resource, kind, _ = GOOGLE_METRICS[metric_type]
  assert re.findall(r'resource\.type\s*=\s*"([^"]+)"', text) == [resource], where
  if kind == 'GAUGE':
    assert not set(aligners) & NOT_FOR_GAUGES, f'{where}: {aligners} on a GAUGE'
  if metric_type.endswith('/user_counter'):
    check_user_counter_names(user_counter_names(text), where)


def promql_name(metric_type: str) -> str:
  """Cloud Monitoring's PromQL name of a metric type: dataflow.googleapis.com/job/system_lag
  -> dataflow_googleapis_com:job_system_lag."""
  domain, path = metric_type.split('/', 1)
  return re.sub(r'[^\w]', '_', domain) + ':' + re.sub(r'[^\w]', '_', path)


def check_promql(query: str, where: str, tmp_path: pathlib.Path) -> None:
  check_syntax([query], tmp_path)
  by_name = {promql_name(t): t for t in GOOGLE_METRICS}
  names = metric_names(query)
  assert names and names <= set(by_name), f'{where}: {names - set(by_name)}'
  for selector in re.findall(r'(\w+:\w+)\{([^}]*)\}', query):
    resource = GOOGLE_METRICS[by_name[selector[0]]][0]
    assert f'monitored_resource="{resource}"' in selector[1], where
  if any(by_name[n].endswith('/user_counter') for n in names):
    check_user_counter_names(user_counter_names(query), where)


def test_cloud_dashboard_parses_as_the_clients_dashboard(tmp_path):
  text = CLOUD_DASHBOARD.read_text()
  dashboard = monitoring_dashboard_v1.Dashboard.from_json(text, ignore_unknown_fields=False)
  json_format.Parse(text, monitoring_dashboard_v1.Dashboard.pb(
      monitoring_dashboard_v1.Dashboard()), ignore_unknown_fields=False)
  assert dashboard.display_name
  [job_filter] = dashboard.dashboard_filters
  variable = '${' + job_filter.template_variable + '}'
  tiles = dashboard.mosaic_layout.tiles
  assert len(tiles) >= 8
  titles = ' '.join(tile.widget.title for tile in tiles).lower()
  for subject in ('system lag', 'freshness', 'dead-letter', 'firestore'):
    assert subject in titles, subject
  for tile in tiles:
    for data_set in tile.widget.xy_chart.data_sets:
      query = data_set.time_series_query
      where = tile.widget.title
      if query.prometheus_query:
        check_promql(query.prometheus_query, where, tmp_path)
      else:
        ts_filter = query.time_series_filter
        check_filter(ts_filter.filter, where, [ts_filter.aggregation.per_series_aligner.name])
        if 'dataflow_job' in ts_filter.filter:
          assert variable in ts_filter.filter, f'{where}: not filtered by the job'


def test_cloud_alert_policies_parse_as_the_clients_alert_policy(tmp_path):
  covered = set()
  assert len(POLICIES) >= 4
  for path in POLICIES:
    text = path.read_text()
    policy = monitoring_v3.AlertPolicy.from_json(text, ignore_unknown_fields=False)
    json_format.Parse(text, monitoring_v3.AlertPolicy.pb(monitoring_v3.AlertPolicy()),
                      ignore_unknown_fields=False)
    assert policy.display_name and policy.documentation.content and policy.conditions, path.name
    assert policy.severity.name in ('CRITICAL', 'WARNING'), path.name
    for condition in policy.conditions:
      where = f'{path.name}: {condition.display_name}'
      if condition.condition_prometheus_query_language.query:
        rule = condition.condition_prometheus_query_language
        check_promql(rule.query, where, tmp_path)
        covered.update(user_counter_names(rule.query))
      else:
        threshold = condition.condition_threshold
        check_filter(threshold.filter, where,
                     [a.per_series_aligner.name for a in threshold.aggregations])
        covered.update(re.findall(r'metric\.type="[^"]+/(\w+)"', threshold.filter))
      assert (condition.condition_prometheus_query_language.duration
              or condition.condition_threshold.duration), where
  # What the issue asks the job's alerts to watch.
  assert {'system_lag', 'data_watermark_age', beam_metrics.EVENTS_DEAD_LETTERED,
          beam_metrics.FIRESTORE_RETRIES} <= covered


def test_a_typo_in_a_cloud_file_fails_to_parse():
  policy = json.loads(POLICIES[0].read_text())
  policy['conditions'][0]['displayNme'] = policy['conditions'][0].pop('displayName')
  with pytest.raises(json_format.ParseError):
    monitoring_v3.AlertPolicy.from_json(json.dumps(policy), ignore_unknown_fields=False)
  dashboard = json.loads(CLOUD_DASHBOARD.read_text())
  dashboard['mosaicLayout']['tiles'][0]['widget']['xyChart']['dataSet'] = []
  with pytest.raises(json_format.ParseError):
    monitoring_dashboard_v1.Dashboard.from_json(json.dumps(dashboard), ignore_unknown_fields=False)


def test_a_filter_on_an_unknown_metric_or_beam_counter_fails():
  with pytest.raises(AssertionError, match='unknown metric type'):
    check_filter('metric.type="dataflow.googleapis.com/job/system_lagg" '
                 'resource.type="dataflow_job"', 'typo')
  with pytest.raises(AssertionError, match='not a counter or distribution'):
    check_filter('metric.type="dataflow.googleapis.com/job/user_counter" '
                 'resource.type="dataflow_job" metric.label."metric_name"="events_dead_letterd"',
                 'typo')
  with pytest.raises(AssertionError, match='on a GAUGE'):
    check_filter('metric.type="dataflow.googleapis.com/job/system_lag" '
                 'resource.type="dataflow_job"', 'aligner', ['ALIGN_RATE'])


# ---- the trigger worker's metrics setting -------------------------------------------------------

def test_trigger_worker_metrics_listen_setting():
  from connector import triggers
  from connector.config import ConfigError
  env = {'TRIGGERS_SUBSCRIPTION': 'projects/p/subscriptions/s', 'TRIGGERS_WEBHOOK_URL': 'http://x',
         'TRIGGERS_SIGNING_SECRET': 's' * 16, 'TRIGGERS_DEAD_LETTER_TOPIC': 'projects/p/topics/d'}
  assert triggers.WorkerSettings.from_env(env).metrics_listen == ('127.0.0.1', 9465)
  assert triggers.WorkerSettings.from_env(
      {**env, 'TRIGGERS_METRICS_LISTEN': '0.0.0.0:9100'}).metrics_listen == ('0.0.0.0', 9100)
  for bad in ('9100', 'host:', 'host:99999', ':9100'):
    with pytest.raises(ConfigError, match='TRIGGERS_METRICS_LISTEN'):
      triggers.WorkerSettings.from_env({**env, 'TRIGGERS_METRICS_LISTEN': bad})
  assert triggers.oldest_age([], 100.0) == 0.0
  assert triggers.oldest_age([90.0, 70.5, 95.0], 100.0) == 29.5
  assert triggers.oldest_age([101.0], 100.0) == 0.0  # a clock a little behind Pub/Sub's
