"""The streaming half of the profile: identity stitching with a replay buffer, the profile fold
in per-customer state with coalesced writes and cart-abandonment timers, and product popularity
over a sliding window.

Same rules as batch (transforms.rules.identity, transforms.rules.profile); only the way events
reach them differs: one at a time, in arrival order, with state in between. The fold's rules do
not depend on that order (docs/DATA_CONTRACT.md, "Order of events", says where stitching can).
"""
from __future__ import annotations

import time
import typing

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms import metrics, reference_data
from transforms.rules import identity, profile, serving
from transforms.rules.audiences import membership
from transforms.settings import FirestoreLocation, LiveSettings, ReferenceFiles

_MICROS = 1_000_000
# Product popularity is emitted at most once per this many seconds per product.
POPULARITY_FLUSH_SECONDS = 1.0


def _now_micros() -> int:
  return time.time_ns() // 1000


def _by_anonymous_id(event):
  return event['anonymous_id'], event


class _StitchLiveFn(beam.DoFn):
  """Keyed by anonymousId. An event carrying this anonymousId and a userId links them; of all the
  links seen, the earliest by event time wins (`identity.wins`, the batch rule). When the first
  link arrives, the anonymous events held so far are replayed to that customer; later anonymous
  events go to the link in force when they arrive (an earlier link arriving later takes over
  from then on: events already attributed stay where they went). Anonymous events with no link
  yet are held for `buffer_hours` after the first of them, then dropped from the profile path
  (they are in the warehouse already) and counted."""
  # (event_time, user_id) of the winning link. A new state id: the former 'link' held a user id.
  LINK = ReadModifyWriteStateSpec('earliest_link', coders.PickleCoder())
  HELD = BagStateSpec('held', coders.PickleCoder())
  # Timer names are distinct across the graph's stateful DoFns: the FnApiRunner routes a fused
  # stage's timers by name alone (apache/beam#21995; tests/unit/test_graph.py checks it).
  EXPIRY = TimerSpec('stitch_expiry', TimeDomain.REAL_TIME)

  def __init__(self, buffer_hours: float):
    self._buffer = Duration(seconds=buffer_hours * 3600)
    self._stitched = metrics.counter(metrics.EVENTS_STITCHED)
    self._unlinked = metrics.counter(metrics.EVENTS_ANONYMOUS_UNLINKED)
    self._relinked = metrics.counter(metrics.ANONYMOUS_IDS_RELINKED)

  def process(self, element, link=beam.DoFn.StateParam(LINK), held=beam.DoFn.StateParam(HELD),
              expiry=beam.DoFn.TimerParam(EXPIRY)):
    _, event = element
    user = event.get('user_id')
    linked = link.read()
    if user:
      candidate = (event['event_time'], user)
      if identity.wins(candidate, linked):
        link.write(candidate)
        if linked is None:
          waiting = list(held.read())
          held.clear()
          self._stitched.inc(len(waiting))
          for earlier in waiting:
            yield user, earlier
        else:
          self._relinked.inc()
      yield user, event
    elif linked is not None:
      self._stitched.inc()
      yield linked[1], event
    else:
      if not list(held.read()):
        expiry.set(Timestamp.now() + self._buffer)
      held.add(event)

  @on_timer(EXPIRY)
  def expire(self, held=beam.DoFn.StateParam(HELD)):
    dropped = list(held.read())
    held.clear()
    self._unlinked.inc(len(dropped))


class StitchLive(beam.PTransform):
  """Input: event records (global window). Output: `(customer_id, event)` pairs: events with a
  userId at once; anonymous events once their anonymousId is linked (held up to
  `live.identity_buffer_hours` before that, then replayed in arrival order)."""

  def __init__(self, live: LiveSettings = LiveSettings()):
    super().__init__()
    self._hours = live.identity_buffer_hours

  def expand(self, events):
    split = events | 'SplitByAnonymousId' >> beam.Partition(
        lambda event, _: 1 if event.get('anonymous_id') else 0, 2)
    direct = (split[0]
              | 'OnlyIdentified' >> beam.Filter(lambda event: bool(event.get('user_id')))
              | 'KeyByUser' >> beam.Map(lambda event: (event['user_id'], event)))
    stitched = (split[1]
                | 'KeyByAnonymousId' >> beam.Map(_by_anonymous_id).with_output_types(
                    tuple[str, dict])
                | 'Stitch' >> beam.ParDo(_StitchLiveFn(self._hours)))
    return (direct, stitched) | 'Attributed' >> beam.Flatten()


class _FoldLiveFn(beam.DoFn):
  """Keyed by customer. Folds each event into the stored profile; renders the document at most
  once per `flush_seconds` for a burst of events (coalescing), again when the cart becomes
  abandoned (a processing-time timer), emitting one trigger per abandoned cart, and again when a
  windowed computed trait changes as its events age out (so audience membership follows the
  decay without a new event)."""
  PROFILE = ReadModifyWriteStateSpec('profile', coders.PickleCoder())
  PENDING = ReadModifyWriteStateSpec('pending', coders.BooleanCoder())
  TRIGGERED = ReadModifyWriteStateSpec('triggered', coders.VarIntCoder())
  FLUSH = TimerSpec('flush', TimeDomain.REAL_TIME)
  ABANDON = TimerSpec('abandon', TimeDomain.REAL_TIME)
  DECAY = TimerSpec('decay', TimeDomain.REAL_TIME)
  # The audiences of the last render (--audiences), to record each membership change once.
  MEMBERS = ReadModifyWriteStateSpec('members', coders.PickleCoder())
  # (event_time, message_id, publish time) of the newest event read from Pub/Sub, for the
  # writer's freshness figure (transforms/sinks/firestore.py); not part of the profile.
  NEWEST = ReadModifyWriteStateSpec('newest_published', coders.PickleCoder())

  def __init__(self, settings: profile.Settings, live: LiveSettings, reference: ReferenceFiles,
               popularity: FirestoreLocation | None = None):
    self._popularity = popularity
    self._settings = settings
    self._flush = Duration(seconds=live.flush_seconds)
    self._customers = reference.customers
    self._catalog = reference.catalog
    self._refresh_minutes = live.refresh_minutes
    self._suppressed = metrics.counter(metrics.DOCUMENTS_SUPPRESSED)

  def process(self, element, stored=beam.DoFn.StateParam(PROFILE),
              pending=beam.DoFn.StateParam(PENDING), flush=beam.DoFn.TimerParam(FLUSH),
              abandon=beam.DoFn.TimerParam(ABANDON), decay=beam.DoFn.TimerParam(DECAY),
              newest=beam.DoFn.StateParam(NEWEST), published=beam.DoFn.TimestampParam):
    customer_id, event = element
    if str(event.get('source') or '').startswith('pubsub'):
      # A Pub/Sub event's element timestamp is its publish time (ReadPubSubEvents).
      key = (event['event_time'], event['message_id'])
      held = newest.read()
      if held is None or key > held[:2]:
        newest.write((*key, published.micros))
    stored_state = stored.read()
    state = (profile.upgraded(stored_state) if stored_state is not None
             else profile.new_state(customer_id))
    due_before = profile.cart_abandoned_from(state, self._settings)
    audiences = self._settings.audiences
    catalog = None
    if audiences is not None:
      catalog = reference_data.current(self._customers, self._catalog, self._refresh_minutes,
                                       self._popularity).catalog
    profile.apply(state, event, audiences, catalog)
    stored.write(state)
    if audiences is not None:
      self._set_decay(decay, state, _now_micros())
    if not pending.read():
      pending.write(True)
      flush.set(Timestamp.now() + self._flush)
    # The rule the render applies: re-render when this cart becomes abandoned (at once if it
    # already is: a late event about an old cart).
    due = profile.cart_abandoned_from(state, self._settings)
    if due is not None and due != due_before:
      abandon.set(Timestamp(micros=max(due, _now_micros() + 1)))

  # The reference time of a render is the timer's own time: the processing time it fired for.
  @on_timer(FLUSH)
  def on_flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
               stored=beam.DoFn.StateParam(PROFILE), pending=beam.DoFn.StateParam(PENDING),
               triggered=beam.DoFn.StateParam(TRIGGERED),
               members=beam.DoFn.StateParam(MEMBERS), newest=beam.DoFn.StateParam(NEWEST)):
    pending.clear()
    yield from self._emit(key, stored.read(), triggered, members, fired.micros, newest)

  @on_timer(ABANDON)
  def on_abandon(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 stored=beam.DoFn.StateParam(PROFILE),
                 triggered=beam.DoFn.StateParam(TRIGGERED),
                 members=beam.DoFn.StateParam(MEMBERS), newest=beam.DoFn.StateParam(NEWEST)):
    yield from self._emit(key, stored.read(), triggered, members, fired.micros, newest)

  @on_timer(DECAY)
  def on_decay(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
               stored=beam.DoFn.StateParam(PROFILE), triggered=beam.DoFn.StateParam(TRIGGERED),
               members=beam.DoFn.StateParam(MEMBERS), decay=beam.DoFn.TimerParam(DECAY),
               newest=beam.DoFn.StateParam(NEWEST)):
    state = stored.read()
    if state is not None and self._settings.audiences is not None:
      self._set_decay(decay, profile.upgraded(state), fired.micros)
    yield from self._emit(key, state, triggered, members, fired.micros, newest)

  def _set_decay(self, decay, state, now: int) -> None:
    """The decay timer at the next time a windowed trait changes (one timer per key: setting it
    again moves it)."""
    due = self._settings.audiences.next_change(state['traits'], now)
    if due is not None:
      decay.set(Timestamp(micros=max(due, now + 1)))

  def _emit(self, customer_id, state, triggered, members, now: int, newest):
    if state is None:
      return
    state = profile.upgraded(state)
    data = reference_data.current(self._customers, self._catalog, self._refresh_minutes,
                                  self._popularity)
    document = profile.render(state, now, data.customers.get(customer_id), data.catalog,
                              data.recommender, self._settings)
    if document is None:
      self._suppressed.inc()
    else:
      trigger = serving.cart_trigger(document, now)
      if trigger is not None and triggered.read() != trigger['cart_updated_at']:
        triggered.write(trigger['cart_updated_at'])
        yield beam.pvalue.TaggedOutput('triggers', trigger)
    if self._settings.audiences is not None:
      current = document['audiences'] if document is not None else []
      previous = members.read() or []
      for change in membership.changes(customer_id, previous, current, now):
        yield beam.pvalue.TaggedOutput('audience_changes', change)
      if list(previous) != list(current):
        members.write(list(current))
    held = newest.read()
    if document is not None and held is not None and held[0] == state['last_event_at']:
      # The publish time of the event behind `last_event_at`, for the writer to measure and drop.
      document[serving.PUBLISHED_AT] = held[2]
    yield customer_id, document


class FoldLive(beam.PTransform):
  """Input: `(customer_id, event)` pairs. Output: a tuple with `documents` (`(customer_id,
  document or None)`, at most one per customer per `live.flush_seconds` burst, plus one when the
  cart becomes abandoned) and `triggers` (one per abandoned cart). The CRM export and catalog
  come from the `reference` files and product popularity from the `popularity` collection
  (None: no popularity), all re-read every `live.refresh_minutes` (transforms/reference_data.py).
  """

  def __init__(self, settings: profile.Settings = profile.Settings(),
               live: LiveSettings = LiveSettings(), reference: ReferenceFiles = ReferenceFiles(),
               popularity: FirestoreLocation | None = None):
    super().__init__()
    self._fn = _FoldLiveFn(settings, live, reference, popularity)

  def expand(self, keyed):
    return (keyed
            | 'TypedKeys' >> beam.Map(lambda kv: kv).with_output_types(tuple[str, dict])
            | 'FoldInState' >> beam.ParDo(self._fn).with_outputs(
                'triggers', 'audience_changes', main='documents'))


def _interactions(element):
  customer_id, event = element
  for product_id in profile.interacted_products(event):
    yield product_id, (customer_id, event['event_time'])


class _PopularityFn(beam.DoFn):
  """Keyed by product. Keeps each customer's newest interaction time; the product's popularity
  is the number of customers whose newest interaction is within `window` of now. Emits
  `(product_id, count)` at most once per `flush_seconds` burst and again when the oldest
  interaction leaves the window."""
  SEEN = ReadModifyWriteStateSpec('seen', coders.PickleCoder())
  FLUSH = TimerSpec('popularity_flush', TimeDomain.REAL_TIME)  # distinct: see _StitchLiveFn

  def __init__(self, window_hours: float, flush_seconds: float):
    self._window = int(window_hours * 3600 * _MICROS)
    self._flush = Duration(seconds=flush_seconds)

  def process(self, element, seen=beam.DoFn.StateParam(SEEN),
              flush=beam.DoFn.TimerParam(FLUSH)):
    _, (customer_id, at) = element
    customers = seen.read() or {}
    customers[customer_id] = max(at, customers.get(customer_id, at))
    seen.write(customers)
    flush.set(Timestamp.now() + self._flush)

  @on_timer(FLUSH)
  def on_flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
               seen=beam.DoFn.StateParam(SEEN), flush=beam.DoFn.TimerParam(FLUSH)):
    horizon = fired.micros - self._window
    customers = {c: at for c, at in (seen.read() or {}).items() if at >= horizon}
    if customers:
      seen.write(customers)
      # Come back when the oldest interaction leaves the window, to emit the lower count.
      flush.set(Timestamp(micros=min(customers.values()) + self._window + 1))
    else:
      seen.clear()
    yield key, len(customers)


def popularity_document(product_id: str, customers: int) -> tuple[str, dict]:
  return product_id, {'product_id': product_id, 'customers': customers, 'last_event_at': None}


class LivePopularity(beam.PTransform):
  """Product popularity over a sliding window of `live.popularity_window_hours`: distinct
  customers who viewed, added or bought each product. Input: `(customer_id, event)` pairs.
  Output: `(product_id, document)` pairs for the popularity collection (`{product_id,
  customers}`), which the streaming fold reads back with the CRM and catalog
  (transforms/reference_data.py)."""

  def __init__(self, live: LiveSettings = LiveSettings()):
    super().__init__()
    self._window_hours = live.popularity_window_hours

  def expand(self, keyed):
    return (keyed
            | 'Interactions' >> beam.FlatMap(_interactions).with_output_types(
                tuple[str, tuple[str, int]])
            | 'CountCustomers' >> beam.ParDo(_PopularityFn(self._window_hours,
                                                          POPULARITY_FLUSH_SECONDS))
            | 'ToDocument' >> beam.MapTuple(popularity_document))


class LiveProfileOutputs(typing.NamedTuple):
  documents: beam.PCollection   # (customer_id, document or None)
  triggers: beam.PCollection    # cart trigger records (schemas/cart_triggers.avsc)
  popularity: beam.PCollection  # (product_id, popularity document)
  audience_changes: beam.PCollection  # schemas/audience_membership.avsc records (--audiences)


class LiveProfiles(beam.PTransform):
  """Folds each customer's events of an unbounded input into a serving document, as they come.

  Input: deduplicated event records. Output: `LiveProfileOutputs`: `documents` and `triggers`
  as `FoldLive` gives them, and `popularity` (`LivePopularity`), which the graph writes to the
  `popularity` collection and the fold reads back from it. Anonymous events are stitched with a
  replay buffer (`StitchLive`); each customer's profile is kept in state and rendered at
  processing time, per burst and when a cart becomes abandoned, with the CRM and catalog re-read
  from the `reference` files (`live` says how often).
  """

  def __init__(self, settings: profile.Settings = profile.Settings(),
               live: LiveSettings = LiveSettings(), reference: ReferenceFiles = ReferenceFiles(),
               popularity: FirestoreLocation | None = None):
    super().__init__()
    self._settings = settings
    self._live = live
    self._reference = reference
    self._popularity = popularity

  def expand(self, events):
    attributed = events | 'StitchLive' >> StitchLive(self._live)
    live = attributed | 'FoldLive' >> FoldLive(self._settings, self._live, self._reference,
                                               self._popularity)
    popularity = attributed | 'LivePopularity' >> LivePopularity(self._live)
    return LiveProfileOutputs(live.documents, live.triggers, popularity, live.audience_changes)
