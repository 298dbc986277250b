"""The live change stream's pure parts (filters, event ids, resume decisions, framing, settings)
and its hub and response on an event loop with an in-memory ASGI client: no Pub/Sub, no server."""
from __future__ import annotations

import asyncio
import hashlib

import orjson
import pytest
from prometheus_client import CollectorRegistry

from connector import shaping, stream
from connector.config import ConfigError, Settings, StreamSettings

INSTANCE = '0123456789abcdef'


def change(customer_id='c1', version=1, changed=None, entered=(), exited=(), deleted=False):
  return {'change_id': hashlib.sha256(f'{customer_id}:{version}'.encode()).hexdigest()[:32],
          'customer_id': customer_id, 'version': version,
          'last_event_at': None if deleted else '2026-12-01T10:00:00.123456+00:00',
          'written_at': '2026-12-01T10:00:00.200000+00:00', 'deleted': deleted,
          'changed': {} if deleted else ({'segment': 'active'} if changed is None else changed),
          'audiences': {'entered': list(entered), 'exited': list(exited)}}


# ---- Filters -------------------------------------------------------------------------------------


def test_filters_parse_repeated_and_comma_separated_values():
  wanted = stream.parse_filter(['vip, cart_abandoners', 'vip'], ['cart,traits.orders_90d'])
  assert wanted == stream.Filter(frozenset({'vip', 'cart_abandoners'}),
                                 frozenset({'cart', 'traits.orders_90d'}))
  assert stream.parse_filter([], []) == stream.Filter()
  assert stream.parse_filter(['vip,'], []).audiences == frozenset({'vip'})


@pytest.mark.parametrize('audience, fields, words', [
    ([''], [], 'audience must name at least one'),
    ([' , '], [], 'audience must name at least one'),
    (['VIP'], [], 'audience key must match'),
    (['vip;drop'], [], 'audience key must match'),
    ([], [''], 'fields must name at least one'),
    ([], ['email_sha256'], 'unknown field'),
    ([], ['updated_at'], 'unknown field'),
    ([], ['audiences'], 'audience=KEY'),
    ([], ['customer_id'], 'never in'),
    ([], ['segment.x'], 'have members'),
    ([], ['cart.'], 'have members'),
    ([], ['traits.a.b'], 'have members'),
    ([], ['x' * 2000], 'at most'),
    (['a,' * 600], [], 'at most'),
])
def test_bad_filters_are_refused_with_a_reason(audience, fields, words):
  with pytest.raises(shaping.BadRequest, match=words):
    stream.parse_filter(audience, fields)


def test_an_audience_filter_passes_changes_that_entered_or_exited_one():
  wanted = stream.Filter(audiences=frozenset({'vip'}))
  entered, exited = change(entered=['vip']), change(exited=['vip', 'other'])
  assert wanted.apply(entered) is entered and wanted.apply(exited) is exited
  assert wanted.apply(change(entered=['vip_2'])) is None
  assert wanted.apply(change()) is None
  assert wanted.apply(change(deleted=True, exited=['vip'])) is not None


def test_a_field_filter_cuts_changed_to_the_fields_and_parents_asked_for():
  full = change(changed={'segment': 'active', 'cart.item_count': 2, 'cart.value': 20.0,
                         'traits.orders_90d': 3})
  assert stream.Filter(fields=frozenset({'cart'})).apply(full)['changed'] == {
      'cart.item_count': 2, 'cart.value': 20.0}
  cut = stream.Filter(fields=frozenset({'traits.orders_90d', 'segment'})).apply(full)
  assert cut['changed'] == {'segment': 'active', 'traits.orders_90d': 3}
  assert full['changed']['cart.value'] == 20.0  # the buffered change is not altered
  assert stream.Filter(fields=frozenset({'orders'})).apply(full) is None
  # A deletion has nothing in `changed` and passes: the client must forget the customer.
  gone = change(deleted=True)
  assert stream.Filter(fields=frozenset({'orders'})).apply(gone) is gone


def test_both_filters_must_hold():
  wanted = stream.Filter(frozenset({'vip'}), frozenset({'segment'}))
  assert wanted.apply(change(entered=['vip'])) is not None
  assert wanted.apply(change(entered=['vip'], changed={'cart.value': 1.0})) is None
  assert wanted.apply(change(changed={'segment': 'x'})) is None


def test_internal_fields_never_leave_the_connector():
  mixed = change(changed={'email_sha256': 'ab' * 32, 'schema_version': 2, 'segment': 'vip'})
  assert stream.served_change(mixed)['changed'] == {'segment': 'vip'}
  assert stream.served_change(change(changed={'email_sha256': 'cd' * 32})) is None
  only_audiences = change(changed={'schema_version': 3}, entered=['vip'])
  assert stream.served_change(only_audiences)['changed'] == {}
  plain = change()
  assert stream.served_change(plain) is plain


# ---- Event ids and resume ------------------------------------------------------------------------


def test_event_ids_are_instance_and_sequence():
  instance = stream.new_instance(now=0x6543210F)
  assert len(instance) == 16 and instance.startswith('6543210f')
  assert stream.new_instance() != stream.new_instance()
  assert stream.parse_event_id(stream.event_id(INSTANCE, 42)) == (INSTANCE, 42)
  assert stream.parse_event_id(f'{INSTANCE}-0') == (INSTANCE, 0)
  for bad in (None, '', '42', f'{INSTANCE}-', f'{INSTANCE}-01', f'{INSTANCE}--1',
              f'{INSTANCE.upper()}-1', f'{INSTANCE}-1-2', f'{INSTANCE}-{"9" * 30}', 'x' * 1000):
    assert stream.parse_event_id(bad) is None


@pytest.mark.parametrize('last_event_id, first, last, expected', [
    (None, 1, 0, stream.Start()),
    ('', 5, 10, stream.Start()),
    (f'{INSTANCE}-10', 5, 10, stream.Start(after=10)),      # up to date: live only
    (f'{INSTANCE}-7', 5, 10, stream.Start(after=7)),        # replay 8..10
    (f'{INSTANCE}-4', 5, 10, stream.Start(after=4)),        # replay all five
    (f'{INSTANCE}-3', 5, 10, stream.Start(reset='expired')),  # 4 is gone
    (f'{INSTANCE}-0', 1, 0, stream.Start(after=0)),         # nothing yet, nothing missed
    (f'{INSTANCE}-11', 5, 10, stream.Start(reset='unknown_id')),
    ('fedcba9876543210-7', 5, 10, stream.Start(reset='unknown_instance')),
    ('garbage', 5, 10, stream.Start(reset='unknown_id')),
])
def test_resume_decisions(last_event_id, first, last, expected):
  assert stream.resume(last_event_id, INSTANCE, first, last) == expected


# ---- Framing and decoding ------------------------------------------------------------------------


def test_an_event_is_one_id_one_type_and_one_line_of_json():
  body = change(changed={'first_name': 'Zoë\nX\r\nY', 'segment': 'a\u2028b'})
  framed = stream.frame(f'{INSTANCE}-3', body)
  lines = framed.split(b'\n')
  assert lines[:2] == [f'id: {INSTANCE}-3'.encode(), b'event: profile_change']
  assert lines[2].startswith(b'data: ') and lines[3:] == [b'', b'']
  assert b'\r' not in framed
  assert orjson.loads(lines[2][6:]) == body
  assert stream.opening(None) == b'retry: 2000\n\n'
  assert stream.opening(f'{INSTANCE}-0') == f'retry: 2000\nid: {INSTANCE}-0\n\n'.encode()
  reset = stream.reset_frame(f'{INSTANCE}-9', 'expired')
  assert reset.startswith(f'id: {INSTANCE}-9\nevent: reset\ndata: '.encode())
  assert orjson.loads(reset.split(b'\n')[2][6:])['reason'] == 'expired'


def test_decoding_checks_the_contract_and_never_echoes_content():
  good = change()
  assert stream.decode_change(orjson.dumps(good)) == good
  with pytest.raises(stream.InvalidChange, match='not JSON'):
    stream.decode_change(b'{secret')
  for bad in ({**good, 'change_id': 'secret-value'}, {**good, 'extra': 'secret-value'},
              {k: v for k, v in good.items() if k != 'version'}, [1, 2]):
    with pytest.raises(stream.InvalidChange) as err:
      stream.decode_change(orjson.dumps(bad))
    assert 'secret' not in str(err.value)


# ---- Settings ------------------------------------------------------------------------------------


def test_stream_settings_from_environment():
  base = {'CONNECTOR_PROJECT': 'p', 'CONNECTOR_API_KEYS': 'k' * 20}
  assert Settings.from_env(base).stream == StreamSettings()
  assert StreamSettings().topic is None  # off by default
  settings = Settings.from_env({**base, 'CONNECTOR_CHANGES_TOPIC': 'projects/p/topics/changes',
                                'CONNECTOR_STREAM_BUFFER': '50', 'CONNECTOR_STREAM_QUEUE': '20',
                                'CONNECTOR_STREAM_HEARTBEAT_SECONDS': '0.5',
                                'CONNECTOR_STREAM_MAX_SUBSCRIBERS': '3'}).stream
  assert settings == StreamSettings('projects/p/topics/changes', 50, 20, 0.5, 3)
  assert stream.subscription_name(settings.topic, INSTANCE) == (
      f'projects/p/subscriptions/connector-stream-{INSTANCE}')


@pytest.mark.parametrize('name, value, words', [
    ('CONNECTOR_CHANGES_TOPIC', 'changes', 'projects/P/topics/T'),
    ('CONNECTOR_CHANGES_TOPIC', 'projects/p/subscriptions/s', 'projects/P/topics/T'),
    ('CONNECTOR_STREAM_BUFFER', '0', 'CONNECTOR_STREAM_BUFFER must be a whole number from 1'),
    ('CONNECTOR_STREAM_BUFFER', '1.5', 'CONNECTOR_STREAM_BUFFER must be a number'),
    ('CONNECTOR_STREAM_QUEUE', '5', 'CONNECTOR_STREAM_QUEUE must be a whole number from 10'),
    ('CONNECTOR_STREAM_HEARTBEAT_SECONDS', '0', 'from 0.1 to 3600'),
    ('CONNECTOR_STREAM_HEARTBEAT_SECONDS', 'nan', 'from 0.1 to 3600'),
    ('CONNECTOR_STREAM_HEARTBEAT_SECONDS', 'soon', 'must be a number'),
    ('CONNECTOR_STREAM_MAX_SUBSCRIBERS', '-1', 'from 1 to 10000'),
])
def test_bad_stream_settings_name_the_variable(name, value, words):
  with pytest.raises(ConfigError, match=words):
    Settings.from_env({'CONNECTOR_PROJECT': 'p', 'CONNECTOR_API_KEYS': 'k' * 20, name: value})


# ---- The hub and one subscriber's response, in memory --------------------------------------------


def hub_of(buffer=5, queue=10, max_subscribers=3):
  registry = CollectorRegistry()
  metrics = stream.Metrics.create(registry)
  hub = stream.Hub(StreamSettings('projects/p/topics/t', buffer, queue, 0.1, max_subscribers),
                   metrics)
  hub.begin(INSTANCE)
  hub.ready = True
  return hub, metrics, registry


def drain(subscriber) -> list[bytes]:
  frames = [subscriber.render(entry) for entry in subscriber.replay]
  while not subscriber.queue.empty():
    frames.append(subscriber.queue.get_nowait())
  return [f for f in frames if f]


def ids(frames) -> list[int]:
  return [int(f.split(b'\n')[0].rsplit(b'-', 1)[1]) for f in frames]


def test_the_hub_numbers_buffers_dedupes_and_fans_out():
  async def scenario():
    hub, metrics, registry = hub_of()
    everyone = hub.subscribe(stream.Filter(), None)
    assert everyone.first == f'retry: 2000\nid: {INSTANCE}-0\n\n'.encode()
    vip = hub.subscribe(stream.Filter(audiences=frozenset({'vip'})), None)
    for version in range(1, 4):
      hub.accept(change(version=version, entered=['vip'] if version == 2 else []))
    hub.accept(change(version=2, entered=['vip']))              # a redelivery
    hub.accept(change(version=9, changed={'email_sha256': 'x'}))  # nothing served changed
    assert ids(drain(everyone)) == [1, 2, 3] and ids(drain(vip)) == [2]
    assert registry.get_sample_value('connector_stream_duplicates_total') == 1
    assert registry.get_sample_value('connector_stream_events_received_total') == 4
    assert registry.get_sample_value('connector_stream_subscribers') == 2
  asyncio.run(scenario())


def test_resume_replays_exactly_the_buffered_events_after_the_id_then_live():
  async def scenario():
    hub, _, registry = hub_of(buffer=5, max_subscribers=10)
    for version in range(1, 9):  # the buffer keeps 4..8
      hub.accept(change(version=version))
    resumed = hub.subscribe(stream.Filter(), f'{INSTANCE}-5')
    assert resumed.first == b'retry: 2000\n\n'  # the client keeps its own position
    hub.accept(change(version=9))
    assert ids(drain(resumed)) == [6, 7, 8, 9]
    # The buffer now keeps 5..9: 4 is the oldest id to resume from, 3 is too old.
    assert ids(drain(hub.subscribe(stream.Filter(), f'{INSTANCE}-4'))) == [5, 6, 7, 8, 9]
    for stale in (f'{INSTANCE}-3', 'fedcba9876543210-5'):
      reset = hub.subscribe(stream.Filter(), stale)
      assert b'event: reset' in reset.first and f'id: {INSTANCE}-9\n'.encode() in reset.first
      assert drain(reset) == []
    assert registry.get_sample_value('connector_stream_resets_total', {'reason': 'expired'}) == 1
  asyncio.run(scenario())


def test_a_full_queue_drops_that_subscriber_only_and_the_limit_holds():
  async def scenario():
    hub, _, registry = hub_of(queue=10, max_subscribers=2)
    slow, fine = hub.subscribe(stream.Filter(), None), hub.subscribe(stream.Filter(), None)
    with pytest.raises(stream.Unavailable, match='at most 2') as err:
      hub.subscribe(stream.Filter(), None)
    assert err.value.retry_after == 5
    for version in range(1, 11):
      hub.accept(change(version=version))
    drain(fine)
    hub.accept(change(version=11))
    assert slow.reason == 'dropped' and slow.ended.is_set() and fine.reason is None
    assert ids(drain(fine)) == [11] and hub.subscribers == 1
    assert registry.get_sample_value('connector_stream_subscribers_dropped_total') == 1
    hub.close()
    assert fine.reason == 'shutdown'
    with pytest.raises(stream.Unavailable, match='starting or stopping'):
      hub.subscribe(stream.Filter(), None)
  asyncio.run(scenario())


class Client:
  """An in-memory ASGI client: what the response sent, and a disconnect on demand."""

  def __init__(self):
    self.sent = []
    self.gone = asyncio.Event()
    self.blocked = False

  async def receive(self):
    await self.gone.wait()
    return {'type': 'http.disconnect'}

  async def send(self, message):
    if self.blocked:  # a client that stopped reading: the server's write never returns
      await asyncio.Event().wait()
    self.sent.append(message)

  def body(self) -> bytes:
    return b''.join(m.get('body', b'') for m in self.sent)


async def serve_one(hub, metrics, client, scope=None, wanted=stream.Filter(), last=None):
  subscriber = hub.subscribe(wanted, last)
  response = stream.EventStream(hub, subscriber, 0.05, metrics)
  return subscriber, asyncio.ensure_future(response(scope or {}, client.receive, client.send))


def test_the_response_streams_heartbeats_and_leaves_no_task_behind_on_disconnect():
  async def scenario():
    hub, metrics, registry = hub_of()
    before = len(asyncio.all_tasks())
    client = Client()
    _, served = await serve_one(hub, metrics, client)
    hub.accept(change(version=1))
    await asyncio.sleep(0.12)
    assert client.sent[0]['status'] == 200 and dict(client.sent[0]['headers'])[
        b'content-type'] == b'text/event-stream'
    assert b'event: profile_change' in client.body() and stream.HEARTBEAT in client.body()
    client.gone.set()
    await asyncio.wait_for(served, 1)
    assert len(asyncio.all_tasks()) == before and hub.subscribers == 0
    assert registry.get_sample_value('connector_stream_events_sent_total') == 1
  asyncio.run(scenario())


def test_a_stalled_client_is_aborted_and_shutdown_finishes_a_reading_one():
  class Transport:
    aborted = False

    def abort(self):
      self.aborted = True

  class Cycle:  # what uvicorn's send is bound to
    transport = Transport()

    async def send(self, message):
      pass

  async def scenario():
    hub, metrics, _ = hub_of(queue=10)
    before = len(asyncio.all_tasks())
    stalled, reading = Client(), Client()
    cycle = Cycle()
    _, dropped = await serve_one(hub, metrics, stalled, {stream.SERVER_SEND: cycle.send})
    _, kept = await serve_one(hub, metrics, reading)
    await asyncio.sleep(0.01)
    stalled.blocked = True
    for version in range(1, 20):
      hub.accept(change(version=version))
      await asyncio.sleep(0)
    await asyncio.wait_for(dropped, 1)
    assert cycle.transport.aborted and ids(
        [f for f in reading.body().split(b'\n\n') if f.startswith(b'id: ') and b'data' in f]) == (
            list(range(1, 20)))
    hub.close()
    await asyncio.wait_for(kept, 1)
    assert reading.sent[-1] == {'type': 'http.response.body', 'body': b'', 'more_body': False}
    assert len(asyncio.all_tasks()) == before and hub.subscribers == 0
  asyncio.run(scenario())
