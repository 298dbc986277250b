"""Computed traits and audiences in the one profile fold (transforms/rules/audiences/evaluate.py,
transforms/rules/profile): what the document gets, batch equal to streaming with shuffled
arrival, a windowed trait decaying in streaming without a new event, and a bad file stopping
the job before it starts."""
import datetime as dt
import random
import subprocess
import sys
import time

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

import schemas
from tests.unit.test_fold_order import segment_call
from tests.unit.test_live_equals_batch import (comparable, live_profiles, run_batch,
                                               write_reference)
from tests.unit.test_streaming import distinct_equal_to, streaming_pipeline
from transforms.rules import profile
from transforms.rules.audiences import definitions
from transforms.rules.audiences.evaluate import Evaluator
from transforms.live_profiles import LiveProfiles
from transforms.settings import LiveSettings, ReferenceFiles

DEFINITIONS = '''
version: 1
traits:
  - key: views_7d
    kind: count
    event: Product Viewed
    within_days: 7
  - key: cheap_views
    kind: count
    event: Product Viewed
    where: 'properties.price < 20'
  - key: spend
    kind: sum
    event: Order Completed
    value: properties.total
  - key: last_category
    kind: last
    event: Product Viewed
    value: product.category
  - key: categories
    kind: unique_list
    event: Product Viewed
    value: product.category
  - key: pages
    kind: count
    event: page
audiences:
  - key: browsers_never_bought
    when: 'traits.views_7d >= 2 && orders.count == 0'
  - key: spenders
    when: 'traits.spend > 30'
  - key: shoe_fans
    when: '"Shoes" in traits.categories'
'''
EVALUATOR = Evaluator(definitions.parse(DEFINITIONS, 'test.yaml'))
SETTINGS = profile.Settings(audiences=EVALUATOR)
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
DAY = 24 * 3600 * 1_000_000
CATALOG = {'p1': {'product_id': 'p1', 'name': 'Boot', 'category': 'Shoes', 'price': 120.0,
                  'currency': 'USD', 'in_stock': True, 'url': 'u1', 'image_url': 'i1'},
           'p2': {'product_id': 'p2', 'name': 'Hat', 'category': 'Hats', 'price': 10.0,
                  'currency': 'USD', 'in_stock': True, 'url': 'u2', 'image_url': 'i2'}}


def call(hours_ago, kind, user='c1', anon=None, **fields):
  return segment_call(kind, NOW - dt.timedelta(hours=hours_ago), user, anon, **fields)


def document(events, reference=None, settings=SETTINGS, catalog=CATALOG):
  state = profile.fold('c1', events, settings.audiences, catalog)
  reference = reference or schemas.datetime_to_micros(NOW)
  return profile.render(state, reference, None, catalog, None, settings)


def test_documents_carry_traits_and_audiences():
  events = [call(1, 'Product Viewed', product_id='p1', price=120),
            call(2, 'Product Viewed', product_id='p2', price=10),
            call(3, 'Product Viewed', product_id='p2', price=10),
            call(200, 'Product Viewed', product_id='p1'),            # older than 7 days
            call(5, 'page', name='Home'), call(6, 'screen', name='Cart'),
            call(300, 'Order Completed', order_id='o1', total=12.5)]
  doc = document(events)
  assert doc['traits'] == {'views_7d': 3, 'cheap_views': 2, 'spend': 12.5,
                           'last_category': 'Shoes', 'categories': ['Hats', 'Shoes'],
                           'pages': 2}
  assert doc['audiences'] == ['shoe_fans']
  doc = document(events + [call(4, 'Order Completed', order_id='o2', total=20)])
  assert doc['traits']['spend'] == 32.5 and doc['audiences'] == ['shoe_fans', 'spenders']


def test_without_events_traits_take_their_empty_values_and_absent_ones_are_left_out():
  doc = document([call(1, 'identify', first_name='Ann')])
  assert doc['traits'] == {'views_7d': 0, 'cheap_views': 0, 'spend': 0, 'categories': [],
                           'pages': 0}
  assert doc['audiences'] == []


def test_without_definitions_the_fields_are_empty():
  doc = document([call(1, 'Product Viewed', product_id='p1')], settings=profile.Settings())
  assert doc['traits'] == {} and doc['audiences'] == []


def test_the_window_and_membership_follow_the_reference_time():
  events = [call(24 * 6, 'Product Viewed', product_id='p2'),
            call(24 * 5, 'Product Viewed', product_id='p2')]
  now = schemas.datetime_to_micros(NOW)
  assert document(events, now)['audiences'] == ['browsers_never_bought']
  oldest = events[0]['event_time']
  # At exactly 7 days after the older view it is out (strictly newer counts), and so is the
  # customer; a microsecond before, both are in.
  assert document(events, oldest + 7 * DAY - 1)['traits']['views_7d'] == 2
  left = document(events, oldest + 7 * DAY)
  assert left['traits']['views_7d'] == 1 and left['audiences'] == []
  assert EVALUATOR.next_change(profile.fold('c1', events, EVALUATOR, CATALOG)['traits'],
                               now) == oldest + 7 * DAY


def test_the_order_of_events_does_not_matter():
  events = [call(h, 'Product Viewed', product_id=random.Random(h).choice(['p1', 'p2']),
                 price=h) for h in range(1, 40, 3)]
  events += [call(7, 'Order Completed', order_id='o', total=40), call(8, 'page', name='x')]
  expected = orjson.dumps(document(events), default=str, option=orjson.OPT_SORT_KEYS)
  for seed in range(5):
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    state = profile.new_state('c1')
    for event in shuffled:
      profile.apply(state, event, EVALUATOR, CATALOG)
    got = profile.render(state, schemas.datetime_to_micros(NOW), None, CATALOG, None, SETTINGS)
    assert orjson.dumps(got, default=str, option=orjson.OPT_SORT_KEYS) == expected


def _histories():
  return [call(1, 'Product Viewed', 'c1', product_id='p1'),
          call(30, 'Product Viewed', 'c1', product_id='p2'),
          call(50, 'Product Viewed', 'c1', product_id='p2', price=5),
          call(3, 'Order Completed', 'c2', order_id='o1', total=50),
          call(4, 'Product Viewed', 'c2', product_id='p1'),
          call(2, 'page', 'c3', name='Home'),
          call(6, 'Product Viewed', 'c3', product_id='p2'),
          call(5, 'Product Viewed', 'c3', product_id='p2')]


def test_streaming_equals_batch_with_definitions_whatever_the_arrival_order(tmp_path,
                                                                           monkeypatch):
  import tests.unit.test_live_equals_batch as same
  monkeypatch.setattr(same, 'SETTINGS', SETTINGS)
  crm, catalog = write_reference(tmp_path)
  events = _histories()
  started = schemas.datetime_to_micros(NOW)
  batch = run_batch(events, crm, catalog, started)
  documents = {c: orjson.loads(d) for c, d in batch['documents'] if d}
  assert documents['c2']['audiences'] == ['shoe_fans', 'spenders']  # p1 is a shoe
  assert documents['c3']['audiences'] == ['browsers_never_bought']
  assert documents['c1']['traits']['views_7d'] == 3
  shuffled = list(events)
  random.Random(3).shuffle(shuffled)
  stream = TestStream().advance_watermark_to(started / 1e6)
  for bundle in (shuffled[:3], shuffled[3:6], shuffled[6:]):
    stream.add_elements([TimestampedValue(e, e['event_time'] / 1e6) for e in bundle])
  stream.advance_processing_time(int(time.time()) + 60).advance_watermark_to_infinity()
  with streaming_pipeline() as p:
    out = live_profiles(p | stream, crm, catalog)
    assert_that(out.documents | 'Docs' >> beam.Map(comparable),
                distinct_equal_to(batch['documents']), label='SameDocuments')


def _membership(pair):
  customer_id, document = pair
  return customer_id, tuple(document['audiences']), document['traits']['views_7d']


def test_a_windowed_trait_decays_in_streaming_and_membership_follows_without_a_new_event(
    tmp_path):
  """Two views, the older one 7 days minus 10 minutes ago: the customer is a browser until it
  ages out, when the decay timer re-renders the document without it (no new event)."""
  crm, catalog = write_reference(tmp_path)
  now = int(time.time())
  views = [segment_call('Product Viewed', dt.datetime.fromtimestamp(now, dt.timezone.utc)
                        - dt.timedelta(days=7, minutes=-10), 'c9', None, product_id='p2'),
           segment_call('Product Viewed', dt.datetime.fromtimestamp(now, dt.timezone.utc)
                        - dt.timedelta(days=1), 'c9', None, product_id='p2')]
  stream = (TestStream().advance_watermark_to(now - 60)
            .advance_processing_time(now)
            .add_elements([TimestampedValue(e, e['event_time'] / 1e6) for e in views])
            .advance_processing_time(60)          # the flush: both views in the window
            .advance_processing_time(3600)        # past the older view's 7 days
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    out = (p | stream) | LiveProfiles(settings=SETTINGS, live=LiveSettings(flush_seconds=1),
                                      reference=ReferenceFiles(crm, catalog))
    assert_that(out.documents | beam.Map(_membership), distinct_equal_to(
        [('c9', ('browsers_never_bought',), 2), ('c9', (), 1)]))
    # Each change recorded once: entered at the first render, exited when the view aged out.
    assert_that(out.audience_changes | beam.Map(lambda c: (c['customer_id'], c['audience'],
                                                            c['change'])),
                equal_to([('c9', 'browsers_never_bought', 'entered'),
                          ('c9', 'browsers_never_bought', 'exited')]), label='Changes')


def test_a_bad_definitions_file_stops_the_job_before_it_starts(tmp_path):
  bad = tmp_path / 'bad.yaml'
  bad.write_text('version: 1\ntraits:\n  - key: Bad-Key\n    kind: count\n    event: x\n'
                 'audiences:\n  - key: a\n    when: "traits.nope > 1 &&"\n')
  ran = subprocess.run([sys.executable, '-m', 'pipeline.run', '--runner=FnApiRunner',
                        '--project=demo-local', f'--events={tmp_path}/none-*.ndjson',
                        f'--audiences={bad}'], capture_output=True, text=True, timeout=120)
  assert ran.returncode == 2, ran.stderr[-2000:]
  assert f'{bad}:3: ' in ran.stderr and f'{bad}:8: a: ' in ran.stderr
  assert 'Traceback' not in ran.stderr
