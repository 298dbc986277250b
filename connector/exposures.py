"""Recording held-out customers' exposures: one `Email Held Out` event per customer and
campaign on the raw events topic, behind a marker document in Firestore.

    marker <exposures>/<sha256(["campaign","customer"])> known (cache) or present -> nothing to do
    else publish the event, wait for Pub/Sub's confirmation, then create() the marker

The marker makes it once; the event's deterministic messageId (connector/engagement.py) covers
what the marker cannot: two first calls at the same moment in two processes both publish, and
the pipeline's dedupe keeps one. Calls in one process for the same exposure share one recording.
A failed or unconfirmed publish raises ExposureUnavailable (the API answers 503: no exposure is
claimed that Pub/Sub does not have). Firestore trouble with the marker does not: reading it is
only a shortcut (an unreadable marker is published again, a duplicate by messageId), and a
marker that could not be created after a confirmed publish is logged and tried again next time.
"""
from __future__ import annotations

import asyncio
import logging
import time

import cachetools

from connector import engagement

_log = logging.getLogger('connector.exposures')
# Exposures known to be recorded, kept in process to skip the marker read.
KNOWN_MARKERS = 100_000

# The `result` label of connector_exposures_total.
PUBLISHED = 'published'
KNOWN = 'known'
FAILED = 'failed'


class ExposureUnavailable(Exception):
  """Pub/Sub did not confirm the exposure event in time: the request gets a 503."""


class Exposures:
  """Records exposures to `topic` (projects/P/topics/T) with markers in Firestore `collection`.
  Clients (they honour PUBSUB_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST) are created on first
  use. `count(result)` is called with each outcome: KNOWN, PUBLISHED or FAILED."""

  def __init__(self, project: str, database: str, collection: str, topic: str,
               timeout: float = 5.0, count=lambda result: None):
    self._project = project
    self._database = database
    self._collection = collection
    self._topic = topic
    self._timeout = timeout
    self._count = count
    self._known = cachetools.LRUCache(KNOWN_MARKERS)
    self._inflight: dict[str, asyncio.Future] = {}
    self._firestore = None
    self._publisher = None

  def _markers(self):
    if self._firestore is None:
      from google.cloud import firestore
      self._firestore = firestore.AsyncClient(project=self._project, database=self._database)
    return self._firestore.collection(self._collection)

  def _pubsub(self):
    if self._publisher is None:
      from google.cloud import pubsub_v1
      self._publisher = pubsub_v1.PublisherClient()
    return self._publisher

  async def record(self, customer_id: str, send: engagement.Send) -> None:
    """Returns once the exposure is recorded (now or before); raises ExposureUnavailable."""
    key = engagement.exposure_key(send.campaign_id, customer_id)
    if key in self._known:
      self._count(KNOWN)
      return
    shared = self._inflight.get(key)
    if shared is None:
      shared = asyncio.ensure_future(self._record(key, customer_id, send))
      self._inflight[key] = shared
      shared.add_done_callback(lambda _: self._inflight.pop(key, None))
    await asyncio.shield(shared)

  async def _record(self, key: str, customer_id: str, send: engagement.Send) -> None:
    marker = self._markers().document(key)
    try:
      exists = (await asyncio.wait_for(marker.get(), self._timeout)).exists
    except Exception as err:  # the marker is a shortcut: unread, the event goes out (deduped)
      _log.warning('exposure marker unreadable, publishing anyway: %s', type(err).__name__)
      exists = False
    if exists:
      self._known[key] = True
      self._count(KNOWN)
      return
    event = engagement.exposure_event(customer_id, send, time.time())
    data, attributes = engagement.exposure_message(event)
    try:
      future = self._pubsub().publish(self._topic, data, **attributes)
      await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
    except Exception as err:  # not confirmed: nothing is claimed, the API answers 503
      self._count(FAILED)
      raise ExposureUnavailable(f'exposure not published: {type(err).__name__}') from err
    self._count(PUBLISHED)
    try:
      await asyncio.wait_for(marker.create({
          'campaign_id': send.campaign_id, 'email_id': send.email_id,
          'recorded_at': event['timestamp']}),
          self._timeout)
    except Exception as err:
      from google.api_core import exceptions
      if not isinstance(err, exceptions.AlreadyExists):  # a concurrent first call made it
        _log.warning('exposure published but its marker not created (%s): the next call '
                     'publishes a duplicate, which the pipeline drops by messageId',
                     type(err).__name__)
        return
    self._known[key] = True

  async def close(self) -> None:
    if self._firestore is not None:
      self._firestore.close()
    if self._publisher is not None:
      await asyncio.get_running_loop().run_in_executor(None, self._publisher.stop)
