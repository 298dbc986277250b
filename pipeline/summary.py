"""The run summary: what was read, written, deduplicated and dead-lettered, and whether it adds up."""
from __future__ import annotations

import dataclasses
from collections import Counter

from apache_beam.metrics.metric import MetricsFilter

from transforms import metrics

_DEAD_PREFIX = metrics.DEAD_LETTER_BY_TYPE.format(failure_type='')
_SENT_PREFIX = metrics.ROWS_SENT.format(table='')
_REJECTED_PREFIX = metrics.ROWS_REJECTED.format(table='')


@dataclasses.dataclass
class RunSummary:
  counters: dict[str, int]
  # False where the runner's counters are known to be incomplete (streaming on the DirectRunner
  # under-counts): the summary then reports them without claiming that they add up.
  exact: bool = True

  @classmethod
  def from_result(cls, result, exact: bool = True) -> 'RunSummary':
    """Reads the pipeline's counters (committed where the runner reports them, else attempted)."""
    totals: Counter = Counter()
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    for counter in query['counters']:
      value = counter.committed if counter.committed is not None else counter.attempted
      totals[counter.key.metric.name] += value or 0
    return cls(dict(totals), exact)

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
    lost = self.by_prefix(_REJECTED_PREFIX).get('dead_letter', 0)
    if lost:
      found.append(f'{lost} dead letters were rejected by the dead_letter table (see the log)')
    return found

  def render(self) -> str:
    read, unique = self.get(metrics.EVENTS_READ), self.get(metrics.EVENTS_UNIQUE)
    dup, dead = self.get(metrics.EVENTS_DUPLICATE), self.get(metrics.EVENTS_DEAD_LETTERED)
    lines = [
        'Run summary',
        f'  events read          {read:>10,}',
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
                        ('cart triggers published', metrics.TRIGGERS_PUBLISHED),
                        ('audience changes published', metrics.AUDIENCE_CHANGES_PUBLISHED)):
      if self.get(name):
        lines.append(f'  {label:<48} {self.get(name):>8,}')
    lines.append(f'  documents written    {self.get(metrics.DOCUMENTS_WRITTEN):>10,}')
    problems = self.problems()
    if not self.exact:
      lines.append('  (streaming: counters of a stopped local job (the DirectRunner under-counts) '
                   'or of a job still running; a lower bound, not checked; the tables hold the '
                   'exact counts)')
    elif problems:
      lines.extend(f'  DOES NOT ADD UP: {p}' for p in problems)
    else:
      lines.append(f'  check: read {read:,} = written {unique:,} + duplicates {dup:,} '
                   f'+ dead-lettered {dead:,}')
    return '\n'.join(lines)
