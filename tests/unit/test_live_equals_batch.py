"""The streaming profile composite, fed events in shuffled arrival order (some of them days late,
behind the watermark), renders the documents and triggers the batch composite renders for the
same events at the same reference time. TestStream on the BundleBasedDirectRunner (streaming),
the batch composite on the FnApiRunner.

The streaming fold renders at processing time (its timers' times): the events lie hours to days
before the test's start, so no rule's threshold (a cart abandoned after 60 minutes, at risk after
90 days) falls between the batch reference time and the streaming renders a few seconds later.
"""
import datetime as dt
import functools
import random
import time

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

import schemas
from tests.unit.beam_helpers import batch_pipeline
from tests.unit.test_fold_order import segment_call
from tests.unit.test_streaming import distinct_equal_to, streaming_pipeline
from transforms.batch_profiles import BatchProfiles
from transforms.live_profiles import LiveProfiles, StitchLive
from transforms.rules import profile, reference
from transforms.rules.holdout import Holdout
from transforms.settings import LiveSettings, ReferenceFiles
from transforms.sources import ReadReference

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def call(hours_ago: float, kind: str, user=None, anon=None, **fields):
  """A parsed Segment call `hours_ago` hours before the test started."""
  return segment_call(kind, NOW - dt.timedelta(hours=hours_ago), user, anon, **fields)


def histories() -> tuple[list, list, list]:
  """(events whose arrival order is free, the two links of a shared device in the order they
  arrive, that device's anonymous events, which arrive after both links)."""
  free = [
      # c1: this morning's cart, and an order of three days ago that arrives whenever.
      call(3, 'Product Added', 'c1', product_id='p1', quantity=2),
      call(2.9, 'Product Added', 'c1', product_id='p2'),
      call(2.8, 'Product Removed', 'c1', product_id='p2'),
      call(2.7, 'Product Viewed', 'c1', product_id='p3', name='Event name', price=9),
      call(72, 'Order Completed', 'c1', order_id='o1', total=40,
           products=[{'product_id': 'p3', 'price': 20, 'quantity': 2}]),
      call(70, 'Product Added', 'c1', product_id='p3'),        # emptied by o2 below
      call(60, 'Order Completed', 'c1', order_id='o2', total=15),
      call(50, 'Order Cancelled', 'c1', order_id='o2'),
      call(5, 'identify', 'c1', first_name='Newest'),
      call(100, 'identify', 'c1', first_name='Oldest', unsubscribed=False),
      call(4, 'Email Opened', 'c1'), call(30, 'Email Link Clicked', 'c1'),
      # Machine hits (Apple's proxy, a link scanner) newer than the human ones: never engagement.
      call(1, 'Email Opened', 'c1', machine=True, machine_reason='apple_mail_privacy'),
      call(0.5, 'Email Link Clicked', 'c1', machine=True, machine_reason='link_scanner'),
      # c2: browsing before sign-in, replayed when the identify arrives; a remove before its add.
      call(6, 'Product Viewed', anon='a2', product_id='p1'),
      call(5.5, 'Product Added', anon='a2', product_id='p4'),
      call(5, 'identify', 'c2', anon='a2', first_name='Bo'),
      call(4.5, 'Product Removed', 'c2', product_id='p1'),
      call(4.4, 'Product Added', 'c2', product_id='p1', quantity=3),
      call(4.3, 'Product Viewed', 'c2', product_id='p2'),
      # c5: unsubscribed by the newest identify, whichever arrives last.
      call(10, 'Product Viewed', 'c5', product_id='p1'),
      call(9, 'identify', 'c5', unsubscribed=True),
      call(20, 'identify', 'c5', unsubscribed=False),
      # c7: an app's anonymous visitor (a view, a screen, an add), aliased to c7 in between, and
      # a screen and a group after; the alias's and the group's traits change nothing.
      call(12, 'Product Viewed', anon='a4', product_id='p3'),
      call(11.9, 'screen', anon='a4', name='Cart'),
      call(11.5, 'alias', 'c7', previous_id='a4', first_name='Not a trait', unsubscribed=True),
      call(11.4, 'Product Added', anon='a4', product_id='p1'),
      call(11.3, 'screen', 'c7', name='Checkout'),
      call(11.2, 'group', 'c7', group_id='acct-1', first_name='Initech', email='o@initech.test'),
  ] + [call(8 + i / 10, 'Product Viewed', 'c6', product_id=f'p{i % 4 + 1}') for i in range(14)]
  # A shared device: linked to c4 an hour ago, and (a late, offline-queued identify) to c3 two
  # days ago. The earliest link wins in both paths: its browsing belongs to c3.
  links = [call(1, 'identify', 'c4', anon='a3'), call(48, 'identify', 'c3', anon='a3')]
  device = [call(2, 'Product Viewed', anon='a3', product_id='p2'),
            call(47, 'Product Added', anon='a3', product_id='p2')]
  return free, links, device


def write_reference(tmp_path):
  crm = tmp_path / 'customers.csv'
  crm.write_text('customer_id,email,first_name,last_name,country,language,email_opt_in,'
                 'created_at,loyalty_tier\nc1,a@b.com,Ann,L,SE,sv,true,,gold\n'
                 'c2,b@b.com,,L,DE,de,true,,\nc6,c@b.com,Cy,L,FR,fr,false,,\n')
  catalog = tmp_path / 'catalog.csv'
  # Popularity differs by design (batch counts the input, a streaming job reads what it counted
  # into Firestore): the one in-stock product is one nobody touches, so both recommend it.
  catalog.write_text(
      'product_id,sku,name,category,brand,price,currency,in_stock,url,image_url\n'
      'p1,S1,Boot,Shoes,B,120.00,USD,false,u1,i1\np2,S2,Hat,Hats,B,10.00,USD,false,u2,i2\n'
      'p3,S3,Sock,Shoes,B,9.99,USD,false,u3,i3\np8,S8,Rake,Garden,B,30.00,USD,true,u8,i8\n')
  return str(crm), str(catalog)


# A holdout that splits the histories' customers (c1 and c7 held out), the same in both paths.
SETTINGS = profile.Settings(holdout=Holdout(50, 'a'))


def live_profiles(events_pcoll, crm: str, catalog: str):
  return events_pcoll | 'LiveProfiles' >> LiveProfiles(
      settings=SETTINGS, live=LiveSettings(flush_seconds=0.5),
      reference=ReferenceFiles(crm, catalog))


def batch_profiles(p, events_pcoll, crm: str, catalog: str, as_of: int):
  customers = p | 'ReadCustomers' >> ReadReference('customers', crm, reference.parse_customer)
  products = p | 'ReadCatalog' >> ReadReference('catalog', catalog, reference.parse_product)
  return events_pcoll | 'BatchProfiles' >> BatchProfiles(
      settings=SETTINGS, customers=customers.records, catalog=products.records,
      as_of_micros=as_of)


def comparable(pair):
  customer_id, document = pair
  return customer_id, None if document is None else orjson.dumps(
      document, default=str, option=orjson.OPT_SORT_KEYS)


def trigger_view(trigger):
  return trigger['trigger_id'], trigger['customer_id'], orjson.dumps(
      trigger['cart'], option=orjson.OPT_SORT_KEYS)


# What the batch run produced: the FnApiRunner runs in this process, and a matcher pickled by
# reference (a module-level function) stores into this module's dict.
_FOUND: dict = {}


def _keep(name, actual):
  _FOUND[name] = list(actual)


def run_batch(records, crm, catalog, as_of):
  _FOUND.clear()
  with batch_pipeline() as p:
    out = batch_profiles(p, p | beam.Create(records), crm, catalog, as_of)
    assert_that(out.documents | 'Docs' >> beam.Map(comparable),
                functools.partial(_keep, 'documents'), label='KeepDocuments')
    assert_that(out.triggers | 'Triggers' >> beam.Map(trigger_view),
                functools.partial(_keep, 'triggers'), label='KeepTriggers')
  return dict(_FOUND)


@pytest.mark.parametrize('seed', [1, 2])
def test_live_documents_equal_batch_documents_whatever_the_arrival_order(tmp_path, seed):
  crm, catalog = write_reference(tmp_path)
  free, links, device = histories()
  started = schemas.datetime_to_micros(NOW)
  batch = run_batch(free + links + device, crm, catalog, started)
  documents = dict(batch['documents'])
  # The histories reach every rule that could show arrival order, and consent.
  assert set(documents) == {'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7'}
  assert documents['c5'] is None and documents['c6'] is None
  c1 = orjson.loads(documents['c1'])
  assert c1['first_name'] == 'Newest' and c1['orders']['count'] == 1
  assert [item['product_id'] for item in c1['cart']['items']] == ['p1'] and c1['cart']['abandoned']
  assert orjson.loads(documents['c3'])['cart']['item_count'] == 1
  assert orjson.loads(documents['c4'])['cart']['item_count'] == 0
  # The machine hits are newer, but the human ones are the engagement.
  hours_ago = lambda hours: orjson.loads(orjson.dumps(NOW - dt.timedelta(hours=hours)))
  assert c1['engagement'] == {'last_email_open_at': hours_ago(4),
                              'last_email_click_at': hours_ago(30)}
  assert {c: orjson.loads(d)['holdout'] for c, d in documents.items() if d} == {
      'c1': True, 'c2': False, 'c3': False, 'c4': False, 'c7': True}
  c7 = orjson.loads(documents['c7'])
  assert [v['product_id'] for v in c7['recently_viewed']] == ['p3']
  assert c7['cart']['item_count'] == 1 and c7['first_name'] is None and c7['email_sha256'] is None

  shuffled = list(free)
  random.Random(seed).shuffle(shuffled)
  bundles = [shuffled[i::3] for i in range(3)]
  stream = TestStream()
  # The watermark is already past every event: each arrives late, some by days.
  stream.advance_watermark_to(started / 1e6)
  for bundle in (bundles[0] + links[:1], bundles[1] + links[1:], bundles[2] + device):
    stream.add_elements([TimestampedValue(e, e['event_time'] / 1e6) for e in bundle])
  # The test clock starts at the epoch and the fold sets its timers from the wall clock: nothing
  # fires until every event is in, then each customer's flush and abandonment timers fire.
  stream.advance_processing_time(int(time.time()) + 3600).advance_watermark_to_infinity()

  with streaming_pipeline() as p:
    out = live_profiles(p | stream, crm, catalog)
    # Every document the stream writes is the batch document (a customer may be rendered twice:
    # its flush and its cart's abandonment both fire after the last event).
    assert_that(out.documents | 'Docs' >> beam.Map(comparable),
                distinct_equal_to(batch['documents']), label='SameDocuments')
    assert_that(out.triggers | 'Triggers' >> beam.Map(trigger_view),
                equal_to(batch['triggers']), label='SameTriggers')
  assert batch['triggers'], 'the histories must abandon a cart'


def test_the_documented_limit_an_earlier_link_arriving_late_takes_over_from_then_on():
  # docs/DATA_CONTRACT.md, "Order of events": anonymous events attributed before an earlier link
  # arrives stay with the first customer; later ones follow the earliest link, as batch does.
  first_link = call(1, 'identify', 'c4', anon='a3')
  attributed = call(2, 'Product Viewed', anon='a3', product_id='p2')
  earlier_link = call(48, 'identify', 'c3', anon='a3')
  after = call(47, 'Product Added', anon='a3', product_id='p2')
  stream = TestStream()
  for element in (first_link, attributed, earlier_link, after):
    stream.add_elements([element])
  with streaming_pipeline() as p:
    pairs = (p | stream.advance_watermark_to_infinity()
             | StitchLive(LiveSettings(identity_buffer_hours=24))
             | beam.MapTuple(lambda customer, e: (customer, e['message_id'])))
    assert_that(pairs, equal_to([
        ('c4', first_link['message_id']), ('c4', attributed['message_id']),
        ('c3', earlier_link['message_id']), ('c3', after['message_id'])]))
