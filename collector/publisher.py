"""Publishing a request's events to Pub/Sub and waiting until Pub/Sub has accepted all of them.

The Google Cloud Pub/Sub client batches messages across requests (up to 1,000 or 10 ms) and
retries on its own; this wraps it for asyncio: one waiter per request, resolved from the client's
threads when the last of its publish futures is done, bounded by a timeout. Outstanding bytes are
capped by the client's flow control: over the cap a publish fails at once (never blocks the event
loop) and the request is answered 503.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Sequence

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1 import types

_log = logging.getLogger('collector')


class Unavailable(Exception):
  """Pub/Sub did not accept every event of a request in time: the client should retry (503)."""


class Publisher:
  """Publishes `(data, attributes)` messages to one topic; see the module docstring."""

  def __init__(self, topic_path: str, max_outstanding_bytes: int,
               client: pubsub_v1.PublisherClient | None = None):
    self.topic_path = topic_path
    self._client = client or pubsub_v1.PublisherClient(
        batch_settings=types.BatchSettings(max_messages=1000, max_bytes=4 << 20,
                                           max_latency=0.01),
        publisher_options=types.PublisherOptions(flow_control=types.PublishFlowControl(
            message_limit=max(1000, max_outstanding_bytes // 64),
            byte_limit=max_outstanding_bytes,
            limit_exceeded_behavior=types.LimitExceededBehavior.ERROR)))

  async def publish(self, messages: Sequence[tuple[bytes, dict[str, str]]],
                    timeout: float) -> None:
    """Returns once Pub/Sub has accepted every message; raises Unavailable when one failed, the
    client refused one (flow control, stopped), or `timeout` seconds passed first. Messages
    already handed over may still be published after an Unavailable: a client retry then
    publishes them twice, and the pipeline's dedupe by messageId keeps one."""
    if not messages:
      return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    state = {'left': len(messages), 'error': None}
    lock = threading.Lock()

    def settle():
      if not waiter.done():
        if state['error'] is None:
          waiter.set_result(None)
        else:
          waiter.set_exception(Unavailable(state['error']))

    def done(future):
      error = future.exception()
      with lock:
        state['left'] -= 1
        if error is not None and state['error'] is None:
          state['error'] = f'{type(error).__name__}: {error}'
        last = state['left'] == 0
      if last:
        loop.call_soon_threadsafe(settle)

    for data, attributes in messages:
      try:
        future = self._client.publish(self.topic_path, data, **attributes)
      except Exception as err:  # flow control, a stopped client: nothing more goes out
        raise Unavailable(f'{type(err).__name__}: {err}') from err
      future.add_done_callback(done)
    try:
      await asyncio.wait_for(waiter, timeout)
    except asyncio.TimeoutError:
      raise Unavailable(f'Pub/Sub did not confirm within {timeout} s') from None

  async def ready(self, timeout: float = 2.0) -> None:
    """Raises when the topic does not answer (missing topic, Pub/Sub unreachable)."""
    await asyncio.to_thread(self._client.get_topic, topic=self.topic_path, timeout=timeout)

  def stop(self) -> None:
    """Sends what is batched and waits for it (shutdown)."""
    self._client.stop()
