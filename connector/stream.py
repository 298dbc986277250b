"""The live change stream, GET /v1/stream: profile changes as Server-Sent Events (docs/CONNECTOR.md,
"Live change stream").

    changes topic -> this instance's own subscription -> streaming pull (the client's thread:
    decode, validate) -> the event loop (dedupe, number, ring buffer, ack) -> each subscriber's
    bounded queue -> its connection

The pure parts come first (filters, event ids, resume decisions, framing), then the Hub (ring
buffer and subscribers, on the event loop), the Pub/Sub source that feeds it, and EventStream,
the ASGI response that serves one subscriber. A subscriber whose queue fills is dropped: its
connection is closed at once, so a client that stops reading holds no more than its queue.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import re
import secrets
import signal
import time
from typing import Callable, Iterable

import cachetools
import fastjsonschema
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.responses import Response

import schemas
from connector import audiences, shaping
from connector.config import StreamSettings

_log = logging.getLogger('connector.stream')

EVENT = 'profile_change'
RESET = 'reset'
# The reconnection delay a client is told (EventSource's `retry:` field), milliseconds.
RETRY_MS = 2000
HEARTBEAT = b': heartbeat\n\n'
HEADERS = [(b'content-type', b'text/event-stream'), (b'cache-control', b'no-store'),
           (b'x-accel-buffering', b'no')]
MAX_FILTER_LENGTH = shaping.MAX_FIELDS_LENGTH
# Change ids remembered to drop Pub/Sub's redeliveries and the pipeline's retried publishes.
DEDUPE_WINDOW = 50_000
# Frames joined into one write: fewer, larger sends when a subscriber is behind.
MAX_FRAMES_PER_WRITE = 256
# How long a stream ended by shutdown may take to finish its response before it is cut.
CLOSE_SECONDS = 1.0
# How often the uvicorn server's should_exit is looked at (see `exit_flag`).
EXIT_POLL_SECONDS = 0.2
# The subscription: it disappears after a day without a pull if the instance never deletes it;
# messages are kept for Pub/Sub's minimum (10 minutes): a new instance starts from now anyway.
SUBSCRIPTION_TTL_SECONDS = 86_400
RETENTION_SECONDS = 600
ACK_DEADLINE_SECONDS = 10
PUBSUB_TIMEOUT_SECONDS = 10.0
BACKOFF_SECONDS, BACKOFF_MAX_SECONDS = 1.0, 30.0
# The key under which connector.app's outer wrapper leaves the server's own `send` in the scope.
SERVER_SEND = 'connector.server_send'

_EVENT_ID = re.compile(r'([0-9a-f]{16})-(0|[1-9][0-9]{0,17})')
_MEMBER = re.compile(r'[A-Za-z_][A-Za-z0-9_]{0,63}')
# Served fields that never appear in `changed`: the id is the message's own, membership is in
# `audiences.entered`/`exited` (schemas/profile_change.schema.json).
_NEVER_CHANGED = ('customer_id', 'audiences')


class InvalidChange(ValueError):
  """A message that is not a profile change; the text names the rule, never the content."""


class Unavailable(Exception):
  """No stream for this request now (starting, shutting down, full): answered 503."""

  def __init__(self, message: str, retry_after: int = 1):
    super().__init__(message)
    self.retry_after = retry_after


# ---- Pure parts ---------------------------------------------------------------------------------


@functools.cache
def streamed_fields() -> frozenset[str]:
  """The top-level document fields a change may show: the served ones (the API's contract), so
  internal fields such as email_sha256 never leave the connector here either."""
  return frozenset(shaping.served_fields()) - frozenset(_NEVER_CHANGED)


@functools.cache
def object_fields() -> frozenset[str]:
  """Streamed fields that are objects: their members appear as `parent.member` in `changed`."""
  properties = schemas.customer_document_schema()['properties']
  found = set()
  for name in streamed_fields():
    kind = properties.get(name, {}).get('type')
    if kind == 'object' or (isinstance(kind, list) and 'object' in kind):
      found.add(name)
  return frozenset(found)


def _parent(name: str) -> str:
  return name.partition('.')[0]


@dataclasses.dataclass(frozen=True)
class Filter:
  """What one subscriber asked for. `audiences`: only changes that entered or exited one of them;
  `fields`: only changes whose `changed` holds one of them (`cart` names every `cart.*`), with
  `changed` cut to them; a deletion passes a field filter (the client must forget the customer).
  Empty means no filter of that kind; both must hold when both are given."""
  audiences: frozenset[str] = frozenset()
  fields: frozenset[str] = frozenset()

  def apply(self, change: dict) -> dict | None:
    """The change as this subscriber sees it (the same object when nothing is cut), or None."""
    if self.audiences:
      moved = change['audiences']
      if self.audiences.isdisjoint(moved['entered']) and self.audiences.isdisjoint(
          moved['exited']):
        return None
    if not self.fields or change['deleted']:
      return change
    kept = {name: value for name, value in change['changed'].items()
            if name in self.fields or _parent(name) in self.fields}
    if not kept:
      return None
    return change if len(kept) == len(change['changed']) else {**change, 'changed': kept}


def _values(raw: Iterable[str], what: str) -> list[str]:
  """Repeated and comma-separated values as one list, in order, each once; a parameter that names
  none is refused (read as no filter, it would stream everything to a client that asked for a
  part)."""
  raw = list(raw)
  if sum(len(value) + 1 for value in raw) > MAX_FILTER_LENGTH:
    raise shaping.BadRequest(f'{what} must be at most {MAX_FILTER_LENGTH} characters')
  values = list(dict.fromkeys(part.strip() for value in raw for part in value.split(',')
                              if part.strip()))
  if not values:
    raise shaping.BadRequest(f'{what} must name at least one')
  return values


def parse_filter(audience: list[str], fields: list[str]) -> Filter:
  """`?audience=a&audience=b,c` and `?fields=x,y` -> a Filter; raises shaping.BadRequest."""
  keys = frozenset(_values(audience, 'audience')) if audience else frozenset()
  for key in keys:
    audiences.check_key(key)
  names = frozenset(_values(fields, 'fields')) if fields else frozenset()
  for name in sorted(names):
    parent, dot, member = name.partition('.')
    if parent in _NEVER_CHANGED:
      raise shaping.BadRequest(f'{parent} is never in a change\'s `changed`'
                               + (': filter with audience=KEY' if parent == 'audiences' else ''))
    if parent not in streamed_fields():
      raise shaping.BadRequest(f'unknown field {name[:100]!r}')
    if dot and (parent not in object_fields() or not _MEMBER.fullmatch(member)):
      raise shaping.BadRequest(f'{name[:100]!r}: only {", ".join(sorted(object_fields()))} have '
                               f'members (parent.member)')
  return Filter(keys, names)


def new_instance(now: float | None = None) -> str:
  """An instance id (16 hex digits): the start time in seconds, then randomness, so two
  instances, or two starts of one, never share event ids."""
  seconds = int(time.time() if now is None else now) & 0xFFFFFFFF
  return f'{seconds:08x}{secrets.token_hex(4)}'


def event_id(instance: str, sequence: int) -> str:
  return f'{instance}-{sequence}'


def parse_event_id(raw: str | None) -> tuple[str, int] | None:
  """`<instance>-<sequence>` -> (instance, sequence); None when it is not one."""
  if not raw or len(raw) > 40:
    return None
  matched = _EVENT_ID.fullmatch(raw.strip())
  return None if matched is None else (matched[1], int(matched[2]))


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a subscriber starts. `after`: replay the buffered events after this sequence number,
  then live (None: live only). `reset`: why the client must re-read state first (None: no reset).
  """
  after: int | None = None
  reset: str | None = None


def resume(last_event_id: str | None, instance: str, first: int, last: int) -> Start:
  """The start for a client that last saw `last_event_id` (None or empty: a new client), when the
  ring buffer holds sequence numbers first..last (first == last + 1: it is empty). Any id this
  instance cannot place is a reset: events it does not have may be missing."""
  if not last_event_id:
    return Start()
  parsed = parse_event_id(last_event_id)
  if parsed is None:
    return Start(reset='unknown_id')
  seen_instance, sequence = parsed
  if seen_instance != instance:
    return Start(reset='unknown_instance')
  if sequence > last:
    return Start(reset='unknown_id')
  if sequence < first - 1:
    return Start(reset='expired')
  return Start(after=sequence)


RESET_MESSAGES = {
    'unknown_instance': 'the id is from another connector instance or an earlier start of this '
                        'one: changes may be missing; re-read the state you keep',
    'expired': 'the id is older than the events this instance keeps: changes may be missing; '
               're-read the state you keep',
    'unknown_id': 'the id is not one this instance gave: re-read the state you keep',
}


def frame(identifier: str, data: dict, event: str = EVENT) -> bytes:
  """One SSE event. orjson escapes CR and LF in strings, so the data is always one line."""
  return (b'id: ' + identifier.encode() + b'\nevent: ' + event.encode() + b'\ndata: '
          + orjson.dumps(data) + b'\n\n')


def opening(position: str | None) -> bytes:
  """The first bytes of a stream: the retry hint and, for a new client, its position (an `id:`
  without data sets EventSource's last event id without dispatching an event)."""
  return f'retry: {RETRY_MS}\n'.encode() + (
      b'' if position is None else b'id: ' + position.encode() + b'\n') + b'\n'


def reset_frame(identifier: str, reason: str) -> bytes:
  return frame(identifier, {'reason': reason, 'message': RESET_MESSAGES[reason]}, RESET)


def decode_change(data: bytes) -> dict:
  """A message body -> the profile change it holds; raises InvalidChange."""
  try:
    change = orjson.loads(data)
  except orjson.JSONDecodeError:
    raise InvalidChange('not JSON') from None
  try:
    schemas.profile_change_validator()(change)
  except fastjsonschema.JsonSchemaValueException as err:
    raise InvalidChange(f'{err.name} fails {err.rule}') from None
  return change


def served_change(change: dict) -> dict | None:
  """The change with `changed` cut to streamed fields; None when nothing a client may see
  changed (only internal fields)."""
  changed = {name: value for name, value in change['changed'].items()
             if _parent(name) in streamed_fields()}
  moved = change['audiences']
  if not (changed or change['deleted'] or moved['entered'] or moved['exited']):
    return None
  return change if len(changed) == len(change['changed']) else {**change, 'changed': changed}


# ---- The hub: ring buffer and subscribers, on the event loop -------------------------------------


@dataclasses.dataclass(frozen=True)
class Metrics:
  subscribers: Gauge
  received: Counter
  duplicates: Counter
  invalid: Counter
  sent: Counter
  dropped: Counter
  resets: Counter

  @classmethod
  def create(cls, registry: CollectorRegistry) -> 'Metrics':
    return cls(
        subscribers=Gauge('connector_stream_subscribers', 'Open /v1/stream connections',
                          registry=registry),
        received=Counter('connector_stream_events_received', 'Profile changes taken from the '
                         'topic (valid, not duplicates)', registry=registry),
        duplicates=Counter('connector_stream_duplicates', 'Profile changes already seen (by '
                           'change_id), acknowledged and skipped', registry=registry),
        invalid=Counter('connector_stream_invalid_messages', 'Messages on the changes topic '
                        'that are not profile changes, acknowledged and skipped',
                        registry=registry),
        sent=Counter('connector_stream_events_sent', 'Events written to subscribers (replays '
                     'included, heartbeats not)', registry=registry),
        dropped=Counter('connector_stream_subscribers_dropped', 'Subscribers whose queue filled '
                        '(they read too slowly), disconnected', registry=registry),
        resets=Counter('connector_stream_resets', 'Resumes that got a reset event, by reason',
                       ['reason'], registry=registry))


@dataclasses.dataclass(frozen=True)
class Entry:
  """A buffered event: its sequence number and id, the change as served, its unfiltered frame."""
  sequence: int
  identifier: str
  change: dict
  frame: bytes


class Subscriber:
  """One open stream: its filter, its bounded queue of frames, the buffered events to replay
  before them, and `ended` (set with `reason`: dropped, shutdown, restart) when the hub lets go."""

  def __init__(self, wanted: Filter, queue_size: int, first: bytes, replay: list[Entry]):
    self.filter = wanted
    self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
    self.first = first
    self.replay = replay
    self.ended = asyncio.Event()
    self.reason: str | None = None

  def render(self, entry: Entry) -> bytes | None:
    seen = self.filter.apply(entry.change)
    if seen is None:
      return None
    return entry.frame if seen is entry.change else frame(entry.identifier, seen)

  def end(self, reason: str) -> None:
    if self.reason is None:
      self.reason = reason
      self.ended.set()


class Hub:
  """The ring buffer of the last `settings.buffer` events and the open subscribers. Every method
  runs on the event loop, so numbering, buffering and fan-out of one change happen together, and
  a new subscriber's replay and its live events meet with no gap and no repeat."""

  def __init__(self, settings: StreamSettings, metrics: Metrics):
    self._settings = settings
    self._metrics = metrics
    self._ring: collections.deque[Entry] = collections.deque(maxlen=settings.buffer)
    self._seen = cachetools.LRUCache(DEDUPE_WINDOW)
    self._subscribers: set[Subscriber] = set()
    self._last = 0
    self.instance = new_instance()
    self.ready = False
    self.closing = False

  @property
  def subscribers(self) -> int:
    return len(self._subscribers)

  def begin(self, instance: str) -> None:
    """A new source (subscription) under a new instance id: what the old one buffered cannot be
    resumed against a stream that may have missed changes in between, so it is forgotten and its
    subscribers are ended (they reconnect and get a reset)."""
    self.instance = instance
    self._ring.clear()
    self._last = 0
    for subscriber in list(self._subscribers):
      self._end(subscriber, 'restart')

  def accept(self, change: dict) -> None:
    """Numbers, buffers and fans out a valid change (once per change_id)."""
    if change['change_id'] in self._seen:
      self._metrics.duplicates.inc()
      return
    self._seen[change['change_id']] = True
    self._metrics.received.inc()
    served = served_change(change)
    if served is None:
      return
    self._last += 1
    identifier = event_id(self.instance, self._last)
    entry = Entry(self._last, identifier, served, frame(identifier, served))
    self._ring.append(entry)
    rendered: dict[Filter, bytes | None] = {}
    for subscriber in list(self._subscribers):
      wanted = subscriber.filter
      if wanted not in rendered:
        rendered[wanted] = subscriber.render(entry)
      if rendered[wanted] is None:
        continue
      try:
        subscriber.queue.put_nowait(rendered[wanted])
      except asyncio.QueueFull:
        self._metrics.dropped.inc()
        _log.warning('stream subscriber dropped: %d events queued unread',
                     subscriber.queue.qsize())
        self._end(subscriber, 'dropped')

  def subscribe(self, wanted: Filter, last_event_id: str | None) -> Subscriber:
    """A new subscriber, positioned by `last_event_id`; raises Unavailable."""
    if not self.ready or self.closing:
      raise Unavailable('the change stream is starting or stopping: retry')
    if len(self._subscribers) >= self._settings.max_subscribers:
      raise Unavailable(f'at most {self._settings.max_subscribers} streams are open here: retry '
                        f'later', retry_after=5)
    first = self._ring[0].sequence if self._ring else self._last + 1
    start = resume(last_event_id, self.instance, first, self._last)
    position = event_id(self.instance, self._last)
    if start.reset is not None:
      self._metrics.resets.labels(start.reset).inc()
      head = opening(None) + reset_frame(position, start.reset)
    else:
      head = opening(position if start.after is None else None)
    replay = [] if start.after is None else list(
        itertools.islice(self._ring, start.after - first + 1, None))
    subscriber = Subscriber(wanted, self._settings.queue, head, replay)
    self._subscribers.add(subscriber)
    self._metrics.subscribers.set(len(self._subscribers))
    return subscriber

  def unsubscribe(self, subscriber: Subscriber) -> None:
    self._subscribers.discard(subscriber)
    self._metrics.subscribers.set(len(self._subscribers))

  def close(self) -> None:
    """Shutdown: no new subscribers, every open stream ends."""
    self.closing = True
    for subscriber in list(self._subscribers):
      self._end(subscriber, 'shutdown')

  def _end(self, subscriber: Subscriber, reason: str) -> None:
    subscriber.end(reason)
    self.unsubscribe(subscriber)


# ---- The source: this instance's subscription, by streaming pull ---------------------------------


def subscription_name(topic: str, instance: str) -> str:
  """projects/P/subscriptions/connector-stream-<instance>, in the topic's project."""
  project = topic.split('/')[1]
  return f'projects/{project}/subscriptions/connector-stream-{instance}'


class PubSubSource:
  """Feeds `hub` from a subscription of its own on `topic`, created at start (each instance
  sees every change) and deleted at stop; its expiration policy removes one left behind by a
  killed process. Messages are decoded and validated in the client's callback thread (one, so a
  batch keeps its order), handed to the loop, and acknowledged once buffered; at most `queue`
  are held unacknowledged (flow control), so one burst never overfills a reading subscriber's
  queue. When the pull fails for good (the subscription gone), the source starts over under a
  new instance id. Clients honour PUBSUB_EMULATOR_HOST."""

  def __init__(self, settings: StreamSettings, hub: Hub, metrics: Metrics):
    self._settings = settings
    self._hub = hub
    self._metrics = metrics
    self._client = None
    self._subscription: str | None = None
    self._pull = None
    self._stopping = False
    self._runner: asyncio.Task | None = None
    self._loop: asyncio.AbstractEventLoop | None = None

  def start(self) -> None:
    """Starts in the background: the API serves while the subscription is being made."""
    self._loop = asyncio.get_running_loop()
    self._runner = asyncio.ensure_future(self._run())

  async def _run(self) -> None:
    restarting = False
    while not self._stopping:
      instance = new_instance()
      self._hub.begin(instance)
      if restarting:  # not in a tight loop if the pull fails as soon as it starts
        await asyncio.to_thread(self._delete)
        await asyncio.sleep(BACKOFF_SECONDS)
      restarting = True
      name = subscription_name(self._settings.topic, instance)
      self._subscription = name  # before it exists: a stop while it is being made deletes it
      delay = BACKOFF_SECONDS
      while not self._stopping:
        try:
          await asyncio.to_thread(self._create, name)
          self._pull = self._client.subscribe(name, self._received, flow_control=self._flow(),
                                              scheduler=self._scheduler())
          break
        except Exception as err:  # Pub/Sub unreachable or refusing: the API serves on; retried
          _log.warning('stream subscription not made or not pulled (%s: %s), retrying in %.0f s',
                       type(err).__name__, str(err)[:200], delay)
          await asyncio.sleep(delay)
          delay = min(delay * 2, BACKOFF_MAX_SECONDS)
      if self._stopping:
        return
      self._hub.ready = True
      _log.info('change stream on: %s', name)
      try:
        await asyncio.wrap_future(self._pull)
      except Exception as err:  # the pull ended for good (subscription gone, no permission)
        _log.error('change stream pull ended (%s: %s): starting over', type(err).__name__,
                   str(err)[:200])
      self._hub.ready = False

  def _flow(self):
    from google.cloud import pubsub_v1
    return pubsub_v1.types.FlowControl(max_messages=self._settings.queue)

  def _scheduler(self):
    from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
    return ThreadScheduler(concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='connector-stream'))

  def _create(self, name: str) -> None:
    from google.cloud import pubsub_v1
    from google.api_core import exceptions
    if self._client is None:
      self._client = pubsub_v1.SubscriberClient()
    try:
      self._client.create_subscription(request={
          'name': name, 'topic': self._settings.topic,
          'ack_deadline_seconds': ACK_DEADLINE_SECONDS,
          'message_retention_duration': {'seconds': RETENTION_SECONDS},
          'expiration_policy': {'ttl': {'seconds': SUBSCRIPTION_TTL_SECONDS}}},
          timeout=PUBSUB_TIMEOUT_SECONDS)
    except exceptions.AlreadyExists:  # an earlier attempt made it; the name is this instance's
      pass

  def _delete(self) -> None:
    from google.api_core import exceptions
    if self._client is None or self._subscription is None:
      return
    try:
      self._client.delete_subscription(request={'subscription': self._subscription},
                                       timeout=PUBSUB_TIMEOUT_SECONDS)
    except exceptions.NotFound:  # already gone (deleted from outside, or expired)
      pass
    except Exception as err:  # its expiration policy removes it after a day without pulls
      _log.warning('stream subscription %s not deleted (%s)', self._subscription,
                   type(err).__name__)
    self._subscription = None

  def _received(self, message) -> None:
    """The client's callback thread: decode and validate, then hand to the loop."""
    try:
      change = decode_change(message.data)
    except InvalidChange as err:
      self._metrics.invalid.inc()
      _log.warning('not a profile change, skipped: message %s, change_id %r: %s',
                   message.message_id, message.attributes.get('change_id', '')[:64], err)
      message.ack()
      return
    try:
      self._loop.call_soon_threadsafe(self._deliver, change, message)
    except RuntimeError:  # the loop is closed: shutting down; the subscription goes with it
      message.nack()

  def _deliver(self, change: dict, message) -> None:
    if self._stopping:
      message.nack()
      return
    self._hub.accept(change)
    message.ack()

  async def stop(self) -> None:
    """Stops the pull and deletes the subscription (a few seconds at most)."""
    self._stopping = True
    self._hub.ready = False
    if self._pull is not None:
      self._pull.cancel()
    if self._runner is not None:
      self._runner.cancel()
      await asyncio.gather(self._runner, return_exceptions=True)
    if self._pull is not None:
      try:  # cancel() then result(): the client's way to wait for its threads to stop
        await asyncio.to_thread(self._pull.result, PUBSUB_TIMEOUT_SECONDS)
      except Exception as err:  # failed or slow to stop: it stops without us
        _log.warning('change stream pull did not stop cleanly (%s)', type(err).__name__)
    await asyncio.to_thread(self._delete)
    if self._client is not None:
      await asyncio.to_thread(self._client.close)


def exit_flag() -> Callable[[], bool] | None:
  """Whether the uvicorn server running this process is shutting down, as a function, or None
  when there is none to ask. uvicorn waits for open connections before the app's shutdown
  handlers run and tells a streaming response nothing (it sets `should_exit`), so streams must
  end on their own. The server is found through the SIGTERM handler it installs when it runs in
  the main thread (`python -m connector`); run in a thread (the tests), it installs none."""
  server = getattr(signal.getsignal(signal.SIGTERM), '__self__', None)
  if not isinstance(getattr(server, 'should_exit', None), bool):
    return None
  return lambda: server.should_exit


class ChangeStream:
  """The stream as the app sees it: started and stopped with the app, a subscriber per request.
  """

  def __init__(self, settings: StreamSettings, metrics: Metrics):
    self.settings = settings
    self.hub = Hub(settings, metrics)
    self._metrics = metrics
    self._source = PubSubSource(settings, self.hub, metrics)
    self._watcher: asyncio.Task | None = None

  def start(self) -> None:
    self._source.start()
    flag = exit_flag()
    if flag is not None:
      self._watcher = asyncio.ensure_future(self._watch(flag))

  async def _watch(self, flag: Callable[[], bool]) -> None:
    while not flag():
      await asyncio.sleep(EXIT_POLL_SECONDS)
    self.hub.close()

  def respond(self, wanted: Filter, last_event_id: str | None) -> Response:
    """The response for one subscriber; raises Unavailable."""
    return EventStream(self.hub, self.hub.subscribe(wanted, last_event_id),
                       self.settings.heartbeat_seconds, self._metrics)

  async def stop(self) -> None:
    self.hub.close()
    if self._watcher is not None:
      self._watcher.cancel()
    await self._source.stop()


# ---- One subscriber's response ------------------------------------------------------------------


def abort(scope) -> bool:
  """Closes the connection now, unsent bytes discarded; False when the server's transport is not
  reachable (then the server closes it, after its buffer drains). A graceful close would wait for
  a client that stopped reading forever: asyncio keeps the socket until its buffer is sent. ASGI
  offers no abort, so this reaches uvicorn's transport through its `send` (a bound method of the
  request cycle); another server keeps the graceful close."""
  transport = getattr(getattr(scope.get(SERVER_SEND), '__self__', None), 'transport', None)
  if transport is None or not hasattr(transport, 'abort'):
    return False
  transport.abort()
  return True


async def _disconnected(receive) -> None:
  while (await receive())['type'] != 'http.disconnect':
    pass


class EventStream(Response):
  """The ASGI response of one subscriber: the opening (retry hint, position or reset), the
  replay, then live events and heartbeats. It ends when the client disconnects (nothing more is
  sent), when the hub drops it (queue full: the connection is aborted) or at shutdown (the
  response is finished, or aborted if the client does not take it within CLOSE_SECONDS). However
  it ends, its tasks are ended and the hub lets go of it."""

  def __init__(self, hub: Hub, subscriber: Subscriber, heartbeat: float, metrics: Metrics):
    self.status_code = 200
    self.background = None
    self.raw_headers = list(HEADERS)
    self._hub = hub
    self._subscriber = subscriber
    self._heartbeat = heartbeat
    self._metrics = metrics

  async def __call__(self, scope, receive, send) -> None:
    subscriber = self._subscriber
    tasks = []
    try:
      await send({'type': 'http.response.start', 'status': 200, 'headers': self.raw_headers})
      tasks = [asyncio.ensure_future(self._write(send)),
               asyncio.ensure_future(_disconnected(receive)),
               asyncio.ensure_future(subscriber.ended.wait())]
      writer, gone, _ = tasks
      done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
      for task in tasks:
        task.cancel()
      await asyncio.gather(*tasks, return_exceptions=True)
      self._hub.unsubscribe(subscriber)
    if writer in done and not writer.cancelled() and writer.exception() is not None:
      _log.error('stream writer failed: %s', type(writer.exception()).__name__,
                 exc_info=writer.exception())
    if gone in done:
      return
    if subscriber.reason == 'dropped' or not await self._finish(send):
      if abort(scope):
        await asyncio.sleep(0)  # lets the server see the connection lost before we return

  async def _finish(self, send) -> bool:
    """Ends the response cleanly; False when the client did not take it in time."""
    try:
      async with asyncio.timeout(CLOSE_SECONDS):
        await send({'type': 'http.response.body', 'body': b'', 'more_body': False})
    except TimeoutError:
      return False
    return True

  async def _write(self, send) -> None:
    subscriber = self._subscriber

    async def write(data: bytes) -> None:
      await send({'type': 'http.response.body', 'body': data, 'more_body': True})

    await write(subscriber.first)
    replay, subscriber.replay = subscriber.replay, []
    for start in range(0, len(replay), MAX_FRAMES_PER_WRITE):
      frames = [f for f in map(subscriber.render, replay[start:start + MAX_FRAMES_PER_WRITE]) if f]
      if frames:
        await write(b''.join(frames))
        self._metrics.sent.inc(len(frames))
    del replay
    queue = subscriber.queue
    while True:
      try:
        async with asyncio.timeout(self._heartbeat):
          frames = [await queue.get()]
      except TimeoutError:
        await write(HEARTBEAT)
        continue
      while not queue.empty() and len(frames) < MAX_FRAMES_PER_WRITE:
        frames.append(queue.get_nowait())
      await write(b''.join(frames))
      self._metrics.sent.inc(len(frames))
