"""A token bucket per destination: never more than `burst + rate * T` requests in any T seconds.

Hand-written (a dozen lines) rather than a library: the worker is threaded and synchronous, the
rate-limit packages on PyPI are asyncio- or Redis-based, and the property the tests measure at
the receiver is exactly this one.
"""
from __future__ import annotations

import collections
import threading
import time


class TokenBucket:
  """`acquire()` blocks until a request may start. Thread-safe. `rate()` is the number of
  requests started over the last `window` seconds, per second (for the metrics)."""

  def __init__(self, requests_per_second: float, burst: int = 1, clock=time.monotonic,
               sleep=time.sleep, window: float = 10.0):
    if requests_per_second <= 0 or burst < 1:
      raise ValueError('a token bucket needs requests_per_second > 0 and burst >= 1')
    self._rate, self._burst = float(requests_per_second), float(burst)
    self._tokens, self._clock, self._sleep = float(burst), clock, sleep
    self._last = clock()
    self._lock = threading.Lock()
    self._window = window
    self._started: collections.deque[float] = collections.deque()

  def _take(self) -> float:
    """Takes a token and returns 0, or returns the seconds until one is there."""
    now = self._clock()
    self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
    self._last = now
    if self._tokens >= 1.0 - 1e-9:  # float dust: a wait of (1 - tokens) / rate refills one
      self._tokens = max(0.0, self._tokens - 1.0)
      self._note(now)
      return 0.0
    return (1.0 - self._tokens) / self._rate

  def _note(self, now: float) -> None:
    self._started.append(now)
    while self._started[0] < now - self._window:
      self._started.popleft()

  def acquire(self) -> None:
    while True:
      with self._lock:
        wait = self._take()
      if wait == 0.0:
        return
      self._sleep(wait)

  def rate(self) -> float:
    with self._lock:
      horizon = self._clock() - self._window
      while self._started and self._started[0] < horizon:
        self._started.popleft()
      return len(self._started) / self._window


class Unlimited(TokenBucket):
  """No limit (`rate_limit: unlimited`, for benchmarks); still counts the rate."""

  def __init__(self, clock=time.monotonic, window: float = 10.0):
    super().__init__(1.0, 1, clock=clock, window=window)

  def acquire(self) -> None:
    with self._lock:
      self._note(self._clock())
