"""Screen, group and alias calls (what the Segment-compatible collector forwards) through the
batch composites on the FnApiRunner and the streaming composites (TestStream) on the
BundleBasedDirectRunner: an alias links an anonymous visitor's events to the customer exactly as
an identify carrying both ids does, a screen counts as a page view, a group changes nothing but
what every event changes.
"""
import datetime as dt
import time

import apache_beam as beam
import orjson
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

import schemas
from tests.unit.beam_helpers import batch_pipeline
from tests.unit.test_fold_order import segment_call
from tests.unit.test_live_equals_batch import (comparable, live_profiles, run_batch,
                                               write_reference)
from tests.unit.test_streaming import distinct_equal_to, streaming_pipeline
from transforms import metrics
from transforms.batch_profiles import BatchProfiles
from transforms.live_profiles import StitchLive
from transforms.rules import profile
from transforms.settings import LiveSettings
from transforms.windows import AssignEventTime, HourlyBatch

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def call(hours_ago: float, kind: str, user=None, anon=None, **fields):
  """A parsed Segment call `hours_ago` hours before the test started."""
  return segment_call(kind, NOW - dt.timedelta(hours=hours_ago), user, anon, **fields)


def visitor(anon='a1'):
  """An anonymous visitor's browsing before sign-in: a view, a screen, an add to cart."""
  return [call(5, 'Product Viewed', anon=anon, product_id='p1'),
          call(4.9, 'screen', anon=anon, name='Cart'),
          call(4.8, 'Product Added', anon=anon, product_id='p2', quantity=2)]


def linked_by(kind: str, hours_ago: float = 4, **fields):
  """The sign-in that links a1 to c1: an alias (previousId a1) or an identify with both ids."""
  if kind == 'alias':
    return call(hours_ago, 'alias', 'c1', previous_id='a1', **fields)
  return call(hours_ago, 'identify', 'c1', anon='a1', **fields)


def test_an_alias_stitches_in_batch_as_an_identify_with_both_ids_does(tmp_path):
  # FnApiRunner. The same browsing, signed in by an alias or by an identify (without traits,
  # the alias's only difference): the same documents.
  crm, catalog = write_reference(tmp_path)
  as_of = schemas.datetime_to_micros(NOW)
  later = [call(3, 'Product Viewed', 'c1', product_id='p3')]
  by_alias = run_batch(visitor() + [linked_by('alias')] + later, crm, catalog, as_of)
  by_identify = run_batch(visitor() + [linked_by('identify')] + later, crm, catalog, as_of)
  assert by_alias == by_identify
  [(customer_id, document)] = by_alias['documents']
  document = orjson.loads(document)
  assert customer_id == 'c1'
  assert [v['product_id'] for v in document['recently_viewed']] == ['p3', 'p1']
  assert document['cart']['item_count'] == 2


def test_an_alias_carries_no_traits_into_the_profile_an_identify_does(tmp_path):
  crm, catalog = write_reference(tmp_path)  # c1: Ann in the CRM
  as_of = schemas.datetime_to_micros(NOW)
  traits = {'first_name': 'Bea', 'unsubscribed': True}
  by_alias = dict(run_batch(visitor() + [linked_by('alias', **traits)], crm, catalog,
                            as_of)['documents'])
  by_identify = dict(run_batch(visitor() + [linked_by('identify', **traits)], crm, catalog,
                               as_of)['documents'])
  assert orjson.loads(by_alias['c1'])['first_name'] == 'Ann'
  assert by_identify == {'c1': None}  # unsubscribed by the identify's traits


def test_an_alias_from_an_earlier_user_id_links_it_as_the_anonymous_side_without_merging():
  # previousId c0 is a known userId: c0's own events stay c0's (no merge of two known user ids,
  # docs/DATA_CONTRACT.md); events carrying only c0 as their anonymousId follow the link to c1.
  events = [call(6, 'Product Viewed', 'c0', product_id='p1'),
            call(5, 'Product Viewed', anon='c0', product_id='p2'),
            call(4, 'alias', 'c1', previous_id='c0')]
  with batch_pipeline() as p:
    out = p | beam.Create(events) | BatchProfiles(as_of_micros=schemas.datetime_to_micros(NOW))
    assert_that(out.documents | beam.MapTuple(lambda customer, doc: (
        customer, [v['product_id'] for v in doc['recently_viewed']])),
                equal_to([('c0', ['p1']), ('c1', ['p2'])]))


def test_an_alias_stitches_live_as_an_identify_with_both_ids_does_and_as_batch(tmp_path):
  # BundleBasedDirectRunner (TestStream). The browsing waits in the identity buffer until the
  # alias arrives, then is replayed to c1; a view after the alias goes to c1 at once. The
  # documents are the batch documents of the identify version.
  crm, catalog = write_reference(tmp_path)
  started = schemas.datetime_to_micros(NOW)
  after = call(3, 'Product Viewed', anon='a1', product_id='p3')
  batch = run_batch(visitor() + [linked_by('identify'), after], crm, catalog, started)
  stream = (TestStream()
            .advance_watermark_to(started / 1e6)
            .add_elements([TimestampedValue(e, e['event_time'] / 1e6) for e in visitor()])
            .add_elements([TimestampedValue(e, e['event_time'] / 1e6)
                           for e in (linked_by('alias'), after)])
            .advance_processing_time(int(time.time()) + 3600)
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    out = live_profiles(p | stream, crm, catalog)
    assert_that(out.documents | 'Docs' >> beam.Map(comparable),
                distinct_equal_to(batch['documents']), label='SameDocuments')
  assert orjson.loads(dict(batch['documents'])['c1'])['cart']['item_count'] == 2


def test_the_live_stitch_replays_held_events_on_an_alias_as_on_an_identify():
  for kind in ('alias', 'identify'):
    held, after = visitor(), [call(3, 'Product Viewed', anon='a1', product_id='p3')]
    stream = (TestStream()
              .advance_processing_time(int(time.time()))
              .add_elements(held).add_elements([linked_by(kind)]).add_elements(after)
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
      pairs = (p | stream | StitchLive(LiveSettings(identity_buffer_hours=24))
               | beam.MapTuple(lambda customer, e: (customer, e['type'], e['event'])))
      assert_that(pairs, equal_to([
          ('c1', 'track', 'Product Viewed'), ('c1', 'screen', 'Cart'),
          ('c1', 'track', 'Product Added'), ('c1', kind, None),
          ('c1', 'track', 'Product Viewed')]))


def test_a_screen_folds_as_a_page_view_and_counts_as_one_hourly():
  # The fold: a screen is a page (the same state); the hourly aggregate (FnApiRunner) counts
  # screens with pages, and groups and aliases under their own names.
  page = call(2, 'page', 'c1', name='Home')
  screen = {**call(2, 'screen', 'c1', name='Home'), 'message_id': page['message_id']}
  assert profile.fold('c1', [screen]) == profile.fold('c1', [page])
  ten = dt.datetime(2026, 11, 2, 10, tzinfo=dt.timezone.utc)

  def at(minute, kind, user=None, anon=None, **fields):
    return segment_call(kind, ten + dt.timedelta(minutes=minute), user, anon, **fields)
  hour = [at(1, 'page', 'c1', name='Home'), at(2, 'screen', 'c1', name='Home'),
          at(3, 'screen', anon='a1', name='Cart'), at(4, 'group', 'c1', group_id='g'),
          at(5, 'alias', 'c1', previous_id='a1')]
  with batch_pipeline() as p:
    rows = p | beam.Create(hour) | AssignEventTime() | HourlyBatch()
    assert_that(rows | beam.Map(lambda r: (r['customer_id'], r['identified'], r['event_name'],
                                           r['event_count'])),
                equal_to([('c1', True, 'page', 2), ('a1', False, 'page', 1),
                          ('c1', True, 'group', 1), ('c1', True, 'alias', 1)]))


def test_batch_counts_the_events_an_alias_stitches():
  p = batch_pipeline()
  _ = (p | beam.Create(visitor() + [linked_by('alias')])
       | BatchProfiles(as_of_micros=schemas.datetime_to_micros(NOW)))
  result = p.run()
  result.wait_until_finish()
  stitched = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE).with_name(
      metrics.EVENTS_STITCHED))['counters']
  assert sum(c.committed for c in stitched) == len(visitor())
