"""Strict local receivers standing in for Braze, Klaviyo and Iterable, for tests and the benchmark.

Each is a `ThreadingHTTPServer` on 127.0.0.1 (a free port) in a daemon thread, taking one API key.
It enforces the vendor's documented contract (method and path, auth header, content type, body
shape, batch limits) and answers as the vendor documents, rate-limit headers included; every rule
cites its source. Where the vendor documents a limit but not the answer to breaking it, or
documents neither, the comment says so and the receiver takes the strict side: a client that
passes here does not lean on leniency the real API may not have.

Every request is recorded (`recorded`); `accepted()` is the profile state the receiver holds (items
of 2xx answers not reported as failed; Klaviyo's when their job completes), `accepted_log()` every
acceptance in order (duplicates visible). Faults are programmed with `fail_next`, `reject_items`,
`hang_next`/`release` and `delay`. All of it is thread-safe.

    with BrazeReceiver('rest-key') as braze:
      vendor = destinations.make('braze', {})
      ...send vendor.requests(items) to braze.base_url...
      assert braze.accepted()['c1'] == {'vip': True}
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import http
import http.server
import json
import math
import re
import select
import socket
import threading
import time
import traceback
import urllib.parse
import uuid
from typing import Callable, Iterable, Mapping

_MAX_READ = 64 * 1024 * 1024  # a body above this is not read at all (413 and the connection closes)
_HOLD_LIMIT = 120.0  # a held request gives up after this long, so a forgotten release() cannot wedge a run



@dataclasses.dataclass(frozen=True)
class Recorded:
  """One request as the receiver saw it. `arrived`/`finished` are time.monotonic(); `finished` and
  `status` stay None while the request is held; a held request whose client had gone when released
  gets `finished` (when the receiver gave up) and keeps status None: it was never answered.
  `body` is the parsed JSON (None when absent or not JSON); `customer_ids` the items this answer
  accepted (for Klaviyo, the job poll that completed the job carries them)."""
  arrived: float
  finished: float | None
  method: str
  path: str
  status: int | None
  body: object
  customer_ids: tuple[str, ...] = ()


@dataclasses.dataclass
class _Answer:
  status: int
  body: object = None  # JSON-able, or bytes sent as is
  headers: dict = dataclasses.field(default_factory=dict)
  # (customer_id, attributes) or (customer_id, attributes, merge flags) committed before the
  # answer is written; the flags reach the vendor's _merge.
  accept: tuple = ()
  effect: Callable[[], tuple] | None = None  # run under the lock at commit; returns more `accept`


@dataclasses.dataclass(frozen=True)
class _Fault:
  status: int
  retry_after: float | None
  headers: tuple
  on: str


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'  # keep-alive, as the real APIs; every answer has a Content-Length

  def setup(self):
    super().setup()
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive answer.
    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

  def do_POST(self):  # noqa: N802 (http.server's naming)
    self.server.receiver._serve(self)

  do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

  def log_message(self, format, *args):  # noqa: A002
    pass


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  request_queue_size = 128


class Receiver:
  """What the three receivers share: server life cycle, recording, fault programming, the request
  pipeline (route, auth, faults, hold, vendor rules, delay, commit, answer). Subclasses give the
  vendor's routes, auth check, rules, error bodies, rate-limit headers and merge semantics."""

  name = 'esp'

  def __init__(self, api_key: str, *, host: str = '127.0.0.1'):
    if not api_key:
      raise ValueError('a receiver needs an API key')
    self.api_key = api_key
    self._host = host
    self._lock = threading.Condition()
    self._records: list[Recorded] = []
    self._accepted: dict[str, dict] = {}
    self._log: list[tuple[str, dict]] = []
    self._faults: collections.deque[_Fault] = collections.deque()
    self._rejects: dict[str, str] = {}
    self._holds = 0
    self._release = threading.Event()
    self._delay = 0.0
    self._window_start = time.time()
    self._window_count = 0
    self._server: _Server | None = None
    self._thread: threading.Thread | None = None
    self.base_url = ''
    self.internal_errors: list[str] = []  # tracebacks of receiver bugs (answered 500)

  # Life cycle.

  def start(self) -> str:
    """Serves on a free port of 127.0.0.1; returns the base URL (no trailing '/')."""
    if self._server is not None:
      return self.base_url
    self._server = _Server((self._host, 0), _Handler)
    self._server.receiver = self
    self.base_url = f'http://{self._host}:{self._server.server_address[1]}'
    self._thread = threading.Thread(target=self._server.serve_forever, name=f'{self.name}-receiver',
                                    kwargs={'poll_interval': 0.05}, daemon=True)
    self._thread.start()
    return self.base_url

  def stop(self) -> None:
    """Releases held requests, stops serving, closes the socket."""
    self.release()
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
      self._thread.join(timeout=5)
      self._server = None

  def __enter__(self) -> Receiver:
    self.start()
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  # What happened.

  @property
  def recorded(self) -> list[Recorded]:
    with self._lock:
      return list(self._records)

  def accepted(self) -> dict[str, dict]:
    """customer_id -> attributes, merged in acceptance order with the vendor's semantics."""
    with self._lock:
      return copy.deepcopy(self._accepted)

  def accepted_log(self) -> list[tuple[str, dict]]:
    """(customer_id, attributes as sent) per accepted item per request, in acceptance order."""
    with self._lock:
      return list(self._log)

  def wait_recorded(self, count: int, timeout: float = 5.0) -> bool:
    """Blocks until at least `count` requests have arrived (held ones included)."""
    with self._lock:
      return self._lock.wait_for(lambda: len(self._records) >= count, timeout)

  def wait_finished(self, count: int, timeout: float = 5.0) -> bool:
    """Blocks until at least `count` requests are finished (answered or given up)."""
    with self._lock:
      return self._lock.wait_for(
          lambda: sum(record.finished is not None for record in self._records) >= count, timeout)

  # Fault programming.

  def fail_next(self, n: int, status: int, retry_after: float | None = None,
                headers: Mapping[str, str] | None = None, *, on: str = 'data') -> None:
    """Answers the next `n` requests of kind `on` ('data': the bulk writes; 'poll': Klaviyo's job
    and import-errors reads; 'any') with `status` and the vendor's error body, plus Retry-After
    when given and any extra `headers`."""
    if on not in ('data', 'poll', 'any'):
      raise ValueError("on must be 'data', 'poll' or 'any'")
    with self._lock:
      self._faults.extend([_Fault(status, retry_after, tuple((headers or {}).items()), on)] * n)

  def reject_items(self, customer_ids: Iterable[str], reason: str = 'rejected by the test') -> None:
    """From now on these customers' items are partial failures, reported as the vendor reports
    them (Braze `errors` with index, Klaviyo import-errors, Iterable failedUpdates)."""
    with self._lock:
      for customer_id in customer_ids:
        self._rejects[customer_id] = reason

  def hang_next(self, n: int = 1) -> None:
    """Holds the next `n` data requests, unanswered, until `release()`. A held request is recorded
    on arrival; if its client has gone when released, nothing of it is accepted."""
    with self._lock:
      self._holds += n

  def release(self) -> None:
    with self._lock:
      self._release.set()
      self._release = threading.Event()

  def delay(self, seconds: float) -> None:
    """Adds `seconds` of latency to every answer from now on (0 removes it)."""
    with self._lock:
      self._delay = max(float(seconds), 0.0)

  def reset_faults(self) -> None:
    with self._lock:
      self._faults.clear()
      self._rejects.clear()
      self._holds = 0
      self._delay = 0.0

  # The pipeline.

  def _serve(self, handler: _Handler) -> None:
    arrived = time.monotonic()
    method = handler.command
    headers = {key.lower(): value for key, value in handler.headers.items()}
    raw, too_big = self._read(handler, headers)
    parsed = _parse(raw)
    with self._lock:
      index = len(self._records)
      self._records.append(Recorded(arrived, None, method, handler.path, None, parsed))
      self._lock.notify_all()
    split = urllib.parse.urlsplit(handler.path)
    path, query = split.path, urllib.parse.parse_qs(split.query, keep_blank_values=True)
    kind = self._kind(method, path)
    if kind is None:
      answer = self._no_route(method, path)
    elif not self._authorized(headers):
      answer = self._unauthorized()
    elif too_big:
      answer = self._too_large()
    else:
      answer = self._fault(kind)
      if answer is None:
        hold = self._take_hold(kind)
        if hold is not None:
          hold.wait(_HOLD_LIMIT)
          if _gone(handler.connection):
            handler.close_connection = True
            with self._lock:  # never answered: status stays None, finished says when we gave up
              self._records[index] = dataclasses.replace(self._records[index], finished=time.monotonic())
              self._lock.notify_all()
            return
        answer = self._safely_handle(kind, method, path, query, headers, raw, parsed)
    with self._lock:
      pause = self._delay
    if pause:
      time.sleep(pause)
    self._finish(handler, index, answer)

  def _safely_handle(self, *args) -> _Answer:
    """The vendor rules; a bug in them (an input they did not foresee) answers 500 and is kept in
    `internal_errors`, so a test sees it rather than a dropped connection."""
    try:
      return self._handle(*args)
    except Exception as error:  # noqa: BLE001 (made visible, not swallowed)
      with self._lock:
        self.internal_errors.append(traceback.format_exc())
      return _Answer(500, {'receiver_error': f'{type(error).__name__}: {error}'})

  def _read(self, handler: _Handler, headers: Mapping[str, str]) -> tuple[bytes, bool]:
    length = headers.get('content-length')
    if length is None:
      return b'', False
    try:
      size = int(length)
    except ValueError:
      handler.close_connection = True
      return b'', False
    if size > _MAX_READ:
      handler.close_connection = True
      return b'', True
    return handler.rfile.read(size), size > self._max_body()

  def _take_hold(self, kind: str) -> threading.Event | None:
    with self._lock:
      if kind == 'data' and self._holds > 0:
        self._holds -= 1
        return self._release
    return None

  def _fault(self, kind: str) -> _Answer | None:
    with self._lock:
      if not self._faults or self._faults[0].on not in (kind, 'any'):
        return None
      fault = self._faults.popleft()
    answer = self._fault_answer(fault.status, fault.retry_after)
    if fault.retry_after is not None:
      answer.headers['Retry-After'] = _seconds(fault.retry_after)
    answer.headers.update(dict(fault.headers))
    return answer

  def _finish(self, handler: _Handler, index: int, answer: _Answer) -> None:
    with self._lock:
      accepted = list(answer.accept)
      if answer.effect is not None:
        accepted.extend(answer.effect())
      for customer_id, attributes, *flags in accepted:
        self._merge(self._accepted.setdefault(customer_id, {}), attributes, *flags)
        self._log.append((customer_id, attributes))
      rate = self._rate_headers(answer.status, answer.headers)
      self._records[index] = dataclasses.replace(
          self._records[index], finished=time.monotonic(), status=answer.status,
          customer_ids=tuple(entry[0] for entry in accepted))
      self._lock.notify_all()
    body = answer.body if isinstance(answer.body, bytes) else (
        b'' if answer.body is None else json.dumps(answer.body).encode())
    try:
      handler.send_response(answer.status)
      headers = {'Content-Type': self._media_type(), **rate, **answer.headers}
      for key, value in headers.items():
        handler.send_header(key, str(value))
      handler.send_header('Content-Length', str(len(body)))
      handler.end_headers()
      handler.wfile.write(body)
      handler.wfile.flush()
    except OSError:
      handler.close_connection = True

  def _window(self, seconds: float, limit: int) -> tuple[int, float]:
    """(remaining, window end as epoch seconds) of a fixed window counting this request. The
    receivers report a vendor's documented rate-limit headers with plausible values; they never
    throttle on their own (429s come from fail_next), so a benchmark is not paced by them."""
    now = time.time()
    if now - self._window_start >= seconds:
      self._window_start, self._window_count = now, 0
    self._window_count += 1
    return max(limit - self._window_count, 0), self._window_start + seconds

  # Vendor hooks.

  def _kind(self, method: str, path: str) -> str | None:
    raise NotImplementedError

  def _no_route(self, method: str, path: str) -> _Answer:
    raise NotImplementedError

  def _authorized(self, headers: Mapping[str, str]) -> bool:
    raise NotImplementedError

  def _unauthorized(self) -> _Answer:
    raise NotImplementedError

  def _too_large(self) -> _Answer:
    raise NotImplementedError

  def _max_body(self) -> int:
    raise NotImplementedError

  def _fault_answer(self, status: int, retry_after: float | None) -> _Answer:
    raise NotImplementedError

  def _handle(self, kind, method, path, query, headers, raw, parsed) -> _Answer:
    raise NotImplementedError

  def _rate_headers(self, status: int, answer_headers: Mapping[str, str]) -> dict:
    return {}

  def _media_type(self) -> str:
    return 'application/json'

  def _merge(self, current: dict, attributes: dict, flags: Mapping | None = None) -> None:
    current.update(attributes)


# Braze.

class BrazeReceiver(Receiver):
  """`POST /users/track` with attribute objects (events and purchases are not implemented: 400)."""

  name = 'braze'
  # "75 attribute objects per API request" (https://www.braze.com/docs/api/api_limits/, batching
  # Track users)
  max_attributes = 75
  # Braze documents no body-size limit for /users/track: the receiver holds clients to the
  # adapter's conservative 4 MB cap and answers 413 above it (an undocumented answer).
  max_bytes = 4_000_000
  # Keys and string values at most 255 characters
  # (https://www.braze.com/docs/developer_guide/platform_integration_guides/web/analytics/setting_custom_attributes/)
  max_chars = 255
  # "/users/track: 3,000 requests per three seconds" (https://www.braze.com/docs/api/api_limits/)
  rate_limit, rate_window = 3_000, 3.0

  def _kind(self, method, path):
    return 'data' if (method, path) == ('POST', '/users/track') else None

  def _no_route(self, method, path):
    # Unknown paths 404, a wrong method on the endpoint 405 (conventional; not documented by
    # Braze).
    status = 405 if path == '/users/track' else 404
    return _Answer(status, {'message': 'Not Found' if status == 404 else 'Method Not Allowed'})

  def _authorized(self, headers):
    # "Authorization: Bearer YOUR_REST_API_KEY"
    # (https://www.braze.com/docs/api/endpoints/user_data/post_user_track/, request body); the
    # key in the body is the retired form and is refused here.
    return headers.get('authorization') == f'Bearer {self.api_key}'

  def _unauthorized(self):
    # "401 Unauthorized: Unknown or missing REST API Key"
    # (https://www.braze.com/docs/api/errors/, fatal errors).
    return _Answer(401, {'message': 'Unknown or missing REST API Key', 'errors': []})

  def _too_large(self):
    return _Answer(413, {'message': 'Request body too large', 'errors': []})

  def _max_body(self):
    return self.max_bytes

  def _fault_answer(self, status, retry_after):
    # "429 Rate Limited: Over rate limit"; "5XX Internal Server Error: retry with exponential
    # backoff" (https://www.braze.com/docs/api/errors/). Braze does not document Retry-After; it
    # is sent when programmed.
    message = 'Rate Limited' if status == 429 else _phrase(status)
    answer = _Answer(status, {'message': message, 'errors': []})
    if status == 429:
      answer.headers['X-RateLimit-Remaining'] = '0'
      if retry_after is not None:
        answer.headers['X-RateLimit-Reset'] = str(math.ceil(time.time() + retry_after))
    return answer

  def _rate_headers(self, status, answer_headers):
    # "Every single API request sent to Braze returns" X-RateLimit-Limit, -Remaining and -Reset
    # (UTC epoch seconds) (https://www.braze.com/docs/api/api_limits/, monitoring your rate
    # limits).
    remaining, end = self._window(self.rate_window, self.rate_limit)
    return {'X-RateLimit-Limit': str(self.rate_limit), 'X-RateLimit-Remaining': str(remaining),
            'X-RateLimit-Reset': str(math.ceil(end))}

  def _bad(self, message):
    # Fatal errors answer `{"message": <fatal error message>, "errors": [...]}`
    # (https://www.braze.com/docs/api/endpoints/user_data/post_user_track/, responses); "400 Bad
    # Request: Bad syntax" (https://www.braze.com/docs/api/errors/).
    return _Answer(400, {'message': message, 'errors': []})

  def _handle(self, kind, method, path, query, headers, raw, body):
    # "Content-Type: application/json"
    # (https://www.braze.com/docs/api/endpoints/user_data/post_user_track/). What Braze answers
    # to another type is not documented: 415 here.
    if _media(headers) != 'application/json':
      return _Answer(415, {'message': 'Content-Type must be application/json', 'errors': []})
    if not isinstance(body, dict):
      return self._bad('Bad syntax: the body is not a JSON object')
    # The body has `attributes`, `events`, `purchases`
    # (https://www.braze.com/docs/api/endpoints/user_data/post_user_track/, request body); other
    # keys are refused here (Braze's own handling is undocumented). Events and purchases: not
    # implemented.
    unknown = sorted(set(body) - {'attributes', 'events', 'purchases'})
    if unknown:
      return self._bad(f'Bad syntax: unknown key(s) {", ".join(unknown)}')
    if 'events' in body or 'purchases' in body:
      return self._bad('this receiver implements attributes only')
    attributes = body.get('attributes')
    if not isinstance(attributes, list) or not attributes:
      return self._bad('No Recipients: attributes must be a non-empty array')
    if len(attributes) > self.max_attributes:
      # "400 Max Input Length Exceeded: Caused by calling more than 75 external ids when
      # hitting the User Track endpoint" (https://www.braze.com/docs/api/errors/).
      return self._bad('Max Input Length Exceeded')
    with self._lock:
      rejects = dict(self._rejects)
    errors, accept = [], []
    for index, obj in enumerate(attributes):
      problem = self._object_problem(obj) or rejects.get(_get(obj, 'external_id'))
      if problem:
        # A non-fatal error names the object's array and index; the others are still
        # processed (https://www.braze.com/docs/api/endpoints/user_data/post_user_track/,
        # "Successful message with non-fatal errors").
        errors.append({'type': problem, 'input_array': 'attributes', 'index': index})
      else:
        accept.append((obj['external_id'], {key: value for key, value in obj.items()
                                            if key not in ('external_id', '_update_existing_only')}))
    answer = {'message': 'success', 'attributes_processed': len(accept)}
    if errors:
      answer['errors'] = errors
    # The asynchronous /users/track answers 201
    # (https://www.braze.com/docs/api/endpoints/user_data/post_user_track_synchronous/,
    # "Synchronous and asynchronous API calls").
    return _Answer(201, answer, accept=tuple(accept))

  def _object_problem(self, obj):
    if not isinstance(obj, dict):
      return 'attributes object must be a JSON object'
    # One of external_id, user_alias, braze_id, email or phone is required
    # (https://www.braze.com/docs/api/endpoints/user_data/post_user_track/, request parameters);
    # the connector identifies users by external_id only, so that one is required.
    external_id = obj.get('external_id')
    if not isinstance(external_id, str) or not external_id:
      return "'external_id' or 'braze_id' or 'user_alias' is required"
    if '_update_existing_only' in obj and not isinstance(obj['_update_existing_only'], bool):
      return '_update_existing_only must be a boolean'
    for key, value in obj.items():
      if key in ('external_id', '_update_existing_only'):
        continue
      # Keys: non-empty, no leading '$', at most 255 characters (Braze states the '$' rule for
      # event properties, https://www.braze.com/docs/api/objects_filters/event_object/;
      # applied to attribute keys too, the strict reading); string values at most 255
      # characters.
      if not key or key.startswith('$') or len(key) > self.max_chars:
        return f'invalid custom attribute key {key[:40]!r}'
      if isinstance(value, str) and len(value) > self.max_chars:
        return f'value of {key[:40]!r} is longer than {self.max_chars} characters'
    return None

  def _merge(self, current, attributes, flags=None):
    # "To remove a profile attribute, set it to null"
    # (https://www.braze.com/docs/api/objects_filters/user_attributes_object/).
    for key, value in attributes.items():
      if value is None:
        current.pop(key, None)
      else:
        current[key] = value


# Klaviyo.

@dataclasses.dataclass
class _Job:
  id: str
  profiles: list  # (customer_id or None, attributes merged for accepted(), index)
  errors: list  # import-error resource objects
  created_at: str
  polls: int = 0
  done: bool = False


class KlaviyoReceiver(Receiver):
  """`POST /api/profile-bulk-import-jobs` (JSON:API), `GET .../{id}`, `GET .../{id}/import-errors`.
  Jobs live in memory: a job answers `queued`, then `processing`, for its first
  `polls_until_complete` polls and `complete` after; its profiles are accepted at that completing
  poll. Import errors come `errors_page_size` per page (Klaviyo's default is 20, its maximum 100:
  the small page here exercises pagination), whatever page[size] asks."""

  name = 'klaviyo'
  # "Accepts up to 10,000 profiles per request"
  # (https://developers.klaviyo.com/en/reference/bulk_import_profiles)
  max_profiles = 10_000
  # "The maximum allowed payload size is 5MB"
  # (https://developers.klaviyo.com/en/reference/bulk_import_profiles); decimal MB
  max_bytes = 5_000_000
  # "The maximum allowed payload size per-profile is 100KB"
  # (https://developers.klaviyo.com/en/reference/bulk_import_profiles)
  max_profile_bytes = 100_000
  # "Steady: 150/m" (https://developers.klaviyo.com/en/reference/bulk_import_profiles, rate
  # limits)
  rate_limit, rate_window = 150, 60.0
  media_type = 'application/vnd.api+json'
  # ProfileUpsertQueryResourceObject attributes
  # (https://github.com/klaviyo/openapi/blob/main/openapi/stable/apis/bulk_import_profiles.json).
  profile_attributes = frozenset({'email', 'phone_number', 'external_id', '_kx', 'first_name', 'last_name',
                                  'organization', 'locale', 'title', 'image', 'location', 'properties'})
  location_keys = frozenset({'address1', 'address2', 'city', 'country', 'latitude', 'longitude',
                             'region', 'zip', 'timezone', 'ip'})
  _JOB_PATH = re.compile(r'^/api/profile-bulk-import-jobs/([^/]+)(/import-errors)?$')
  _REVISION = re.compile(r'^(\d{4}-\d{2}-\d{2})(\.[A-Za-z0-9_-]+)?$')

  def __init__(self, api_key: str, *, polls_until_complete: int = 1, errors_page_size: int = 2,
               host: str = '127.0.0.1'):
    super().__init__(api_key, host=host)
    if polls_until_complete < 0 or not 1 <= errors_page_size <= 100:
      raise ValueError('polls_until_complete >= 0 and 1 <= errors_page_size <= 100')
    self.polls_until_complete = polls_until_complete
    self.errors_page_size = errors_page_size
    self._jobs: dict[str, _Job] = {}

  def jobs(self) -> dict[str, dict]:
    """job id -> {'profiles': count, 'errors': count, 'polls': count, 'complete': bool}."""
    with self._lock:
      return {job.id: {'profiles': len(job.profiles), 'errors': len(job.errors), 'polls': job.polls,
                       'complete': job.done} for job in self._jobs.values()}

  def _kind(self, method, path):
    if (method, path) == ('POST', '/api/profile-bulk-import-jobs'):
      return 'data'
    if method == 'GET' and self._JOB_PATH.match(path):
      return 'poll'
    return None

  def _no_route(self, method, path):
    # 404 "The requested resource doesn't exist", 405 "doesn't support the provided HTTP method"
    # (https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling, response status
    # codes).
    known = path == '/api/profile-bulk-import-jobs' or self._JOB_PATH.match(path)
    if known:
      return self._error(405, 'method_not_allowed', 'Method not allowed.', f'{method} is not allowed here.')
    return self._error(404, 'not_found', 'Not found.', 'The requested resource does not exist.')

  def _authorized(self, headers):
    # "Authorization: Klaviyo-API-Key your-private-api-key" (securitySchemes in
    # https://github.com/klaviyo/openapi/blob/main/openapi/stable/apis/bulk_import_profiles.json).
    return headers.get('authorization') == f'Klaviyo-API-Key {self.api_key}'

  def _unauthorized(self):
    # "401 Not Authorized: Request is lacking required authentication information"
    # (https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling).
    return self._error(401, 'not_authenticated', 'Authentication credentials were not provided.',
                       'Missing or invalid private key.')

  def _too_large(self):
    # The 5 MB limit is documented; the answer to breaking it is not: 413 here.
    return self._error(413, 'request_too_large', 'Request entity too large.',
                       f'The payload is over {self.max_bytes} bytes.')

  def _max_body(self):
    return self.max_bytes

  def _media_type(self):
    return self.media_type

  def _error(self, status, code, title, detail, pointer=None):
    # Errors: `{"errors": [{"id", "status", "code", "title", "detail", "source", "meta"}]}`
    # (https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling, errors).
    entry = {'id': str(uuid.uuid4()), 'status': status, 'code': code, 'title': title, 'detail': detail,
             'source': {'pointer': pointer} if pointer else {}, 'meta': {}}
    return _Answer(status, {'errors': [entry]})

  def _invalid(self, detail, pointer='/data'):
    return self._error(400, 'invalid', 'Invalid input.', detail, pointer)

  def _fault_answer(self, status, retry_after):
    # On a 429 the RateLimit-* headers "are replaced with a `Retry-After` header"
    # (https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling).
    if status == 429:
      wait = retry_after if retry_after is not None else 1
      answer = self._error(429, 'throttled', 'Request was throttled.',
                           f'Request was throttled. Expected available in {_seconds(wait)} second(s).')
      answer.headers['Retry-After'] = _seconds(wait)
      return answer
    if status >= 500:
      return self._error(status, 'error', 'A server error occurred.', 'Please try again later.')
    return self._error(status, 'invalid', _phrase(status), _phrase(status))

  def _rate_headers(self, status, answer_headers):
    # Non-429 answers carry RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset (seconds
    # left in the steady window)
    # (https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling, rate limits).
    if status == 429:
      return {}
    remaining, end = self._window(self.rate_window, self.rate_limit)
    return {'RateLimit-Limit': str(self.rate_limit), 'RateLimit-Remaining': str(remaining),
            'RateLimit-Reset': str(max(math.ceil(end - time.time()), 0))}

  def _revision_problem(self, headers):
    # The `revision` header is required, "format: YYYY-MM-DD[.suffix]" (parameters in
    # https://github.com/klaviyo/openapi/blob/main/openapi/stable/apis/bulk_import_profiles.json);
    # a revision dated in the future cannot exist.
    revision = headers.get('revision')
    match = self._REVISION.match(revision or '')
    if not match:
      return 'A valid revision header (YYYY-MM-DD[.suffix]) is required.'
    try:
      day = datetime.date.fromisoformat(match.group(1))
    except ValueError:
      return f'{revision!r} is not a revision.'
    if day > datetime.datetime.now(datetime.timezone.utc).date():
      return f'Revision {revision} does not exist yet.'
    return None

  def _handle(self, kind, method, path, query, headers, raw, body):
    problem = self._revision_problem(headers)
    if problem:
      return self._invalid(problem)
    if kind == 'poll':
      return self._read_job(path, query)
    # "415 Unsupported Media Type: The Content-Type or Content-Encoding header is set
    # incorrectly" (https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling); the
    # request body is application/vnd.api+json (requestBody in
    # https://github.com/klaviyo/openapi/blob/main/openapi/stable/apis/bulk_import_profiles.json).
    if _media(headers) != self.media_type or headers.get('content-encoding', 'identity') != 'identity':
      return self._error(415, 'unsupported_media_type', 'Unsupported media type.',
                         f'Content-Type must be {self.media_type}.')
    if not isinstance(body, dict):
      return self._error(400, 'parse_error', 'Malformed data.', 'The body is not a JSON object.')
    found = self._job_problem(body)
    if found:
      return self._invalid(*found)
    return self._submit(body['data']['attributes']['profiles']['data'])

  def _job_problem(self, body):
    """(detail, pointer) of the first break of ProfileImportJobCreateQuery (bulk_import_profiles.json),
    or None."""
    if set(body) != {'data'}:
      return 'The body must have exactly one top-level member, data.', '/'
    data = body['data']
    if not isinstance(data, dict) or data.get('type') != 'profile-bulk-import-job':
      return 'data.type must be profile-bulk-import-job.', '/data/type'
    unknown = sorted(set(data) - {'type', 'attributes', 'relationships'})
    if unknown:
      return f'Unknown member(s) of data: {", ".join(unknown)}.', '/data'
    relationships = data.get('relationships')
    if relationships is not None:
      lists = relationships.get('lists') if isinstance(relationships, dict) else None
      entries = lists.get('data') if isinstance(lists, dict) else None
      if set(relationships or {}) - {'lists'} or not isinstance(entries, list) or any(
          not isinstance(e, dict) or e.get('type') != 'list' or not isinstance(e.get('id'), str)
          for e in entries):
        return 'relationships.lists.data must be a list of {type: list, id}.', '/data/relationships'
    attributes = data.get('attributes')
    if not isinstance(attributes, dict) or set(attributes) != {'profiles'}:
      return 'data.attributes must have exactly profiles.', '/data/attributes'
    profiles = attributes['profiles']
    if not isinstance(profiles, dict) or set(profiles) != {'data'} or not isinstance(profiles['data'], list):
      return 'data.attributes.profiles must be {data: [...]}.', '/data/attributes/profiles'
    if not profiles['data']:
      return 'At least one profile is required.', '/data/attributes/profiles/data'
    if len(profiles['data']) > self.max_profiles:
      return f'At most {self.max_profiles} profiles per job.', '/data/attributes/profiles/data'
    for index, profile in enumerate(profiles['data']):
      problem = self._profile_problem(profile)
      if problem:
        return problem, f'/data/attributes/profiles/data/{index}'
    return None

  def _profile_problem(self, profile):
    if not isinstance(profile, dict) or profile.get('type') != 'profile':
      return 'Each profile must be an object of type profile.'
    unknown = sorted(set(profile) - {'type', 'id', 'attributes', 'meta'})
    if unknown:
      return f'Unknown member(s) of profile: {", ".join(unknown)}.'
    attributes = profile.get('attributes')
    if not isinstance(attributes, dict):
      return 'profile.attributes must be an object.'
    unknown = set(attributes) - self.profile_attributes
    if unknown:
      return f"'{sorted(unknown)[0]}' is not a valid field for the resource 'profile'."
    if not any(isinstance(attributes.get(key), str) and attributes[key]
               for key in ('email', 'phone_number', 'external_id')) and not profile.get('id'):
      return 'A profile needs an email, phone_number, external_id or id.'
    for key, value in attributes.items():
      if key == 'properties':
        if value is not None and not isinstance(value, dict):
          return 'properties must be an object.'
      elif key == 'location':
        if value is not None and (not isinstance(value, dict) or set(value) - self.location_keys):
          return 'location must be an object of ProfileLocation fields.'
      elif value is not None and not isinstance(value, str):
        return f'{key} must be a string.'
    if len(json.dumps(profile, separators=(',', ':'), ensure_ascii=False).encode()) > self.max_profile_bytes:
      return f'A profile is over {self.max_profile_bytes} bytes.'
    return None

  def _submit(self, profiles):
    job_id = uuid.uuid4().hex.upper()[:26]
    now = _iso(time.time())
    with self._lock:
      rejects = dict(self._rejects)
    kept, errors = [], []
    for index, profile in enumerate(profiles):
      attributes = profile['attributes']
      customer_id = attributes.get('external_id')
      reason = rejects.get(customer_id)
      if reason:
        # Import errors: {code, title, detail, source.pointer, original_payload}
        # (ImportErrorResponseObjectResource in
        # https://github.com/klaviyo/openapi/blob/main/openapi/stable/apis/get_errors_for_bulk_import_profiles_job.json).
        errors.append({'type': 'import-error', 'id': str(uuid.uuid4()), 'attributes': {
            'code': 'invalid', 'title': 'Invalid input', 'detail': reason,
            'source': {'pointer': f'/data/attributes/profiles/data/{index}'},
            'original_payload': attributes}})
        continue
      merged = {key: value for key, value in attributes.items() if key not in ('external_id', 'properties')}
      merged.update(attributes.get('properties') or {})
      kept.append((customer_id, merged, index))
    job = _Job(job_id, kept, errors, now)

    def register():
      self._jobs[job_id] = job
      return ()

    # 202 "Accepted: received but not yet acted upon" with the job (PostProfileImportJobResponse
    # in
    # https://github.com/klaviyo/openapi/blob/main/openapi/stable/apis/bulk_import_profiles.json).
    return _Answer(202, {'data': self._job_resource(job, 'queued'),
                         'links': {'self': self._link(f'/api/profile-bulk-import-jobs/{job_id}')}},
                   effect=register)

  def _job_resource(self, job, status):
    total = len(job.profiles) + len(job.errors)
    complete = status == 'complete'
    return {'type': 'profile-bulk-import-job', 'id': job.id, 'attributes': {
        'status': status, 'created_at': job.created_at, 'total_count': total,
        'completed_count': len(job.profiles) if complete else 0,
        'failed_count': len(job.errors) if complete else 0,
        'completed_at': _iso(time.time()) if complete else None,
        'expires_at': None, 'started_at': job.created_at if status != 'queued' else None},
        'relationships': {'lists': {'data': []},
                          'import-errors': {'links': {'related': self._link(
                              f'/api/profile-bulk-import-jobs/{job.id}/import-errors')}}},
        'links': {'self': self._link(f'/api/profile-bulk-import-jobs/{job.id}')}}

  def _read_job(self, path, query):
    match = self._JOB_PATH.match(path)
    job_id, errors_page = match.group(1), match.group(2)
    with self._lock:
      job = self._jobs.get(job_id)
      if job is None:
        return self._error(404, 'not_found', 'Not found.', f'No job {job_id}.')
      if errors_page:
        return self._errors_page(job, query)
      job.polls += 1
      if job.polls <= self.polls_until_complete:
        state = 'queued' if job.polls == 1 else 'processing'
        return _Answer(200, {'data': self._job_resource(job, state), 'links': {'self': self._link(path)}})
      first = not job.done
      job.done = True
    accept = tuple((customer_id, merged) for customer_id, merged, _ in job.profiles
                   if customer_id is not None) if first else ()
    return _Answer(200, {'data': self._job_resource(job, 'complete'), 'links': {'self': self._link(path)}},
                   accept=accept)

  def _errors_page(self, job, query):
    # Cursor pagination: page[cursor], page[size] (1..100, default 20) and links.next
    # (parameters and CollectionLinks in
    # https://github.com/klaviyo/openapi/blob/main/openapi/stable/apis/get_errors_for_bulk_import_profiles_job.json).
    # The cursor here is an offset; clients must treat it as opaque.
    try:
      size = int(query.get('page[size]', ['20'])[0])
      offset = int(query.get('page[cursor]', ['0'])[0] or 0)
    except ValueError:
      return self._invalid('page[size] and page[cursor] must be valid.', None)
    if not 1 <= size <= 100 or offset < 0:
      return self._invalid('page[size] must be between 1 and 100.', None)
    size = min(size, self.errors_page_size)
    page = job.errors[offset:offset + size]
    base_path = f'/api/profile-bulk-import-jobs/{job.id}/import-errors'
    links = {'self': self._link(f'{base_path}?{_page_query(offset, size)}')}
    if offset + size < len(job.errors):
      links['next'] = self._link(f'{base_path}?{_page_query(offset + size, size)}')
    if offset:
      links['prev'] = self._link(f'{base_path}?{_page_query(max(offset - size, 0), size)}')
    return _Answer(200, {'data': page, 'links': links})

  def _link(self, path):
    return f'{self.base_url}{path}'

  def _merge(self, current, attributes, flags=None):
    # "The Bulk Import Profiles API does not support setting fields to null to clear them. Only
    # fields explicitly provided with non-null values will be updated."
    # (https://developers.klaviyo.com/en/docs/use_klaviyos_bulk_profile_import_api)
    for key, value in attributes.items():
      if value is not None:
        current[key] = value


# Iterable.

class IterableReceiver(Receiver):
  """`POST /api/users/bulkUpdate`, users identified by userId or email. The receiver keeps each data
  field's JSON type as a project would and refuses a user whose value changes it."""

  name = 'iterable'
  # 1,000 users per request: the figure; the Iterable spec names a BatchTooLarge error
  # code but no count, so the receiver enforces the bound (400 BatchTooLarge).
  max_users = 1_000
  # "Max size of request body: 4MB" (https://api.iterable.com/api/docs#users_bulkUpdateUser);
  # answer undocumented: 413
  max_bytes = 4_000_000
  # FailedUserUpdates (https://api.iterable.com/api-docs)
  failed_lists = ('conflictEmails', 'conflictUserIds', 'forgottenEmails', 'forgottenUserIds',
                  'invalidDataEmails', 'invalidDataUserIds', 'invalidEmails', 'invalidUserIds',
                  'notFoundEmails', 'notFoundUserIds')

  def __init__(self, api_key: str, *, create_new_fields: bool = True, host: str = '127.0.0.1'):
    super().__init__(api_key, host=host)
    self.create_new_fields = create_new_fields  # the project's setting for unrecognized fields
    self._types: dict[str, str] = {}

  def _kind(self, method, path):
    return 'data' if (method, path) == ('POST', '/api/users/bulkUpdate') else None

  def _no_route(self, method, path):
    status = 405 if path == '/api/users/bulkUpdate' else 404
    return _Answer(status, {'msg': 'Not found' if status == 404 else 'Method not allowed',
                            'code': 'NotFound' if status == 404 else 'BadParams', 'params': None})

  def _authorized(self, headers):
    # securityDefinitions api_key: header `Api-Key` (https://api.iterable.com/api-docs).
    return headers.get('api-key') == self.api_key

  def _unauthorized(self):
    # 401 "Invalid API key"; code BadApiKey (IterableApiResponse)
    # (https://api.iterable.com/api-docs).
    return _Answer(401, {'msg': 'Invalid API key', 'code': 'BadApiKey', 'params': None})

  def _too_large(self):
    return _Answer(413, {'msg': f'Request body over {self.max_bytes} bytes', 'code': 'BatchTooLarge',
                         'params': None})

  def _max_body(self):
    return self.max_bytes

  def _fault_answer(self, status, retry_after):
    # 429 "Rate limit exceeded", code RateLimitExceeded (https://api.iterable.com/api-docs);
    # Iterable documents no rate-limit headers, so only a programmed Retry-After is sent.
    if status == 429:
      return _Answer(429, {'msg': 'Exceeded rate limit for endpoint: /api/users/bulkUpdate',
                           'code': 'RateLimitExceeded', 'params': None})
    return _Answer(status, {'msg': _phrase(status), 'code': 'GenericError', 'params': None})

  def _bad(self, code, message):
    # 400 "Invalid parameters" with an IterableApiResponse body {msg, code, params}
    # (https://api.iterable.com/api-docs, IterableApiResponse).
    return _Answer(400, {'msg': message, 'code': code, 'params': None})

  def _handle(self, kind, method, path, query, headers, raw, body):
    # The API takes JSON; the answer to another content type is undocumented: 415 here.
    if _media(headers) != 'application/json':
      return _Answer(415, {'msg': 'Content-Type must be application/json', 'code': 'BadJsonBody',
                           'params': None})
    if not isinstance(body, dict):
      return self._bad('BadJsonBody', 'The body is not a JSON object')
    # BulkUpdateUsersRequest: `users` (required) and `createNewFields`
    # (https://api.iterable.com/api-docs); other keys are refused here (what Iterable does with
    # them is undocumented).
    unknown = sorted(set(body) - {'users', 'createNewFields'})
    if unknown:
      return self._bad('BadParams', f'Unknown key(s): {", ".join(unknown)}')
    users = body.get('users')
    if not isinstance(users, list) or not users:
      return self._bad('BadParams', 'users must be a non-empty array')
    if len(users) > self.max_users:
      return self._bad('BatchTooLarge', f'At most {self.max_users} users per request')
    create = body.get('createNewFields', self.create_new_fields)
    if not isinstance(create, bool):
      return self._bad('BadParams', 'createNewFields must be a boolean')
    for index, user in enumerate(users):
      problem = self._user_problem(user)
      if problem:
        return self._bad('BadParams', f'users[{index}]: {problem}')
    return self._update(users, create)

  def _user_problem(self, user):
    # OptionalApiUser: email, userId, dataFields, preferUserId, mergeNestedObjects; "Provide an
    # email or a userId (but not both)" (https://api.iterable.com/api-docs).
    if not isinstance(user, dict):
      return 'each user must be an object'
    unknown = set(user) - {'email', 'userId', 'dataFields', 'preferUserId', 'mergeNestedObjects'}
    if unknown:
      return f'unknown key(s) {", ".join(sorted(unknown))}'
    if ('email' in user) == ('userId' in user):
      return 'provide an email or a userId (but not both)'
    if not isinstance(user.get('email', user.get('userId')), str):
      return 'email/userId must be a string'
    if not isinstance(user.get('dataFields', {}), dict):
      return 'dataFields must be an object'
    for flag in ('preferUserId', 'mergeNestedObjects'):
      if flag in user and not isinstance(user[flag], bool):
        return f'{flag} must be a boolean'
    return None

  def _update(self, users, create):
    with self._lock:
      rejects = dict(self._rejects)
      types = dict(self._types)
    failed = {name: [] for name in self.failed_lists}
    created, filtered, accept = set(), set(), []
    for user in users:
      by_user = 'userId' in user
      key = user['userId'] if by_user else user['email']
      fields = dict(user.get('dataFields', {}))
      if by_user and not _valid_user_id(key):
        # invalidUserIds: "Malformed userId values (e.g. empty, too long, or containing
        # non-ASCII or non-printable characters or a trailing space)" (FailedUserUpdates in
        # https://api.iterable.com/api-docs). No length is documented for "too long": not
        # checked.
        failed['invalidUserIds'].append(key)
        continue
      mismatch = any(name in types and _json_type(value) not in (types[name], None)
                     for name, value in fields.items())
      if key in rejects or mismatch:
        # invalidDataUserIds: "not updated because of invalid data in dataFields"; the type
        # of an existing field cannot change
        # (https://api.iterable.com/api/docs#users_bulkUpdateUser, bulkUpdate description).
        failed['invalidDataUserIds' if by_user else 'invalidDataEmails'].append(key)
        continue
      for name in list(fields):
        if name not in types:
          if create:
            created.add(name)
            if _json_type(fields[name]) is not None:
              types[name] = _json_type(fields[name])
          else:
            # Unrecognized fields are dropped when new fields are not created
            # (createNewFields, filteredOutFields in BulkUpdateUsersRequest /
            # UserBulkUpdateListResponse, https://api.iterable.com/api-docs).
            filtered.add(name)
            del fields[name]
      if by_user:
        accept.append((key, fields, {'merge_nested': bool(user.get('mergeNestedObjects'))}))
    fail_count = sum(len(values) for values in failed.values())

    def commit():
      self._types.update(types)
      return ()

    answer = {'successCount': len(users) - fail_count, 'failCount': fail_count,
              'createdFields': sorted(created), 'filteredOutFields': sorted(filtered),
              'invalidEmails': list(failed['invalidEmails']),
              'invalidUserIds': list(failed['invalidUserIds']),
              'failedUpdates': failed}
    return _Answer(200, answer, accept=tuple(accept), effect=commit)

  def _merge(self, current, attributes, flags=None):
    # "It does not modify top-level fields omitted from the request body"; with
    # mergeNestedObjects top-level objects are merged rather than overwritten
    # (https://api.iterable.com/api/docs#users_bulkUpdateUser, bulkUpdate and
    # OptionalApiUser.mergeNestedObjects).
    merge = bool(flags and flags.get('merge_nested'))
    for key, value in attributes.items():
      if merge and isinstance(value, dict) and isinstance(current.get(key), dict):
        current[key] = {**current[key], **value}
      else:
        current[key] = value


# Helpers.

def _parse(raw: bytes) -> object:
  if not raw:
    return None
  try:
    return json.loads(raw)
  except (ValueError, UnicodeDecodeError):
    return None


def _media(headers: Mapping[str, str]) -> str:
  """The media type of Content-Type without parameters (charset), lower-cased."""
  return headers.get('content-type', '').split(';')[0].strip().lower()


def _get(obj: object, key: str) -> object:
  return obj.get(key) if isinstance(obj, dict) else None


def _phrase(status: int) -> str:
  try:
    return http.HTTPStatus(status).phrase
  except ValueError:
    return f'HTTP {status}'


def _seconds(value: float) -> str:
  return str(int(value)) if float(value).is_integer() else str(value)


def _iso(epoch: float) -> str:
  return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec='microseconds')


def _page_query(offset: int, size: int) -> str:
  return urllib.parse.urlencode({'page[cursor]': str(offset), 'page[size]': str(size)})


def _json_type(value: object) -> str | None:
  if value is None:
    return None
  if isinstance(value, bool):
    return 'boolean'
  if isinstance(value, (int, float)):
    return 'number'
  if isinstance(value, str):
    return 'string'
  return 'array' if isinstance(value, list) else 'object'


def _valid_user_id(value: str) -> bool:
  return bool(value) and value.isascii() and value.isprintable() and not value.endswith(' ')


def _gone(connection: socket.socket) -> bool:
  """Whether the client closed its side: readable with nothing to read (EOF), or reset."""
  try:
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
      return False
    return connection.recv(1, socket.MSG_PEEK) == b''
  except OSError:
    return True
