"""The tracking API (ASGI), as Segment's HTTP Tracking API and RudderStack's documents it.

    POST /v1/track /v1/identify /v1/page /v1/screen /v1/group /v1/alias     one event
    POST /v1/batch  /v1/import  /beacon/v1/batch?writeKey=KEY               {"batch": [...]}
    GET  /v1/pixel/{track,identify,page,screen,group,alias}?data=BASE64     Segment's pixel
    GET  /pixel/v1/track  /pixel/v1/page ?writeKey=KEY&anonymousId=..       RudderStack's pixel
    GET|HEAD /v1/o/{token}.gif   /v1/c/{token}                            tracked open / click
    OPTIONS on any of them (CORS preflight)
    GET  /healthz  /readyz  /metrics

A plain ASGI callable rather than a framework's router: the body has to be read under a size cap,
a deadline and a decompression cap chunk by chunk, and the per-request overhead is most of the
cost at 1,000 requests/s; the routes are a fixed table. docs/COLLECTOR.md is the reference for
answers and limits; in short: 200 {"success": true} once Pub/Sub accepted every event of the
request; 400 with {"error": reason, "message"} for what cannot be forwarded; 401 for an unknown
or missing write key (nothing is published); 503 with Retry-After when Pub/Sub did not confirm in
time. Pixels always answer 200 and a GIF, as Segment's do, except 503 when Pub/Sub did not take
the event: an answer of 200 means the event was published. A tracked click always answers 302:
to its link when the token is valid, else to the landing URL (docs/ENGAGEMENT.md).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import time
import urllib.parse
import zlib

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import disable_created_metrics, generate_latest

from collector import events, tracking
from collector.config import KeyRing, Settings
from collector.events import Refused
from collector.publisher import Publisher, Unavailable
from transforms.rules.tracking import InvalidToken

# The smallest transparent GIF (43 bytes).
PIXEL_GIF = bytes.fromhex('47494638396101000100800000000000ffffff21f90401000000002c00000000'
                          '010001000002024401003b')
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
MAX_QUERY_BYTES = 32 * 1024
# Routes: path -> (kind, call type). `kind` says how the request is read.
ROUTES = {
    **{f'/v1/{t}': ('single', t) for t in events.CALL_TYPES},
    '/v1/batch': ('batch', None),
    '/v1/import': ('batch', None),
    '/beacon/v1/batch': ('beacon', None),
    **{f'/v1/pixel/{t}': ('pixel', t) for t in events.CALL_TYPES},
    '/pixel/v1/track': ('rudder_pixel', 'track'),
    '/pixel/v1/page': ('rudder_pixel', 'page'),
    '/healthz': ('health', None),
    '/readyz': ('ready', None),
    '/metrics': ('metrics', None),
}
# Tracked opens and clicks carry their token in the path: prefix -> (kind, metrics label).
TRACKING_ROUTES = {'/v1/o/': ('open', '/v1/o/{token}.gif'), '/v1/c/': ('click', '/v1/c/{token}')}
_METHODS = {'open': 'GET', 'click': 'GET', 'single': 'POST', 'batch': 'POST', 'beacon': 'POST', 'pixel': 'GET',
            'rudder_pixel': 'GET', 'health': 'GET', 'ready': 'GET', 'metrics': 'GET'}
_BODY_LIMITS = {'single': events.MAX_EVENT_BYTES, 'batch': events.MAX_BATCH_BYTES,
                'beacon': events.MAX_BATCH_BYTES}
_CORS_HEADERS = 'Authorization, Content-Type, Content-Encoding, AnonymousId'
_log = logging.getLogger('collector.access')
disable_created_metrics()  # the *_created series say nothing useful here


class _Answer(Exception):
  """Ends a request early with this status and JSON body."""

  def __init__(self, status: int, body: dict, headers: tuple = ()):
    super().__init__(status)
    self.status, self.body, self.headers = status, body, headers


class _Gone(Exception):
  """The client disconnected before its body arrived: nothing to answer, nothing published."""


class Collector:
  """The ASGI app. `publisher` is what tests of the app alone may replace; the default publishes
  to `settings.topic_path` with the Google Cloud client."""

  def __init__(self, settings: Settings, keys: KeyRing | None = None,
               publisher: Publisher | None = None):
    self.settings = settings
    self.keys = keys or KeyRing.from_settings(settings)
    self._publisher = publisher
    self._origins = frozenset(settings.allowed_origins)
    self.registry = registry = CollectorRegistry()
    self._requests = Counter('collector_requests', 'Requests by route and status',
                             ['route', 'status'], registry=registry)
    self._accepted = Counter('collector_events_accepted', 'Events published, by source',
                             ['source'], registry=registry)
    self._refused = Counter(
        'collector_events_refused', 'Events (or requests, when their events could not be '
        'counted) not published, by reason', ['reason'], registry=registry)
    self._publish_seconds = Histogram(
        'collector_publish_seconds', 'From handing a request\'s events to the Pub/Sub client to '
        'its confirming all of them', buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                               2.5, 5, 10), registry=registry)
    self._tracking_hits = Counter(
        'collector_tracking_hits', 'Tracked opens and clicks by outcome: human, machine, or why '
        'the token was refused (published only for human and machine)', ['kind', 'outcome'],
        registry=registry)
    self._first_opens = tracking.FirstOpens(
        settings.tracking.fast_click_seconds if settings.tracking else 0)
    self._request_bytes = Histogram(
        'collector_request_bytes', 'Request body bytes as received (before decompression)',
        buckets=(256, 1024, 4096, 16384, 65536, 262144, 524288), registry=registry)

  @property
  def publisher(self) -> Publisher:
    if self._publisher is None:
      self._publisher = Publisher(self.settings.topic_path, self.settings.max_outstanding_bytes)
    return self._publisher

  async def __call__(self, scope, receive, send):
    if scope['type'] == 'lifespan':
      return await self._lifespan(receive, send)
    if scope['type'] != 'http':
      return
    started = time.perf_counter()
    path = scope['path']
    route = ROUTES.get(path)
    label = path if route else 'unmatched'
    if route is None and path[:6] in TRACKING_ROUTES:
      kind, label = TRACKING_ROUTES[path[:6]]
      route = (kind, path[6:])
    outcome = {'status': 500, 'events': 0, 'source': None, 'reason': None}

    async def answer(status, body, content_type=b'application/json', headers=()):
      outcome['status'] = status
      out = [(b'content-type', content_type), (b'content-length', str(len(body)).encode()),
             *headers, *self._cors(scope)]
      await send({'type': 'http.response.start', 'status': status, 'headers': out})
      await send({'type': 'http.response.body', 'body': body})

    try:
      await self._handle(scope, receive, route, answer, outcome)
    except _Answer as early:
      await answer(early.status, orjson.dumps(early.body), headers=early.headers)
    except Refused as refused:  # what a POST route cannot forward (pixels answer their own)
      self._refuse(outcome, refused.reason)
      await answer(refused.status, orjson.dumps({'error': refused.reason,
                                                 'message': refused.message}))
    except _Gone:
      outcome['status'] = 499  # nginx's "client closed request": logged, never sent
    except Exception:  # a bug: say so in the log, answer 500 without details
      _log.exception('unhandled error', extra={'route': label})
      await answer(500, b'{"error":"internal"}')
    finally:
      self._requests.labels(label, str(outcome['status'])).inc()
      if route is None or route[0] not in ('health', 'metrics', 'ready'):
        _log.info('request', extra={
            'method': scope['method'], 'route': label, 'status': outcome['status'],
            'events': outcome['events'], 'source': outcome['source'],
            'reason': outcome['reason'],
            'duration_ms': round((time.perf_counter() - started) * 1000, 2)})

  async def _handle(self, scope, receive, route, answer, outcome):
    headers = scope['headers']
    if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
      # The server (httptools) sets no limit of its own; nothing legitimate sends this much.
      raise _Answer(431, {'error': 'headers_too_large',
                          'message': f'at most {MAX_HEADERS} headers, {MAX_HEADER_BYTES} bytes'})
    if route is None:
      raise _Answer(404, {'error': 'not_found', 'message': 'no such route (docs/COLLECTOR.md)'})
    kind, call_type = route
    method = scope['method']
    allowed = _METHODS[kind]
    if method == 'OPTIONS' and kind not in ('health', 'ready', 'metrics'):
      return await self._preflight(scope, answer, allowed)
    if method == 'HEAD' and kind in ('open', 'click'):
      method = 'GET'  # answered as a GET without its body; the hit is a machine's
    if method != allowed:
      methods = allowed if kind in ('health', 'ready', 'metrics') else f'{allowed}, OPTIONS'
      raise _Answer(405, {'error': 'method_not_allowed', 'message': f'use {allowed}'},
                    ((b'allow', methods.encode()),))
    if kind == 'health':
      return await answer(200, b'{"status":"ok"}')
    if kind == 'ready':
      try:
        await self.publisher.ready()
      except Exception as err:  # any failure to reach the topic means not ready; say which
        raise _Answer(503, {'status': 'unavailable', 'reason': type(err).__name__}) from None
      return await answer(200, b'{"status":"ready"}')
    if kind == 'metrics':
      return await self._metrics(scope, answer)
    if kind in ('pixel', 'rudder_pixel'):
      return await self._pixel(scope, kind, call_type, answer, outcome)
    if kind in ('open', 'click'):
      return await self._tracked(scope, kind, call_type, answer, outcome)
    return await self._post(scope, receive, kind, call_type, answer, outcome)

  async def _post(self, scope, receive, kind, call_type, answer, outcome):
    headers = _headers(scope)
    offered = events.basic_auth_user(headers.get('authorization'))
    if kind == 'beacon' and offered is None:
      offered = _query(scope).get('writeKey', [None])[0]
    if offered is not None and self.keys.source(offered) is None:
      self._refuse(outcome, 'unauthorized')
      raise _Answer(401, _UNAUTHORIZED, _BASIC)
    encoding = headers.get('content-encoding', 'identity').strip().lower()
    if encoding not in ('identity', 'gzip'):
      self._refuse(outcome, 'unsupported_encoding')
      raise _Answer(415, {'error': 'unsupported_encoding',
                          'message': 'Content-Encoding must be gzip or absent'})
    limit = _BODY_LIMITS[kind]
    body = await self._read(receive, headers, limit)
    if encoding == 'gzip':
      body = inflate(body, limit)
    payload = events.parse_object(body)
    if offered is None:
      offered = payload.get('writeKey')
    source = self.keys.source(offered)
    if source is None:
      self._refuse(outcome, 'unauthorized')
      raise _Answer(401, _UNAUTHORIZED, _BASIC)
    outcome['source'] = source
    if kind == 'single':
      batch, envelope = [payload], events.NO_ENVELOPE
    else:
      payload.pop('writeKey', None)
      batch, envelope = events.batch_of(payload)
    stamp = self._stamp(scope, headers)
    messages = []
    for i, event in enumerate(batch):
      data, message_id = events.encode(event, stamp, envelope, call_type,
                                       None if kind == 'single' else i)
      messages.append(_message(data, message_id, source, stamp))
    outcome['events'] = len(messages)
    if not await self._publish(messages, source, outcome):
      raise _Answer(503, {'error': 'unavailable', 'message': 'Pub/Sub did not accept the events '
                          'in time; retry'}, ((b'retry-after', b'1'),))
    await answer(200, b'{"success":true}')

  async def _pixel(self, scope, kind, call_type, answer, outcome):
    """Segment's pixel contract: always 200 and a GIF, whatever was wrong (counted, logged),
    with one exception: 503 when Pub/Sub did not take a valid event."""
    gif = (b'image/gif', ((b'cache-control', b'no-store, max-age=0'),))
    try:
      raw = scope.get('query_string', b'')
      if len(raw) > MAX_QUERY_BYTES:
        raise Refused('query_too_large', f'query over {MAX_QUERY_BYTES} bytes')
      query = _query(scope)
      event, offered = events.pixel_event(query, dotted=kind == 'rudder_pixel')
      source = self.keys.source(offered)
      if source is None:
        raise Refused('unauthorized', 'unknown or missing write key')
      outcome['source'] = source
      stamp = self._stamp(scope, _headers(scope))
      data, message_id = events.encode(event, stamp, events.NO_ENVELOPE, call_type)
    except Refused as refused:
      self._refuse(outcome, refused.reason)
      return await answer(200, PIXEL_GIF, *gif)
    outcome['events'] = 1
    message = _message(data, message_id, source, stamp)
    status = 200 if await self._publish([message], source, outcome) else 503
    await answer(status, PIXEL_GIF, gif[0],
                 gif[1] + (((b'retry-after', b'1'),) if status == 503 else ()))

  async def _tracked(self, scope, kind, token, answer, outcome):
    """A tracked open (always a GIF; 503 when Pub/Sub did not take a valid hit's event) or
    click (always a 302: to the link when the token is valid, whatever Pub/Sub did, since the
    reader must get where they clicked; else to the landing URL). Nothing but a valid token's
    link is ever redirected to."""
    config = self.settings.tracking
    gif = (b'image/gif', ((b'cache-control', b'no-store, max-age=0'),))
    landing = ((b'cache-control', b'no-store'), (b'referrer-policy', b'no-referrer'))
    if config is None:
      self._refuse(outcome, 'tracking_not_configured')
      self._tracking_hits.labels(kind, 'not_configured').inc()
      if kind == 'open':
        return await answer(200, PIXEL_GIF, *gif)
      raise _Answer(404, {'error': 'not_found', 'message': 'tracking is not configured '
                          '(COLLECTOR_TRACKING_KEYS)'})
    now = time.time()
    if kind == 'open':
      token = token[:-4] if token.endswith('.gif') else '\x00'  # no .gif: not a pixel URL
    try:
      link = config.keys.verify(token, now)
      if (link.url is None) != (kind == 'open'):  # a pixel's token is no link, and back
        raise InvalidToken('wrong_kind', f'the token is not one of an {kind}')
    except InvalidToken as refused:
      self._refuse(outcome, f'token_{refused.reason}')
      self._tracking_hits.labels(kind, refused.reason).inc()
      if kind == 'open':
        return await answer(200, PIXEL_GIF, *gif)
      return await answer(302, b'', b'text/plain', (
          (b'location', tracking.location(config.landing_url)), *landing))
    headers = _headers(scope)
    stamp = self._stamp(scope, headers)
    first_open = self._first_opens.first(link)
    if kind == 'open':
      self._first_opens.opened(link, now)
    reason = tracking.machine_reason(link, kind, scope['method'], headers, stamp.ip, now,
                                     first_open, config.fast_click_seconds)
    self._tracking_hits.labels(kind, 'human' if reason is None else 'machine').inc()
    outcome['source'] = config.source
    data, message_id = events.encode(
        tracking.event(link, kind, reason, headers, stamp.received_at), stamp)
    outcome['events'] = 1
    published = await self._publish([_message(data, message_id, config.source, stamp)],
                                     config.source, outcome)
    if kind == 'click':
      return await answer(302, b'', b'text/plain', (
          (b'location', tracking.location(link.url)), *landing))
    await answer(200 if published else 503, PIXEL_GIF, gif[0],
                 gif[1] + (() if published else ((b'retry-after', b'1'),)))

  async def _publish(self, messages, source, outcome) -> bool:
    started = time.perf_counter()
    try:
      await self.publisher.publish(messages, self.settings.publish_timeout_seconds)
    except Unavailable as err:
      self._refused.labels('unavailable').inc(len(messages))
      outcome['reason'] = 'unavailable'
      logging.getLogger('collector').warning('publish failed: %s', err,
                                             extra={'events': len(messages)})
      return False
    self._publish_seconds.observe(time.perf_counter() - started)
    self._accepted.labels(source).inc(len(messages))
    return True

  async def _read(self, receive, headers, limit) -> bytes:
    """The body, read under `limit` bytes and the body deadline (408 past it)."""
    declared = headers.get('content-length')
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
      raise Refused('body_too_large', f'body is over the limit of {limit} bytes')
    chunks, size = [], 0
    deadline = time.monotonic() + self.settings.body_timeout_seconds
    while True:
      left = deadline - time.monotonic()
      try:
        message = await asyncio.wait_for(receive(), max(left, 0.001))
      except asyncio.TimeoutError:
        raise Refused('body_timeout', 'body not received within '
                      f'{self.settings.body_timeout_seconds} s', status=408) from None
      if message['type'] == 'http.disconnect':
        raise _Gone()
      chunk = message.get('body', b'')
      size += len(chunk)
      if size > limit:
        raise Refused('body_too_large', f'body is over the limit of {limit} bytes')
      chunks.append(chunk)
      if not message.get('more_body'):
        self._request_bytes.observe(size)
        return b''.join(chunks)

  def _stamp(self, scope, headers) -> events.Stamp:
    peer = (scope.get('client') or (None,))[0]
    ip = events.client_ip(peer, headers.get('x-forwarded-for'), self.settings.trusted_proxies,
                          self.settings.truncate_ip)
    return events.Stamp(events.received_at(dt.datetime.now(dt.timezone.utc)), ip)

  def _refuse(self, outcome, reason):
    self._refused.labels(reason).inc()
    outcome['reason'] = reason

  def _cors(self, scope) -> list:
    origin = _headers(scope).get('origin')
    if not origin or not self._origins or (origin not in self._origins
                                           and '*' not in self._origins):
      return []
    return [(b'access-control-allow-origin', origin.encode('latin-1')), (b'vary', b'Origin')]

  async def _preflight(self, scope, answer, allowed):
    if not self._cors(scope):
      raise _Answer(403, {'error': 'origin_not_allowed',
                          'message': 'this origin is not in COLLECTOR_ALLOWED_ORIGINS'})
    await answer(204, b'', headers=(
        (b'access-control-allow-methods', f'{allowed}, OPTIONS'.encode()),
        (b'access-control-allow-headers', _CORS_HEADERS.encode()),
        (b'access-control-max-age', b'86400')))

  async def _metrics(self, scope, answer):
    token = self.settings.metrics_token
    if token:
      offered = _headers(scope).get('authorization', '')
      if not hmac.compare_digest(offered.encode(), f'Bearer {token}'.encode()):
        raise _Answer(401, {'error': 'unauthorized', 'message': 'metrics need the token'},
                      ((b'www-authenticate', b'Bearer'),))
    await answer(200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())

  async def _lifespan(self, receive, send):
    while True:
      message = await receive()
      if message['type'] == 'lifespan.startup':
        self.publisher  # created now, so a bad topic path fails at start-up, not at the first hit
        await send({'type': 'lifespan.startup.complete'})
      elif message['type'] == 'lifespan.shutdown':
        # In-flight requests have been answered (uvicorn waits for them): flush the rest.
        await asyncio.to_thread(self.publisher.stop)
        await send({'type': 'lifespan.shutdown.complete'})
        return


_UNAUTHORIZED = {'error': 'unauthorized', 'message': 'unknown or missing write key (HTTP Basic '
                 'username, or writeKey in the body)'}
_BASIC = ((b'www-authenticate', b'Basic realm="collector"'),)


def inflate(data: bytes, limit: int) -> bytes:
  """A gzip body -> its bytes, inflating at most `limit` + 1 of them: a bomb is refused without
  ever being held, a truncated or corrupt stream is refused. Several gzip members one after the
  other (RFC 1952 allows it; `cat a.gz b.gz`) inflate to their concatenation."""
  out, rest = [], data
  size = 0
  while True:
    inflater = zlib.decompressobj(wbits=31)
    try:
      part = inflater.decompress(rest, limit + 1 - size)
    except zlib.error as err:
      raise Refused('invalid_gzip', f'body is not valid gzip: {err}') from None
    size += len(part)
    out.append(part)
    if size > limit or inflater.unconsumed_tail:
      raise Refused('body_too_large', f'body inflates to over the limit of {limit} bytes')
    if not inflater.eof:
      raise Refused('invalid_gzip', 'gzip body is truncated')
    rest = inflater.unused_data
    if not rest:
      return b''.join(out)
    if not rest.startswith(b'\x1f\x8b'):
      raise Refused('invalid_gzip', 'bytes after the end of the gzip stream')


def _headers(scope) -> dict[str, str]:
  cached = scope.get('collector.headers')
  if cached is None:
    cached = scope['collector.headers'] = {k.decode('latin-1'): v.decode('latin-1')
                                           for k, v in scope['headers']}
  return cached


def _query(scope) -> dict[str, list[str]]:
  try:
    return urllib.parse.parse_qs(scope.get('query_string', b'').decode('latin-1'),
                                 keep_blank_values=False, encoding='utf-8', errors='replace',
                                 max_num_fields=200)
  except ValueError:  # more than 200 fields
    raise Refused('invalid_query', 'query has over 200 fields') from None


def _message(data: bytes, message_id: str, source: str,
             stamp: events.Stamp) -> tuple[bytes, dict[str, str]]:
  """One Pub/Sub message: the event's JSON and the attributes docs/COLLECTOR.md lists."""
  return data, {'source': source, 'received_at': stamp.received_at,
                'message_id': _attribute(message_id)}


def _attribute(value: str) -> str:
  """A Pub/Sub attribute value holds at most 1,024 bytes; a longer messageId (which the pipeline
  dead-letters anyway) must not make the publish fail."""
  data = value.encode('utf-8', 'replace')
  return value if len(data) <= 1024 else data[:1024].decode('utf-8', 'ignore')
