"""Publishing a request's events to Pub/Sub and waiting until Pub/Sub has accepted all of them.

The messages of all requests are gathered on the event loop and sent as one Publish call per
batch: a batch goes out `MAX_LATENCY_SECONDS` after its first message, or at once when it holds
1,000 messages or 4 MB, with at most `MAX_IN_FLIGHT` calls under way (a batch that is due waits
for the next free one). Each call is the Google Cloud client's own Publish, with its retry and
timeout (retried on UNAVAILABLE and the like). `publish` returns once every call carrying the
request's messages returned success, and raises Unavailable when one failed, when the
outstanding messages are over the cap (at once: it never blocks the event loop) or when its
timeout passed first.

Why not the client's own batching (`PublisherClient.publish`, one future per message): it cost
about 59 us of CPU per message on these machines (a proto-plus wrapper and a PublishRequest built
per message to measure it, a future, flow-control locks, two threads per batch), most of the
collector's CPU per event at saturation, against a few us for raw protobuf requests built here.
docs/PERFORMANCE.md ("Collector") has the figures.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Sequence

from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher import client as gapic
from google.pubsub_v1.types import pubsub as pubsub_types

_log = logging.getLogger('collector')
MAX_LATENCY_SECONDS = 0.005
MAX_IN_FLIGHT = 4
MAX_BATCH_MESSAGES = 1000            # the service's limit per Publish call
MAX_BATCH_BYTES = 4 << 20            # the service allows 10 MB per call
_MESSAGE = pubsub_types.PubsubMessage.pb()
_REQUEST = pubsub_types.PublishRequest.pb()


class Unavailable(Exception):
  """Pub/Sub did not accept every event of a request in time: the client should retry (503)."""


class _Waiter:
  """One request's publish: resolved when its last message is confirmed, or at the first
  failure."""
  __slots__ = ('future', 'left')

  def __init__(self, future: asyncio.Future, left: int):
    self.future, self.left = future, left


class Publisher:
  """Publishes `(data, attributes)` messages to one topic; see the module docstring. State is
  touched on the event loop only; the calls run on `MAX_IN_FLIGHT` threads."""

  def __init__(self, topic_path: str, max_outstanding_bytes: int,
               client: pubsub_v1.PublisherClient | None = None):
    self.topic_path = topic_path
    # The handwritten client: it honours PUBSUB_EMULATOR_HOST, credentials and endpoints; only
    # its GAPIC Publish call is used.
    self._client = client or pubsub_v1.PublisherClient()
    self._max_bytes = max_outstanding_bytes
    self._max_messages = max(MAX_BATCH_MESSAGES, max_outstanding_bytes // 64)
    self._pending: list[tuple[object, int, _Waiter]] = []
    self._pending_bytes = 0
    self._outstanding_bytes = self._outstanding_messages = 0  # pending and in flight
    self._in_flight = 0
    self._timer: asyncio.TimerHandle | None = None
    self._due = False  # pending messages are past their latency: they go at the next free slot
    self._loop: asyncio.AbstractEventLoop | None = None
    self._stopped = self._closed = False
    self._calls = concurrent.futures.ThreadPoolExecutor(MAX_IN_FLIGHT,
                                                        thread_name_prefix='collector-publish')

  async def publish(self, messages: Sequence[tuple[bytes, dict[str, str]]],
                    timeout: float) -> None:
    """Returns once Pub/Sub has accepted every message; raises Unavailable when one failed, the
    cap refused the request (nothing of it is sent), the publisher is stopped, or `timeout`
    seconds passed first. Messages already handed over may still be published after an
    Unavailable: a client retry then publishes them twice, and the pipeline's dedupe by
    messageId keeps one."""
    if not messages:
      return
    if self._stopped:
      raise Unavailable('the publisher is stopped')
    loop = asyncio.get_running_loop()
    if self._loop is not loop:
      if self._outstanding_messages:
        raise RuntimeError('Publisher used from a second event loop while publishing')
      self._loop = loop
    built = [_MESSAGE(data=data, attributes=attributes) for data, attributes in messages]
    sizes = [message.ByteSize() + 6 for message in built]  # + the field's tag and length
    size = sum(sizes)
    if (self._outstanding_bytes + size > self._max_bytes
        or self._outstanding_messages + len(built) > self._max_messages):
      raise Unavailable(f'over the outstanding cap ({self._outstanding_messages} messages, '
                        f'{self._outstanding_bytes} bytes waiting for Pub/Sub)')
    waiter = _Waiter(loop.create_future(), len(built))
    self._pending.extend(zip(built, sizes, [waiter] * len(built)))
    self._pending_bytes += size
    self._outstanding_bytes += size
    self._outstanding_messages += len(built)
    if (len(self._pending) >= MAX_BATCH_MESSAGES
        or self._pending_bytes >= MAX_BATCH_BYTES or MAX_LATENCY_SECONDS <= 0):
      self._flush()
    elif self._timer is None and not self._due:
      self._timer = loop.call_later(MAX_LATENCY_SECONDS, self._flush)
    try:
      await asyncio.wait_for(waiter.future, timeout)
    except asyncio.TimeoutError:
      raise Unavailable(f'Pub/Sub did not confirm within {timeout} s') from None

  def _flush(self) -> None:
    """Sends pending messages, a batch per free call slot; what is left is due."""
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None
    if self._closed:  # stop() gave up waiting: nothing more goes out
      self._fail([waiter for _, _, waiter in self._pending], 'the publisher is stopped')
      self._outstanding_bytes -= self._pending_bytes
      self._outstanding_messages -= len(self._pending)
      self._pending, self._pending_bytes = [], 0
      return
    while self._pending and self._in_flight < MAX_IN_FLIGHT:
      count, size = 0, 0
      for _, message_size, _ in self._pending[:MAX_BATCH_MESSAGES]:
        if count and size + message_size > MAX_BATCH_BYTES:
          break
        count, size = count + 1, size + message_size
      batch, self._pending = self._pending[:count], self._pending[count:]
      self._pending_bytes -= size
      self._in_flight += 1
      waiters = [waiter for _, _, waiter in batch]
      request = _REQUEST(topic=self.topic_path, messages=[message for message, _, _ in batch])
      try:
        call = self._loop.run_in_executor(self._calls, self._send, request)
      except RuntimeError:  # the call threads were shut down (stop() gave up waiting)
        self._in_flight -= 1
        self._outstanding_bytes -= size
        self._outstanding_messages -= count
        self._fail(waiters, 'the publisher is stopped')
        continue
      call.add_done_callback(functools.partial(self._sent, waiters, size))
    self._due = bool(self._pending)

  def _send(self, request) -> int:
    """One Publish call (on a call thread), with the client's retry and timeout."""
    response = gapic.PublisherClient.publish(self._client,
                                             request=pubsub_types.PublishRequest.wrap(request))
    return len(response.message_ids)

  def _sent(self, waiters: list[_Waiter], size: int, call: asyncio.Future) -> None:
    self._in_flight -= 1
    self._outstanding_bytes -= size
    self._outstanding_messages -= len(waiters)
    error = call.exception() if not call.cancelled() else asyncio.CancelledError()
    if error is None and call.result() != len(waiters):
      error = RuntimeError(f'Pub/Sub confirmed {call.result()} of {len(waiters)} messages')
    if error is None:
      for waiter in waiters:
        waiter.left -= 1
        if not waiter.left and not waiter.future.done():
          waiter.future.set_result(None)
    else:
      self._fail(waiters, f'{type(error).__name__}: {error}')
    if self._due:
      self._flush()

  @staticmethod
  def _fail(waiters: list[_Waiter], reason: str) -> None:
    for waiter in waiters:
      if not waiter.future.done():
        waiter.future.set_exception(Unavailable(reason))

  async def ready(self, timeout: float = 2.0) -> None:
    """Raises when the topic does not answer (missing topic, Pub/Sub unreachable)."""
    await asyncio.to_thread(self._client.get_topic, topic=self.topic_path, timeout=timeout)

  def stop(self, timeout: float = 30.0) -> None:
    """Sends what is pending and waits, at most `timeout` seconds, for the calls under way;
    later publishes fail. Called from a thread other than the event loop's (the lifespan runs
    it with asyncio.to_thread)."""
    self._stopped = True
    loop = self._loop
    if loop is not None and loop.is_running():
      drained = asyncio.run_coroutine_threadsafe(self._drain(), loop)
      try:
        drained.result(timeout)
      except concurrent.futures.TimeoutError:
        drained.cancel()
        _log.warning('publisher stopped with messages unconfirmed', extra={
            'messages': self._outstanding_messages})
    self._closed = True
    self._calls.shutdown(wait=False)

  async def _drain(self) -> None:
    while self._pending or self._in_flight:
      self._flush()
      await asyncio.sleep(0.01)
