"""Delivers items to one destination: rate limit, retries with backoff and jitter, follow-ups.

The vendor modules (connector/destinations) say what to send and what an answer means; this
module only does the HTTP, the waiting and the counting.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Sequence

import httpx

from connector import webhooks
from connector.destinations import base
from connector.sync.config import Destination
from connector.sync.limiter import TokenBucket

_log = logging.getLogger('connector.sync')
MAX_RESPONSE_CHARS = 2000
# Follow-ups of one request at most (Klaviyo job polls and import-error pages): a job that never
# completes leaves its items to come back rather than holding the destination for ever.
MAX_FOLLOW_UPS = 600


@dataclasses.dataclass
class Failure:
  item: base.Item
  status: int | None
  response: str
  reason: str


@dataclasses.dataclass
class Delivery:
  """What became of the items of one `deliver` call: each item is in exactly one list."""
  accepted: list[base.Item] = dataclasses.field(default_factory=list)
  failed: list[Failure] = dataclasses.field(default_factory=list)      # permanent: dead letter
  exhausted: list[base.Item] = dataclasses.field(default_factory=list)  # retries ran out: redeliver


class Sender:
  """Sends one destination's items, one request at a time (so the rate limit and the order of
  a customer's versions are simple to reason about)."""

  def __init__(self, destination: Destination, vendor, limiter: TokenBucket, http: httpx.Client,
               metrics, sleep=time.sleep, rng: random.Random | None = None, clock=time.time):
    self._destination, self._vendor, self._limiter = destination, vendor, limiter
    self._http, self._metrics, self._sleep, self._clock = http, metrics, sleep, clock
    self._rng = rng or random.Random()
    self._auth = vendor.auth_headers(destination.api_key)

  def deliver(self, items: Sequence[base.Item], settle=None) -> Delivery:
    """Sends `items`; `settle(part)` is called with each request's outcome as soon as it is
    known (the worker saves state and dead-letters there). Returns the whole outcome."""
    delivery = Delivery()
    items = list(items)
    while True:  # items that can never be sent (too large, bad values) are dead letters
      try:
        requests = self._vendor.requests(items)
        break
      except base.ItemProblem as problem:
        refused = {item.customer_id for item in problem.items}
        part = Delivery(failed=[Failure(item, None, '', reason)
                                for item, reason in zip(problem.items, problem.reasons)])
        self._metrics.failed.labels(self._destination.name).inc(len(part.failed))
        if settle is not None:
          settle(part)
        delivery.failed += part.failed
        items = [item for item in items if item.customer_id not in refused]
    for request in requests:
      part = Delivery()
      self._send(request, part)
      if settle is not None:
        settle(part)
      delivery.accepted += part.accepted
      delivery.failed += part.failed
      delivery.exhausted += part.exhausted
    return delivery

  def _send(self, request: base.Request, delivery: Delivery) -> None:
    name = self._destination.name
    attempt = follow_ups = 0
    while True:
      status, headers, body, reason = None, {}, b'', ''
      self._limiter.acquire()
      started = time.monotonic()
      try:
        reply = self._http.request(request.method, self._destination.base_url + request.path,
                                   content=request.body,
                                   headers={**dict(request.headers), **self._auth})
        status, headers, body = reply.status_code, {k.lower(): v for k, v in
                                                    reply.headers.items()}, reply.content
        verdict = self._vendor.verdict(request, status, headers, body, self._clock())
      except httpx.TransportError as err:  # timeouts and refused connections: retried
        verdict = base.Verdict(base.RETRY, reason=f'{type(err).__name__}')
      finally:
        self._metrics.latency.labels(name).observe(time.monotonic() - started)
        self._metrics.requests.labels(name, str(status or 'error')).inc()
      if verdict.kind == base.ACCEPTED:
        # One item per customer in a request (the worker coalesced them): the id names it.
        refused = {item.customer_id: reason for item, reason in verdict.failed}
        for item in request.items:
          if item.customer_id in refused:
            delivery.failed.append(Failure(item, status, _text(body), refused[item.customer_id]))
          else:
            delivery.accepted.append(item)
        self._metrics.sent.labels(name).inc(len(request.items) - len(refused))
        self._metrics.failed.labels(name).inc(len(refused))
        return
      if verdict.kind == base.FOLLOW_UP:
        follow_ups += 1
        if follow_ups > MAX_FOLLOW_UPS:
          _log.warning('a job did not complete: its items stay unacknowledged and come back',
                       extra={'destination': name, 'follow_ups': MAX_FOLLOW_UPS,
                              'items': len(request.items)})
          delivery.exhausted.extend(request.items)
          return
        if verdict.follow_up_delay:
          self._sleep(verdict.follow_up_delay)
        request, attempt = verdict.follow_up, 0
        continue
      if verdict.kind == base.PERMANENT:
        reason = verdict.reason or f'HTTP {status}'
        delivery.failed.extend(Failure(item, status, _text(body), reason)
                               for item in request.items)
        self._metrics.failed.labels(name).inc(len(request.items))
        _log.warning('destination refused a request', extra={
            'destination': name, 'status': status, 'items': len(request.items),
            'reason': reason})
        return
      attempt += 1  # RETRY
      if attempt >= self._destination.max_attempts:
        _log.warning('retries exhausted: the items stay unacknowledged and come back', extra={
            'destination': name, 'status': status, 'attempts': attempt,
            'items': len(request.items), 'reason': verdict.reason or f'HTTP {status}'})
        delivery.exhausted.extend(request.items)
        return
      self._metrics.retried.labels(name, str(status or 'error')).inc()
      wait = verdict.retry_after
      if wait is None:
        wait = webhooks.backoff(attempt - 1, self._destination.backoff_seconds,
                                self._destination.backoff_max_seconds, self._rng)
      else:
        # Honour the vendor's wait, plus a little jitter so workers do not return in step.
        wait = min(wait, self._destination.backoff_max_seconds) + self._rng.uniform(0, 0.1)
      _log.info('retrying', extra={'destination': name, 'status': status, 'attempt': attempt,
                                   'delay_s': round(wait, 3), 'reason': verdict.reason})
      self._sleep(wait)


def _text(body: bytes) -> str:
  return body[:MAX_RESPONSE_CHARS * 4].decode('utf-8', errors='replace')[:MAX_RESPONSE_CHARS]
