"""Tests for scripts/generate_data.py: determinism, and the manifest telling the truth."""
from __future__ import annotations

import collections
import csv
import datetime as dt
import gzip
import json
import pathlib
import random
import re

import pytest

from scripts import generate_data as gd

SMALL = {'customers': 200, 'products': 50, 'events': 3000, 'files': 3}
TIME_KEYS = ('timestamp', 'originalTimestamp', 'sentAt', 'receivedAt')
ALIASES = {'message_id': 'messageId', 'user_id': 'userId', 'anonymous_id': 'anonymousId',
           'original_timestamp': 'originalTimestamp', 'sent_at': 'sentAt',
           'received_at': 'receivedAt', 'previous_id': 'previousId', 'group_id': 'groupId'}


@pytest.fixture(scope='module')
def small(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  out = tmp_path_factory.mktemp('small')
  return out, gd.generate(out, seed=7, **SMALL)


def _lines(out: pathlib.Path, manifest: dict) -> list[bytes]:
  lines = []
  for name in manifest['files']:
    data = gzip.decompress((out / name).read_bytes())
    assert data.endswith(b'\n') or not data
    lines.extend(data.split(b'\n')[:-1])
  return lines


def _time(value) -> dt.datetime | None:
  if not isinstance(value, str):
    return None
  try:
    return dt.datetime.fromisoformat(value)
  except ValueError:
    return None


def _numbers_ok(properties) -> bool:
  if not isinstance(properties, dict):
    return True
  money = [properties.get(k) for k in ('price', 'total', 'revenue', 'value')]
  money += [p.get('price') for p in properties.get('products') or [] if isinstance(p, dict)]
  return all(v is None or isinstance(v, (int, float)) for v in money)


def classify(line: bytes) -> tuple[str, dict | None]:
  """An independent reading of the input contract: 'malformed', 'invalid' or 'valid'."""
  try:
    event = json.loads(line.decode('utf-8'))
  except (UnicodeDecodeError, ValueError):
    return 'malformed', None
  if not isinstance(event, dict):
    return 'malformed', None
  for alias, name in ALIASES.items():
    if alias in event and name not in event:
      event[name] = event.pop(alias)
  ok = (event.get('type') in ('track', 'identify', 'page', 'screen', 'group', 'alias')
        and isinstance(event.get('messageId'), str) and event['messageId']
        and (event.get('userId') or event.get('anonymousId'))
        and (event['type'] != 'track' or event.get('event'))
        and (event['type'] != 'group' or event.get('groupId'))
        and (event['type'] != 'alias' or (event.get('previousId') and event.get('userId')))
        and all(_time(event[k]) for k in TIME_KEYS if k in event)
        and _numbers_ok(event.get('properties')))
  return ('valid', event) if ok else ('invalid', event)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  first = gd.generate(tmp_path / 'a', seed=3, **SMALL)
  again = gd.generate(tmp_path / 'b', seed=3, **SMALL)
  other = gd.generate(tmp_path / 'c', seed=4, **SMALL)
  names = sorted(p.name for p in (tmp_path / 'a').iterdir())
  assert names == sorted(first['files'] + ['catalog.csv', 'customers.csv', 'manifest.json'])
  assert first == again
  for name in names:
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name
  for name in first['files'] + ['catalog.csv', 'customers.csv']:
    assert (tmp_path / 'a' / name).read_bytes() != (tmp_path / 'c' / name).read_bytes(), name
  assert other['lines_total'] == first['lines_total']


def test_reference_data_does_not_depend_on_event_count(tmp_path):
  gd.generate(tmp_path / 'a', seed=3, customers=50, products=20, events=100, files=1)
  gd.generate(tmp_path / 'b', seed=3, customers=50, products=20, events=300, files=1)
  for name in ('catalog.csv', 'customers.csv'):
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()


def test_manifest_counts_match_the_files(small):
  out, manifest = small
  lines = _lines(out, manifest)
  assert len(lines) == manifest['lines_total'] == SMALL['events']
  per_file = {name: gzip.decompress((out / name).read_bytes()).count(b'\n')
              for name in manifest['files']}
  assert per_file == manifest['lines_per_file']
  assert max(per_file.values()) - min(per_file.values()) <= 1

  kinds = collections.Counter()
  by_id: dict[str, list[bytes]] = collections.defaultdict(list)
  events = {}
  for line in lines:
    kind, event = classify(line)
    kinds[kind] += 1
    if kind == 'valid':
      by_id[event['messageId']].append(line)
      events[event['messageId']] = event
  assert kinds['malformed'] == manifest['malformed'] == sum(manifest['malformed_kinds'].values())
  assert kinds['invalid'] == manifest['invalid'] == sum(manifest['invalid_kinds'].values())
  assert manifest['bad_kinds'] == {**manifest['malformed_kinds'], **manifest['invalid_kinds']}
  assert len(by_id) == manifest['valid_unique']
  assert kinds['valid'] - len(by_id) == manifest['duplicates']
  # Duplicates are byte-identical copies.
  assert all(len(set(copies)) == 1 for copies in by_id.values())
  assert manifest['lines_total'] == (manifest['valid_unique'] + manifest['duplicates'] +
                                     manifest['malformed'] + manifest['invalid'])

  names = collections.Counter(
      e['event'] if e['type'] == 'track' else e['type'] for e in events.values())
  assert dict(names) == manifest['event_names']
  assert len({e['userId'] for e in events.values() if e.get('userId')}) == manifest['user_ids']
  assert len({e['anonymousId'] for e in events.values()
              if e.get('anonymousId')}) == manifest['anonymous_ids']
  times = [_time(e['timestamp']) for e in events.values()]
  assert gd.iso_millis(gd.to_millis(min(times))) == manifest['start']
  assert gd.iso_millis(gd.to_millis(max(times))) == manifest['end']
  late = sum(_time(e['receivedAt']) - _time(e['timestamp']) >= dt.timedelta(days=1)
             for e in events.values())
  assert late == manifest['late'] > 0


def test_planned_shares_are_respected(small):
  _, manifest = small
  plan = gd.plan_counts(SMALL['events'], 0.02, 0.005, 0.01, 0.02)
  assert (manifest['valid_unique'], manifest['duplicates'], manifest['malformed'],
          manifest['invalid'], manifest['late']) == (plan.valid, plan.duplicates, plan.malformed,
                                                     plan.invalid, plan.late)
  assert plan.malformed == 15 and plan.invalid == 30
  assert abs(plan.duplicates - 0.02 * plan.valid) <= 1
  assert set(manifest['event_names']) >= {
      'page', 'identify', 'Product Viewed', 'Product Added', 'Cart Viewed', 'Checkout Started',
      'Order Completed', 'Email Opened'}


def test_valid_events_are_well_formed(small):
  out, manifest = small
  customers = {row['customer_id'] for row in
               csv.DictReader((out / 'customers.csv').open(encoding='utf-8'))}
  products = {row['product_id'] for row in
              csv.DictReader((out / 'catalog.csv').open(encoding='utf-8'))}
  start = gd.parse_time(manifest['params']['start'])
  end = start + dt.timedelta(days=manifest['params']['days'])
  snake = 0
  for line in _lines(out, manifest):
    snake += b'"message_id"' in line
    kind, event = classify(line)
    if kind != 'valid':
      continue
    assert event['messageId'] and (event.get('userId') or event.get('anonymousId'))
    assert event.get('userId') is None or event['userId'] in customers
    assert start <= _time(event['timestamp']) < end
    # The skew-corrected time is exactly receivedAt - (sentAt - originalTimestamp).
    received, sent, original = (_time(event[k]) for k in TIME_KEYS[1:][::-1])
    assert event['timestamp'].endswith('Z')
    assert _time(event['timestamp']) == received - (sent - original)
    properties = event.get('properties') or {}
    for item in [properties] + list(properties.get('products') or []):
      if 'product_id' in item:
        assert item['product_id'] in products
  assert 0 < snake < 0.1 * manifest['lines_total']


def test_csv_headers_and_rows(small):
  out, manifest = small
  with (out / 'catalog.csv').open(encoding='utf-8', newline='') as f:
    rows = list(csv.reader(f))
  assert ','.join(rows[0]) == ('product_id,sku,name,category,brand,price,currency,in_stock,url,'
                               'image_url')
  assert len(rows) - 1 == manifest['products'] == SMALL['products']
  assert rows[1][0] == 'p0001' and rows[1][8] == 'https://shop.example.com/p/p0001'
  assert len({row[3] for row in rows[1:]}) == 12
  for row in rows[1:]:
    assert re.fullmatch(r'\d+\.\d\d', row[5]) and 9.99 <= float(row[5]) <= 399
    assert row[7] in ('true', 'false')
  with (out / 'customers.csv').open(encoding='utf-8', newline='') as f:
    rows = list(csv.reader(f))
  assert ','.join(rows[0]) == ('customer_id,email,first_name,last_name,country,language,'
                               'email_opt_in,created_at,loyalty_tier')
  assert len(rows) - 1 == manifest['customers'] == SMALL['customers']
  assert rows[1][0] == 'c00001'
  emails = [row[1].strip().lower() for row in rows[1:]]
  assert len(set(emails)) == len(emails)
  assert all(e.endswith('@example.com') and e.isascii() for e in emails)
  assert {row[6] for row in rows[1:]} == {'true', 'false'}
  assert {row[8] for row in rows[1:]} <= {'none', 'silver', 'gold', 'platinum'}


def test_plan_counts_add_up():
  for events in (0, 1, 7, 999, 3000, 123457):
    for shares in ((0.02, 0.005, 0.01, 0.02), (0, 0, 0, 0), (1, 0.3, 0.3, 1)):
      plan = gd.plan_counts(events, *shares)
      assert plan.valid + plan.duplicates + plan.malformed + plan.invalid == events
      assert 0 <= plan.duplicates <= plan.valid and plan.late <= plan.valid
  with pytest.raises(ValueError):
    gd.plan_counts(10, 0, 0.6, 0.6, 0)


def test_no_bad_data_when_shares_are_zero(tmp_path):
  manifest = gd.generate(tmp_path, customers=20, products=5, events=400, files=2,
                         duplicate_share=0, malformed_share=0, invalid_share=0, late_share=0)
  assert manifest['valid_unique'] == manifest['lines_total'] == 400
  assert manifest['bad_kinds'] == {} and manifest['late'] == 0
  assert all(classify(line)[0] == 'valid' for line in _lines(tmp_path, manifest))


def test_stdlib_json_fallback_writes_the_same_bytes(small, monkeypatch):
  out, manifest = small
  events = [classify(line)[1] for line in _lines(out, manifest)[:300]]
  events = [e for e in events if e is not None]
  with_orjson = [gd.dumps(e) for e in events]
  monkeypatch.setattr(gd, 'orjson', None)
  assert [gd.dumps(e) for e in events] == with_orjson


def test_journey_is_ordered_and_iso_format():
  rng = random.Random(1)
  catalog = gd.build_catalog(rng, 30)
  customers = gd.build_customers(rng, 10)
  world = gd.build_world(rng, catalog, customers, gd.parse_time('2026-11-01T00:00:00Z'), 14)
  for _ in range(50):
    customer, device = gd.pick_visitor(rng, world, {})
    drafts = gd.build_journey(rng, world, customer, device)
    assert drafts and [d.t for d in drafts] == sorted(d.t for d in drafts)
  assert gd.iso_millis(gd.to_millis(gd.parse_time('2026-11-01T08:15:02.123Z'))) == (
      '2026-11-01T08:15:02.123Z')
  assert gd.ascii_name('Łukasz') == 'Lukasz' and gd.ascii_name('明') == 'Akira'


def test_pipeline_parser_agrees_with_the_manifest(small):
  events_rules = pytest.importorskip('transforms.rules.events')
  out, manifest = small
  failures = collections.Counter()
  message_ids = set()
  for line in _lines(out, manifest):
    result = events_rules.parse_event(line, 'file:test', 0)
    if isinstance(result, events_rules.Rejection):
      failures[result.failure_type] += 1
    else:
      message_ids.add(result['message_id'])
  assert dict(failures) == manifest['expected_failure_types']
  assert len(message_ids) == manifest['valid_unique']


def test_cli(tmp_path, capsys):
  small = ['--customers', '10', '--products', '5', '--events', '100', '--files', '2', '--seed', '1']
  assert gd.main(['--out', str(tmp_path / 'plain'), '--no-campaign', *small]) == 0
  manifest = json.loads((tmp_path / 'plain' / 'manifest.json').read_text(encoding='utf-8'))
  assert manifest['files'] == ['events-00000-of-00002.ndjson.gz',
                               'events-00001-of-00002.ndjson.gz']
  assert manifest['lines_total'] == 100 and 'wrote 100 lines' in capsys.readouterr().out
  assert manifest == gd.generate(tmp_path / 'api', customers=10, products=5, events=100,
                                 files=2, seed=1)
  # By default the CLI also sends the sample campaign, on top of --events.
  assert gd.main(['--out', str(tmp_path / 'sample'), *small]) == 0
  printed = capsys.readouterr().out
  sample = json.loads((tmp_path / 'sample' / 'manifest.json').read_text(encoding='utf-8'))
  assert sample == gd.generate(tmp_path / 'api-sample', customers=10, products=5, events=100,
                               files=2, seed=1, campaign=gd.Campaign())
  assert sample['lines_total'] == 100 + sample['campaign']['events'] > 100
  assert "campaign 'sample-campaign'" in printed
  assert gd.main(['--out', str(tmp_path), '--events', '10', '--invalid-share', '2']) == 2
  assert gd.main(['--out', str(tmp_path), '--events', '10',
                  '--campaign-holdout-percent', '60']) == 2
  assert '--campaign-holdout-percent must be a number from 0 to 50' in capsys.readouterr().err
