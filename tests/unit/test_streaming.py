"""TestStream tests of the streaming behaviour: dedupe across bundles, late and out-of-order
events, hourly panes, and the per-customer state fold. BundleBasedDirectRunner, as streaming
needs locally."""
import datetime as dt
import decimal
import gzip
import time

import apache_beam as beam
import fastavro
import orjson
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

import schemas
from transforms.dedupe import DedupeStream
from transforms.live_profiles import FoldLive, LivePopularity, LiveProfiles, StitchLive
from transforms.rules import profile
from transforms.settings import DedupeSettings, HourlySettings, LiveSettings, ReferenceFiles
from transforms.sources import ReadWholeEventFiles
from transforms.windows import AssignEventTime, HourlyWindowed

BASE = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.timezone.utc)


def streaming_pipeline():
  options = PipelineOptions(flags=[])
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(runner='BundleBasedDirectRunner', options=options)


def at(minutes: float) -> int:
  return schemas.datetime_to_micros(BASE + dt.timedelta(minutes=minutes))


def seconds(minutes: float) -> float:
  return at(minutes) / 1e6


def event(message_id, minutes, name='Product Viewed', user='c1', total=None):
  return {'message_id': message_id, 'type': 'track', 'event': name, 'user_id': user,
          'anonymous_id': None, 'event_time': at(minutes), 'received_at': None,
          'source': 'pubsub', 'total': total, 'revenue': None, 'price': None, 'quantity': 1,
          'product_id': f'p{message_id}', 'order_id': None, 'email_sha256': None,
          'properties': {}, 'currency': 'USD' if total is not None else None}


def test_dedupe_drops_copies_across_bundles_and_forgets_after_the_look_back():
  # The test clock starts at the epoch; the dedupe sets its timers from the wall clock (as Beam's
  # DeduplicatePerKey does), so first bring the test clock to now.
  stream = (TestStream()
            .advance_processing_time(int(time.time()))
            .add_elements([event('m1', 1), event('m2', 2)])
            .add_elements([event('m1', 1), event('m3', 3)])   # m1 again, next bundle
            .advance_processing_time(30 * 60)                   # within the 1 h look-back
            .add_elements([event('m2', 2)])                     # dropped
            .advance_processing_time(2 * 3600)                  # look-back over for m1..m3
            .add_elements([event('m1', 1)])                     # kept again
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    kept = (p | stream | DedupeStream(DedupeSettings(hours=1))
            | beam.Map(lambda e: e['message_id']))
    assert_that(kept, equal_to(['m1', 'm2', 'm3', 'm1']))


def _pane_view(row):
  return (schemas.micros_to_datetime(row['window_start']).hour, row['event_name'],
          row['event_count'], None if row['revenue'] is None else str(row['revenue']),
          row['pane_index'], row['pane_timing'])


def test_hourly_panes_on_time_then_late_updates_then_dropped_beyond_lateness():
  stream = (TestStream()
            .advance_watermark_to(seconds(0))
            # Out of order within the hour, and one event in the next hour.
            .add_elements([event('a', 40), event('b', 5), event('c', 65),
                           event('o1', 30, 'Order Completed', total=10)])
            .advance_watermark_to(seconds(61))       # 10:00-11:00 is complete: on-time pane
            .add_elements([event('d', 20)])          # late for 10:00, within lateness
            .add_elements([event('o2', 50, 'Order Completed', total=2.5)])  # late too
            .advance_watermark_to(seconds(60 + 120))  # 11:00-12:00 on time; 10:00 now closed
            .add_elements([event('e', 10)])          # later than 1 h lateness: dropped
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    rows = (p | stream
            | beam.Map(lambda e: {**e, 'total': None if e['total'] is None else
                                  decimal.Decimal(str(e['total']))})
            | AssignEventTime() | HourlyWindowed(HourlySettings(allowed_lateness_hours=1)))
    assert_that(rows | beam.Map(_pane_view), equal_to([
        (10, 'Product Viewed', 2, None, 0, 'ON_TIME'),
        (10, 'Order Completed', 1, '10', 0, 'ON_TIME'),
        (11, 'Product Viewed', 1, None, 0, 'ON_TIME'),
        (10, 'Product Viewed', 3, None, 1, 'LATE'),        # accumulating: full total so far
        (10, 'Order Completed', 2, '12.5', 1, 'LATE'),
    ]))


def distinct_equal_to(expected):
  """equal_to on the distinct elements of the output."""
  def match(actual):
    equal_to(expected)(list(set(actual)))
  return match


def test_streaming_profiles_fold_out_of_order_events_across_bundles():
  stream = (TestStream()
            .advance_processing_time(int(time.time()))
            .add_elements([event('a', 5)])
            .advance_processing_time(30)
            .add_elements([event('b', 1, 'Product Added'), event('x', 2, user='c2')])
            .advance_processing_time(30)
            .add_elements([event('c', 9)])
            .advance_processing_time(30)
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    docs = ((p | stream | LiveProfiles()).documents
            | beam.Map(lambda kv: (kv[0], tuple(v['product_id'] for v in kv[1]['recently_viewed']),
                                   kv[1]['cart']['item_count'], kv[1]['last_event_at'].minute))
            # The same document can be emitted more than once (a flush and an abandonment timer
            # firing together; in full-suite runs the DirectRunner also re-fired timers set
            # behind the test clock). Writes are idempotent: what matters is which states appear.
            )
    # Out-of-order events never move last_event_at back (b at 10:01 after a at 10:05).
    assert_that(docs, distinct_equal_to([('c1', ('pa',), 0, 5), ('c1', ('pa',), 1, 5),
                                ('c2', ('px',), 0, 2), ('c1', ('pc', 'pa'), 1, 9)]))


def test_assign_event_time_uses_the_payload_time():
  with streaming_pipeline() as p:
    stamps = (p | TestStream().add_elements([event('a', 7)]).advance_watermark_to_infinity()
              | AssignEventTime()
              | beam.Map(lambda e, t=beam.DoFn.TimestampParam: t))
    assert_that(stamps, equal_to([Timestamp(micros=at(7))]))


def test_event_files_are_read_in_a_streaming_pipeline_too(tmp_path):
  lines = tmp_path / 'backfill.ndjson.gz'
  lines.write_bytes(gzip.compress(b'{"a": 1}\n\n{"b": 2}\n'))
  avro = tmp_path / 'backfill.avro'
  with open(avro, 'wb') as out:
    fastavro.writer(out, fastavro.parse_schema(schemas.segment_event_avro_schema()),
                    [{'type': 'page', 'messageId': 'm', 'anonymousId': 'a'}])
  with streaming_pipeline() as p:
    read = p | ReadWholeEventFiles([str(lines), str(avro)])
    assert_that(read | beam.Map(lambda t: (t[0], orjson.loads(t[1]))), equal_to([
        (f'file:{lines}', {'a': 1}), (f'file:{lines}', {'b': 2}),
        (f'file:{avro}', {'type': 'page', 'messageId': 'm', 'anonymousId': 'a'})]))


def anon_event(message_id, minutes, anon, user=None, name='Product Viewed', product='p1',
               type_='track'):
  e = event(message_id, minutes, name, user)
  return {**e, 'anonymous_id': anon, 'type': type_, 'product_id': product,
          'event': name if type_ == 'track' else None}


def test_stitching_replays_held_anonymous_events_when_the_link_arrives():
  stream = (TestStream()
            .advance_processing_time(int(time.time()))
            .add_elements([anon_event('v1', 1, 'a1'), anon_event('v2', 2, 'a1', product='p2'),
                           anon_event('x', 3, 'a9'), event('u', 4, user='c7')])
            .add_elements([anon_event('id', 5, 'a1', user='c1', type_='identify', name=None,
                                      product=None)])
            .add_elements([anon_event('v3', 6, 'a1', product='p3')])   # after the link
            .advance_processing_time(25 * 3600)                          # a9 never linked
            .add_elements([anon_event('late', 7, 'a9', user='c9', type_='identify', name=None,
                                      product=None)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    attributed = (p | stream | StitchLive(LiveSettings(identity_buffer_hours=24))
                  | beam.MapTuple(lambda customer, e: (customer, e['message_id'])))
    assert_that(attributed, equal_to([
        ('c7', 'u'), ('c1', 'v1'), ('c1', 'v2'), ('c1', 'id'), ('c1', 'v3'),
        ('c9', 'late')]))  # a9's held view expired after 24 h: not replayed


def test_live_fold_coalesces_a_burst_into_one_document():
  stream = (TestStream()
            .advance_processing_time(int(time.time()))
            .add_elements([('c1', event('a', 1)), ('c1', event('b', 2)), ('c1', event('c', 3))])
            .advance_processing_time(30)                # the flush timer fires once
            .add_elements([('c1', event('d', 4))])
            .advance_processing_time(30)
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    out = p | stream | FoldLive(live=LiveSettings(flush_seconds=1))
    assert_that(out.documents | beam.MapTuple(
        lambda customer, doc: (customer, len(doc['recently_viewed']))),
                equal_to([('c1', 3), ('c1', 4)]), label='Documents')
    assert_that(out.triggers, equal_to([]), label='NoTriggers')


def test_live_fold_triggers_once_per_abandoned_cart():
  now = time.time()
  recent = (now - BASE.timestamp()) / 60  # minutes after BASE that is "now"
  added = {**event('add', recent), 'event': 'Product Added', 'product_id': 'p1', 'quantity': 2}
  added_more = {**event('add2', recent + 1), 'event': 'Product Added', 'product_id': 'p2'}
  stream = (TestStream()
            .advance_processing_time(int(now))
            .add_elements([('c1', added)])
            .advance_processing_time(30)                # flushed: not abandoned yet
            .advance_processing_time(61 * 60)           # abandonment timer: document + trigger
            .add_elements([('c1', event('v', recent))])   # a view: the cart is unchanged
            .advance_processing_time(61 * 60)           # no new abandonment timer, no trigger
            .add_elements([('c1', added_more)])         # the cart changes: a new cart
            .advance_processing_time(61 * 60)           # abandoned again: a second trigger
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    out = p | stream | FoldLive(profile.Settings(cart_abandon_minutes=60),
                                LiveSettings(flush_seconds=1))
    # Renders at an abandonment timer see the cart abandoned (the reference time is the timer's).
    assert_that(out.documents | beam.Filter(lambda kv: kv[1]['cart']['abandoned'])
                | beam.MapTuple(lambda customer, doc: (customer, doc['cart']['item_count'])),
                equal_to([('c1', 2), ('c1', 3)]), label='AbandonedDocs')
    assert_that(out.triggers | beam.Map(lambda t: (t['customer_id'], t['trigger_type'],
                                                   t['cart']['item_count'])),
                equal_to([('c1', 'cart_abandoned', 2), ('c1', 'cart_abandoned', 3)]),
                label='OneTriggerPerCart')


def test_live_fold_enriches_from_the_crm_and_catalog_files_and_honours_consent(tmp_path):
  crm = tmp_path / 'customers.csv'
  crm.write_text('customer_id,email,first_name,last_name,country,language,email_opt_in,'
                 'created_at,loyalty_tier\nc1,a@b.com,Ann,L,SE,sv,true,,gold\n'
                 'c2,b@b.com,Bo,L,DE,de,false,,\n')
  catalog = tmp_path / 'catalog.csv'
  catalog.write_text('product_id,sku,name,category,brand,price,currency,in_stock,url,image_url\n'
                     'pa,S,Boot,Shoes,B,10.00,USD,true,u,i\npz,S,Sock,Shoes,B,2.00,USD,true,u,i\n')
  stream = (TestStream()
            .advance_processing_time(int(time.time()))
            .add_elements([('c1', event('a', 1)), ('c2', event('b', 1, user='c2'))])
            .advance_processing_time(30)
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    out = p | stream | FoldLive(live=LiveSettings(flush_seconds=1),
                                reference=ReferenceFiles(str(crm), str(catalog)))
    assert_that(out.documents | beam.MapTuple(_enrichment_view),
                # Viewing does not exclude a product from recommendations (buying or carting does).
                equal_to([('c1', ('Ann', 'gold', 'Boot', ['pa', 'pz'])), ('c2', None)]))


def _enrichment_view(customer, doc):
  if doc is None:
    return customer, None
  return customer, (doc['first_name'], doc['loyalty_tier'], doc['recently_viewed'][0]['name'],
                    [r['product_id'] for r in doc['recommendations']])


def test_live_popularity_counts_distinct_customers_in_the_window_and_decays():
  now = time.time()
  recent = (now - BASE.timestamp()) / 60

  def interaction(customer, product, name='Product Viewed'):
    return customer, {**event(f'{customer}-{product}-{name}', recent, name, user=customer),
                      'product_id': product}

  stream = (TestStream()
            .advance_processing_time(int(now))
            .add_elements([interaction('c1', 'pa'), interaction('c2', 'pa'),
                           interaction('c1', 'pa', 'Product Added'), interaction('c3', 'pb'),
                           interaction('c3', 'pb', 'Product Removed')])  # not an interest
            .advance_processing_time(30)          # flushed: pa by 2 customers, pb by 1
            .advance_processing_time(2 * 3600)    # the window (1 h) has passed: both decay to 0
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    counts = (p | stream | LivePopularity(LiveSettings(popularity_window_hours=1))
              | beam.MapTuple(lambda product_id, doc: (product_id, doc['customers'])))
    assert_that(counts, distinct_equal_to([('pa', 2), ('pb', 1), ('pa', 0), ('pb', 0)]))


def test_live_fold_carries_the_publish_time_of_the_newest_pubsub_event():
  from apache_beam.transforms.window import TimestampedValue
  from transforms.rules import serving
  newest_file = {**event('f', 9), 'source': 'file:/drop/day.ndjson'}
  stream = (TestStream()
            .advance_processing_time(int(time.time()))
            # Published in another order than their event times: b (10:03) is the newest.
            .add_elements([TimestampedValue(('c1', event('b', 3)), seconds(7)),
                           TimestampedValue(('c1', event('a', 1)), seconds(8))])
            .advance_processing_time(30)
            .add_elements([TimestampedValue(('c2', event('c', 2)), seconds(4)),
                           TimestampedValue(('c2', newest_file), seconds(5))])
            .advance_processing_time(30)
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    out = p | stream | FoldLive(live=LiveSettings(flush_seconds=1))
    # c2's newest event came from a file: it has no publish time, so neither has the document.
    assert_that(out.documents | beam.MapTuple(
        lambda customer, doc: (customer, doc.get(serving.PUBLISHED_AT))),
                equal_to([('c1', at(7)), ('c2', None)]))
