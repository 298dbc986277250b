"""Tests for the generator's campaign (scripts/generate_data.py, `campaign_events`): the holdout
split is transforms.rules.holdout's, the events are what the collector, the ESP and the order
system send, the injected lift shows up in the counts, and the manifest stays exact."""
from __future__ import annotations

import collections
import csv
import datetime as dt
import gzip
import json
import math
import random

import pytest

from scripts import generate_data as gd
from transforms.rules import events as events_rules
from transforms.rules import machine
from transforms.rules.holdout import Holdout

SEND = '2026-11-04T12:00:00Z'
EXPOSURES = ('Email Delivered', 'Email Held Out')
FAST_CLICK_SECONDS = 10  # the collector's default (collector/config.py)


def _ids(count: int, prefix: str = 'c') -> list[str]:
  return [f'{prefix}{i:05d}' for i in range(1, count + 1)]


def _time(event: dict) -> dt.datetime:
  return gd.parse_time(event['timestamp'])


def _events(customers: int, seed: int = 1, **campaign) -> list[dict]:
  return list(gd.campaign_events(random.Random(seed), _ids(customers), SEND,
                                 gd.Campaign(**campaign)))


def _by_customer(events: list[dict]) -> dict[str, list[dict]]:
  found = collections.defaultdict(list)
  for event in events:
    found[event['userId']].append(event)
  return found


@pytest.mark.parametrize('percent', [10, 50, 0, 12.34])
def test_the_split_is_the_holdout_rule(percent):
  events = _events(3000, holdout_percent=percent, holdout_salt='spring-test')
  split = Holdout(percent, 'spring-test')
  by_customer = _by_customer(events)
  assert sorted(by_customer) == _ids(3000)
  for customer, own in by_customer.items():
    exposures = [e for e in own if e['event'] in EXPOSURES]
    assert len(exposures) == 1, customer
    want = 'Email Held Out' if split.held_out(customer) else 'Email Delivered'
    assert exposures[0]['event'] == want, customer
    assert exposures[0]['properties']['campaign_id'] == gd.DEFAULT_CAMPAIGN_ID
    assert exposures[0]['properties']['email_id'].startswith('em-')
    if want == 'Email Held Out':  # the holdout gets no email, so no opens and no clicks
      assert {e['event'] for e in own} <= {'Email Held Out', 'Order Completed'}
  held = sum(split.held_out(c) for c in _ids(3000))
  assert abs(held - 30 * percent) < 4 * math.sqrt(3000 * 0.5 * 0.5) + 1


def test_same_rng_same_events_other_seed_other_events():
  first = _events(500, seed=3)
  assert first == _events(500, seed=3)
  assert first != _events(500, seed=4)
  assert [json.dumps(e, sort_keys=True) for e in first] == [
      json.dumps(e, sort_keys=True) for e in _events(500, seed=3)]


@pytest.mark.parametrize('lift', [1.0, 0.0, 0.3])
def test_the_injected_lift_shows_up_in_the_counts(lift):
  base = 0.05
  events = _events(20000, seed=11, holdout_percent=50, base_rate=base, lift=lift)
  groups = {e['userId']: e['event'] for e in events if e['event'] in EXPOSURES}
  buyers = {e['userId'] for e in events if e['event'] == 'Order Completed'}
  counts = collections.Counter(groups.values())
  converted = collections.Counter(groups[b] for b in buyers)
  for name, rate in (('Email Delivered', base * (1 + lift)), ('Email Held Out', base)):
    n = counts[name]
    assert 9000 < n < 11000
    # Within 4 standard deviations of the binomial expectation (a fixed seed: deterministic).
    assert abs(converted[name] - n * rate) < 4 * math.sqrt(n * rate * (1 - rate)), (name, lift)
  # One order per converted customer, for the audience only.
  orders = [e for e in events if e['event'] == 'Order Completed']
  assert len(orders) == len(buyers) and buyers <= set(groups)


def test_orders_fall_in_the_attribution_window_and_carry_money():
  events = _events(3000, seed=5, base_rate=0.3, attribution_days=3)
  exposure = {e['userId']: _time(e) for e in events if e['event'] in EXPOSURES}
  products = {p.product_id for p in gd._default_campaign_products()}
  orders = [e for e in events if e['event'] == 'Order Completed']
  assert 1050 < len(orders) < 1250  # 3,000 x (0.9 x 0.3 x 1.3 + 0.1 x 0.3) = 1,143 expected
  for order in orders:
    delay = _time(order) - exposure[order['userId']]
    assert dt.timedelta(minutes=1) <= delay < dt.timedelta(days=3)
    props = order['properties']
    assert props['order_id'].startswith('ord-') and props['currency'] == 'USD'
    assert props['total'] > props['revenue'] > 0
    assert round(sum(p['price'] * p['quantity'] for p in props['products']), 2) == props['revenue']
    assert {p['product_id'] for p in props['products']} <= products
  assert len({o['properties']['order_id'] for o in orders}) == len(orders)


def test_machine_and_human_hits_are_labelled_as_the_machine_rules_label_them():
  events = _events(10000, seed=9, holdout_percent=10)
  delivered = {e['userId']: e for e in events if e['event'] == 'Email Delivered'}
  reasons = collections.Counter()
  first_open: dict[str, dt.datetime] = {}
  for event in sorted(events, key=_time):
    if event['event'] not in ('Email Opened', 'Email Link Clicked'):
      continue
    props, context = event['properties'], event['context']
    assert props['machine'] is (props['machine_reason'] is not None)
    assert props['email_id'] == delivered[event['userId']]['properties']['email_id']
    at, sent = _time(event).timestamp(), _time(delivered[event['userId']]).timestamp()
    kind = 'open' if event['event'] == 'Email Opened' else 'click'
    opened = first_open.get(event['userId'])
    hit = machine.Hit(kind, 'GET', {'user-agent': context['userAgent']}, context['ip'], at, sent,
                      None if opened is None else opened.timestamp())
    # What the collector would decide for this request is what the event says.
    assert machine.machine_reason(hit, FAST_CLICK_SECONDS) == props['machine_reason'], event
    if kind == 'open':
      first_open.setdefault(event['userId'], _time(event))
    else:
      assert props['link_url'].startswith(gd.SHOP_URL)
    reasons[(kind, props['machine_reason'])] += 1
  treatment = len(delivered)
  apple = [e for e in events if e['properties'].get('machine_reason') == machine.APPLE_PRIVACY]
  # Apple Mail Privacy Protection: about 40% of the treatment, one open each, at delivery.
  assert abs(len(apple) - 0.4 * treatment) < 4 * math.sqrt(treatment * 0.24)
  assert all(e['context']['userAgent'] == 'Mozilla/5.0' for e in apple)
  assert all(_time(e) - _time(delivered[e['userId']]) < dt.timedelta(minutes=4) for e in apple)
  assert reasons[('open', machine.IMAGE_PROXY)] > 0 and reasons[('click', machine.SCANNER)] > 0
  human_openers = {e['userId'] for e in events
                   if e['event'] == 'Email Opened' and not e['properties']['machine']}
  clickers = {e['userId'] for e in events
              if e['event'] == 'Email Link Clicked' and not e['properties']['machine']}
  # Realistic rates: a 10-20% human open rate (MPP hides its readers' opens), 3-8% clicks.
  assert 0.10 < len(human_openers) / treatment < 0.20
  assert 0.03 < len(clickers) / treatment < 0.08


def test_every_event_is_valid_input():
  for event in _events(400, seed=2, base_rate=0.5):
    record = events_rules.parse_event(json.dumps(event), 'file:test', 0)
    assert isinstance(record, dict), (record, event)
    assert record['user_id'] == event['userId'] and record['type'] == 'track'


def _lines(out, manifest) -> list[bytes]:
  lines = []
  for name in manifest['files']:
    lines.extend(gzip.decompress((out / name).read_bytes()).split(b'\n')[:-1])
  return lines


def test_generate_with_a_campaign_keeps_the_manifest_exact(tmp_path):
  small = dict(customers=150, products=40, events=2500, files=3, seed=7)
  plain = gd.generate(tmp_path / 'plain', **small)
  campaign = gd.Campaign(holdout_percent=20, base_rate=0.2, lift=0.5)
  manifest = gd.generate(tmp_path / 'campaign', campaign=campaign, **small)
  sent = manifest['campaign']
  lines = _lines(tmp_path / 'campaign', manifest)
  assert len(lines) == manifest['lines_total'] == small['events'] + sent['events']
  assert manifest['valid_unique'] == plain['valid_unique'] + sent['events']
  for key in ('duplicates', 'malformed', 'invalid', 'late', 'expected_failure_types'):
    assert manifest[key] == plain[key], key
  assert sent['send_at'] == '2026-11-04T12:00:00.000Z'
  # The campaign is added: every other line is the plain run's, byte for byte.
  ours = [line for line in lines if b'"campaign_id":"sample-campaign"' in line
          or (b'"Order Completed"' in line and b'"checkout_id"' not in line)]
  assert len(ours) == sent['events']
  assert collections.Counter(lines) - collections.Counter(ours) == collections.Counter(
      _lines(tmp_path / 'plain', plain))
  # The pipeline's parser agrees with the manifest.
  failures, records = collections.Counter(), {}
  for line in lines:
    result = events_rules.parse_event(line, 'file:test', 0)
    if isinstance(result, events_rules.Rejection):
      failures[result.failure_type] += 1
    else:
      records[result['message_id']] = result
  assert dict(failures) == manifest['expected_failure_types']
  assert len(records) == manifest['valid_unique']
  assert collections.Counter(r['event'] if r['type'] == 'track' else r['type']
                             for r in records.values()) == manifest['event_names']
  assert manifest['user_ids'] == len({r['user_id'] for r in records.values() if r['user_id']})
  # The campaign's counts, recomputed from its lines.
  mine = [json.loads(line) for line in ours]
  assert collections.Counter(e['event'] for e in mine) == sent['event_names']
  group = {e['userId']: e['event'] for e in mine if e['event'] in EXPOSURES}
  split = campaign.split
  assert all((name == 'Email Held Out') == split.held_out(c) for c, name in group.items())
  # The ESP emails only customers who opted in.
  with (tmp_path / 'campaign' / 'customers.csv').open() as f:
    opted_in = {row['customer_id'] for row in csv.DictReader(f) if row['email_opt_in'] == 'true'}
  assert set(group) == opted_in and 0 < len(opted_in) < small['customers']
  for name, exposure in (('treatment', 'Email Delivered'), ('control', 'Email Held Out')):
    members = {c for c, e in group.items() if e == exposure}
    orders = [e for e in mine if e['event'] == 'Order Completed' and e['userId'] in members]
    assert sent['groups'][name]['customers'] == len(members)
    assert sent['groups'][name]['conversions'] == len({o['userId'] for o in orders})
    assert sent['groups'][name]['orders'] == len(orders)
    assert sent['groups'][name]['revenue'] == gd.format_cents(
        sum(round(o['properties']['total'] * 100) for o in orders))
  human = {e['userId'] for e in mine if e['event'] == 'Email Opened'
           and not e['properties']['machine']}
  assert sent['groups']['treatment']['human_opens'] == len(human)
  # Deterministic.
  assert gd.generate(tmp_path / 'again', campaign=campaign, **small) == manifest
  for name in manifest['files']:
    assert ((tmp_path / 'campaign' / name).read_bytes()
            == (tmp_path / 'again' / name).read_bytes())


def test_campaign_audience_and_short_windows(tmp_path):
  manifest = gd.generate(tmp_path / 'a', customers=80, products=20, events=300, files=1,
                         campaign=gd.Campaign(customers=30, campaign_id='spring'))
  groups = manifest['campaign']['groups']
  assert groups['treatment']['customers'] + groups['control']['customers'] == 30
  assert manifest['campaign']['campaign_id'] == 'spring'
  # A window shorter than the attribution window: sent at the start, nothing after the end.
  short = gd.generate(tmp_path / 'b', customers=80, products=20, events=300, files=1, days=2,
                      campaign=gd.Campaign(base_rate=1.0))
  assert short['campaign']['send_at'] == '2026-11-01T00:00:00.000Z'
  assert short['end'] < '2026-11-03T00:00:00.000Z'
  assert 0 < short['campaign']['groups']['treatment']['conversions'] < (
      short['campaign']['groups']['treatment']['customers'])


@pytest.mark.parametrize('bad, message', [
    (dict(holdout_percent=60), '--campaign-holdout-percent must be a number from 0 to 50'),
    (dict(holdout_salt=''), '--campaign-holdout-salt'),
    (dict(base_rate=1.5), '--campaign-base-rate'),
    (dict(lift=-1.5), '--campaign-lift'),
    (dict(lift=float('nan')), '--campaign-lift'),
    (dict(attribution_days=0), '--campaign-attribution-days'),
    (dict(attribution_days=1.5), '--campaign-attribution-days'),
    (dict(campaign_id=' '), '--campaign-id'),
    (dict(customers=-1), '--campaign-customers'),
])
def test_bad_campaign_settings_are_refused(bad, message):
  with pytest.raises(ValueError, match=message):
    gd.Campaign(**bad)


def test_treatment_rate_is_capped_at_one():
  assert gd.Campaign(base_rate=0.6, lift=1.0).treatment_rate == 1.0
  assert gd.Campaign(base_rate=0.05, lift=-1.0).treatment_rate == 0.0
