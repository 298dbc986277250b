"""TestPipeline tests of the composite transforms."""
import decimal
import gzip

import apache_beam as beam
import fastavro
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

import schemas
from tests.unit.beam_helpers import batch_pipeline
from transforms.clean import ParseEvents
from transforms.dedupe import DedupeEvents
from transforms.features import BuildProfiles
from transforms.rules import reference
from transforms.sources import ReadEventFiles, ReadPubSubEvents, ReadReference
from transforms.windows import AssignEventTime, HourlyActivity


def track(message_id, user_id='c1', time='2026-11-02T10:00:00Z', name='Product Viewed', **extra):
  return orjson.dumps({'type': 'track', 'event': name, 'messageId': message_id, 'userId': user_id,
                       'timestamp': time, **extra})


def test_parse_events_splits_valid_events_from_dead_letters():
  inputs = [('file:a', track('m1'), None), ('file:a', b'{broken', None),
            ('pubsub', track('m2'), {'origin': 'web'}),
            ('pubsub', orjson.dumps({'type': 'alias', 'messageId': 'x', 'userId': 'u'}),
             {'origin': 'app'}),
            ('file:b', b'\xff\xfe', None), ('file:b', track('m3', properties={'price': 'free'}), None)]
  with batch_pipeline() as p:
    out = p | beam.Create(inputs) | ParseEvents()
    assert_that(out.events | beam.Map(lambda e: (e['message_id'], e['source'])),
                equal_to([('m1', 'file:a'), ('m2', 'pubsub')]), label='Valid')
    assert_that(out.dead_letter | beam.Map(
        lambda d: (d['failure_type'], d['step'], d['source'], d['payload_encoding'],
                   d['attributes'])),
                equal_to([('invalid_json', 'ParseEvents', 'file:a', 'utf-8', None),
                          ('unsupported_type', 'ParseEvents', 'pubsub', 'utf-8', {'origin': 'app'}),
                          ('invalid_json', 'ParseEvents', 'file:b', 'base64', None),
                          ('schema_violation', 'ParseEvents', 'file:b', 'utf-8', None)]),
                label='DeadLetters')


def test_parse_events_honours_the_size_limit():
  with batch_pipeline() as p:
    out = p | beam.Create([('s', track('m1'), None),
                           ('s', track('m2', properties={'x': 'y' * 500}), None)]) \
        | ParseEvents(max_message_bytes=300)
    assert_that(out.events | beam.Map(lambda e: e['message_id']), equal_to(['m1']), label='Ok')
    assert_that(out.dead_letter | beam.Map(lambda d: d['failure_type']),
                equal_to(['size_violation']), label='TooBig')


def test_dedupe_keeps_one_event_per_message_id_preferring_the_earliest_received():
  events = [
      {'message_id': 'm1', 'event_time': 5, 'received_at': 9, 'source': 'file:b', 'n': 1},
      {'message_id': 'm1', 'event_time': 5, 'received_at': 7, 'source': 'file:a', 'n': 2},
      {'message_id': 'm1', 'event_time': 5, 'received_at': 8, 'source': 'file:a', 'n': 3},
      {'message_id': 'm2', 'event_time': 1, 'received_at': None, 'source': 'file:a', 'n': 4},
  ]
  with batch_pipeline() as p:
    kept = p | beam.Create(events) | DedupeEvents()
    assert_that(kept | beam.Map(lambda e: e['n']), equal_to([2, 4]))


def test_build_profiles_one_document_per_identified_customer():
  events = [
      {'message_id': 'a', 'type': 'track', 'event': 'Product Viewed', 'event_time': 2,
       'user_id': 'c1'},
      {'message_id': 'b', 'type': 'identify', 'event': None, 'event_time': 9, 'user_id': 'c1'},
      {'message_id': 'c', 'type': 'page', 'event': 'Home', 'event_time': 4, 'user_id': None,
       'anonymous_id': 'a1'},
      {'message_id': 'd', 'type': 'track', 'event': 'Order Completed', 'event_time': 3,
       'user_id': 'c2'},
  ]
  with batch_pipeline() as p:
    docs = p | beam.Create(events) | BuildProfiles()
    assert_that(docs | beam.Map(lambda kv: (kv[0], kv[1]['event_counts'])),
                equal_to([('c1', {'Product Viewed': 1, 'identify': 1}),
                          ('c2', {'Order Completed': 1})]))


def test_read_event_files_tags_sources_reads_gzip_and_skips_blank_lines(tmp_path):
  plain = tmp_path / 'a.ndjson'
  plain.write_bytes(track('m1') + b'\n\n' + track('m2') + b'\n')
  packed = tmp_path / 'b.ndjson.gz'
  packed.write_bytes(gzip.compress(track('m3') + b'\n\xff bad bytes\n'))
  with batch_pipeline() as p:
    lines = p | ReadEventFiles([str(plain), str(tmp_path / '*.gz')])
    assert_that(lines, equal_to([(f'file:{plain}', track('m1'), None),
                                 (f'file:{plain}', track('m2'), None),
                                 (f'file:{packed}', track('m3'), None),
                                 (f'file:{packed}', b'\xff bad bytes', None)]))


def test_read_event_files_reads_avro_of_the_same_record_shape(tmp_path):
  schema = fastavro.parse_schema(schemas.segment_event_avro_schema())
  records = [
      {'type': 'track', 'event': 'Product Added', 'messageId': 'av1', 'userId': 'c1',
       'timestamp': '2026-11-02T10:00:00Z', 'properties': '{"product_id": "p1", "quantity": 2}'},
      {'type': 'identify', 'messageId': 'av2', 'userId': 'c1',
       'timestamp': '2026-11-02T10:00:00Z', 'traits': '{"email": "A@b.com"}'},
      {'type': 'track', 'event': 'Product Added', 'messageId': 'av3', 'userId': 'c1',
       'timestamp': '2026-11-02T10:00:00Z', 'properties': 'not json'},
  ]
  path = tmp_path / 'events.avro'
  with open(path, 'wb') as out:
    fastavro.writer(out, schema, records)
  with batch_pipeline() as p:
    parsed = p | ReadEventFiles([str(tmp_path / '*.avro')]) | ParseEvents()
    assert_that(parsed.events | beam.Map(
        lambda e: (e['message_id'], e['source'], e['quantity'], e['email_sha256'] is not None)),
                equal_to([('av1', f'file:{path}', 2, False), ('av2', f'file:{path}', None, True)]),
                label='Events')
    assert_that(parsed.dead_letter | beam.Map(lambda d: (d['failure_type'], d['error_message'])),
                equal_to([('schema_violation', 'properties must be object')]), label='Dead')


def test_read_reference_parses_rows_and_dead_letters_bad_ones(tmp_path):
  path = tmp_path / 'catalog.csv'
  path.write_text('product_id,sku,name,category,brand,price,currency,in_stock,url,image_url\n'
                  'p1,S1,Boot,Shoes,Acme,19.99,USD,true,https://x/p1,https://x/p1.jpg\n'
                  'p2,S2,Hat,Hats,Acme,cheap,USD,true,,\n'
                  'p3,S3,Bag\n')
  with batch_pipeline() as p:
    out = p | ReadReference('catalog', str(path), reference.parse_product)
    assert_that(out.records | beam.Map(lambda r: (r['product_id'], r['price'])),
                equal_to([('p1', 19.99)]), label='Records')
    assert_that(out.dead_letter | beam.Map(lambda d: (d['failure_type'], d['step'], d['payload'])),
                equal_to([('schema_violation', 'ReadCatalog', 'p2,S2,Hat,Hats,Acme,cheap,USD,true,,'),
                          ('invalid_row', 'ReadCatalog', 'p3,S3,Bag')]), label='DeadLetters')


def test_transforms_reject_bad_arguments_at_construction():
  with pytest.raises(ValueError, match='at least one file pattern'):
    ReadEventFiles([])
  with pytest.raises(ValueError, match='positive'):
    ParseEvents(max_message_bytes=0)
  with pytest.raises(ValueError, match='file pattern'):
    ReadReference('catalog', '', reference.parse_product)
  with pytest.raises(ValueError, match='full path'):
    ReadPubSubEvents('events-sub')


@pytest.mark.parametrize('streaming', [False, True], ids=['batch-fast-path', 'windowed'])
def test_hourly_activity_in_batch_one_on_time_pane_per_key(streaming):
  def ev(mid, minute, name='Product Viewed', user='c1', anon=None, total=None, currency=None):
    return {'message_id': mid, 'type': 'track', 'event': name, 'user_id': user,
            'anonymous_id': anon, 'event_time': 1_793_613_600_000_000 + minute * 60_000_000,
            'total': None if total is None else decimal.Decimal(total), 'revenue': None,
            'currency': currency}

  events = [ev('a', 5), ev('b', 50), ev('c', 70), ev('d', 10, user=None, anon='anon-1'),
            ev('e', 20, 'Order Completed', total='10.10', currency='USD'),
            ev('f', 30, 'Order Completed', total='0.20', currency='USD'),
            ev('g', 40, 'Order Completed', total='5', currency='EUR'),
            ev('h', 45, user=None, anon=None)]  # no id at all: not counted
  with batch_pipeline() as p:
    rows = p | beam.Create(events) | AssignEventTime() | HourlyActivity(streaming=streaming)
    assert_that(rows | beam.Map(lambda r: (
        r['window_start'] // 3_600_000_000 % 24, r['customer_id'], r['identified'],
        r['event_name'], r['event_count'], None if r['revenue'] is None else str(r['revenue']),
        r['currency'], r['pane_index'], r['pane_timing'])), equal_to([
            (10, 'c1', True, 'Product Viewed', 2, None, None, 0, 'ON_TIME'),
            (11, 'c1', True, 'Product Viewed', 1, None, None, 0, 'ON_TIME'),
            (10, 'anon-1', False, 'Product Viewed', 1, None, None, 0, 'ON_TIME'),
            (10, 'c1', True, 'Order Completed', 2, '10.30', 'USD', 0, 'ON_TIME'),
            (10, 'c1', True, 'Order Completed', 1, '5', 'EUR', 0, 'ON_TIME'),
        ]))
