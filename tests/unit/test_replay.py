"""scripts/replay.py: sample lines -> the real Segment client's calls, and the paced loop."""
from __future__ import annotations

import collections
import datetime as dt
import gzip
import threading

import orjson
import pytest
from segment.analytics import Client

from scripts import generate_data as gd
from scripts import replay
from tests.unit.test_generate_data import classify

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc)


@pytest.fixture(scope='module')
def sample_lines(tmp_path_factory):
  out = tmp_path_factory.mktemp('sample')
  manifest = gd.generate(out, seed=11, customers=60, products=30, events=800, files=1)
  return [line for name in manifest['files']
          for line in gzip.decompress((out / name).read_bytes()).split(b'\n') if line]


def test_valid_sample_events_keep_their_segment_fields_through_the_client(sample_lines):
  """Every valid line is sent, and the message the real client builds (send=False: nothing goes
  out) keeps the line's messageId, type, ids, names, properties, traits and context."""
  client = Client('wk_unit_test', send=False)
  checked = collections.Counter()
  for line in sample_lines:
    kind, event = classify(line)
    if kind != 'valid':
      continue
    method, arguments = replay.sdk_call(line, NOW)
    assert method == event['type']
    queued, message = getattr(client, method)(**arguments)
    assert queued
    assert message['messageId'] == event['messageId']
    assert message['type'] == event['type']
    assert dt.datetime.fromisoformat(message['timestamp']) == NOW.replace(microsecond=250000)
    for name in ('userId', 'anonymousId', 'event', 'name', 'category', 'properties', 'traits',
                 'groupId', 'previousId'):
      assert message.get(name) == (event.get(name) or None), name
    context = dict(message['context'])
    assert context.pop('library') == {'name': 'analytics-python', 'version': '2.4.0'}
    assert context == {k: v for k, v in event['context'].items() if k != 'library'}
    checked[method] += 1
  assert checked['track'] and checked['identify'] and checked['page']


@pytest.mark.parametrize('line, reason', [
    (b'{"type": "track", "messageId": "m1"', 'not_json'),
    (b'[1, 2]', 'not_an_object'),
    (b'{"type": "Track", "userId": "u1", "event": "Product Viewed"}', 'unknown_type'),
    (b'{"type": "track", "event": "Product Viewed", "userId": ""}', 'missing_ids'),
    (b'{"type": "track", "userId": "u1"}', 'track_without_event'),
    (b'{"type": "page", "userId": "u1", "timestamp": "yesterday"}', 'bad_timestamp'),
    (b'{"type": "page", "userId": "u1", "timestamp": "",'
     b' "originalTimestamp": "2026-11-01T10:00:00Z"}', 'bad_timestamp'),
    (b'{"type": "group", "userId": "u1"}', 'group_without_id'),
    (b'{"type": "alias", "userId": "u1"}', 'alias_without_ids'),
])
def test_lines_the_client_would_refuse_are_named(line, reason):
  with pytest.raises(replay.Unsendable) as refused:
    replay.sdk_call(line, NOW)
  assert refused.value.reason == reason


def test_snake_case_fields_are_read_and_a_missing_message_id_is_left_to_the_client():
  line = orjson.dumps({'type': 'identify', 'user_id': 'u1', 'anonymous_id': 'a1',
                       'traits': {'email': 'a@example.com'}, 'original_timestamp':
                       '2026-11-01T10:00:00.000Z'})
  method, arguments = replay.sdk_call(line, NOW)
  assert (method, arguments['user_id'], arguments['anonymous_id']) == ('identify', 'u1', 'a1')
  assert arguments['message_id'] is None and arguments['timestamp'] is not None
  _, message = Client('wk_unit_test', send=False).identify(**arguments)
  assert message['messageId']  # the client's own


class _Recorder:
  def __init__(self):
    self.calls = []

  def __getattr__(self, method):
    return lambda **arguments: (self.calls.append((method, arguments)), (True, arguments))[1]


def test_replay_skips_unsendable_lines_and_stops_at_the_limit():
  good = b'{"type": "track", "userId": "u1", "event": "Product Viewed", "messageId": "m%d"}'
  lines = [b'not json', *(good % i for i in range(10))]
  client = _Recorder()
  progress = replay.replay(iter(lines), client, rate=10_000, limit=4)
  assert progress.sent == 4 and progress.skipped == {'not_json': 1}
  assert [a['message_id'] for _, a in client.calls] == ['m0', 'm1', 'm2', 'm3']


def test_replay_ends_when_asked_to_stop():
  stop = threading.Event()
  stop.set()
  client = _Recorder()
  line = b'{"type": "track", "userId": "u1", "event": "Product Viewed"}'
  assert replay.replay(iter([line] * 3), client, rate=1, stop=stop).sent == 0
  assert not client.calls
  with pytest.raises(ValueError):
    replay.replay(iter([]), client, rate=0)
