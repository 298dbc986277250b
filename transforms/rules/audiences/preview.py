"""The audience size estimate of `python -m pipeline.audiences preview` (docs/AUDIENCES.md,
"Preview"): a definitions file run over sample files with the batch job's own rules, and what
it gives, summed up. Pure: no Beam graph, no I/O (pipeline/audiences.py reads the files and
prints); the dedupe's choice among copies is `transforms.dedupe.preference_key` itself.

The steps are the batch job's, as plain loops over the same rule functions:
- `Sample.add` parses each line (`transforms.rules.events.parse_event`), counts what is invalid
  and keeps one copy per messageId, the one the batch dedupe keeps (`dedupe.preference_key`,
  ties by the encoded record);
- `attribute` stitches anonymous events to customers with the batch rule over the whole input
  (`identity.link`, `wins`, `customer_of`) and counts product popularity the way the batch graph
  does (distinct customers);
- `render_customers` folds each customer (`profile.fold`, with the computed traits) and renders
  the document (`profile.render`, the recommender ranking by that popularity) at the batch
  reference time (`Attribution.reference_time`: `--as_of`, else the newest event time);
- `Estimate` sums the documents up: each audience's size, each trait's distribution.

The sample's unique events are held in memory (encoded, without their `context`, which no rule
reads): a preview is for samples, not for a production backfill.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Iterator, Mapping

import orjson

import schemas
from transforms.dedupe import preference_key
from transforms.rules import events as event_rules
from transforms.rules import identity, profile
from transforms.rules.audiences.evaluate import Evaluator
from transforms.rules.dead_letters import Rejection

# Trait kinds whose values are numbers: summarised by min, median, p90 and max.
NUMERIC_KINDS = ('count', 'sum', 'min', 'max', 'avg', 'unique_count')
TOP_VALUES = 5
# Record fields no rule after the dedupe reads, and that come after every field one does read in
# the encoded record (schemas/events.avsc order): dropping them keeps the dedupe's tie-break by
# encoded bytes the batch job's (two copies equal up to `context` fold alike).
_UNREAD = ('context', 'source', 'ingested_at', 'group_id')


class Sample:
  """Event lines as the batch job's front reads them: parsed (`max_bytes` as
  `--max_message_bytes`), the invalid ones counted by failure type, one copy per messageId.

  `add(payload, source)` per non-blank line, `source` the batch job's tag of its file
  (`transforms.rules.source_tags.file_source`), which the dedupe's choice among copies reads.
  """

  def __init__(self, max_bytes: int = event_rules.DEFAULT_MAX_MESSAGE_BYTES):
    self._max_bytes = max_bytes
    self.lines = 0
    self.invalid: collections.Counter[str] = collections.Counter()
    self.duplicates = 0
    self._kept: dict[str, tuple[tuple, bytes]] = {}

  def add(self, payload: bytes | str, source: str) -> None:
    self.lines += 1
    event = event_rules.parse_event(payload, source, 0, self._max_bytes)
    if isinstance(event, Rejection):
      self.invalid[event.failure_type] += 1
      return
    message_id = event['message_id']
    candidate = (preference_key(event), _encoded(event))
    current = self._kept.get(message_id)
    if current is None:
      self._kept[message_id] = candidate
      return
    self.duplicates += 1
    if candidate < current:
      self._kept[message_id] = candidate

  @property
  def unique(self) -> int:
    return len(self._kept)

  def events(self) -> Iterator[dict]:
    """The kept events (decoded one at a time), without the fields no rule reads."""
    for _, data in self._kept.values():
      yield schemas.decode_record('events', data)


def _encoded(event: dict) -> bytes:
  return schemas.encode_record('events', {name: value for name, value in event.items()
                                          if name not in _UNREAD})


@dataclasses.dataclass
class Attribution:
  """The sample's events by customer, as the batch job's stitching attributes them."""
  by_customer: dict[str, list[bytes]]   # customer id -> encoded fold inputs
  popularity: dict[str, int]            # product id -> distinct customers who showed interest
  stitched: int = 0                     # anonymous events attributed through a link
  unattributed: int = 0                 # anonymous events never linked, events with no id
  not_in_catalog: int = 0               # events naming a product the catalog does not have
  newest: int | None = None             # the newest event time of the sample (all its events)

  def reference_time(self, as_of: int | None = None) -> int | None:
    """The batch reference time: `as_of` (epoch micros) when given, else the newest event time
    (None: no events)."""
    return as_of if as_of is not None else self.newest


def attribute(sample: Sample, catalog: Mapping[str, Mapping[str, Any]],
              whole: bool = True) -> Attribution:
  """Stitching over the whole sample (the earliest link of an anonymous id wins), popularity
  over each customer's events, the fold inputs (`profile.fold_input`, `whole` with computed
  traits) grouped by customer."""
  links: dict[str, tuple[int, str]] = {}
  newest = None
  for event in sample.events():
    if newest is None or event['event_time'] > newest:
      newest = event['event_time']
    found = identity.link(event)
    if found is not None and identity.wins(found[1], links.get(found[0])):
      links[found[0]] = found[1]
  linked = {anonymous_id: won[1] for anonymous_id, won in links.items()}
  out = Attribution({}, {}, newest=newest)
  interest: dict[str, set] = {}
  for event in sample.events():
    customer_id = identity.customer_of(event, linked)
    if customer_id is None:
      out.unattributed += 1
      continue
    if not event.get('user_id'):
      out.stitched += 1
    if event.get('product_id') is not None and event['product_id'] not in catalog:
      out.not_in_catalog += 1
    products = profile.interacted_products(event)
    if products:
      interest.setdefault(customer_id, set()).update(products)
    out.by_customer.setdefault(customer_id, []).append(
        schemas.encode_record('events', profile.fold_input(event, whole)))
  for products in interest.values():
    for product_id in products:
      out.popularity[product_id] = out.popularity.get(product_id, 0) + 1
  return out


@dataclasses.dataclass(frozen=True)
class Rendered:
  """One customer's result: the document (None: suppressed by consent) and the trait states."""
  customer_id: str
  document: dict | None
  trait_states: Mapping[str, dict]


def render_customers(attribution: Attribution, reference: int, settings: profile.Settings,
                     customers: Mapping[str, Mapping[str, Any]],
                     catalog: Mapping[str, Mapping[str, Any]]) -> Iterator[Rendered]:
  """Each customer folded and rendered as the batch job does, in customer id order."""
  recommender = profile.Recommender(catalog, attribution.popularity)
  for customer_id in sorted(attribution.by_customer):
    events = [schemas.decode_record('events', data)
              for data in attribution.by_customer[customer_id]]
    state = profile.fold(customer_id, events, settings.audiences, catalog)
    document = profile.render(state, reference, customers.get(customer_id), catalog,
                              recommender, settings)
    yield Rendered(customer_id, document, state['traits'])


class _Distribution:
  """One trait over the documents: its values (numeric kinds) or value counts (the others), and
  the values its states skipped."""

  def __init__(self, kind: str):
    self.kind = kind
    self.numbers: list = []
    self.counts: collections.Counter = collections.Counter()
    self.with_value = 0
    self.skipped = 0

  def add(self, value: Any, state: Mapping[str, Any] | None) -> None:
    if state is not None:
      self.skipped += state.get('skipped', 0)
    if value is None or (self.kind == 'unique_list' and value == []):
      return
    self.with_value += 1
    if self.kind in NUMERIC_KINDS:
      self.numbers.append(value)
    elif self.kind == 'unique_list':
      self.counts.update(_value_key(v) for v in value)
    else:
      self.counts[_value_key(value)] += 1

  def summary(self) -> dict:
    out: dict[str, Any] = {'kind': self.kind, 'with_value': self.with_value,
                           'skipped': self.skipped}
    if self.kind in NUMERIC_KINDS:
      ordered = sorted(self.numbers)
      out.update(min=ordered[0] if ordered else None, median=percentile(ordered, 50),
                 p90=percentile(ordered, 90), max=ordered[-1] if ordered else None)
    else:
      ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
      out['top'] = [{'value': key[1], 'customers': n} for key, n in ranked[:TOP_VALUES]]
      out['distinct'] = len(self.counts)
    return out


def _value_key(value: Any) -> tuple:
  """A trait value's place in the traits' total order (bools, numbers, text), which also keeps
  True apart from 1 as a counter key."""
  if isinstance(value, bool):
    return (0, value)
  if isinstance(value, str):
    return (2, value)
  return (1, value)


def percentile(ordered: list, p: float) -> Any:
  """The nearest-rank percentile of sorted values: the smallest value with at least p% of the
  values at or below it (the median of 1, 2, 3, 4 is 2). None for no values."""
  if not ordered:
    return None
  return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Estimate:
  """Documents summed up: how many, how many suppressed, each audience's members and each
  trait's distribution (file order)."""

  def __init__(self, evaluator: Evaluator):
    self._definitions = evaluator.definitions
    self.customers = 0
    self.suppressed = 0
    self.documents = 0
    self.members = {audience.key: 0 for audience in self._definitions.audiences}
    self._traits = {trait.key: _Distribution(trait.kind) for trait in self._definitions.traits}

  def add(self, rendered: Rendered) -> None:
    self.customers += 1
    if rendered.document is None:  # consent: no document, so in no audience
      self.suppressed += 1
      return
    self.documents += 1
    for key in rendered.document['audiences']:
      self.members[key] += 1
    values = rendered.document['traits']
    for key, distribution in self._traits.items():
      distribution.add(values.get(key), rendered.trait_states.get(key))

  def audiences(self) -> list[dict]:
    descriptions = {a.key: a.description for a in self._definitions.audiences}
    return [{'key': key, 'customers': n,
             'share': round(n / self.documents, 4) if self.documents else 0.0,
             'description': descriptions[key]} for key, n in self.members.items()]

  def traits(self) -> list[dict]:
    return [{'key': key, **distribution.summary()} for key, distribution in self._traits.items()]


def estimate(sample: Sample, settings: profile.Settings,
             customers: Mapping[str, Mapping[str, Any]],
             catalog: Mapping[str, Mapping[str, Any]], as_of: int | None = None,
             rejected: Mapping[str, int] | None = None) -> dict:
  """The preview's report (JSON-shaped) of `sample` under `settings` (whose `audiences` is the
  definitions file), the CRM `customers` and `catalog` by id; `rejected`: reference rows the
  parsers refused, by file kind (`customers`, `catalog`), for the record."""
  if settings.audiences is None:
    raise ValueError('a preview needs definitions (settings.audiences)')
  attribution = attribute(sample, catalog)
  reference = attribution.reference_time(as_of)
  totals = Estimate(settings.audiences)
  if reference is not None:
    for rendered in render_customers(attribution, reference, settings, customers, catalog):
      totals.add(rendered)
  return {
      'reference_time': None if reference is None else schemas.micros_to_rfc3339(reference),
      'reference_from': 'as_of' if as_of is not None else 'newest_event',
      'input': {
          'lines': sample.lines,
          'invalid': sum(sample.invalid.values()),
          'invalid_by_type': dict(sorted(sample.invalid.items())),
          'duplicates': sample.duplicates,
          'events': sample.unique,
          'stitched': attribution.stitched,
          'unattributed': attribution.unattributed,
          'not_in_catalog': attribution.not_in_catalog,
          'reference_rows_rejected': dict(rejected or {}),
      },
      'customers': totals.customers,
      'suppressed': totals.suppressed,
      'documents': totals.documents,
      'audiences': totals.audiences(),
      'traits': totals.traits(),
  }


def to_json(report: dict) -> str:
  return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()


def format_table(report: dict, title: str = '') -> str:
  """The report for people: the input's accounting, then audiences, then traits."""
  n = report['input']
  lines = [title] if title else []
  reference = report['reference_time'] or 'none (no events)'
  source = ('--as_of' if report['reference_from'] == 'as_of'
            else 'the newest event time; --as_of sets it')
  lines.append(f'reference time {reference} ({source})')
  invalid = ', '.join(f'{k} {v:,}' for k, v in n['invalid_by_type'].items())
  lines.append(f'{n["lines"]:,} lines: {n["events"]:,} events, {n["invalid"]:,} invalid'
               + (f' ({invalid})' if invalid else '')
               + f', {n["duplicates"]:,} duplicate messageIds dropped')
  lines.append(f'{report["customers"]:,} customers ({n["stitched"]:,} anonymous events '
               f'stitched, {n["unattributed"]:,} never linked to a customer); '
               f'{report["documents"]:,} documents, {report["suppressed"]:,} suppressed by '
               f'consent (no document, in no audience)')
  notes = []
  if n['not_in_catalog']:
    notes.append(f'{n["not_in_catalog"]:,} events name a product the catalog does not have '
                 '(their `product` is the event\'s own fields)')
  for kind, count in n['reference_rows_rejected'].items():
    if count:
      notes.append(f'{count:,} {kind} rows rejected by the parser (not used)')
  lines += [f'note: {note}' for note in notes]

  audiences = report['audiences']
  if audiences:
    width = max(len('audience'), *(len(a['key']) for a in audiences))
    lines += ['', f'{"audience":<{width}}  {"customers":>9}  {"share":>6}']
    for a in audiences:
      lines.append(f'{a["key"]:<{width}}  {a["customers"]:>9,}  {a["share"] * 100:>5.1f}%')

  traits = report['traits']
  numeric = [t for t in traits if t['kind'] in NUMERIC_KINDS]
  others = [t for t in traits if t['kind'] not in NUMERIC_KINDS]
  if traits:
    width = max(len('trait'), *(len(t['key']) for t in traits))
    kinds = max(len('kind'), *(len(t['kind']) for t in traits))
  if numeric:
    header = ['trait'.ljust(width), 'kind'.ljust(kinds), f'{"with value":>10}',
              *(f'{c:>9}' for c in ('min', 'median', 'p90', 'max', 'skipped'))]
    lines += ['', '  '.join(header)]
    for t in numeric:
      cells = [t['key'].ljust(width), t['kind'].ljust(kinds), f'{t["with_value"]:>10,}',
               *(f'{_number(t[c]):>9}' for c in ('min', 'median', 'p90', 'max')),
               f'{t["skipped"]:>9,}']
      lines.append('  '.join(cells))
  if others:
    lines += ['', '  '.join(['trait'.ljust(width), 'kind'.ljust(kinds), f'{"with value":>10}',
                             f'{"skipped":>9}', f'top {TOP_VALUES} values (customers)'])]
    for t in others:
      top = ', '.join(f'{_text(v["value"])} {v["customers"]:,}' for v in t['top']) or '-'
      if t['distinct'] > len(t['top']):
        top += f' (of {t["distinct"]:,} distinct)'
      lines.append('  '.join([t['key'].ljust(width), t['kind'].ljust(kinds),
                              f'{t["with_value"]:>10,}', f'{t["skipped"]:>9,}', top]))
  return '\n'.join(lines)


def _number(value: Any) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:,.2f}'
  return f'{value:,}'


def _text(value: Any) -> str:
  """A value in the table: text as JSON would quote it, so "" and " Games" show."""
  if isinstance(value, str):
    return orjson.dumps(value).decode()
  return orjson.dumps(value).decode() if isinstance(value, bool) else _number(value)
