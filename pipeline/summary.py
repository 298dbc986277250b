"""The run summary: what was read, written, deduplicated and dead-lettered, and whether it adds up."""
from __future__ import annotations

import dataclasses
from collections import Counter

from apache_beam.metrics.metric import MetricsFilter

from transforms import metrics

_DEAD_PREFIX = metrics.DEAD_LETTER_BY_TYPE.format(failure_type='')
_SENT_PREFIX = metrics.ROWS_SENT.format(table='')
_REJECTED_PREFIX = metrics.ROWS_REJECTED.format(table='')
_ADDED_PREFIX = metrics.ROWS_ADDED.format(table='')
_PRESENT_PREFIX = metrics.ROWS_PRESENT.format(table='')
# Batch loads rebuild the hourly table from `events` (transforms/rules/loads.py): its rebuilt
# rows are not the rows sent, so only the keyed merges are checked against what was sent.
_REBUILT_TABLE = 'customer_activity_hourly'


@dataclasses.dataclass
class RunSummary:
  counters: dict[str, int]
  # False where the runner's counters are known to be incomplete (streaming on the DirectRunner
  # under-counts): the summary then reports them without claiming that they add up.
  exact: bool = True
  # Distribution metrics by name: (count, sum, min, max), e.g. the freshness lags in ms.
  distributions: dict[str, tuple[int, int, int, int]] = dataclasses.field(default_factory=dict)
  # Streaming: the exact counts read from the tables (pipeline/tally.py, rendered), shown after
  # the counters; None where none were read (batch, whose counters add up, or a remote job).
  tables: str | None = None

  @classmethod
  def from_result(cls, result, exact: bool = True) -> 'RunSummary':
    """Reads the pipeline's counters (committed where the runner reports them, else attempted)."""
    totals: Counter = Counter()
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    for counter in query['counters']:
      value = counter.committed if counter.committed is not None else counter.attempted
      totals[counter.key.metric.name] += value or 0
    spreads: dict[str, tuple[int, int, int, int]] = {}
    for spread in query['distributions']:
      value = spread.committed if spread.committed is not None else spread.attempted
      if value is None or not value.count:
        continue
      name = spread.key.metric.name
      held = spreads.get(name)
      spreads[name] = ((value.count, value.sum, value.min, value.max) if held is None else
                       (held[0] + value.count, held[1] + value.sum, min(held[2], value.min),
                        max(held[3], value.max)))
    return cls(dict(totals), exact, spreads)

  def get(self, name: str) -> int:
    return self.counters.get(name, 0)

  def by_prefix(self, prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: value for name, value in sorted(self.counters.items())
            if name.startswith(prefix) and value}

  def problems(self) -> list[str]:
    """Every way the counts fail to add up; empty when everything read is accounted for (or when
    the counters are not exact enough to tell)."""
    found = []
    if not self.exact:
      return found
    read, unique = self.get(metrics.EVENTS_READ), self.get(metrics.EVENTS_UNIQUE)
    dup, dead = self.get(metrics.EVENTS_DUPLICATE), self.get(metrics.EVENTS_DEAD_LETTERED)
    if read != unique + dup + dead:
      found.append(f'events read {read} != unique {unique} + duplicates {dup} '
                   f'+ dead-lettered {dead}')
    if self.get(metrics.EVENTS_VALID) != unique + dup:
      found.append(f'valid events {self.get(metrics.EVENTS_VALID)} != unique {unique} '
                   f'+ duplicates {dup}')
    for kind in ('customers', 'catalog'):
      k_read = self.get(metrics.REFERENCE_READ.format(kind=kind))
      k_valid = self.get(metrics.REFERENCE_VALID.format(kind=kind))
      k_dead = self.get(metrics.REFERENCE_DEAD_LETTERED.format(kind=kind))
      if k_read != k_valid + k_dead:
        found.append(f'{kind} rows read {k_read} != valid {k_valid} + dead-lettered {k_dead}')
    sent = self.get(metrics.ROWS_SENT.format(table='events'))
    if sent != unique:
      found.append(f'rows sent to events {sent} != unique events {unique}')
    rejected = self.by_prefix(_REJECTED_PREFIX)
    for table, (added, present) in self.merged().items():
      staged = self.get(metrics.ROWS_SENT.format(table=table)) - rejected.get(table, 0)
      if table != _REBUILT_TABLE and added + present != staged:
        found.append(f'merge into {table}: added {added} + already present {present} != rows '
                     f'staged {staged}')
    lost = rejected.get('dead_letter', 0)
    if lost:
      found.append(f'{lost} dead letters were rejected by the dead_letter table (see the log)')
    return found

  def merged(self) -> dict[str, tuple[int, int]]:
    """Batch: table -> (rows added, rows already present) of the run's merges."""
    tables = sorted({name[len(prefix):] for name in self.counters
                     for prefix in (_ADDED_PREFIX, _PRESENT_PREFIX) if name.startswith(prefix)})
    return {table: (self.get(metrics.ROWS_ADDED.format(table=table)),
                    self.get(metrics.ROWS_PRESENT.format(table=table))) for table in tables}

  def render(self) -> str:
    read, unique = self.get(metrics.EVENTS_READ), self.get(metrics.EVENTS_UNIQUE)
    dup, dead = self.get(metrics.EVENTS_DUPLICATE), self.get(metrics.EVENTS_DEAD_LETTERED)
    # Streaming: the counters stay, marked as the runner's own (the tables' counts follow).
    marker = '' if self.exact else "  (the runner's counters, a lower bound: see the note below)"
    lines = [
        'Run summary',
        f'  events read          {read:>10,}{marker}',
        f'    valid, written     {unique:>10,}',
        f'    duplicates dropped {dup:>10,}',
        f'    dead-lettered      {dead:>10,}',
        f'  blank lines skipped  {self.get(metrics.BLANK_LINES):>10,}',
    ]
    for kind in ('customers', 'catalog'):
      k_read = self.get(metrics.REFERENCE_READ.format(kind=kind))
      if k_read:
        lines.append(
            f'  {kind + " rows read":<20} {k_read:>10,}  (valid '
            f'{self.get(metrics.REFERENCE_VALID.format(kind=kind)):,}, dead-lettered '
            f'{self.get(metrics.REFERENCE_DEAD_LETTERED.format(kind=kind)):,})')
    for failure_type, count in self.by_prefix(_DEAD_PREFIX).items():
      lines.append(f'  dead letters: {failure_type:<22} {count:>8,}')
    for table, count in self.by_prefix(_SENT_PREFIX).items():
      lines.append(f'  BigQuery rows sent to {table:<26} {count:>8,}')
    for table, count in self.by_prefix(_REJECTED_PREFIX).items():
      lines.append(f'  BigQuery rows rejected by {table:<22} {count:>8,}')
    for table, (added, present) in self.merged().items():
      how = 'rebuilt from events' if table == _REBUILT_TABLE else 'merged on its key'
      lines.append(f'  BigQuery rows added to {table:<25} {added:>8,}  (already present '
                   f'{present:,}; {how})')
    for label, name in (('Pub/Sub messages with a bad source attribute',
                         metrics.PUBSUB_SOURCE_INVALID),
                        ('events stitched to a customer', metrics.EVENTS_STITCHED),
                        ('anonymous events never linked', metrics.EVENTS_ANONYMOUS_UNLINKED),
                        ('events about products not in the catalog',
                         metrics.PRODUCTS_NOT_IN_CATALOG),
                        ('customers without a document (consent)', metrics.DOCUMENTS_SUPPRESSED),
                        ('documents deleted (consent withdrawn)', metrics.DOCUMENTS_DELETED),
                        ('writes skipped: stored document newer', metrics.DOCUMENTS_STALE_SKIPPED),
                        ('writes skipped: same content stored', metrics.DOCUMENTS_UNCHANGED),
                        ('profile changes published', metrics.PROFILE_CHANGES_PUBLISHED),
                        ('Firestore calls retried (transient errors)', metrics.FIRESTORE_RETRIES),
                        ('Redis serving-tier entries written', metrics.REDIS_ENTRIES_WRITTEN),
                        ('Redis entries already at that version or newer',
                         metrics.REDIS_ENTRIES_NOT_NEWER),
                        ('Redis calls retried (transient errors)', metrics.REDIS_RETRIES),
                        ('cart triggers published', metrics.TRIGGERS_PUBLISHED),
                        ('audience changes published', metrics.AUDIENCE_CHANGES_PUBLISHED)):
      if self.get(name):
        lines.append(f'  {label:<48} {self.get(name):>8,}')
    lines.append(f'  documents written    {self.get(metrics.DOCUMENTS_WRITTEN):>10,}')
    for label, name in (('freshness: newest event time to commit', metrics.DOCUMENT_EVENT_LAG_MS),
                        ('freshness: its Pub/Sub publish to commit',
                         metrics.DOCUMENT_PUBLISH_LAG_MS)):
      if name in self.distributions:
        count, total, low, high = self.distributions[name]
        lines.append(f'  {label:<42} mean {_duration(total / count):>8}, min '
                     f'{_duration(low)}, max {_duration(high)} over {count:,} writes')
    problems = self.problems()
    if not self.exact:
      lines.append("  (streaming: the runner's own counters, which the DirectRunner under-counts, "
                   'or of a job still running: a lower bound, not checked. Exact counts are read '
                   'from the tables: "Table counts" below when a local job stops, '
                   '`python -m pipeline.tally` at any time)')
    elif problems:
      lines.extend(f'  DOES NOT ADD UP: {p}' for p in problems)
    else:
      lines.append(f'  check: read {read:,} = written {unique:,} + duplicates {dup:,} '
                   f'+ dead-lettered {dead:,}')
    if self.tables:
      lines.append(self.tables)
    return '\n'.join(lines)


def _duration(millis: float) -> str:
  """A lag in ms as a short human figure: 850 ms, 12.3 s, 4.0 min, 3.2 h, 12.5 d."""
  for unit, size in (('d', 86_400_000), ('h', 3_600_000), ('min', 60_000), ('s', 1000)):
    if millis >= size * (1.5 if unit != 's' else 1):
      return f'{millis / size:.1f} {unit}'
  return f'{millis:.0f} ms'
