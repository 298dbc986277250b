"""`python -m pipeline.report lift` against the real BigQuery emulator: campaigns made by the
generator's `campaign_events` (a known injected lift, no lift), parsed by the pipeline's own
parser into an `events` table created from schemas/, plus hand-made events for the rules
(identity stitching, the attribution window, order_id once, customers exposed in both groups,
machine hits)."""
import collections
import datetime as dt
import decimal
import json
import os
import pathlib
import random
import subprocess
import sys
import uuid

import orjson
import pytest
from google.cloud import bigquery
from scipy.stats.contingency import relative_risk

import schemas
from pipeline import report
from scripts import generate_data as gd
from transforms.rules import events as events_rules
from transforms.sinks import bigquery as bigquery_sink
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'
REPO = pathlib.Path(__file__).resolve().parents[2]
SEND = dt.datetime(2026, 11, 4, 12, tzinfo=dt.timezone.utc)
WITH_LIFT = gd.Campaign(campaign_id='with-lift', holdout_percent=50, base_rate=0.05, lift=1.0)
NO_LIFT = gd.Campaign(campaign_id='no-lift', holdout_percent=50, base_rate=0.05, lift=0.0)
D = decimal.Decimal


def _at(hours: float) -> str:
  return (SEND + dt.timedelta(hours=hours)).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3] + 'Z'


def _track(message_id, event, hours, user_id=None, anonymous_id=None, **properties):
  payload = {'type': 'track', 'event': event, 'messageId': message_id, 'timestamp': _at(hours),
             'properties': properties}
  if user_id:
    payload['userId'] = user_id
  if anonymous_id:
    payload['anonymousId'] = anonymous_id
  return payload


def _rules_campaign() -> list[dict]:
  """Campaign 'rules': every rule of the report once, with the answer worked out by hand.

  treatment e1, e2, e3; control e4, e6; e5 exposed in both groups (left out).
  """
  c = {'campaign_id': 'rules', 'email_id': 'em-1'}
  human = {**c, 'machine': False, 'machine_reason': None}
  apple = {**c, 'machine': True, 'machine_reason': 'apple_mail_privacy'}
  scanner = {**c, 'machine': True, 'machine_reason': 'link_scanner', 'link_url': 'https://x/'}
  return [
      # e1: converts once (order o1 sent twice: counted once), opens and clicks as a person.
      _track('r-1', 'Email Delivered', 0, 'e1', **c),
      _track('r-2', 'Email Opened', 0.01, 'e1', **apple),
      _track('r-3', 'Email Opened', 2, 'e1', **human),
      _track('r-4', 'Email Link Clicked', 2.1, 'e1', **human, link_url='https://x/'),
      _track('r-5', 'Order Completed', 3, 'e1', order_id='o1', total=10.0, revenue=9.0),
      _track('r-6', 'Order Completed', 3.5, 'e1', order_id='o1', total=10.0, revenue=9.0),
      # e2: an order before the exposure and one 8 days after it: not converted in 7 days.
      _track('r-7', 'Order Completed', -1, 'e2', order_id='o2', total=50.0),
      _track('r-8', 'Email Delivered', 0, 'e2', **c),
      _track('r-9', 'Order Completed', 8 * 24, 'e2', order_id='o3', total=70.0),
      # e3: machines only (Apple's proxy opens, a scanner clicks), and another campaign's open.
      _track('r-10', 'Email Delivered', 0, 'e3', **c),
      _track('r-11', 'Email Opened', 0.01, 'e3', **apple),
      _track('r-12', 'Email Link Clicked', 0.002, 'e3', **scanner),
      _track('r-13', 'Email Opened', 1, 'e3', campaign_id='other', machine=False),
      # e4 (control): browsed anonymously as a4, identified, then ordered as a4 only: the
      # order is e4's by the link; it has no total, so its revenue counts.
      {'type': 'identify', 'messageId': 'r-14', 'timestamp': _at(-48), 'userId': 'e4',
       'anonymousId': 'a4'},
      _track('r-15', 'Email Held Out', 0, 'e4', **c),
      _track('r-16', 'Order Completed', 30, anonymous_id='a4', order_id='o4', revenue=20.0),
      # e5: in both groups: left out, its order too.
      _track('r-17', 'Email Delivered', 0, 'e5', **c),
      _track('r-18', 'Email Held Out', 0, 'e5', **c),
      _track('r-19', 'Order Completed', 5, 'e5', order_id='o5', total=99.0),
      # e6 (control): held out twice; first exposure at 0, so an order at 6.5 days counts. A
      # shared device a6 linked to e6 first and to e2 later: its anonymous order is e6's.
      _track('r-20', 'Email Held Out', 0, 'e6', **c),
      _track('r-21', 'Email Held Out', 72, 'e6', **c),
      _track('r-22', 'Order Completed', 6.5 * 24, 'e6', order_id='o6', total=30.0),
      _track('r-23', 'Product Viewed', -30, 'e6', 'a6', product_id='p1'),
      _track('r-24', 'Product Viewed', -20, 'e2', 'a6', product_id='p1'),
      _track('r-25', 'Order Completed', 1, anonymous_id='a6', order_id='o7', total=5.0),
      # Another campaign's exposure of e1 changes nothing here.
      _track('r-26', 'Email Held Out', 0, 'e1', campaign_id='other'),
  ]


def _zero_control_campaign() -> list[dict]:
  c = {'campaign_id': 'zero-control'}
  return [_track('z-1', 'Email Delivered', 0, 'z1', **c),
          _track('z-2', 'Order Completed', 1, 'z1', order_id='oz', total=12.0),
          _track('z-3', 'Email Held Out', 0, 'z2', **c)]


@pytest.fixture(scope='module')
def warehouse(local_stack):
  """One events table with every campaign (distinct customers each); returns its dataset and the
  generated payloads by campaign."""
  dataset = f'lift{uuid.uuid4().hex[:10]}'
  bigquery_sink.ensure_tables(PROJECT, dataset, records=('events',))
  generated = {
      'with-lift': list(gd.campaign_events(
          random.Random(20261), [f'l{i:05d}' for i in range(20000)], SEND, WITH_LIFT)),
      'no-lift': list(gd.campaign_events(
          random.Random(20262), [f'n{i:05d}' for i in range(10000)], SEND, NO_LIFT)),
  }
  payloads = [*generated['with-lift'], *generated['no-lift'], *_rules_campaign(),
              *_zero_control_campaign()]
  rows = []
  for payload in payloads:
    record = events_rules.parse_event(orjson.dumps(payload), 'file:test', 0)
    assert isinstance(record, dict), record
    rows.append(schemas.to_bigquery_row('events', record))
  client = bigquery_client.cloud_client(PROJECT)
  for start in range(0, len(rows), 5000):
    assert client.insert_rows_json(f'{PROJECT}.{dataset}.events',
                                   rows[start:start + 5000]) == []
  return dataset, generated


def _json_report(dataset: str, campaign: str, *extra: str) -> tuple[dict, str]:
  """The CLI as a subprocess (the emulator's address comes from the environment)."""
  done = subprocess.run(
      [sys.executable, '-m', 'pipeline.report', 'lift', '--project', PROJECT, '--dataset',
       dataset, '--campaign', campaign, '--format', 'json', *extra],
      cwd=REPO, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
  assert done.returncode == 0, done.stderr
  return json.loads(done.stdout), done.stderr  # the whole of stdout is one JSON object


def _aggregates(dataset: str, campaign: str, days: int = 7) -> report.Aggregates:
  return report.fetch_aggregates(bigquery_client.cloud_client(PROJECT),
                                 bigquery.DatasetReference(PROJECT, dataset), campaign, days)


def _expected(payloads: list[dict], days: int = 7) -> dict:
  """The groups, computed plainly from the generated payloads (every event has its userId)."""
  def at(p):
    return gd.parse_time(p['timestamp'])
  exposure = {p['userId']: (p['event'], at(p)) for p in payloads
              if p['event'] in ('Email Delivered', 'Email Held Out')}
  groups = {'treatment': collections.Counter(), 'control': collections.Counter()}
  revenue = {'treatment': D(0), 'control': D(0)}
  converted = set()
  for customer, (event, _) in exposure.items():
    groups['treatment' if event == 'Email Delivered' else 'control']['customers'] += 1
  for p in payloads:
    if p['event'] != 'Order Completed':
      continue
    event, first = exposure[p['userId']]
    if first <= at(p) < first + dt.timedelta(days=days):
      group = 'treatment' if event == 'Email Delivered' else 'control'
      revenue[group] += D(str(p['properties']['total']))
      if p['userId'] not in converted:
        converted.add(p['userId'])
        groups[group]['conversions'] += 1
  openers, clickers = set(), set()
  for p in payloads:
    if p['event'] in ('Email Opened', 'Email Link Clicked') and not p['properties']['machine']:
      (openers if p['event'] == 'Email Opened' else clickers).add(p['userId'])
  groups['treatment'].update(human_opens=len(openers), clicks=len(clickers))
  return {name: {'customers': g['customers'], 'conversions': g['conversions'],
                 'revenue': float(revenue[name].quantize(D('0.01'))),
                 **({'human_opens': g['human_opens'], 'clicks': g['clicks']}
                    if name == 'treatment' else {})}
          for name, g in groups.items()}


def test_a_known_lift_is_found_by_the_cli(warehouse):
  dataset, generated = warehouse
  result, stderr = _json_report(dataset, 'with-lift')
  assert list(result) == ['campaign', 'attribution_days', 'groups', 'lift']
  assert (result['campaign'], result['attribution_days']) == ('with-lift', 7)
  expected = _expected(generated['with-lift'])
  for name in ('treatment', 'control'):
    got = {k: result['groups'][name][k] for k in expected[name]}
    assert got == expected[name], name
  t, c = result['groups']['treatment'], result['groups']['control']
  assert t['customers'] + c['customers'] == 20000
  assert t['conversion_rate'] == t['conversions'] / t['customers']
  lift = result['lift']
  low, high = lift['ci95']
  # The interval holds the true lift (1.0, a doubling) and excludes no effect.
  assert 0 < low < WITH_LIFT.lift < high, lift
  assert lift['relative'] == pytest.approx(t['conversion_rate'] / c['conversion_rate'] - 1)
  scipy_ci = relative_risk(t['conversions'], t['customers'], c['conversions'],
                           c['customers']).confidence_interval(0.95)
  assert lift['ci95'] == pytest.approx([scipy_ci.low - 1, scipy_ci.high - 1])
  assert lift['incremental_conversions'] == pytest.approx(
      t['customers'] * (t['conversion_rate'] - c['conversion_rate']))
  assert lift['incremental_revenue'] == pytest.approx(
      t['customers'] * (t['revenue'] / t['customers'] - c['revenue'] / c['customers']), abs=0.01)
  assert 'warning' not in stderr


def test_no_lift_gives_an_interval_around_zero(warehouse):
  dataset, generated = warehouse
  result = report.report('no-lift', 7, _aggregates(dataset, 'no-lift'))
  expected = _expected(generated['no-lift'])
  assert {k: result['groups']['control'][k] for k in expected['control']} == expected['control']
  low, high = result['lift']['ci95']
  assert low < 0 < high, result['lift']


def test_machine_opens_and_clicks_are_not_counted(warehouse):
  dataset, generated = warehouse
  aggregates = _aggregates(dataset, 'with-lift')
  payloads = generated['with-lift']
  openers = {p['userId'] for p in payloads if p['event'] == 'Email Opened'}
  human = {p['userId'] for p in payloads
           if p['event'] == 'Email Opened' and not p['properties']['machine']}
  machine_only = openers - human
  # About 40% of the treatment has Apple's open at delivery: far more than the people who read.
  assert len(machine_only) > 2 * len(human) > 0
  assert aggregates.treatment.human_opens == len(human)
  clickers = {p['userId'] for p in payloads if p['event'] == 'Email Link Clicked'}
  human_clicks = {p['userId'] for p in payloads
                  if p['event'] == 'Email Link Clicked' and not p['properties']['machine']}
  assert clickers - human_clicks, 'the sample has scanner-only clickers'
  assert aggregates.treatment.clicks == len(human_clicks)
  assert aggregates.control.human_opens == aggregates.control.clicks == 0


def test_the_rules_on_hand_made_events(warehouse, capsys):
  dataset, _ = warehouse
  aggregates = _aggregates(dataset, 'rules')
  assert aggregates == report.Aggregates(
      treatment=report.GroupCounts(customers=3, conversions=1, revenue=D('10'), human_opens=1,
                                   clicks=1),
      control=report.GroupCounts(customers=2, conversions=2, revenue=D('55'), human_opens=0,
                                 clicks=0),
      excluded=1)
  # A 10-day window takes e2's order 8 days after exposure too.
  longer = _aggregates(dataset, 'rules', days=10)
  assert (longer.treatment.conversions, longer.treatment.revenue) == (2, D('80'))
  # The table names the excluded customer, and so does stderr.
  assert report.main(['lift', '--project', PROJECT, '--dataset', dataset,
                      '--campaign', 'rules']) == 0
  out, err = capsys.readouterr()
  assert 'note: 1 customer exposed in both groups' in out
  assert 'warning: 1 customer exposed in both groups' in err
  assert 'relative lift            -66.7%' in out


def test_no_control_conversions_gives_no_relative_lift(warehouse, capsys):
  dataset, _ = warehouse
  result, stderr = _json_report(dataset, 'zero-control')
  assert result['lift']['relative'] is None and result['lift']['ci95'] is None
  assert result['lift']['incremental_conversions'] == 1.0
  assert result['lift']['incremental_revenue'] == 12.0
  assert 'no control customer converted' in stderr


def test_a_campaign_without_exposures_exits_1(warehouse, capsys):
  dataset, _ = warehouse
  assert report.main(['lift', '--project', PROJECT, '--dataset', dataset,
                      '--campaign', "nobody's"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: campaign \"nobody's\" has no exposures")


def test_a_missing_dataset_exits_1(local_stack, capsys):
  assert report.main(['lift', '--project', PROJECT, '--dataset', 'no_such_dataset_here',
                      '--campaign', 'x']) == 1
  assert capsys.readouterr().err.startswith('error: BigQuery: ')


def test_html_page(warehouse, tmp_path, capsys):
  dataset, _ = warehouse
  out = tmp_path / 'lift.html'
  assert report.main(['lift', '--project', PROJECT, '--dataset', dataset, '--campaign',
                      'with-lift', '--format', 'html', '--out', str(out)]) == 0
  assert capsys.readouterr().out == ''
  page = out.read_text(encoding='utf-8')
  assert page.startswith('<!DOCTYPE html>') and page.count('<svg') == 2
  assert '<script' not in page and 'https:' not in page and 'http:' not in page
  assert 'Campaign with-lift: measured lift' in page
