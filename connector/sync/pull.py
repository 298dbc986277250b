"""Pulling profile changes: synchronous pulls, leases we extend ourselves, confirmed acks.

Why not the client library's streaming pull (`SubscriberClient.subscribe`): its acks are
fire-and-forget and its lease management decides deadlines on its own (seen here: after a kill,
the emulator redelivered a worker's messages 10, 20 and 30 s later, in chunks). With plain
`pull`, `modify_ack_deadline` and `acknowledge` the worker knows that an ack landed before it
takes the next batch, and a dead worker's messages come back one `ack_deadline_seconds` after its
last lease extension.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from google.api_core import exceptions as api_exceptions

from connector.sync.worker import Received

_log = logging.getLogger('connector.sync')
MAX_IDS_PER_CALL = 1000  # Pub/Sub takes up to 2,500 ack ids per call; stay well below
PULL_TIMEOUT = 4.0  # also how soon a deleted subscription is noticed when idle
# Failures that end the worker (its process manager restarts it): the subscription is gone or
# not ours; anything else is retried with backoff. (An ack id that expired can make a lease
# extension or an ack fail with InvalidArgument: that message simply comes back.)
FATAL = (api_exceptions.NotFound, api_exceptions.PermissionDenied,
         api_exceptions.Unauthenticated)


class Puller:
  """Feeds `inbox` with Received messages, keeps at most `max_outstanding` of them leased, and
  extends their leases every third of `ack_deadline` until they are settled and flushed.
  `oldest_age` says how long ago the oldest message it holds was published."""

  def __init__(self, subscriber, subscription: str, inbox: queue.Queue, ack_deadline: int,
               max_outstanding: int, stop: threading.Event, subscription_deadline: int = 10):
    self._subscriber, self._subscription, self._inbox = subscriber, subscription, inbox
    self._deadline, self._max = ack_deadline, max_outstanding
    # A pulled message first has the subscription's own deadline: extend well before either ends.
    self._period = min(ack_deadline, subscription_deadline) / 3
    self._stop = stop
    self._lock = threading.Lock()
    # Leased ack ids -> their messages' publish times (Unix seconds).
    self._leased: dict[str, float] = {}
    self._acks: list[str] = []
    self._nacks: list[str] = []
    self.error: BaseException | None = None

  def start(self) -> None:
    threading.Thread(target=self._pull_loop, daemon=True, name='sync-pull').start()
    threading.Thread(target=self._lease_loop, daemon=True, name='sync-lease').start()

  # ---- settling (called by the worker) ------------------------------------------------------

  def _settle(self, ack_id: str, ok: bool) -> None:
    with self._lock:
      (self._acks if ok else self._nacks).append(ack_id)

  def flush(self) -> None:
    """Sends the settled acks and nacks now, and waits for Pub/Sub to confirm them."""
    with self._lock:
      acks, self._acks = self._acks, []
      nacks, self._nacks = self._nacks, []
    try:
      for start in range(0, len(acks), MAX_IDS_PER_CALL):
        self._subscriber.acknowledge(subscription=self._subscription,
                                     ack_ids=acks[start:start + MAX_IDS_PER_CALL])
      for start in range(0, len(nacks), MAX_IDS_PER_CALL):
        self._subscriber.modify_ack_deadline(subscription=self._subscription,
                                             ack_ids=nacks[start:start + MAX_IDS_PER_CALL],
                                             ack_deadline_seconds=0)
    except FATAL as err:
      self._fail(err)
    except api_exceptions.GoogleAPICallError as err:
      # Not acknowledged: those messages come back, and the state makes them send nothing.
      _log.warning('acknowledging failed; the messages will come back',
                   extra={'error': type(err).__name__, 'acks': len(acks)})
    with self._lock:
      for ack_id in acks + nacks:
        self._leased.pop(ack_id, None)

  def oldest_age(self, now: float) -> float:
    """Seconds from the publish time of the oldest message pulled and not yet settled and
    flushed to `now`; 0 when none is held (the sync_oldest_message_age_seconds gauge)."""
    with self._lock:
      oldest = min(self._leased.values(), default=None)
    return 0.0 if oldest is None else max(0.0, now - oldest)

  # ---- threads ------------------------------------------------------------------------------

  def _fail(self, err: BaseException) -> None:
    self.error = err
    _log.error('the subscription stream ended; stopping', extra={
        'subscription': self._subscription, 'error': f'{type(err).__name__}: {str(err)[:300]}'})
    self._stop.set()

  def _pull_loop(self) -> None:
    delay = 0.5
    while not self._stop.is_set():
      with self._lock:
        room = self._max - len(self._leased)
      if room <= 0:
        time.sleep(0.05)
        continue
      try:
        reply = self._subscriber.pull(subscription=self._subscription,
                                      max_messages=min(room, MAX_IDS_PER_CALL),
                                      timeout=PULL_TIMEOUT)
        delay = 0.5
      except api_exceptions.DeadlineExceeded:
        continue  # nothing to pull within the timeout
      except FATAL as err:
        self._fail(err)
        return
      except api_exceptions.GoogleAPICallError as err:
        _log.warning('pull failed; retrying', extra={'error': f'{type(err).__name__}',
                                                     'delay_s': delay})
        self._stop.wait(delay)
        delay = min(delay * 2, 30.0)
        continue
      with self._lock:
        self._leased.update((r.ack_id, r.message.publish_time.timestamp())
                            for r in reply.received_messages)
      for r in reply.received_messages:
        self._inbox.put(Received(
            r.message.data, r.message.message_id,
            ack=lambda ack_id=r.ack_id: self._settle(ack_id, True),
            nack=lambda ack_id=r.ack_id: self._settle(ack_id, False)))

  def _lease_loop(self) -> None:
    while not self._stop.wait(self._period):
      with self._lock:
        held = list(self._leased)
      try:
        for start in range(0, len(held), MAX_IDS_PER_CALL):
          self._subscriber.modify_ack_deadline(
              subscription=self._subscription, ack_ids=held[start:start + MAX_IDS_PER_CALL],
              ack_deadline_seconds=self._deadline)
      except FATAL as err:
        self._fail(err)
        return
      except api_exceptions.GoogleAPICallError as err:  # the next round tries again
        _log.warning('lease extension failed', extra={'error': type(err).__name__})
