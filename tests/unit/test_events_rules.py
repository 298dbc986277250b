"""parse_event: Segment spec payloads (the E-commerce v2 spec's example calls, and each of the six
call types) and every failure."""
import datetime as dt
import hashlib

import orjson
import pytest

import schemas
from transforms.rules import activity, events, identity, profile
from transforms.rules.dead_letters import Rejection

NOW = 1_800_000_000_000_000

# The `Product Viewed` example of the Segment E-commerce v2 spec, as a full track call.
PRODUCT_VIEWED = {
    'type': 'track',
    'event': 'Product Viewed',
    'messageId': 'ajs-7f1c2e',
    'userId': 'c00042',
    'anonymousId': 'anon-1',
    'timestamp': '2026-11-02T10:15:00.000Z',
    'context': {'ip': '8.8.8.8', 'traits': {'email': 'Peter@Example.com'}},
    'properties': {
        'product_id': '507f1f77bcf86cd799439011', 'sku': 'G-32', 'category': 'Games',
        'name': 'Monopoly: 3rd Edition', 'brand': 'Hasbro', 'variant': '200 pieces',
        'price': 18.99, 'quantity': 1, 'coupon': 'MAYDEALS', 'currency': 'usd', 'position': 3,
        'value': 18.99, 'url': 'https://www.example.com/product/path',
        'image_url': 'https://www.example.com/product/path.jpg'},
}
IDENTIFY = {
    'type': 'identify', 'messageId': 'id-1', 'userId': 'c00042', 'anonymousId': 'anon-1',
    'timestamp': '2026-11-02T10:14:00Z',
    'traits': {'email': ' Peter@Example.com ', 'first_name': 'Peter'},
}
PAGE = {
    'type': 'page', 'name': 'Home', 'messageId': 'pg-1', 'anonymousId': 'anon-1',
    'timestamp': '2026-11-02T10:13:00+01:00', 'properties': {'path': '/', 'title': 'Shop'},
}
# The Segment spec's screen, group and alias examples (analytics-ios / analytics.js shapes).
SCREEN = {
    'type': 'screen', 'name': 'Home', 'messageId': 'sc-1', 'anonymousId': 'anon-1',
    'userId': 'c00042', 'timestamp': '2026-11-02T10:16:00Z',
    'properties': {'Feed Type': 'private'}, 'context': {'app': {'name': 'Shop', 'build': '7'}},
}
GROUP = {
    'type': 'group', 'groupId': '0e8c78ea9d97a7b8185e8632', 'messageId': 'gr-1',
    'userId': 'c00042', 'anonymousId': 'anon-1', 'timestamp': '2026-11-02T10:17:00Z',
    'traits': {'name': 'Initech', 'industry': 'Technology', 'employees': 329, 'plan': 'enterprise',
               'email': 'Office@Initech.example'},
    'context': {'traits': {'email': 'Peter@Example.com'}},
}
ALIAS = {
    'type': 'alias', 'previousId': 'anon-1', 'userId': 'c00042', 'messageId': 'al-1',
    'timestamp': '2026-11-02T10:14:30Z',
}


def parse(value, **kwargs):
  payload = value if isinstance(value, (bytes, str)) else orjson.dumps(value)
  return events.parse_event(payload, 'file:test', NOW, **kwargs)


def micros(text):
  return schemas.datetime_to_micros(dt.datetime.fromisoformat(text))


def test_track_event_is_normalised():
  event = parse(PRODUCT_VIEWED)
  assert event['message_id'] == 'ajs-7f1c2e'
  assert (event['type'], event['event']) == ('track', 'Product Viewed')
  assert (event['user_id'], event['anonymous_id']) == ('c00042', 'anon-1')
  assert event['event_time'] == micros('2026-11-02T10:15:00+00:00')
  assert event['properties']['price'] == 18.99
  assert event['source'] == 'file:test' and event['ingested_at'] == NOW
  assert set(event) == {f['name'] for f in schemas.avro_schema('events')['fields']}


def test_email_is_hashed_and_removed_everywhere():
  event = parse(PRODUCT_VIEWED)
  assert event['email_sha256'] == hashlib.sha256(b'peter@example.com').hexdigest()
  assert 'email' not in event['context']['traits']
  identify = parse(IDENTIFY)
  assert identify['email_sha256'] == event['email_sha256']  # trimmed and lower-cased first
  assert identify['traits'] == {'first_name': 'Peter'}
  assert identify['event'] is None
  assert b'@' not in orjson.dumps(identify)


def test_page_uses_its_name_and_times_become_utc():
  event = parse(PAGE)
  assert event['event'] == 'Home'
  assert event['user_id'] is None
  assert event['event_time'] == micros('2026-11-02T09:13:00+00:00')


def test_screen_is_named_like_a_page_and_counts_as_a_page_view():
  event = parse(SCREEN)
  assert (event['type'], event['event']) == ('screen', 'Home')
  assert (event['user_id'], event['anonymous_id']) == ('c00042', 'anon-1')
  assert event['properties'] == {'Feed Type': 'private'} and event['group_id'] is None
  assert profile.event_name(event) == profile.event_name(parse(PAGE)) == profile.PAGE
  assert activity.activity_key(event) == ('c00042', True, 'page', None)


def test_group_keeps_its_group_id_and_its_traits_address_is_not_the_customers():
  event = parse(GROUP)
  assert (event['type'], event['event'], event['group_id']) == (
      'group', None, '0e8c78ea9d97a7b8185e8632')
  assert (event['user_id'], event['anonymous_id']) == ('c00042', 'anon-1')
  # The group's address is replaced by its token; the customer's (context.traits) is hashed.
  assert event['email_sha256'] == hashlib.sha256(b'peter@example.com').hexdigest()
  assert event['traits'] == {
      'name': 'Initech', 'industry': 'Technology', 'employees': 329, 'plan': 'enterprise',
      'email': '[email-sha256:' + hashlib.sha256(b'office@initech.example').hexdigest() + ']'}
  assert b'@' not in orjson.dumps(event)
  assert schemas.to_bigquery_row('events', event)['group_id'] == '0e8c78ea9d97a7b8185e8632'
  assert profile.event_name(event) == 'group'


def test_alias_gives_its_previous_id_as_the_anonymous_id_it_links():
  event = parse(ALIAS)
  assert (event['type'], event['event'], event['group_id']) == ('alias', None, None)
  assert (event['user_id'], event['anonymous_id']) == ('c00042', 'anon-1')
  # The link is the one an identify carrying both ids makes.
  assert identity.link(event) == identity.link({**parse(IDENTIFY), 'event_time': event[
      'event_time']}) == ('anon-1', (event['event_time'], 'c00042'))
  # previousId may be an earlier userId: linked the same way (the anonymous side). The alias's
  # own anonymousId, when it differs, is not kept (docs/DATA_CONTRACT.md).
  earlier = parse({**ALIAS, 'previousId': 'c00007', 'anonymousId': 'anon-9'})
  assert (earlier['user_id'], earlier['anonymous_id']) == ('c00042', 'c00007')
  assert profile.event_name(event) == 'alias'


def test_only_track_page_and_screen_fill_the_event_column():
  assert parse({**IDENTIFY, 'name': 'not a page'})['event'] is None
  assert parse({**ALIAS, 'name': 'x', 'event': 'y'})['event'] is None
  assert parse({**GROUP, 'name': 'x'})['event'] is None


def test_snake_case_keys_from_rudderstack_are_accepted():
  payload = {'type': 'track', 'event': 'Product Added', 'message_id': 'r-1', 'user_id': 'c1',
             'anonymous_id': 'a1', 'original_timestamp': '2026-11-02T10:00:00Z',
             'sent_at': '2026-11-02T10:00:01Z', 'received_at': '2026-11-02T10:00:05Z'}
  event = parse(payload)
  assert (event['message_id'], event['user_id'], event['anonymous_id']) == ('r-1', 'c1', 'a1')
  assert event['received_at'] == micros('2026-11-02T10:00:05+00:00')
  alias = parse({'type': 'alias', 'message_id': 'r-2', 'previous_id': 'a1', 'user_id': 'c1',
                 'original_timestamp': '2026-11-02T10:00:00Z'})
  assert (alias['user_id'], alias['anonymous_id']) == ('c1', 'a1')
  group = parse({'type': 'group', 'message_id': 'r-3', 'group_id': 'g1', 'user_id': 'c1',
                 'original_timestamp': '2026-11-02T10:00:00Z'})
  assert group['group_id'] == 'g1'


def test_clock_skew_is_corrected_as_segment_does():
  # The device clock is 2 minutes fast: it says it sent at 10:02:01, the server got it at 10:00:02.
  payload = {**PRODUCT_VIEWED, 'timestamp': '2026-11-02T10:02:00Z',
             'originalTimestamp': '2026-11-02T10:02:00Z', 'sentAt': '2026-11-02T10:02:01Z',
             'receivedAt': '2026-11-02T10:00:02Z'}
  assert parse(payload)['event_time'] == micros('2026-11-02T10:00:01+00:00')


def test_without_received_at_timestamp_is_used_then_original_timestamp():
  payload = dict(PRODUCT_VIEWED)
  del payload['timestamp']
  payload['originalTimestamp'] = '2026-11-02T08:00:00Z'
  assert parse(payload)['event_time'] == micros('2026-11-02T08:00:00+00:00')


@pytest.mark.parametrize('payload, failure_type, words', [
    (b'{"type": "track", "messageId": ', events.INVALID_JSON, 'not valid JSON'),
    (b'not json at all', events.INVALID_JSON, 'not valid JSON'),
    (b'\xff\xfe{"type":"track"}', events.INVALID_JSON, 'not valid JSON'),
    (b'[1, 2]', events.SCHEMA_VIOLATION, 'must be a JSON object'),
    (b'42', events.SCHEMA_VIOLATION, 'must be a JSON object'),
    ({**PAGE, 'type': 'screenview'}, events.UNSUPPORTED_TYPE, "'screenview'"),
    ({**PAGE, 'type': 'Screen'}, events.UNSUPPORTED_TYPE, 'track, identify, page, screen, group, '
     'alias'),
    ({k: v for k, v in GROUP.items() if k != 'groupId'}, events.SCHEMA_VIOLATION,
     'a group call needs a groupId'),
    ({**GROUP, 'groupId': ''}, events.SCHEMA_VIOLATION, 'a group call needs a groupId'),
    ({**GROUP, 'groupId': 42}, events.SCHEMA_VIOLATION, 'a group call needs a groupId'),
    ({k: v for k, v in ALIAS.items() if k != 'previousId'}, events.SCHEMA_VIOLATION,
     'an alias call needs a previousId and a userId'),
    ({**ALIAS, 'previousId': ''}, events.SCHEMA_VIOLATION, 'needs a previousId and a userId'),
    # An alias without a userId: anonymousId alone satisfies "identified", not the alias.
    ({**{k: v for k, v in ALIAS.items() if k != 'userId'}, 'anonymousId': 'anon-1'},
     events.SCHEMA_VIOLATION, 'needs a previousId and a userId'),
    ({**ALIAS, 'previousId': 'p' * 257}, events.SCHEMA_VIOLATION, 'previousId must be shorter'),
    ({**PAGE, 'type': None}, events.UNSUPPORTED_TYPE, 'None'),
    ({k: v for k, v in PAGE.items() if k != 'messageId'}, events.SCHEMA_VIOLATION,
     'missing required field(s) messageId'),
    ({**PAGE, 'anonymousId': ''}, events.SCHEMA_VIOLATION, 'userId or anonymousId'),
    ({**PAGE, 'anonymousId': None, 'userId': None}, events.SCHEMA_VIOLATION,
     'userId or anonymousId'),
    ({k: v for k, v in PRODUCT_VIEWED.items() if k != 'event'}, events.SCHEMA_VIOLATION,
     'event name'),
    ({**PRODUCT_VIEWED, 'properties': {'price': '12,99'}}, events.SCHEMA_VIOLATION,
     'properties.price must be number'),
    ({**PRODUCT_VIEWED, 'properties': {'products': [{'quantity': 'two'}]}},
     events.SCHEMA_VIOLATION, 'properties.products[0].quantity must be number'),
    ({**PRODUCT_VIEWED, 'timestamp': 'yesterday'}, events.SCHEMA_VIOLATION,
     "timestamp is not an ISO-8601 timestamp: 'yesterday'"),
    ({k: v for k, v in PAGE.items() if k != 'timestamp'}, events.SCHEMA_VIOLATION,
     'timestamp or originalTimestamp is required'),
    ({**PAGE, 'timestamp': '0001-01-01T00:00:00Z'}, events.SCHEMA_VIOLATION, 'outside'),
    ({**PAGE, 'timestamp': '9999-12-31T23:59:59Z'}, events.SCHEMA_VIOLATION, 'outside'),
    ({**PAGE, 'context': 'not an object'}, events.SCHEMA_VIOLATION, 'context must be object'),
    # Found by hypothesis: the skew correction of extreme times overflowed datetime.
    ({**PAGE, 'sentAt': '2000-01-01T00:00:00Z', 'originalTimestamp': '1912-01-01T00:00:00',
      'receivedAt': '0088-01-01T00:00:00'}, events.SCHEMA_VIOLATION, 'outside 1970..2099'),
])
def test_every_failure_is_a_rejection_naming_the_problem(payload, failure_type, words):
  result = parse(payload)
  assert isinstance(result, Rejection)
  assert result.failure_type == failure_type
  assert words in result.message


def test_size_limit_is_checked_before_parsing():
  big = {**PAGE, 'properties': {'blob': 'x' * 40_000}}
  result = parse(big)
  assert isinstance(result, Rejection) and result.failure_type == events.SIZE_VIOLATION
  assert 'over the limit of 32768' in result.message
  assert isinstance(parse(big, max_bytes=64 * 1024), dict)


def test_str_payloads_are_accepted_too():
  assert parse(orjson.dumps(PAGE).decode())['message_id'] == 'pg-1'


def test_commerce_fields_become_typed_columns():
  order = {'type': 'track', 'event': 'Order Completed', 'messageId': 'o-1', 'userId': 'c1',
           'timestamp': '2026-11-02T10:00:00Z',
           'properties': {'order_id': 50314, 'total': 27.5, 'revenue': 25.0, 'currency': 'eur',
                          'products': [{'product_id': '507f1f77bcf86cd799439011', 'price': 19,
                                        'quantity': 1}]}}
  event = parse(order)
  assert event['order_id'] == '50314'
  assert event['total'] == events.decimal.Decimal('27.5')
  assert str(event['revenue']) == '25.0' and event['price'] is None
  assert event['currency'] == 'EUR'
  assert event['product_id'] is None and event['quantity'] is None


def test_product_events_default_quantity_and_currency():
  event = parse({**PRODUCT_VIEWED, 'properties': {'product_id': 42, 'price': 18.99}})
  assert (event['product_id'], event['quantity'], event['currency']) == ('42', 1, 'USD')
  assert str(event['price']) == '18.99'  # the float's shortest repr, not its binary expansion
  added = parse({**PRODUCT_VIEWED, 'properties': {'product_id': 'p', 'quantity': 3.0}})
  assert added['quantity'] == 3 and added['currency'] is None
  assert schemas.to_bigquery_row('events', event)['price'] == '18.99'


def test_money_beyond_numeric_scale_is_rounded_half_even():
  event = parse({**PRODUCT_VIEWED, 'properties': {'price': 0.1234567891234}})
  assert str(event['price']) == '0.123456789'


@pytest.mark.parametrize('properties, words', [
    ({'quantity': 0}, 'properties.quantity must be bigger than or equal to 1'),
    ({'quantity': -2}, 'properties.quantity must be bigger than or equal to 1'),
    ({'quantity': 2.5}, 'properties.quantity must be a whole number'),
    ({'price': 1e300}, 'properties.price must be smaller than or equal to'),
    ({'currency': 'dollars'}, 'properties.currency must match pattern'),
    ({'products': [{'quantity': 0}]}, 'properties.products[0].quantity must be bigger'),
    ({'order_id': {'nested': 1}}, 'properties.order_id must be string or integer'),
])
def test_commerce_values_out_of_contract_are_rejected(properties, words):
  result = parse({**PRODUCT_VIEWED, 'properties': properties})
  assert isinstance(result, Rejection) and result.failure_type == events.SCHEMA_VIOLATION
  assert words in result.message


def test_email_addresses_anywhere_in_free_form_fields_become_tokens():
  import hashlib
  import json as _json
  from transforms.rules import events as rules
  raw = {'type': 'track', 'event': 'Product Viewed', 'userId': 'c1', 'messageId': 'm-email',
         'timestamp': '2026-11-01T00:00:00Z',
         'properties': {'recipient': 'Ann@Example.com', 'list': ['x', 'cc: bo@example.org'],
                        'bo@example.org': 1, 'plain': 'no address here'},
         'context': {'page': {'url': 'https://shop.example.com/?e=ann@example.com'}}}
  record = rules.parse_event(_json.dumps(raw).encode(), 'file:x', 0)
  token = '[email-sha256:' + hashlib.sha256(b'ann@example.com').hexdigest() + ']'
  assert record['properties']['recipient'] == token
  assert record['properties']['list'] == ['x', 'cc: [email-sha256:' + hashlib.sha256(
      b'bo@example.org').hexdigest() + ']']
  assert '@' not in _json.dumps(record['properties']) + _json.dumps(record['context'])
  assert record['properties']['plain'] == 'no address here'
  assert record['context']['page']['url'] == 'https://shop.example.com/?e=' + token
