"""The collector's pure parts (collector/events.py, app.inflate): what each event becomes before it
is published, what a request is refused for, and that nothing else ever escapes as an exception."""
import base64
import ipaddress
import struct
import tracemalloc
import urllib.parse
import uuid
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import events
from collector.app import inflate
from collector.events import Envelope, Refused, Stamp

STAMP = Stamp('2026-03-01T10:00:00.123Z', '203.0.113.7')
NO_IP = Stamp('2026-03-01T10:00:00.123Z', None)


def encoded(event, stamp=STAMP, envelope=events.NO_ENVELOPE, call_type=None, index=None):
  """encode() as the collector calls it, the published JSON parsed back."""
  data, message_id = events.encode(event, stamp, envelope, call_type, index)
  return orjson.loads(data), message_id


def refusal(call, *args, **kwargs) -> Refused:
  with pytest.raises(Refused) as caught:
    call(*args, **kwargs)
  return caught.value


def gzip_of_zeros(mib: int) -> bytes:
  """A genuine gzip stream of `mib` MiB of zeros, built in well under a second and about 1 KB per
  MiB: after a full flush the compressor starts afresh, so every further MiB compresses to the
  same bytes (checked), and the trailer carries the real CRC-32 and size."""
  chunk = bytes(1 << 20)
  compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
  first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
  repeated = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
  assert compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH) == repeated
  end = compressor.flush()[:-8]  # the final empty block; the trailer is written below
  crc = 0
  for _ in range(mib):
    crc = zlib.crc32(chunk, crc)
  return first + repeated * (mib - 1) + end + struct.pack('<II', crc, (mib << 20) & 0xffffffff)


# ---- encode ----------------------------------------------------------------------------------

def test_encode_stamps_received_at_and_takes_the_type_from_the_route():
  event, message_id = encoded({'type': 'identify', 'messageId': 'm-1', 'userId': 'u1',
                               'receivedAt': '1999-01-01T00:00:00Z', 'received_at': 'x'},
                              call_type='track')
  assert event['receivedAt'] == STAMP.received_at and 'received_at' not in event
  assert event['type'] == 'track'
  assert message_id == event['messageId'] == 'm-1'
  kept, _ = encoded({'type': 'page', 'messageId': 'm-2'})  # a batch member keeps its own
  assert kept['type'] == 'page'


def test_encode_sets_a_message_id_only_when_the_event_has_none():
  event, message_id = encoded({'type': 'track'})
  assert event['messageId'] == message_id and uuid.UUID(message_id).version == 4
  empty, empty_id = encoded({'type': 'track', 'messageId': ''})
  assert empty['messageId'] == empty_id and empty_id != ''
  assert encoded({'messageId': 'own'})[1] == 'own'
  snake, snake_id = encoded({'message_id': 'snake-1'})
  assert snake_id == 'snake-1' and snake['message_id'] == 'snake-1' and 'messageId' not in snake
  number, number_id = encoded({'messageId': 42})
  assert number['messageId'] == 42 and number_id == '42'  # forwarded as sent, attribute as text


def test_encode_keeps_the_clients_times_and_applies_the_batch_sent_at_only_when_missing():
  times = {'sentAt': '2026-03-01T09:59:59.000Z', 'timestamp': '2026-03-01T09:59:58.000Z',
           'originalTimestamp': '2026-03-01T09:59:57.000Z'}
  batch = Envelope(sent_at='2026-03-01T10:00:00.000Z')
  own, _ = encoded({'messageId': 'a', **times}, envelope=batch)
  assert {k: own[k] for k in times} == times
  snake, _ = encoded({'messageId': 'b', 'sent_at': 'client'}, envelope=batch)
  assert snake['sent_at'] == 'client' and 'sentAt' not in snake
  missing, _ = encoded({'messageId': 'c'}, envelope=batch)
  assert missing['sentAt'] == '2026-03-01T10:00:00.000Z'
  assert 'sentAt' not in encoded({'messageId': 'd'})[0]


def test_encode_merges_the_batch_context_and_integrations_under_the_events_own_keys():
  batch = Envelope(context={'library': {'name': 'batch'}, 'locale': 'en-GB'},
                   integrations={'All': False, 'Braze': True})
  event, _ = encoded({'messageId': 'a', 'context': {'library': {'name': 'own'}},
                      'integrations': {'All': True}}, envelope=batch)
  assert event['context'] == {'library': {'name': 'own'}, 'locale': 'en-GB', 'ip': '203.0.113.7'}
  assert event['integrations'] == {'All': True, 'Braze': True}
  bare, _ = encoded({'messageId': 'b'}, envelope=batch)
  assert bare['context'] == {'library': {'name': 'batch'}, 'locale': 'en-GB', 'ip': '203.0.113.7'}
  assert bare['integrations'] == {'All': False, 'Braze': True}
  assert 'ip' not in batch.context  # the batch's own dict is not written into
  odd, _ = encoded({'messageId': 'c', 'context': 'not an object'}, envelope=batch)
  assert odd['context'] == 'not an object'  # forwarded as sent; the pipeline judges it


def test_encode_drops_the_write_key():
  event, _ = encoded({'messageId': 'a', 'writeKey': 'wk_secret_1', 'write_key': 'wk_secret_2'})
  assert 'writeKey' not in event and 'write_key' not in event
  assert b'wk_secret' not in events.encode({'writeKey': 'wk_secret_1'}, STAMP)[0]


def test_encode_sets_context_ip_from_the_stamp_only_when_the_client_set_none():
  assert encoded({'messageId': 'a'})[0]['context'] == {'ip': '203.0.113.7'}
  assert encoded({'messageId': 'a', 'context': {'ip': '198.51.100.1'}})[0]['context']['ip'] \
      == '198.51.100.1'
  assert encoded({'messageId': 'a', 'context': {'ip': ''}})[0]['context']['ip'] == '203.0.113.7'
  batch = Envelope(context={'ip': '198.51.100.2'})
  assert encoded({'messageId': 'a'}, envelope=batch)[0]['context']['ip'] == '198.51.100.2'
  assert 'context' not in encoded({'messageId': 'a'}, stamp=NO_IP)[0]


def padded_to(size: int, stamp: Stamp = STAMP) -> dict:
  """An event whose published JSON is exactly `size` bytes."""
  base = {'type': 'track', 'messageId': 'sized', 'properties': {'pad': ''}}
  overhead = len(events.encode(orjson.loads(orjson.dumps(base)), stamp)[0])
  base['properties']['pad'] = 'x' * (size - overhead)
  return base


def test_an_event_of_exactly_32768_bytes_as_forwarded_is_accepted_and_one_more_is_refused():
  data, _ = events.encode(padded_to(32768), STAMP)
  assert len(data) == 32768 == events.MAX_EVENT_BYTES
  over = refusal(events.encode, padded_to(32769), STAMP, index=3)
  assert (over.reason, over.status) == ('event_too_large', 400)
  assert 'batch[3]' in over.message and '32769' in over.message


def test_encode_refuses_what_cannot_be_written_as_json():
  deep: dict = {}
  node = deep
  for _ in range(300):
    node['a'] = node = {}
  assert refusal(events.encode, {'messageId': 'a', 'properties': deep}, STAMP).reason \
      == 'unencodable'
  assert refusal(events.encode, {'n': 2 ** 70}, STAMP).reason == 'unencodable'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children,
                                                                       max_size=5),
    max_leaves=30)
# Objects that carry the fields encode() looks at, with any value in them.
event_objects = st.dictionaries(
    st.sampled_from(['type', 'messageId', 'message_id', 'sentAt', 'sent_at', 'context',
                     'integrations', 'writeKey', 'receivedAt', 'received_at']) | st.text(),
    json_values, max_size=8)
envelopes = st.builds(Envelope, st.none() | st.dictionaries(st.text(), json_values, max_size=3),
                      st.none() | st.dictionaries(st.text(), json_values, max_size=3),
                      json_values)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(event_objects, envelopes, st.sampled_from([None, *events.CALL_TYPES]),
       st.sampled_from([STAMP, NO_IP]))
def test_encode_raises_nothing_but_refused_and_what_it_publishes_is_one_object(
    event, envelope, call_type, stamp):
  try:
    data, message_id = events.encode(event, stamp, envelope, call_type)
  except Refused as refused:
    assert refused.reason in ('unencodable', 'event_too_large')
    return
  published = orjson.loads(data)
  assert isinstance(published, dict) and isinstance(message_id, str)
  assert 'writeKey' not in published and published['receivedAt'] == stamp.received_at
  assert len(data) <= events.MAX_EVENT_BYTES


# ---- batches ---------------------------------------------------------------------------------

def test_a_batch_of_2500_events_is_accepted_and_2501_refused():
  batch, envelope = events.batch_of({'batch': [{'i': i} for i in range(2500)],
                                     'context': {'locale': 'de'}, 'sentAt': 'now'})
  assert len(batch) == 2500 and envelope == Envelope({'locale': 'de'}, None, 'now')
  over = refusal(events.batch_of, {'batch': [{}] * 2501})
  assert over.reason == 'batch_too_many_events' and '2501' in over.message


@pytest.mark.parametrize('body, reason', [
    ({}, 'invalid_batch'),
    ({'batch': {'0': {}}}, 'invalid_batch'),
    ({'batch': 'events'}, 'invalid_batch'),
    ({'batch': None}, 'invalid_batch'),
    ({'batch': [{}, [], {}]}, 'not_an_object'),
    ({'batch': [{}, 'event']}, 'not_an_object'),
    ({'batch': [None]}, 'not_an_object'),
])
def test_a_batch_that_is_not_a_list_of_objects_is_refused(body, reason):
  assert refusal(events.batch_of, body).reason == reason


def test_batch_envelope_ignores_a_context_that_is_not_an_object_and_reads_snake_sent_at():
  _, envelope = events.batch_of({'batch': [], 'context': 'x', 'integrations': [1],
                                 'sent_at': 's'})
  assert envelope == Envelope(None, None, 's')


@pytest.mark.parametrize('body, reason', [
    (b'', 'invalid_json'), (b'{', 'invalid_json'), (b'{"a": 1} x', 'invalid_json'),
    (b'\xff\xfe{}', 'invalid_json'), (b'[]', 'not_an_object'), (b'"s"', 'not_an_object'),
    (b'1', 'not_an_object'), (b'null', 'not_an_object'), (b'true', 'not_an_object'),
])
def test_a_body_that_is_not_a_json_object_is_refused(body, reason):
  assert refusal(events.parse_object, body).reason == reason


# ---- pixels ----------------------------------------------------------------------------------

# Its standard base64 holds both '+' and '/', so the alphabets and the query decoding differ.
PIXEL = {'writeKey': 'wk_pixel_1', 'event': 'Email Opened', 'userId': 'u>?~', 'n': '>>>???'}


def pixel_data(text: str) -> tuple[dict, str | None]:
  return events.pixel_event({'data': [text]}, dotted=False)


def test_pixel_data_in_every_base64_form_and_as_plain_json_gives_the_same_event():
  raw = orjson.dumps(PIXEL)
  standard = base64.b64encode(raw).decode()
  assert '+' in standard and '/' in standard and standard.endswith('=')
  forms = [standard, base64.urlsafe_b64encode(raw).decode(), standard.rstrip('='),
           base64.urlsafe_b64encode(raw).decode().rstrip('='), raw.decode()]
  # An unencoded '+' in a query string reaches the collector as a space.
  decoded = urllib.parse.parse_qs('data=' + standard)['data'][0]
  assert ' ' in decoded
  for form in forms + [decoded]:
    assert pixel_data(form) == (PIXEL, 'wk_pixel_1'), form


@pytest.mark.parametrize('query, reason', [
    ({}, 'invalid_pixel'),
    ({'data': ['not base64 at all!']}, 'invalid_pixel'),
    ({'data': ['d2tf\u00e9bGl2']}, 'invalid_pixel'),     # not ASCII (a %C3%A9 in the query)
    ({'data': [base64.b64encode(b'[1, 2]').decode()]}, 'not_an_object'),
    ({'data': [base64.b64encode(b'{"a": ').decode()]}, 'invalid_json'),
    ({'data': ['{"a": 1']}, 'invalid_json'),
])
def test_bad_pixel_data_is_refused(query, reason):
  assert refusal(events.pixel_event, query, dotted=False).reason == reason


def test_a_pixel_write_key_that_is_not_text_is_none():
  assert pixel_data('{"writeKey": 7}')[1] is None and pixel_data('{"writeKey": ""}')[1] is None


def test_rudderstack_pixel_nests_dotted_query_names_and_takes_the_key_apart():
  query = urllib.parse.parse_qs('writeKey=wk_r_1&anonymousId=a1&event=Opened'
                                '&context.page.url=https%3A%2F%2Fx.example%2F%3Fa%3D1'
                                '&properties.plan=pro&properties.plan=team'
                                '&a.b.c.d.e.f.g.h=deep')
  event, key = events.pixel_event(query, dotted=True)
  assert key == 'wk_r_1'
  assert event == {'anonymousId': 'a1', 'event': 'Opened',
                   'context': {'page': {'url': 'https://x.example/?a=1'}},
                   'properties': {'plan': 'team'},  # the last of repeated values
                   'a': {'b': {'c': {'d': {'e': {'f': {'g': {'h': 'deep'}}}}}}}}
  assert events.pixel_event({'event': ['x']}, dotted=True) == ({'event': 'x'}, None)


@pytest.mark.parametrize('query', [
    'properties=1&properties.plan=pro',        # a value, then a field inside it
    'properties.plan=pro&properties=1',        # the other order
    'a.b=1&a.b.c=2',
    'context..ip=1', '.x=1', 'x.=1',
    'a.b.c.d.e.f.g.h.i=too-deep',
])
def test_rudderstack_pixel_names_that_conflict_or_are_not_paths_are_refused(query):
  parsed = urllib.parse.parse_qs(query)
  assert refusal(events.pixel_event, parsed, dotted=True).reason == 'invalid_pixel'


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=30), st.lists(st.text(max_size=30), min_size=1,
                                                       max_size=3), max_size=6),
       st.booleans())
def test_pixel_event_raises_nothing_but_refused(query, dotted):
  try:
    event, key = events.pixel_event(query, dotted)
  except Refused:
    return
  assert isinstance(event, dict) and (key is None or isinstance(key, str))


# ---- write keys and addresses ----------------------------------------------------------------

def basic(text: str | bytes) -> str:
  raw = text.encode() if isinstance(text, str) else text
  return 'Basic ' + base64.b64encode(raw).decode()


@pytest.mark.parametrize('header, user', [
    (basic('wk_live_1:'), 'wk_live_1'),          # Segment's libraries: key, empty password
    (basic('wk_live_1:ignored'), 'wk_live_1'),
    (basic('wk_live_1'), 'wk_live_1'),           # no colon at all
    ('basic ' + base64.b64encode(b'wk_live_1:').decode(), 'wk_live_1'),
    ('BASIC  ' + base64.b64encode(b'wk_live_1:').decode() + ' ', 'wk_live_1'),
    (None, None), ('', None), ('Basic', None), ('Basic ', None),
    (basic(':password'), None), (basic(''), None),
    ('Bearer wk_live_1', None), ('wk_live_1', None),
    ('Basic not*base64!', None), ('Basic d2tfbGl2ZV8', None),  # bad padding
    (basic(b'\xff\xfe:'), None),                 # not UTF-8
    ('Basic d2tf\x80bGl2ZV8x', None),             # a non-ASCII header byte (read as latin-1)
])
def test_basic_auth_user(header, user):
  assert events.basic_auth_user(header) == user


@given(st.text(max_size=60))
def test_basic_auth_user_raises_nothing(text):
  for header in (text, 'Basic ' + text):
    user = events.basic_auth_user(header)
    assert user is None or (isinstance(user, str) and user)


PROXIES = (ipaddress.ip_network('10.0.0.0/8'), ipaddress.ip_network('2001:db8:ffff::/48'))


@pytest.mark.parametrize('peer, forwarded, ip', [
    ('198.51.100.9', None, '198.51.100.9'),
    ('198.51.100.9', '203.0.113.1', '198.51.100.9'),          # untrusted peer: XFF spoofed
    ('10.1.2.3', '203.0.113.1', '203.0.113.1'),
    ('10.1.2.3', '203.0.113.1, 10.9.9.9', '203.0.113.1'),     # two proxies of ours
    ('10.1.2.3', '1.1.1.1, 203.0.113.1, 10.9.9.9', '203.0.113.1'),  # the client's own lie
    ('10.1.2.3', 'garbage, 10.9.9.9', '10.9.9.9'),           # a malformed hop ends the walk
    ('10.1.2.3', '10.9.9.9', '10.9.9.9'),                    # nothing but proxies
    ('10.1.2.3', '', '10.1.2.3'),
    ('2001:db8:ffff::1', '2001:db8:1:2::3', '2001:db8:1:2::3'),
    ('2001:db8:aaaa::1', '203.0.113.1', '2001:db8:aaaa::1'),
    (None, '203.0.113.1', None), ('not-an-address', None, None),
])
def test_client_ip_believes_forwarded_for_only_from_trusted_proxies(peer, forwarded, ip):
  assert events.client_ip(peer, forwarded, PROXIES, truncate=False) == ip


def test_client_ip_truncates_v4_to_its_24_and_v6_to_its_48():
  assert events.client_ip('203.0.113.77', None, (), truncate=True) == '203.0.113.0'
  assert events.client_ip('2001:db8:1234:5678:9abc::1', None, (), truncate=True) \
      == '2001:db8:1234::'
  assert events.client_ip('10.1.2.3', '198.51.100.200', PROXIES, truncate=True) == '198.51.100.0'


def test_client_ip_gives_an_ipv4_mapped_peer_as_ipv4():
  """A dual-stack socket shows an IPv4 client as ::ffff:a.b.c.d; truncated as IPv6 it would
  collapse to `::`."""
  assert events.client_ip('::ffff:203.0.113.77', None, (), truncate=False) == '203.0.113.77'
  assert events.client_ip('::ffff:203.0.113.77', None, (), truncate=True) == '203.0.113.0'


@given(st.one_of(st.none(), st.text(max_size=40), st.ip_addresses().map(str)),
       st.one_of(st.none(), st.text(max_size=80),
                 st.lists(st.ip_addresses().map(str), max_size=4).map(', '.join)),
       st.booleans())
def test_client_ip_raises_nothing_and_gives_an_address_or_none(peer, forwarded, truncate):
  ip = events.client_ip(peer, forwarded, PROXIES + (ipaddress.ip_network('0.0.0.0/0'),),
                        truncate)
  assert ip is None or ipaddress.ip_address(ip)


# ---- gzip ------------------------------------------------------------------------------------

def test_inflate_gives_the_body_up_to_exactly_the_limit():
  body = b'{"batch": []}' + b' ' * 987
  assert inflate(zlib.compress(body, wbits=31), 1000) == body
  assert refusal(inflate, zlib.compress(body + b' ', wbits=31), 1000).reason == 'body_too_large'


@pytest.mark.parametrize('data, words', [
    (b'', 'truncated'),
    (zlib.compress(b'{"a": 1}' * 50, wbits=31)[:-12], 'truncated'),
    (zlib.compress(b'{"a": 1}', wbits=31) + b'garbage', 'after the end'),
    (zlib.compress(b'{"a": 1}', wbits=31) * 2 + b'x', 'after the end'),
    (zlib.compress(b'{"a": 1}', wbits=31) + zlib.compress(b'{"a": 1}', wbits=31)[:-3],
     'truncated'),
    (b'{"a": 1}', 'not valid gzip'),
    (zlib.compress(b'{"a": 1}'), 'not valid gzip'),  # zlib-wrapped, not gzip
])
def test_inflate_refuses_truncated_corrupt_and_trailing_data(data, words):
  refused = refusal(inflate, data, 1000)
  assert refused.reason == 'invalid_gzip' and words in refused.message


def test_inflate_joins_gzip_members_and_holds_their_sum_to_the_limit():
  """RFC 1952 allows members one after another (`cat a.gz b.gz`); each member is small, their
  sum is what counts, so many small members cannot add up past the limit."""
  one = zlib.compress(b'{"a": 1}', wbits=31)
  assert inflate(one * 2, 1000) == b'{"a": 1}' * 2
  assert inflate(one * 125, 1000) == b'{"a": 1}' * 125
  assert refusal(inflate, one * 126, 1000).reason == 'body_too_large'


def test_a_gzip_bomb_is_refused_without_inflating_more_than_the_limit():
  bomb = gzip_of_zeros(1024)  # 1 GiB of zeros in about 1 MB
  assert len(bomb) < 1_100_000
  assert zlib.decompressobj(wbits=31).decompress(bomb, 1 << 20) == bytes(1 << 20)
  tracemalloc.start()
  try:
    refused = refusal(inflate, bomb, events.MAX_BATCH_BYTES)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert refused.reason == 'body_too_large'
  # The output of limit + 1 bytes (built in blocks, then joined) and the unconsumed tail (a copy
  # of the input): a few MB, nowhere near 1 GiB.
  assert peak < len(bomb) + 3 * events.MAX_BATCH_BYTES, peak


@settings(max_examples=500)
@given(st.binary(max_size=300) | st.binary(max_size=300).map(
    lambda b: zlib.compress(b, wbits=31)).flatmap(
        lambda z: st.integers(0, len(z)).map(lambda n: z[:n]) | st.just(z) |
        st.binary(min_size=1, max_size=8).map(lambda junk: z + junk)))
def test_inflate_raises_nothing_but_refused(data):
  try:
    out = inflate(data, 200)
  except Refused as refused:
    assert refused.reason in ('invalid_gzip', 'body_too_large')
    return
  assert len(out) <= 200
