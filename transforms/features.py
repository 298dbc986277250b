"""Per-customer features: identity stitching, product popularity, and the profile fold rendered
into serving documents with the CRM and catalog as side inputs."""
from __future__ import annotations

import typing

import apache_beam as beam
import orjson
from apache_beam.pvalue import AsDict, AsSingleton
from apache_beam.transforms.window import GlobalWindows

import schemas
from transforms import metrics
from transforms.live_profiles import (DEFAULT_FLUSH_SECONDS, DEFAULT_IDENTITY_BUFFER_HOURS,
                                      DEFAULT_POPULARITY_WINDOW_HOURS, DEFAULT_REFRESH_MINUTES,
                                      FoldLive, LivePopularity, StitchLive)
from transforms.rules import identity, profile, serving
from transforms.shards import DEFAULT_SHARDS, ChunkBuffer, records


class ProfileOutputs(typing.NamedTuple):
  documents: beam.PCollection   # (customer_id, document or None)
  triggers: beam.PCollection    # cart trigger records (schemas/cart_triggers.avsc)
  popularity: beam.PCollection  # streaming: (product_id, popularity document); batch: empty


def fold_line(event: dict) -> bytes:
  """What the group by customer carries of an event: the products it shows interest in
  (`profile.interacted_products`, a JSON list: what popularity reads, without decoding the
  rest), a tab, the encoded fold input (`profile.fold_input`)."""
  return (orjson.dumps(profile.interacted_products(event)) + b'\t'
          + schemas.encode_record('events', profile.fold_input(event)))


def customer_line(customer_id: str, line: bytes) -> bytes:
  """One line of a customer-shard chunk: the customer id as a JSON string (JSON escapes tabs and
  newlines, so it holds neither), a tab, the event's `fold_line`."""
  return orjson.dumps(customer_id) + b'\t' + line


class _RouteFn(beam.DoFn):
  """Batch: events -> fold inputs of identified events in chunks per shard of customer ids (main
  output: `(shard, chunk)` of `customer_line`s); fold inputs of anonymous events in chunks per
  shard of anonymous ids (`anonymous`, `customer_line`s under the anonymous id); the bundle's
  earliest link per anonymous id, in chunks per shard of anonymous ids (`links`, `_link_line`s).

  The fold input (`profile.fold_input`, `schemas.encode_record`) is what the fold, popularity and
  the catalog check read: about a third of the event, and all that the shuffles after this step
  carry. One step over every event for what took five (links, their pre-combine, attribution with
  a side input, encoding, chunking): each step over every event costs a few microseconds per
  event on the FnApiRunner, and a DoFn with a side input about 20 (docs/PERFORMANCE.md).
  Global window only (batch).
  """

  # Links kept per bundle before they are flushed into chunks (bounded like the hourly partial
  # sums: transforms/windows.py, _HourPartialsFn).
  MAX_LINKS = 20_000

  def __init__(self, shards: int):
    self._shards = shards
    self._unlinked = metrics.counter(metrics.EVENTS_ANONYMOUS_UNLINKED)

  def start_bundle(self):
    self._identified = ChunkBuffer(self._shards)
    self._anonymous = ChunkBuffer(self._shards)
    self._link_chunks = ChunkBuffer(self._shards)
    self._links: dict[str, tuple] = {}

  def _flush_links(self):
    links, self._links = self._links, {}
    for anonymous_id, candidate in links.items():
      chunk = self._link_chunks.add(anonymous_id, _link_line(anonymous_id, candidate))
      if chunk is not None:
        yield chunk

  def process(self, event):
    found = identity.link(event)
    if found is not None:
      anonymous_id, candidate = found
      known = self._links.get(anonymous_id)
      if identity.wins(candidate, known):
        self._links[anonymous_id] = candidate
        if len(self._links) >= self.MAX_LINKS:
          for chunk in self._flush_links():
            yield beam.pvalue.TaggedOutput('links', chunk)
    user_id, anonymous_id = event.get('user_id'), event.get('anonymous_id')
    if user_id:
      chunk = self._identified.add(user_id, customer_line(user_id, fold_line(event)))
      if chunk is not None:
        yield chunk
    elif anonymous_id:
      chunk = self._anonymous.add(anonymous_id, customer_line(anonymous_id, fold_line(event)))
      if chunk is not None:
        yield beam.pvalue.TaggedOutput('anonymous', chunk)
    else:
      self._unlinked.inc()

  def finish_bundle(self):
    yield from self._identified.drain()
    for chunk in self._anonymous.drain():
      yield beam.pvalue.TaggedOutput('anonymous', chunk)
    for chunk in self._flush_links():
      yield beam.pvalue.TaggedOutput('links', GlobalWindows.windowed_value(chunk))
    for chunk in self._link_chunks.drain():
      yield beam.pvalue.TaggedOutput('links', chunk)


def _link_line(anonymous_id: str, candidate: tuple[int, str]) -> bytes:
  return orjson.dumps([anonymous_id, candidate[0], candidate[1]])


class _AttachFn(beam.DoFn):
  """(anonymous-id shard, {'anonymous': chunks, 'links': chunks}) -> the shard's anonymous fold
  inputs under the userId each anonymous id is linked to (earliest link wins), in chunks per
  shard of customer ids; counts the events of anonymous ids never linked. Global window only."""

  def __init__(self, shards: int):
    self._shards = shards
    self._stitched = metrics.counter(metrics.EVENTS_STITCHED)
    self._unlinked = metrics.counter(metrics.EVENTS_ANONYMOUS_UNLINKED)

  def start_bundle(self):
    self._chunks = ChunkBuffer(self._shards)

  def process(self, element):
    _, grouped = element
    links: dict[str, tuple] = {}
    for line in records(grouped['links']):
      anonymous_id, at, user_id = orjson.loads(line)
      known = links.get(anonymous_id)
      links[anonymous_id] = (at, user_id) if known is None else identity.earliest(
          [known, (at, user_id)])
    stitched = unlinked = 0
    for line in records(grouped['anonymous']):
      cut = line.index(b'\t')
      won = links.get(orjson.loads(line[:cut]))
      if won is None:
        unlinked += 1
        continue
      stitched += 1
      chunk = self._chunks.add(won[1], customer_line(won[1], line[cut + 1:]))
      if chunk is not None:
        yield chunk
    self._stitched.inc(stitched)
    self._unlinked.inc(unlinked)

  def finish_bundle(self):
    yield from self._chunks.drain()


def customer_lines(chunks) -> dict[str, list[bytes]]:
  """A customer shard's chunks -> {customer_id: encoded fold inputs}. Decode them with
  `decoded` one customer at a time: holding a whole shard decoded (about 15 Python objects per
  event) makes the garbage collector rescan them over and over."""
  grouped: dict[str, list[bytes]] = {}
  for line in records(chunks):
    customer_id, _, encoded = line.split(b'\t', 2)
    grouped.setdefault(orjson.loads(customer_id), []).append(encoded)
  return grouped


def decoded(encoded: list[bytes]) -> list[dict]:
  return [schemas.decode_record('events', data) for data in encoded]


class StitchIdentities(beam.PTransform):
  """Attributes events to customers and groups them by shard of customer ids.

  Input: deduplicated event records (global window). Output: `(shard, [compressed chunk, ...])`,
  every fold input (`profile.fold_input`, encoded) of a shard's customers, read back with
  `customer_lines`. Events with a `user_id` go to it; anonymous events go to the userId their
  anonymousId is linked to by any event in the input (earliest link wins). Anonymous events never
  linked produce nothing here (they are in the warehouse already) and are counted
  (`events_anonymous_unlinked`).

  The links are joined to the anonymous events per shard of anonymous ids (a CoGroupByKey of
  chunks), so only anonymous events take the extra shuffle and no step over every event reads a
  side input. Everything travels in compressed chunks (`transforms/shards.py`): on 1,000,000
  events on the FnApiRunner, the graph peaked at 2,072 MiB with a GroupByKey of one element per
  event here (1,792 MiB in that stage alone), 1,344 MiB with the chunks.
  Batch only: the links come from the whole bounded input. Streaming stitches with a replay
  buffer instead (transforms.live_profiles.StitchLive).
  """

  def __init__(self, shards: int = DEFAULT_SHARDS):
    super().__init__()
    self._shards = shards

  def expand(self, events):
    routed = events | 'Route' >> beam.ParDo(_RouteFn(self._shards)).with_output_types(
        tuple[int, bytes]).with_outputs('links', 'anonymous', main='identified')
    attached = ({'anonymous': routed.anonymous, 'links': routed.links}
                | 'JoinLinks' >> beam.CoGroupByKey()
                | 'Attach' >> beam.ParDo(_AttachFn(self._shards)).with_output_types(
                    tuple[int, bytes]))
    return ((routed.identified, attached)
            | 'Attributed' >> beam.Flatten()
            | 'GroupByCustomerShard' >> beam.GroupByKey().with_output_types(
                tuple[int, typing.Iterable[bytes]]))


def _shard_products(element):
  """(shard, chunks) -> (product_id, distinct customers of the shard who viewed, added or bought
  it): from each line's product list, without decoding the fold inputs."""
  _, chunks = element
  products: dict[bytes, set] = {}
  for line in records(chunks):
    customer_id, interacted, _ = line.split(b'\t', 2)
    if interacted != b'[]':
      products.setdefault(customer_id, set()).update(orjson.loads(interacted))
  counts: dict[str, int] = {}
  for interacted in products.values():
    for product_id in interacted:
      counts[product_id] = counts.get(product_id, 0) + 1
  return counts.items()


class CustomerProductPopularity(beam.PTransform):
  """Input: `(shard, chunks)` of customers (`StitchIdentities`). Output: `(product_id, distinct
  customers who viewed, added or bought it)`: distinct per customer from each customer's events,
  counted per shard, then summed over shards."""

  def expand(self, grouped):
    return (grouped
            | 'ProductsPerShard' >> beam.FlatMap(_shard_products)
            | 'CountCustomers' >> beam.CombinePerKey(sum))


class _NewestInBundleFn(beam.DoFn):
  """Batch: events -> the largest `event_time` of the bundle, one element per bundle.

  A bundle-level maximum rather than a CombineGlobally over the events: Beam's lifted combine
  adds two steps over every event (keying, then the per-element combine table), for one integer.
  Global window only (batch).
  """

  def start_bundle(self):
    self._newest = None

  def process(self, event):
    if self._newest is None or event['event_time'] > self._newest:
      self._newest = event['event_time']

  def finish_bundle(self):
    if self._newest is not None:
      yield GlobalWindows.windowed_value(self._newest)


class _Newest(beam.CombineFn):
  """Times (epoch micros) -> the largest, 0 for none."""

  def create_accumulator(self):
    return 0

  def add_input(self, newest, at):
    return max(newest, at)

  def merge_accumulators(self, accumulators):
    return max(accumulators, default=0)

  def extract_output(self, newest):
    return newest


class ReferenceTime(beam.PTransform):
  """The batch reference time (epoch micros): `as_of` when given, else the newest event time."""

  def __init__(self, as_of_micros: int | None = None):
    super().__init__()
    self._as_of = as_of_micros

  def expand(self, events):
    if self._as_of is not None:
      return events.pipeline | 'AsOf' >> beam.Create([self._as_of])
    return (events
            | 'NewestInBundle' >> beam.ParDo(_NewestInBundleFn()).with_output_types(int)
            | 'Newest' >> beam.CombineGlobally(_Newest()))


def _recommender(_, catalog, popularity):
  return profile.Recommender(catalog, popularity)


class _FoldRenderFn(beam.DoFn):
  """(shard, chunks) -> (customer_id, document or None) per customer of the shard, plus cart
  triggers (tagged)."""

  def __init__(self, settings: profile.Settings):
    self._settings = settings
    self._suppressed = metrics.counter(metrics.DOCUMENTS_SUPPRESSED)
    self._unknown_products = metrics.counter(metrics.PRODUCTS_NOT_IN_CATALOG)

  def process(self, element, customers, catalog, recommender, reference_time):
    _, chunks = element
    grouped = customer_lines(chunks)
    for customer_id in sorted(grouped):
      events = decoded(grouped.pop(customer_id))
      for event in events:
        if event.get('product_id') is not None and event['product_id'] not in catalog:
          self._unknown_products.inc()
      state = profile.fold(customer_id, events)
      document = profile.render(state, reference_time, customers.get(customer_id), catalog,
                                recommender, self._settings)
      if document is None:
        self._suppressed.inc()
      else:
        trigger = serving.cart_trigger(document, reference_time)
        if trigger is not None:
          yield beam.pvalue.TaggedOutput('triggers', trigger)
      yield customer_id, document


class BuildProfiles(beam.PTransform):
  """Folds each customer's events into a serving document.

  Input: deduplicated event records (global window). Side data: `customers` (CRM records),
  `catalog` (product records), either may be None. Output: a tuple with `documents` —
  `(customer_id, document)` pairs, the document None when consent forbids one (the writer deletes
  it) — and `triggers` (cart-abandonment records).

  Batch: events are stitched to customers, grouped and folded once; the reference time is
  `as_of` or the newest event time; popularity counts distinct customers over the whole input.
  Streaming (transforms/live_profiles.py): anonymous events stitched with a replay buffer,
  per-customer state, documents rendered at processing time per burst and when a cart becomes
  abandoned; the CRM and catalog are re-read from `customers_pattern` / `catalog_pattern` every
  `refresh_minutes` (transforms/reference_data.py), and so is product popularity, which this
  transform counts over a sliding window (`popularity` output) and the graph writes to the
  `popularity_source` collection. A customer's document is rendered at most once per
  `flush_seconds` of processing time.
  """

  def __init__(self, streaming: bool = False, settings: profile.Settings = profile.Settings(),
               customers=None, catalog=None, as_of_micros: int | None = None,
               identity_buffer_hours: float = DEFAULT_IDENTITY_BUFFER_HOURS,
               customers_pattern: str | None = None, catalog_pattern: str | None = None,
               refresh_minutes: float = DEFAULT_REFRESH_MINUTES,
               popularity_source: tuple[str, str, str] | None = None,
               popularity_window_hours: float = DEFAULT_POPULARITY_WINDOW_HOURS,
               flush_seconds: float = DEFAULT_FLUSH_SECONDS, shards: int = DEFAULT_SHARDS):
    super().__init__()
    self._shards = shards
    self._flush_seconds = flush_seconds
    self._popularity_source = popularity_source
    self._popularity_window_hours = popularity_window_hours
    self._identity_buffer_hours = identity_buffer_hours
    self._patterns = (customers_pattern, catalog_pattern)
    self._refresh_minutes = refresh_minutes
    self._streaming = streaming
    self._settings = settings
    self._customers = customers
    self._catalog = catalog
    self._as_of = as_of_micros

  def expand(self, events):
    if self._streaming:
      attributed = events | 'StitchLive' >> StitchLive(self._identity_buffer_hours)
      live = attributed | 'FoldLive' >> FoldLive(
          self._settings, self._flush_seconds, customers=self._patterns[0], catalog=self._patterns[1],
          refresh_minutes=self._refresh_minutes, popularity=self._popularity_source)
      popularity = attributed | 'LivePopularity' >> LivePopularity(self._popularity_window_hours)
      return ProfileOutputs(live.documents, live.triggers, popularity)
    pipeline = events.pipeline
    customers = self._customers if self._customers is not None else (
        pipeline | 'NoCustomers' >> beam.Create([]))
    catalog = self._catalog if self._catalog is not None else (
        pipeline | 'NoCatalog' >> beam.Create([]))
    # The groups stay compressed: two steps read them (popularity, then the fold with the
    # popularity-ranked recommender as a side input), so the runner materialises them in between.
    grouped = events | 'StitchIdentities' >> StitchIdentities(self._shards)
    popularity = grouped | 'ProductPopularity' >> CustomerProductPopularity()
    catalog_by_id = catalog | 'CatalogById' >> beam.Map(lambda p: (p['product_id'], p))
    recommender = (pipeline
                   | 'RecommenderSeed' >> beam.Create([None])
                   | 'BuildRecommender' >> beam.Map(_recommender,
                                                    catalog=AsDict(catalog_by_id),
                                                    popularity=AsDict(popularity)))
    reference = events | 'ReferenceTime' >> ReferenceTime(self._as_of)
    out = (grouped
           | 'FoldAndRender' >> beam.ParDo(
               _FoldRenderFn(self._settings),
               customers=AsDict(customers | 'CustomersById' >> beam.Map(
                   lambda c: (c['customer_id'], c))),
               catalog=AsDict(catalog_by_id),
               recommender=AsSingleton(recommender),
               reference_time=AsSingleton(reference)).with_outputs('triggers', main='documents'))
    return ProfileOutputs(out.documents, out.triggers,
                          pipeline | 'NoLivePopularity' >> beam.Create([]))
