"""TestPipeline tests of the composite transforms."""
import datetime
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
from transforms import dedupe, line_formats
from transforms import shards as shards_module
from transforms.batch_profiles import BatchProfiles
from transforms.dedupe import DedupeBatch
from transforms.rules import events as events_rules
from transforms.rules import reference
from transforms.settings import ParseLimits, PubSubSource, Sharding
from transforms.sources import (ReadEventFiles, ReadPubSubEvents, ReadReference,
                                ReadWholeEventFiles)
from transforms.windows import AssignEventTime, HourlyBatch, HourlyWindowed


def track(message_id, user_id='c1', time='2026-11-02T10:00:00Z', name='Product Viewed', **extra):
  return orjson.dumps({'type': 'track', 'event': name, 'messageId': message_id, 'userId': user_id,
                       'timestamp': time, **extra})


def test_parse_events_splits_valid_events_from_dead_letters():
  inputs = [('file:a', track('m1'), None), ('file:a', b'{broken', None),
            ('pubsub', track('m2'), {'origin': 'web'}),
            ('pubsub', orjson.dumps({'type': 'merge', 'messageId': 'x', 'userId': 'u'}),
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


def test_pubsub_messages_are_tagged_with_their_valid_source_attribute():
  # FnApiRunner. The collector's `source` attribute names the write key's source; a bad one
  # (too long, a space, empty) keeps the event, tagged `pubsub`, and is counted.
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from apache_beam.metrics.metric import MetricsFilter
  from transforms import metrics, sources
  messages = [PubsubMessage(track('m1'), {'source': 'web', 'received_at': '2026-11-02T10:00Z'}),
              PubsubMessage(track('m2'), {'source': 'server'}),
              PubsubMessage(track('m3'), None),
              PubsubMessage(track('m4'), {'source': 'x' * 65}),
              PubsubMessage(track('m5'), {'source': 'web app'}),
              PubsubMessage(b'{broken', {'source': 'ios-1.2_beta'})]
  p = batch_pipeline()
  parsed = (p | beam.Create(messages) | beam.ParDo(sources._ToTripleFn()) | ParseEvents())
  assert_that(parsed.events | beam.Map(lambda e: (e['message_id'], e['source'])), equal_to([
      ('m1', 'pubsub:web'), ('m2', 'pubsub:server'), ('m3', 'pubsub'), ('m4', 'pubsub'),
      ('m5', 'pubsub')]), label='Events')
  assert_that(parsed.dead_letter | beam.Map(lambda d: (d['source'], d['attributes'])),
              equal_to([('pubsub:ios-1.2_beta', {'source': 'ios-1.2_beta'})]), label='Dead')
  result = p.run()
  result.wait_until_finish()
  bad = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE).with_name(
      metrics.PUBSUB_SOURCE_INVALID))['counters']
  assert sum(c.committed for c in bad) == 2


def test_parse_events_honours_the_size_limit():
  with batch_pipeline() as p:
    out = p | beam.Create([('s', track('m1'), None),
                           ('s', track('m2', properties={'x': 'y' * 500}), None)]) \
        | ParseEvents(ParseLimits(max_message_bytes=300))
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
    kept = p | beam.Create(events) | DedupeBatch()
    assert_that(kept | beam.Map(lambda e: e['n']), equal_to([2, 4]))


def test_dedupe_in_chunks_keeps_the_same_copies_whatever_the_shards_and_chunk_sizes():
  # 300 ids, 1 to 3 copies each (the earliest received wins), plus two copies with equal
  # preference keys (the smaller encoding wins): every shard count and chunk size, from one event
  # per chunk to whole bundles, keeps the same copies.
  events = [{'message_id': 'tie', 'event_time': 1, 'received_at': 1, 'source': 'file:a', 'n': n,
             'price': decimal.Decimal('1.5')} for n in (5, 4)]
  for i in range(300):
    for copy in range(1 + i % 3):
      events.append({'message_id': f'm{i}', 'event_time': i, 'received_at': 10 - copy % 2,
                     'source': 'file:a', 'n': copy, 'price': decimal.Decimal('1.5')})
  expected = [(f'm{i}', 1 if i % 3 else 0) for i in range(300)] + [('tie', 4)]
  for shards, chunk_bytes in ((1, 1), (7, 500), (256, shards_module.CHUNK_BYTES)):
    with batch_pipeline() as p:
      kept = (p | beam.Create(list(reversed(events)), reshuffle=False)
              | dedupe.DedupeBatch(Sharding(shards=shards, chunk_bytes=chunk_bytes)))
      assert_that(kept | beam.Map(lambda e: (e['message_id'], e['n'])), equal_to(expected),
                  label='Kept')
      assert_that(kept | beam.Map(lambda e: e['price']), equal_to([decimal.Decimal('1.5')] * 301),
                  label='Decimals')


def test_dedupe_rejects_zero_shards():
  with pytest.raises(ValueError, match='shards'):
    dedupe.DedupeBatch(Sharding(shards=0))


def segment(message_id, minute, name=None, user=None, anon=None, type_='track', **fields):
  """A Segment call `minute` minutes after 2026-11-02 10:00, parsed as the pipeline parses it."""
  at = datetime.datetime(2026, 11, 2, 10, tzinfo=datetime.timezone.utc) + datetime.timedelta(
      minutes=minute)
  payload = {'type': type_, 'messageId': message_id, 'timestamp': at.isoformat(),
             **({'event': name} if name else {}), **({'userId': user} if user else {}),
             **({'anonymousId': anon} if anon else {}), **fields}
  return events_rules.parse_event(orjson.dumps(payload), 'file:test', 0)


@pytest.mark.parametrize('max_links', [20_000, 1], ids=['links-per-bundle', 'links-flushed'])
def test_build_profiles_stitches_enriches_suppresses_and_triggers(max_links, monkeypatch):
  from transforms import batch_profiles
  monkeypatch.setattr(batch_profiles._RouteFn, 'MAX_LINKS', max_links)
  events = [
      # Anonymous browsing, linked later by an identify carrying both ids.
      segment('v1', 1, 'Product Viewed', anon='a1', properties={'product_id': 'p1'}),
      segment('add', 2, 'Product Added', anon='a1', properties={'product_id': 'p2', 'quantity': 2}),
      segment('id1', 3, type_='identify', user='c1', anon='a1', traits={'first_name': 'Ann'}),
      # A visitor never linked: no document.
      segment('v2', 4, 'Product Viewed', anon='a9', properties={'product_id': 'p1'}),
      # Opted out in the CRM: no document (the writer deletes any).
      segment('v3', 5, 'Product Viewed', user='c2', properties={'product_id': 'p2'}),
      # A product missing from the catalog: kept, from the event's properties.
      segment('v4', 63, 'Product Viewed', user='c3',
              properties={'product_id': 'zz', 'name': 'Mystery', 'price': 3}),
  ]
  customers = [{'customer_id': 'c1', 'email_sha256': 'h1', 'first_name': 'Anna', 'country': 'SE',
                'language': 'sv', 'email_opt_in': True, 'created_at': None,
                'loyalty_tier': 'gold'},
               {'customer_id': 'c2', 'email_sha256': 'h2', 'first_name': 'Bo', 'country': 'DE',
                'language': 'de', 'email_opt_in': False, 'created_at': None,
                'loyalty_tier': None}]
  catalog = [{'product_id': 'p1', 'name': 'Boot', 'category': 'Shoes', 'price': 50.0,
              'currency': 'USD', 'in_stock': True, 'url': 'u1', 'image_url': 'i1', 'sku': None,
              'brand': None},
             {'product_id': 'p2', 'name': 'Hat', 'category': 'Hats', 'price': 10.0,
              'currency': 'USD', 'in_stock': True, 'url': 'u2', 'image_url': 'i2', 'sku': None,
              'brand': None}]
  with batch_pipeline() as p:
    out = p | beam.Create(events) | BatchProfiles(
        customers=p | 'Customers' >> beam.Create(customers),
        catalog=p | 'Catalog' >> beam.Create(catalog))
    summary = out.documents | beam.MapTuple(lambda cid, doc: (cid, None if doc is None else (
        doc['first_name'], doc['country'], [v['product_id'] for v in doc['recently_viewed']],
        doc['cart']['item_count'], doc['cart']['value'], doc['cart']['abandoned'],
        [r['product_id'] for r in doc['recommendations']],
        [v['name'] for v in doc['recently_viewed']])))
    assert_that(summary, equal_to([
        # Reference time = newest event (11:03): c1's cart changed at 10:02, so it is abandoned.
        # Recommendations: c1's top category Hats holds only p2, in the cart; then Shoes: p1.
        ('c1', ('Ann', 'SE', ['p1'], 2, 20.0, True, ['p1'], ['Boot'])),
        ('c2', None),
        # Popularity counts customers (stitched a1 = c1; the unlinked a9 is nobody): p2 by c1 and
        # c2, p1 by c1 only.
        ('c3', (None, None, ['zz'], 0, 0.0, False, ['p2', 'p1'], ['Mystery'])),
    ]), label='Documents')
    assert_that(out.triggers | beam.Map(lambda t: (t['customer_id'], t['trigger_type'],
                                                   t['cart']['item_count'])),
                equal_to([('c1', 'cart_abandoned', 2)]), label='Triggers')


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


def test_avro_input_carries_alias_and_group_ids(tmp_path):
  schema = fastavro.parse_schema(schemas.segment_event_avro_schema())
  records = [
      {'type': 'alias', 'messageId': 'av4', 'userId': 'c1', 'previousId': 'anon-1',
       'timestamp': '2026-11-02T10:00:00Z'},
      {'type': 'group', 'messageId': 'av5', 'userId': 'c1', 'groupId': 'acct-1',
       'timestamp': '2026-11-02T10:00:00Z', 'traits': '{"name": "Initech"}'},
      {'type': 'screen', 'messageId': 'av6', 'anonymousId': 'anon-1', 'name': 'Home',
       'timestamp': '2026-11-02T10:00:00Z'},
  ]
  path = tmp_path / 'calls.avro'
  with open(path, 'wb') as out:
    fastavro.writer(out, schema, records)
  with batch_pipeline() as p:
    parsed = p | ReadEventFiles([str(path)]) | ParseEvents()
    assert_that(parsed.events | beam.Map(lambda e: (
        e['message_id'], e['type'], e['event'], e['user_id'], e['anonymous_id'], e['group_id'],
        e['traits'])), equal_to([
            ('av4', 'alias', None, 'c1', 'anon-1', None, None),
            ('av5', 'group', None, 'c1', None, 'acct-1', {'name': 'Initech'}),
            ('av6', 'screen', 'Home', None, 'anon-1', None, None)]), label='Events')
    assert_that(parsed.dead_letter, equal_to([]), label='NoDeadLetters')


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
  with pytest.raises(ValueError, match='at least one file pattern'):
    ReadWholeEventFiles([])
  with pytest.raises(ValueError, match='positive'):
    ParseEvents(ParseLimits(max_message_bytes=0))
  with pytest.raises(ValueError, match='file pattern'):
    ReadReference('catalog', '', reference.parse_product)
  with pytest.raises(ValueError, match='full path'):
    ReadPubSubEvents(PubSubSource('events-sub'))


@pytest.mark.parametrize('hourly,max_partials',
                         [(HourlyBatch, 20_000), (HourlyBatch, 1), (HourlyWindowed, 20_000)],
                         ids=['batch-fast-path', 'batch-flushing-every-key', 'windowed'])
def test_hourly_activity_in_batch_one_on_time_pane_per_key(hourly, max_partials, monkeypatch):
  # With max_partials=1 the batch path flushes its partial sums at every key: the rows are the
  # same, merged per shard.
  from transforms import windows
  monkeypatch.setattr(windows._HourPartialsFn, 'MAX_PARTIALS', max_partials)
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
    rows = p | beam.Create(events) | AssignEventTime() | hourly()
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


def test_block_line_reader_splits_across_block_boundaries():
  import io
  from transforms.sources import _lines
  data = b'{"a":1}\r\n\n  \nline two\nno newline at end'
  for block in (1, 2, 3, 7, 1 << 20):
    assert list(_lines(io.BytesIO(data), block)) == [
        b'{"a":1}', b'', b'  ', b'line two', b'no newline at end'], block
  assert list(_lines(io.BytesIO(b''), 4)) == []
  assert list(_lines(io.BytesIO(b'x\n'), 4)) == [b'x']


def test_attach_joins_links_from_several_bundles_earliest_first():
  # Links of one anonymous id arrive in chunks from two bundles (two users on a shared device):
  # the earliest link wins, whichever chunk holds it; an id never linked is counted, not kept.
  from transforms import batch_profiles
  link_chunks = []
  for candidates in ([('a1', 50, 'late-user')], [('a1', 10, 'early-user'), ('a2', 5, 'c2')]):
    buffer = shards_module.ChunkBuffer(Sharding(shards=1))
    for anonymous_id, at, user in candidates:
      buffer.add(anonymous_id, line_formats.encode_link(anonymous_id, (at, user)))
    link_chunks += [value.value[1] for value in buffer.drain()]
  anonymous = shards_module.ChunkBuffer(Sharding(shards=1))
  for anonymous_id, message_id in (('a1', 'm1'), ('a2', 'm2'), ('a9', 'm9')):
    event = {'message_id': message_id, 'event_time': 1, 'type': 'track',
             'event': 'Product Viewed', 'product_id': 'p1'}
    anonymous.add(anonymous_id, batch_profiles.fold_line(anonymous_id, event))
  [anonymous_chunk] = [value.value[1] for value in anonymous.drain()]
  fn = batch_profiles._AttachFn(Sharding(shards=3))
  fn.start_bundle()
  out = list(fn.process((0, {'anonymous': [anonymous_chunk], 'links': link_chunks})))
  out += [value.value for value in fn.finish_bundle()]
  attached = {customer: sorted(e['message_id'] for e in batch_profiles.decoded(lines))
              for customer, lines in batch_profiles.customer_lines(
                  chunk for _, chunk in out).items()}
  assert attached == {'early-user': ['m1'], 'c2': ['m2']}
