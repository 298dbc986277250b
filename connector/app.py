"""The send-time personalization API (ASGI, FastAPI).

    GET  /v1/customers/{customer_id}/personalization[?fields=a,b&limit_recommendations=N]
                                             [&campaign_id=C&email_id=E]
    POST /v1/personalization:batchGet[?campaign_id=C&email_id=E]   {"customer_ids": [...]}
                                                                    (at most 100)
    GET  /v1/audiences/{key}/members[?limit=N&cursor=C]   ids in an audience, a page at a time
    GET  /v1/stream[?audience=K&fields=a,b]   profile changes as Server-Sent Events (stream.py)
    GET  /healthz   GET /readyz   GET /metrics

Every endpoint but /healthz and /readyz needs an API key (`Authorization: Bearer KEY` or
`X-API-Key: KEY`), checked before anything is looked up, so a 401 never says whether a customer
exists; /metrics too (endpoint names, request rates and cache ratios are not public). Unknown and
suppressed customers are 404 with a small JSON body (an ESP renders its fallback content).
Malformed requests get a 4xx with a small JSON body: more than MAX_HEADERS headers or
MAX_HEADER_BYTES of them 431, a batchGet body over MAX_BODY_BYTES 413 (read no further), one
declared as anything but JSON 415. There is no OpenAPI document and no trailing-slash redirect
(Starlette builds its Location from the Host header).

`holdout` (whether the customer is in the global holdout) is computed here with the pipeline's
own rule, so it is known without a document; it is served as a document field, and for a send
named by `campaign_id` and `email_id` in every answer, 404 included. A send also gets signed
tracking URLs (when tracking keys are set), and a held-out customer's exposure is recorded
before the answer goes out (connector/engagement.py, connector/exposures.py).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import time

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest

from connector import audiences, engagement, shaping, stream
from connector.config import Settings
from connector.exposures import Exposures, ExposureUnavailable
from connector.redis_tier import Breaker, RedisEntries, RedisFailed
from connector.store import DocumentStore, StoreUnavailable, TtlCache

MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
# The only routes that answer without an API key.
PUBLIC_PATHS = ('/healthz', '/readyz')
STREAM_PATH = '/v1/stream'
_log = logging.getLogger('connector.access')
# At most one holdout-mismatch warning per this many seconds (the counter counts every one).
MISMATCH_LOG_SECONDS = 60


class _Unauthorized(Exception):
  """No valid API key: answered 401 by the app's handler, before anything else is looked at."""


def _json(status: int, body, headers: dict | None = None) -> Response:
  return Response(content=orjson.dumps(body), status_code=status, media_type='application/json',
                  headers=headers)


def create_app(settings: Settings, store: DocumentStore | None = None,
               exposures: Exposures | None = None, clock=time.time,
               redis: RedisEntries | None = None):
  store = store or DocumentStore(settings.project, settings.database, settings.collection)
  cache = TtlCache(settings.cache_ttl_seconds)
  if redis is None and settings.redis is not None:
    redis = RedisEntries(settings.redis.url, settings.redis.prefix, settings.redis.timeout_seconds)
  breaker = (Breaker(settings.redis.breaker_failures, settings.redis.breaker_seconds)
             if settings.redis is not None else None)
  keys = tuple(k.encode() for k in settings.api_keys)
  registry = CollectorRegistry()
  requests = Counter('connector_requests', 'Requests by endpoint and status',
                     ['endpoint', 'status'], registry=registry)
  latency = Histogram('connector_request_seconds', 'Request latency by endpoint', ['endpoint'],
                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                      registry=registry)
  cache_lookups = Counter('connector_cache_lookups', 'Document cache lookups by result',
                          ['result'], registry=registry)
  mismatches = Counter('connector_holdout_mismatch', 'Documents whose holdout differs from the '
                       "connector's (pipeline and connector holdout settings differ)",
                       registry=registry)
  exposure_results = Counter('connector_exposures', 'Exposure recordings by result',
                             ['result'], registry=registry)
  redis_lookups = Counter('connector_redis_lookups', 'Redis serving-tier lookups by result: hit, '
                          'miss (read from Firestore), error and breaker_open (Redis failed or '
                          'skipped: read from Firestore)', ['result'], registry=registry)
  breaker_open = Gauge('connector_redis_breaker_open', '1 while the Redis circuit breaker is open '
                       '(lookups go to Firestore)', registry=registry)
  document_age = Histogram('connector_document_age_seconds', 'Age of each document served: '
                           'its last_event_at to now', registry=registry,
                           buckets=(1, 5, 15, 30, 60, 300, 900, 3600, 6 * 3600, 86_400,
                                    7 * 86_400))
  cache_control = f'private, max-age={int(settings.cache_ttl_seconds)}'
  tracking = engagement.Tracking(settings.tracking_keys, settings.tracking_base_url,
                                 settings.tracking_ttl_seconds) if settings.tracking_keys else None
  if exposures is None and settings.events_topic:
    exposures = Exposures(settings.project, settings.database, settings.exposures_collection,
                          settings.events_topic,
                          count=lambda result: exposure_results.labels(result).inc())
  mismatch_logged = [float('-inf')]
  stream_metrics = stream.Metrics.create(registry)
  changes = (stream.ChangeStream(settings.stream, stream_metrics) if settings.stream.topic
             else None)

  def authorized(request: Request) -> bool:
    header = request.headers.get('authorization', '')
    offered = header[7:] if header[:7].lower() == 'bearer ' else request.headers.get(
        'x-api-key', '')
    # Surrounding whitespace is not part of a header value (RFC 9110 5.5), whichever header.
    offered = offered.strip(' \t').encode()
    # Compare against every key (no early exit), each in constant time.
    matches = [hmac.compare_digest(offered, key) for key in keys]
    return bool(offered) and any(matches)

  def unauthorized() -> Response:
    return _json(401, {'error': 'unauthorized'}, {'WWW-Authenticate': 'Bearer'})

  def unavailable() -> Response:
    return _json(503, {'error': 'unavailable'}, {'Retry-After': '1'})

  async def require_key(request: Request) -> None:
    """Every route but PUBLIC_PATHS needs a key. An app-wide dependency, so a new route is covered
    without anyone remembering, and it runs before FastAPI validates the query (a 422 would
    otherwise answer without a key)."""
    if request.scope['route'].path not in PUBLIC_PATHS and not authorized(request):
      raise _Unauthorized()

  app = FastAPI(title='ESP personalization connector', docs_url=None, redoc_url=None,
                openapi_url=None, redirect_slashes=False, dependencies=[Depends(require_key)])
  app.add_exception_handler(_Unauthorized, lambda request, exc: unauthorized())

  def held_out(customer_id: str, document: dict | None) -> bool:
    """The connector's own holdout verdict; a document that says otherwise is counted."""
    ours = settings.holdout.held_out(customer_id)
    stored = None if document is None else document.get('holdout')
    if isinstance(stored, bool) and stored != ours:
      mismatches.inc()
      if time.monotonic() - mismatch_logged[0] >= MISMATCH_LOG_SECONDS:
        mismatch_logged[0] = time.monotonic()
        logging.getLogger('connector').warning(
            'a document says holdout=%s where the connector says %s: the pipeline\'s '
            '--holdout_percent/--holdout_salt and CONNECTOR_HOLDOUT_PERCENT/_SALT differ '
            '(connector_holdout_mismatch_total counts every one)', stored, ours)
    return ours

  def respond(customer_id: str, document: dict, holdout: bool, wanted, limit,
              send: engagement.Send | None, now: int) -> dict:
    body = shaping.shape(document, wanted, limit)
    if send is not None or 'holdout' in body:  # a served field, and always said for a send
      body['holdout'] = holdout
    if send is not None:
      if tracking is None:
        body['tracking'] = None
      else:
        body = tracking.decorate(body, customer_id, send, now)
    return body

  async def record_exposures(held: list[str], send: engagement.Send | None) -> bool:
    """Records the held-out customers' exposures to `send`; False when one was not."""
    if send is None or not held or exposures is None:
      return True
    try:
      await asyncio.gather(*(exposures.record(customer_id, send) for customer_id in held))
    except ExposureUnavailable as err:
      logging.getLogger('connector').warning('exposure failed: %s', err)
      return False
    return True

  def observe_age(document: dict, now: float) -> None:
    last = document.get('last_event_at')
    if isinstance(last, str):
      try:
        age = now - dt.datetime.fromisoformat(last).timestamp()
      except ValueError:
        return
      document_age.observe(max(0.0, age))

  async def from_redis(ids: list[str]) -> tuple[dict, dict, list[str]]:
    """(documents found, their entries, ids left for Firestore) from the Redis tier."""
    if not breaker.allow():
      redis_lookups.labels('breaker_open').inc(len(ids))
      return {}, {}, ids
    try:
      entries = await redis.get_many(ids)
    except RedisFailed as err:
      breaker.failure()
      breaker_open.set(1 if breaker.is_open else 0)
      redis_lookups.labels('error').inc(len(ids))
      logging.getLogger('connector').warning('Redis lookup failed, reading Firestore: %s', err)
      return {}, {}, ids
    breaker.success()
    breaker_open.set(0)
    found, kept, missing = {}, {}, []
    for customer_id, entry in entries.items():
      if entry is None:
        missing.append(customer_id)
        continue
      # A tombstone is a deleted document: as Firestore would answer, not found.
      found[customer_id] = None if entry.body is None else orjson.loads(entry.body)
      kept[customer_id] = entry
    redis_lookups.labels('hit').inc(len(found))
    if missing:
      redis_lookups.labels('miss').inc(len(missing))
    return found, kept, missing

  async def lookup(ids: list[str]) -> tuple[dict[str, dict | None], dict]:
    """Each id's document (None: there is none) and, for those Redis served, their entries."""
    if redis is not None:
      found, entries, missing = await from_redis(ids)
      if missing:
        found.update(await store.get_many(missing))
      return found, entries
    found, missing = {}, []
    for customer_id in ids:
      hit, value = cache.get(customer_id)
      cache_lookups.labels('hit' if hit else 'miss').inc()
      if hit:
        found[customer_id] = value
      else:
        missing.append(customer_id)
    if missing:
      fetched = await store.get_many(missing)
      for customer_id, document in fetched.items():
        cache.put(customer_id, document)
        found[customer_id] = document
    return found, {}

  @app.get('/v1/customers/{customer_id}/personalization')
  async def personalization(request: Request, customer_id: str, fields: str | None = None,
                            limit_recommendations: int | None = Query(None, ge=0, le=100),
                            campaign_id: str | None = None, email_id: str | None = None):
    try:
      shaping.check_customer_id(customer_id)
      wanted = shaping.parse_fields(fields)
      send = engagement.parse_send(campaign_id, email_id)
    except shaping.BadRequest as err:
      return _json(400, {'error': 'bad_request', 'message': str(err)})
    try:
      found, entries = await lookup([customer_id])
      document = found[customer_id]
    except StoreUnavailable as err:
      logging.getLogger('connector').warning('lookup failed: %s', err)
      return unavailable()
    holdout = held_out(customer_id, document)
    if holdout and not await record_exposures([customer_id], send):
      return unavailable()
    if document is None:
      # For a send the 404 says the holdout too: the ESP sends its fallback to treatment only.
      return _json(404, {'error': 'not_found', **({} if send is None else {'holdout': holdout})},
                   {'Cache-Control': cache_control})
    now = clock()
    observe_age(document, now)
    entry = entries.get(customer_id)
    if (entry is not None and send is None and limit_recommendations is None
        and wanted == shaping.served_fields() and document.get('holdout') == holdout):
      # A plain lookup: the writer's bytes and ETag are the answer (transforms/rules/served.py).
      body, tag = entry.body, entry.etag
    else:
      body = shaping.render(respond(customer_id, document, holdout, wanted,
                                    limit_recommendations, send, int(now)))
      tag = shaping.etag(body)
    headers = {'ETag': tag, 'Cache-Control': cache_control}
    if tag in [t.strip() for t in request.headers.get('if-none-match', '').split(',')]:
      return Response(status_code=304, headers=headers)
    return Response(content=body, media_type='application/json', headers=headers)

  @app.post('/v1/personalization:batchGet')
  async def batch_get(request: Request):
    media_type = request.headers.get('content-type', 'application/json').split(';')[0]
    if media_type.strip().lower() != 'application/json':
      return _json(415, {'error': 'unsupported_media_type', 'message': 'send application/json'})
    raw = await _body(request, MAX_BODY_BYTES)
    if raw is None:
      return _json(413, {'error': 'payload_too_large', 'message': f'at most {MAX_BODY_BYTES} bytes'})
    try:
      body = orjson.loads(raw)
      ids = body.get('customer_ids') if isinstance(body, dict) else None
      if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise shaping.BadRequest('body must be {"customer_ids": ["id", ...]}')
      if not 1 <= len(ids) <= settings.max_batch:
        raise shaping.BadRequest(f'customer_ids must hold 1 to {settings.max_batch} ids')
      ids = list(dict.fromkeys(ids))
      for customer_id in ids:
        shaping.check_customer_id(customer_id)
      wanted = shaping.parse_fields(request.query_params.get('fields'))
      send = engagement.parse_send(request.query_params.get('campaign_id'),
                                   request.query_params.get('email_id'))
    except orjson.JSONDecodeError:
      return _json(400, {'error': 'bad_request', 'message': 'body is not JSON'})
    except shaping.BadRequest as err:
      return _json(400, {'error': 'bad_request', 'message': str(err)})
    try:
      found, _ = await lookup(ids)
    except StoreUnavailable as err:
      logging.getLogger('connector').warning('lookup failed: %s', err)
      return unavailable()
    holdout = {i: held_out(i, found[i]) for i in ids}
    if not await record_exposures([i for i, held in holdout.items() if held], send):
      return unavailable()
    now = clock()
    for document in found.values():
      if document is not None:
        observe_age(document, now)
    now = int(now)
    answer = {'customers': {i: respond(i, d, holdout[i], wanted, None, send, now)
                            for i, d in found.items() if d is not None},
              'not_found': [i for i, d in found.items() if d is None]}
    if send is not None:  # every id's verdict, found or not (as a send's 404 says it)
      answer['holdout'] = holdout
    return _json(200, answer)

  @app.get('/v1/audiences/{key}/members')
  async def audience_members(key: str, limit: str | None = None, cursor: str | None = None):
    """The customer ids whose document lists audience `key`, by id, a page at a time (query
    parameters taken as text and checked here, so a bad one is a 400 like the other endpoints'
    rather than FastAPI's 422)."""
    try:
      audiences.check_key(key)
      count = audiences.parse_limit(limit)
      after = audiences.decode_cursor(cursor)
    except shaping.BadRequest as err:
      return _json(400, {'error': 'bad_request', 'message': str(err)})
    try:
      ids = await store.audience_members(key, after, count + 1)
    except StoreUnavailable as err:
      logging.getLogger('connector').warning('audience query failed: %s', err)
      return unavailable()
    # A listing changes with every document write: no cache may keep it.
    return _json(200, audiences.page(key, ids, count), {'Cache-Control': 'no-store'})

  @app.get(STREAM_PATH)
  async def change_stream(request: Request):
    """Profile changes as Server-Sent Events (connector/stream.py); parameters read here, as
    text, so a bad one is a 400 like the other endpoints'."""
    if changes is None:
      return _json(404, {'error': 'not_found', 'message': 'the live change stream is off here '
                         '(CONNECTOR_CHANGES_TOPIC is not set)'})
    query = request.query_params
    try:
      wanted = stream.parse_filter(query.getlist('audience'), query.getlist('fields'))
    except shaping.BadRequest as err:
      return _json(400, {'error': 'bad_request', 'message': str(err)})
    # The header first: EventSource sends it on every reconnection, while a query parameter
    # stays what the URL said when the client first connected.
    last_event_id = request.headers.get('last-event-id') or query.get('last_event_id')
    try:
      return changes.respond(wanted, last_event_id)
    except stream.Unavailable as err:
      return _json(503, {'error': 'unavailable', 'message': str(err)},
                   {'Retry-After': str(err.retry_after)})

  @app.get('/healthz')
  async def healthz():
    return _json(200, {'status': 'ok'})

  @app.get('/readyz')
  async def readyz():
    try:
      await store.ping()
    except Exception as err:  # any failure to reach Firestore means not ready; say which
      return _json(503, {'status': 'unavailable', 'reason': type(err).__name__})
    if redis is None:
      return _json(200, {'status': 'ready'})
    # Ready without Redis too (lookups fall back to Firestore); the answer says which.
    try:
      await redis.ping()
      tier = 'ok'
    except Exception as err:  # noqa: BLE001 - reported, not raised
      tier = f'unavailable ({type(err).__name__})'
    return _json(200, {'status': 'ready', 'redis': tier,
                       'redis_breaker': 'open' if breaker.is_open else 'closed'})

  @app.get('/metrics')
  async def metrics():
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

  @app.on_event('startup')
  async def open_stream():
    if changes is not None:
      changes.start()

  @app.on_event('shutdown')
  async def close():
    if changes is not None:
      await changes.stop()
    await store.close()
    if redis is not None:
      await redis.close()
    if exposures is not None:
      await exposures.close()

  app.state.cache = cache
  app.state.changes = changes
  return _Observed(app, requests, latency)


async def _body(request: Request, limit: int) -> bytes | None:
  """The request body, or None as soon as it is known to exceed `limit` bytes (by its declared
  length, or while reading a chunked one): a 10 MB body is refused without holding it."""
  declared = request.headers.get('content-length')
  if declared is not None and (not declared.isdigit() or int(declared) > limit):
    return None
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      return None
    chunks.append(chunk)
  return b''.join(chunks)


def _headers_too_large(headers: list[tuple[bytes, bytes]]) -> bool:
  return len(headers) > MAX_HEADERS or sum(
      len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES


class _Observed:
  """Pure ASGI wrapper around the app (Starlette's BaseHTTPMiddleware costs a task per request):
  request counts, the latency histogram and one JSON access-log line per API request. Routing
  sets scope['route'] in place, so the endpoint template is known once the app has answered."""

  def __init__(self, app: FastAPI, requests: Counter, latency: Histogram):
    self.app = app
    self._requests = requests
    self._latency = latency

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    started = time.perf_counter()
    status = 500
    # The server's own send, for a stream that must abort its connection (stream.abort).
    scope[stream.SERVER_SEND] = send

    async def sending(message):
      nonlocal status
      if message['type'] == 'http.response.start':
        status = message['status']
      await send(message)

    try:
      if _headers_too_large(scope['headers']):
        # The server (httptools) sets no limit of its own; nothing legitimate sends this much.
        await _json(431, {'error': 'headers_too_large',
                          'message': f'at most {MAX_HEADERS} headers, {MAX_HEADER_BYTES} bytes'})(
                              scope, receive, sending)
      else:
        await self.app(scope, receive, sending)
    finally:
      endpoint = getattr(scope.get('route'), 'path', 'unmatched')
      elapsed = time.perf_counter() - started
      self._requests.labels(endpoint, str(status)).inc()
      if endpoint != STREAM_PATH or status != 200:  # a stream lasts as long as its client
        self._latency.labels(endpoint).observe(elapsed)
      if endpoint not in ('/healthz', '/metrics'):
        _log.info('request', extra={'method': scope['method'], 'endpoint': endpoint,
                                    'status': status, 'duration_ms': round(elapsed * 1000, 2)})
