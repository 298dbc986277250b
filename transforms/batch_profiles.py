"""The batch half of the profile: identity stitching over the whole input, product popularity,
and the profile fold of each customer's events rendered into a serving document with the CRM and
catalog as side inputs.

Same rules as streaming (transforms.rules.identity, transforms.rules.profile); only the way
events reach them differs: all of a customer's events at once, grouped in compressed chunks per
shard of customer ids (transforms/shards.py, line formats in transforms/line_formats.py).
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.pvalue import AsDict, AsSingleton
from apache_beam.transforms.window import GlobalWindows

import schemas
from transforms import line_formats, metrics
from transforms.rules import identity, profile, serving
from transforms.settings import Sharding
from transforms.shards import ChunkBuffer, records


def fold_line(key: str, event: dict, whole: bool = False) -> bytes:
  """What the group by customer carries of an event, under `key` (its customer id, or its
  anonymous id until it is stitched): the products it shows interest in (what popularity reads,
  without decoding the rest) and the encoded fold input (`profile.fold_input`; `whole` keeps the
  properties and traits whole, for computed traits)."""
  return line_formats.encode_fold(key, profile.interacted_products(event),
                                  schemas.encode_record('events',
                                                        profile.fold_input(event, whole)))


class _RouteFn(beam.DoFn):
  """Batch: events -> fold lines of identified events in chunks per shard of customer ids (main
  output: `(shard, chunk)`); fold lines of anonymous events, under the anonymous id, in chunks
  per shard of anonymous ids (`anonymous`); the bundle's earliest link per anonymous id, as link
  lines in chunks per shard of anonymous ids (`links`).

  The fold input (`profile.fold_input`, `schemas.encode_record`) is what the fold, popularity and
  the catalog check read, and all that the shuffles after this step carry. One step over every
  event for what took five (links, their pre-combine, attribution with a side input, encoding,
  chunking): each step over every event costs a runner per-element work, and a DoFn with a side
  input much more (docs/PERFORMANCE.md). Global window only (batch).
  """

  # Links kept per bundle before they are flushed into chunks (bounded like the hourly partial
  # sums: transforms/windows.py, _HourPartialsFn).
  MAX_LINKS = 20_000

  def __init__(self, sharding: Sharding, whole: bool = False):
    self._sharding = sharding
    self._whole = whole
    self._unlinked = metrics.counter(metrics.EVENTS_ANONYMOUS_UNLINKED)

  def start_bundle(self):
    self._identified = ChunkBuffer(self._sharding)
    self._anonymous = ChunkBuffer(self._sharding)
    self._link_chunks = ChunkBuffer(self._sharding)
    self._links: dict[str, tuple] = {}

  def _flush_links(self):
    links, self._links = self._links, {}
    for anonymous_id, candidate in links.items():
      chunk = self._link_chunks.add(anonymous_id,
                                    line_formats.encode_link(anonymous_id, candidate))
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
      chunk = self._identified.add(user_id, fold_line(user_id, event, self._whole))
      if chunk is not None:
        yield chunk
    elif anonymous_id:
      chunk = self._anonymous.add(anonymous_id, fold_line(anonymous_id, event, self._whole))
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


class _AttachFn(beam.DoFn):
  """(anonymous-id shard, {'anonymous': chunks, 'links': chunks}) -> the shard's anonymous fold
  lines under the userId each anonymous id is linked to (earliest link wins), in chunks per
  shard of customer ids; counts the events of anonymous ids never linked. Global window only."""

  def __init__(self, sharding: Sharding):
    self._sharding = sharding
    self._stitched = metrics.counter(metrics.EVENTS_STITCHED)
    self._unlinked = metrics.counter(metrics.EVENTS_ANONYMOUS_UNLINKED)

  def start_bundle(self):
    self._chunks = ChunkBuffer(self._sharding)

  def process(self, element):
    _, grouped = element
    links: dict[str, tuple] = {}
    for line in records(grouped['links']):
      anonymous_id, candidate = line_formats.decode_link(line)
      if identity.wins(candidate, links.get(anonymous_id)):
        links[anonymous_id] = candidate
    stitched = unlinked = 0
    for line in records(grouped['anonymous']):
      anonymous_id, products, record = line_formats.decode_fold(line)
      won = links.get(anonymous_id)
      if won is None:
        unlinked += 1
        continue
      stitched += 1
      chunk = self._chunks.add(won[1], line_formats.encode_fold(won[1], products, record))
      if chunk is not None:
        yield chunk
    self._stitched.inc(stitched)
    self._unlinked.inc(unlinked)

  def finish_bundle(self):
    yield from self._chunks.drain()


def customer_lines(chunks) -> dict[str, list[bytes]]:
  """A customer shard's chunks -> {customer_id: encoded fold inputs}. Decode them with
  `decoded` one customer at a time: holding a whole shard decoded makes the garbage collector
  rescan it over and over (docs/PERFORMANCE.md, "Python's garbage collector")."""
  grouped: dict[str, list[bytes]] = {}
  for line in records(chunks):
    customer_id, _, encoded = line_formats.decode_fold(line)
    grouped.setdefault(customer_id, []).append(encoded)
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
  side input. Everything travels in compressed chunks cut by `sharding` (transforms/shards.py),
  which keeps the runner's memory far below a GroupByKey of one element per event
  (docs/PERFORMANCE.md has the peaks measured). Batch only: the links come from the whole
  bounded input. Streaming stitches with a replay buffer instead (live_profiles.StitchLive).
  """

  def __init__(self, sharding: Sharding = Sharding(), whole: bool = False):
    """`whole`: carry events' properties and traits whole (computed traits read them)."""
    super().__init__()
    self._sharding = sharding
    self._whole = whole

  def expand(self, events):
    routed = events | 'Route' >> beam.ParDo(
        _RouteFn(self._sharding, self._whole)).with_output_types(
        tuple[int, bytes]).with_outputs('links', 'anonymous', main='identified')
    attached = ({'anonymous': routed.anonymous, 'links': routed.links}
                | 'JoinLinks' >> beam.CoGroupByKey()
                | 'Attach' >> beam.ParDo(_AttachFn(self._sharding)).with_output_types(
                    tuple[int, bytes]))
    return ((routed.identified, attached)
            | 'Attributed' >> beam.Flatten()
            | 'GroupByCustomerShard' >> beam.GroupByKey().with_output_types(
                tuple[int, typing.Iterable[bytes]]))


def _shard_products(element):
  """(shard, chunks) -> (product_id, distinct customers of the shard who viewed, added or bought
  it): from each line's product list, without decoding the fold inputs."""
  _, chunks = element
  products: dict[str, set] = {}
  for line in records(chunks):
    customer_id, interacted, _ = line_formats.decode_fold(line)
    if interacted:
      products.setdefault(customer_id, set()).update(interacted)
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
      state = profile.fold(customer_id, events, self._settings.audiences, catalog)
      document = profile.render(state, reference_time, customers.get(customer_id), catalog,
                                recommender, self._settings)
      if document is None:
        self._suppressed.inc()
      else:
        trigger = serving.cart_trigger(document, reference_time)
        if trigger is not None:
          yield beam.pvalue.TaggedOutput('triggers', trigger)
      if self._settings.audiences is not None:
        yield beam.pvalue.TaggedOutput('audiences', (
            customer_id, (document['audiences'] if document else [], reference_time)))
      yield customer_id, document


class BatchProfiles(beam.PTransform):
  """Folds each customer's events of a bounded input into a serving document.

  Input: deduplicated event records (global window). Side data: `customers` (CRM records) and
  `catalog` (product records), PCollections or None. Output: a tuple with `documents` —
  `(customer_id, document)` pairs, the document None when consent forbids one (the writer deletes
  it) — `triggers` (cart-abandonment records) and, with computed audiences, `audiences`:
  `(customer_id, (audience keys, reference time))` of every customer rendered (no keys for a
  withheld document), what transforms.audience_changes diffs.

  Events are stitched to customers, grouped (in chunks cut by `sharding`) and folded once; the
  reference time is `as_of_micros` or the newest event time; recommendations rank by product
  popularity counted over the whole input (distinct customers).
  """

  def __init__(self, settings: profile.Settings = profile.Settings(),
               sharding: Sharding = Sharding(), as_of_micros: int | None = None,
               customers: beam.PCollection | None = None,
               catalog: beam.PCollection | None = None):
    super().__init__()
    self._settings = settings
    self._sharding = sharding
    self._as_of = as_of_micros
    self._customers = customers
    self._catalog = catalog

  def expand(self, events):
    pipeline = events.pipeline
    customers = self._customers if self._customers is not None else (
        pipeline | 'NoCustomers' >> beam.Create([]))
    catalog = self._catalog if self._catalog is not None else (
        pipeline | 'NoCatalog' >> beam.Create([]))
    # The groups stay compressed: two steps read them (popularity, then the fold with the
    # popularity-ranked recommender as a side input), so the runner materialises them in between.
    grouped = events | 'StitchIdentities' >> StitchIdentities(
        self._sharding, whole=self._settings.audiences is not None)
    popularity = grouped | 'ProductPopularity' >> CustomerProductPopularity()
    catalog_by_id = catalog | 'CatalogById' >> beam.Map(lambda p: (p['product_id'], p))
    recommender = (pipeline
                   | 'RecommenderSeed' >> beam.Create([None])
                   | 'BuildRecommender' >> beam.Map(_recommender,
                                                    catalog=AsDict(catalog_by_id),
                                                    popularity=AsDict(popularity)))
    reference = events | 'ReferenceTime' >> ReferenceTime(self._as_of)
    return (grouped
            | 'FoldAndRender' >> beam.ParDo(
                _FoldRenderFn(self._settings),
                customers=AsDict(customers | 'CustomersById' >> beam.Map(
                    lambda c: (c['customer_id'], c))),
                catalog=AsDict(catalog_by_id),
                recommender=AsSingleton(recommender),
                reference_time=AsSingleton(reference)).with_outputs(
                    'triggers', 'audiences', main='documents'))
