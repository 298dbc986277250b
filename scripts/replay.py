"""Replay sample events through a tracking collector with the real Segment Python client.

    python -m scripts.replay --host http://127.0.0.1:8088 --write-key wk_demo_local \\
        --events 'data/sample/events-*.ndjson.gz' [--rate 10] [--limit N]

What `make stream` runs (scripts.stream starts it next to the collector). Each line becomes the
`segment.analytics.Client` call of its type (track, identify, page, screen, group, alias) with
the line's own Segment fields (messageId, userId/anonymousId, event/name/category, properties,
traits, context, integrations) and its time moved to now as scripts.publish does. The client then
does what it does in production: batches, gzips, posts to <host>/v1/batch, sets `sentAt`, retries;
the collector sets `receivedAt`. So unlike scripts.publish, originalTimestamp and the sample's
device clock skew do not survive the trip.

Lines the client cannot send (not a JSON object, an unknown type, no user or anonymous id, a track
without an event, an unreadable timestamp) are skipped and counted by reason: the SDK refuses them
before anything is sent, so they never reach the pipeline's dead letters as they do through
scripts.publish. Duplicates go as they are (same messageId; the pipeline drops the copy).

SIGTERM or SIGINT stops sending, flushes what the client still holds and exits 0.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import logging
import signal
import sys
import threading
import time
from typing import Any, Iterable

import orjson

from scripts import publish

_log = logging.getLogger('scripts.replay')
_ID_TYPES = (str, int, float)


class Unsendable(ValueError):
  """A line the Segment client would refuse; `reason` names why (the skip counter's key)."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


@dataclasses.dataclass
class Progress:
  """What a replay did so far: calls handed to the client, lines skipped by reason."""
  sent: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _field(event: dict, camel: str, snake: str) -> Any:
  value = event.get(camel)
  return event.get(snake) if value is None else value


def _mapping(event: dict, name: str) -> dict:
  value = event.get(name)
  return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
  return value if isinstance(value, str) and value else None


def sdk_call(line: bytes, now: dt.datetime) -> tuple[str, dict]:
  """A sample line -> (Client method, its keyword arguments), its time moved to `now`; Unsendable
  when the client would refuse it."""
  try:
    event = orjson.loads(publish.retime(line, now))
  except orjson.JSONDecodeError:
    raise Unsendable('not_json') from None
  if not isinstance(event, dict):
    raise Unsendable('not_an_object')
  call_type = event.get('type')
  user_id = _field(event, 'userId', 'user_id')
  anonymous_id = _field(event, 'anonymousId', 'anonymous_id')
  if not isinstance(user_id, _ID_TYPES) or user_id == '':
    user_id = None
  if not isinstance(anonymous_id, _ID_TYPES) or anonymous_id == '':
    anonymous_id = None
  # The event time retime moved to now; none at all: the client stamps the call itself.
  stamp = event.get('timestamp')
  if stamp is None:
    stamp = _field(event, 'originalTimestamp', 'original_timestamp')
  try:
    timestamp = None if stamp is None else dt.datetime.fromisoformat(stamp)
  except (TypeError, ValueError):
    raise Unsendable('bad_timestamp') from None
  message_id = _field(event, 'messageId', 'message_id')
  if not isinstance(message_id, _ID_TYPES) or message_id == '':
    message_id = None  # the client makes one
  common = {'context': _mapping(event, 'context'), 'timestamp': timestamp,
            'integrations': _mapping(event, 'integrations'), 'message_id': message_id}
  if call_type == 'alias':
    previous_id = _field(event, 'previousId', 'previous_id')
    if user_id is None or not isinstance(previous_id, _ID_TYPES):
      raise Unsendable('alias_without_ids')
    return 'alias', {'previous_id': previous_id, 'user_id': user_id, **common}
  if call_type not in ('track', 'identify', 'page', 'screen', 'group'):
    raise Unsendable('unknown_type')
  if user_id is None and anonymous_id is None:
    raise Unsendable('missing_ids')
  ids = {'user_id': user_id, 'anonymous_id': anonymous_id, **common}
  if call_type == 'track':
    name = _text(event.get('event'))
    if name is None:
      raise Unsendable('track_without_event')
    return 'track', {'event': name, 'properties': _mapping(event, 'properties'), **ids}
  if call_type == 'identify':
    return 'identify', {'traits': _mapping(event, 'traits'), **ids}
  if call_type == 'group':
    group_id = _field(event, 'groupId', 'group_id')
    if not isinstance(group_id, _ID_TYPES):
      raise Unsendable('group_without_id')
    return 'group', {'group_id': group_id, 'traits': _mapping(event, 'traits'), **ids}
  return call_type, {'category': _text(event.get('category')), 'name': _text(event.get('name')),
                     'properties': _mapping(event, 'properties'), **ids}


def replay(lines: Iterable[bytes], client, rate: float, limit: int | None = None,
           progress: Progress | None = None, stop: threading.Event | None = None) -> Progress:
  """Sends up to `limit` sendable lines through `client` at `rate` calls/s, until `stop` is set;
  returns (and updates as it goes) `progress`."""
  if rate <= 0:
    raise ValueError('rate must be positive')
  progress = Progress() if progress is None else progress
  stop = threading.Event() if stop is None else stop
  start = last_report = time.monotonic()
  for line in lines:
    if stop.is_set() or (limit is not None and progress.sent >= limit):
      break
    try:
      method, arguments = sdk_call(line, dt.datetime.now(dt.timezone.utc))
    except Unsendable as refused:
      progress.skipped[refused.reason] += 1
      continue
    if stop.wait(start + progress.sent / rate - time.monotonic()):
      break
    queued, _ = getattr(client, method)(**arguments)
    if not queued:  # the client's queue is full: it dropped the call
      progress.skipped['client_queue_full'] += 1
      continue
    progress.sent += 1
    if time.monotonic() - last_report >= 5:
      last_report = time.monotonic()
      _log.info('sent %d events (%.0f/s)', progress.sent, progress.sent / (last_report - start))
  return progress


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--host', required=True, help='the collector, e.g. http://127.0.0.1:8088')
  parser.add_argument('--write-key', required=True, help='a write key the collector accepts')
  parser.add_argument('--events', required=True, help='comma-separated NDJSON(.gz) file patterns')
  parser.add_argument('--rate', type=float, default=10.0, help='events sent per second')
  parser.add_argument('--limit', type=int, default=None, help='stop after this many events')
  args = parser.parse_args(argv)
  if args.rate <= 0:
    parser.error('--rate must be positive')
  from segment.analytics import Client
  errors = collections.Counter()

  def on_error(error, batch):
    errors[type(error).__name__] += len(batch)
    _log.error('the client gave up on %d events: %s', len(batch), error)

  client = Client(args.write_key, host=args.host, gzip=True, on_error=on_error)
  stop = threading.Event()

  def request_stop(signum, frame):
    _log.info('%s: stopping', signal.Signals(signum).name)
    stop.set()

  signal.signal(signal.SIGINT, request_stop)
  signal.signal(signal.SIGTERM, request_stop)
  progress = Progress()
  start = time.monotonic()
  try:
    replay(publish.read_lines(args.events.split(',')), client, args.rate, args.limit, progress,
           stop)
  finally:
    client.shutdown()  # sends what is queued and waits for it
  elapsed = time.monotonic() - start
  _log.info('sent %d events in %.1f s (%.0f/s) to %s; skipped %d %s; undelivered %d',
            progress.sent, elapsed, progress.sent / elapsed if elapsed else 0, args.host,
            sum(progress.skipped.values()), dict(progress.skipped), sum(errors.values()))
  return 0 if not errors else 1


if __name__ == '__main__':
  sys.exit(main())
