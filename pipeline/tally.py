"""Exact counts of a run, read from the tables it writes: `python -m pipeline.tally --project P
[--dataset D] [--collection C] [--since 2026-12-01T10:00:00Z] [--published N]`.

Why: the local streaming runner's Beam counters under-count (docs/STREAMING.md), so a streaming
job's own run summary is a lower bound. The tables are exact. This counts, in one BigQuery dataset
and one Firestore collection, what a run wrote: `events` rows (and their distinct `message_id`s),
`dead_letter` rows by step and failure type, and the rows of `customer_activity_hourly`,
`customer_profiles`, `cart_triggers` and `audience_membership`, plus the serving documents.

A run's rows are those whose processing-time column (`WRITTEN_AT`: when the pipeline wrote or
emitted the row, never an event time) is at or after `--since`, the job's start; without
`--since`, every row. Works on a running job too (docs/OPERATIONS.md, "Streaming job summaries").

The accounting of events: published = `events` rows + event dead letters + the rest. The first
two are exact (the tables). The rest is in no table: the duplicates dropped, plus events in
flight (not yet read, or read and not yet written, by a running job; lost at a local cancel,
since the DirectRunner acknowledges Pub/Sub messages on read). Given the published count
(`--published`, e.g. what the collector accepted) it is derived; a caller that drained the
subscription after the job stopped (scripts/stream.py) takes the unread messages out of it. A
negative rest means the window holds rows that were not published in it (another run or
publisher) and is reported as a problem.

Exit codes: 0 counted (and, with --published, the rest is not negative); 1 a BigQuery or
Firestore call failed, the dataset does not exist, or the rest is negative; 2 bad arguments.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from typing import Iterable, Mapping, Sequence

from google.api_core.exceptions import GoogleAPICallError, NotFound, RetryError
from google.cloud import bigquery

import schemas
from transforms.clean import STEP as PARSE_STEP
from transforms.settings import BigQueryTarget, FirestoreLocation
from transforms.sinks import bigquery_client
from transforms.sinks.bigquery import SINK_REJECTED

TITLE = 'Table counts'
# Each warehouse table's processing-time column: when the pipeline wrote (or emitted) the row.
# In streaming every one is the wall clock of the worker, so a run's rows are those at or after
# its start. (In batch, cart_triggers.detected_at and audience_membership.changed_at are the
# run's reference time, an event time: --since does not scope those two for a batch run.)
WRITTEN_AT = {
    'events': 'ingested_at',
    'dead_letter': 'failed_at',
    'customer_activity_hourly': 'emitted_at',
    'customer_profiles': 'updated_at',
    'cart_triggers': 'detected_at',
    'audience_membership': 'changed_at',
}
# The serving document's commit time (transforms/sinks/firestore.py sets it on every write).
DOCUMENT_WRITTEN_AT = 'updated_at'
# The label of the events table's write in pipeline/graph.py: a row BigQuery refused there is an
# event that was read, unique and lost to the table (dead-lettered as sink_rejected).
EVENTS_WRITE_STEP = 'WriteEvents'
# The attribute of the `{}` messages a local stop publishes to wake the DirectRunner's blocked
# Pub/Sub pull (scripts/stream.py, tests/integration/helpers.py). A cancelling job may still read
# and dead-letter one: such rows are counted apart, not as events.
STOP_WAKE_ATTRIBUTE = ('wake', 'stop')
CALL_TIMEOUT_SECONDS = 30.0


class TallyError(Exception):
  """A count could not be made (the dataset is missing, a call failed): one line."""


@dataclasses.dataclass(frozen=True)
class Scope:
  """What to count: a dataset, a serving collection and, optionally, the run's start (an aware
  datetime; rows written before it belong to earlier runs)."""
  warehouse: BigQueryTarget
  documents: FirestoreLocation
  since: dt.datetime | None = None

  def __post_init__(self):
    if self.since is not None and self.since.utcoffset() is None:
      raise ValueError(f'--since must name its time zone (e.g. 2026-12-01T10:00:00Z), got '
                       f'{self.since.isoformat()}')

  def command(self) -> str:
    """The CLI call that counts this scope again."""
    parts = ['python -m pipeline.tally', f'--project={self.warehouse.project}',
             f'--dataset={self.warehouse.dataset}', f'--collection={self.documents.collection}']
    if self.documents.database != FirestoreLocation.database:
      parts.append(f'--firestore_database={self.documents.database}')
    if self.since is not None:
      parts.append(f'--since={iso(self.since)}')
    return ' '.join(parts)


@dataclasses.dataclass(frozen=True, order=True)
class DeadLetters:
  """Rows of the `dead_letter` table with one (step, failure_type, is a stop wake-up)."""
  step: str
  failure_type: str
  wake: bool
  rows: int


@dataclasses.dataclass(frozen=True)
class TableCounts:
  """What a scope holds. `rows`: table -> rows in scope, None for a table that does not exist
  (`dead_letter` rows are in `dead_letters`)."""
  scope: Scope
  rows: Mapping[str, int | None]
  event_ids: int  # distinct message_id among the events rows
  events_from_files: int  # events rows whose source is file:<path> (the rest came from Pub/Sub)
  dead_letters: tuple[DeadLetters, ...]
  documents: int  # serving documents in the collection, whenever written
  documents_written: int | None  # of them, last written at or after `since` (None: no since)

  @property
  def events(self) -> int:
    return self.rows.get('events') or 0

  @property
  def event_dead_letters(self) -> dict[str, int]:
    """failure_type -> rows of events the job read and dead-lettered: parse failures, and
    events rows BigQuery refused (sink_rejected at the events write). Wake-ups excluded."""
    return _by_type(d for d in self.dead_letters if not d.wake and is_event_dead_letter(d))

  @property
  def other_dead_letters(self) -> dict[str, int]:
    """'step failure_type' -> rows of dead letters that are not events: reference rows, rows
    other tables refused, document ids Firestore cannot store."""
    totals: dict[str, int] = {}
    for d in self.dead_letters:
      if not d.wake and not is_event_dead_letter(d):
        key = f'{d.step} {d.failure_type}'
        totals[key] = totals.get(key, 0) + d.rows
    return dict(sorted(totals.items()))

  @property
  def wake_ups(self) -> int:
    return sum(d.rows for d in self.dead_letters if d.wake)


def is_event_dead_letter(d: DeadLetters) -> bool:
  """Whether a dead letter stands for an event read by the job (it accounts for a published
  event), as opposed to a reference row or a row of a derived table."""
  return d.step == PARSE_STEP or (d.step == EVENTS_WRITE_STEP and d.failure_type == SINK_REJECTED)


def _by_type(items: Iterable[DeadLetters]) -> dict[str, int]:
  totals: dict[str, int] = {}
  for d in items:
    totals[d.failure_type] = totals.get(d.failure_type, 0) + d.rows
  return dict(sorted(totals.items()))


@dataclasses.dataclass(frozen=True)
class Accounting:
  """published = events rows + event dead letters [+ left unread] + the rest (derived: the
  duplicates dropped, plus events in flight). `unread`: messages still in the subscription once
  the job stopped, when the caller counted them (None: not counted, part of the rest)."""
  published: int
  events: int
  dead_lettered: int
  unread: int | None = None

  @property
  def rest(self) -> int:
    return self.published - self.events - self.dead_lettered - (self.unread or 0)

  def problem(self) -> str | None:
    if self.rest >= 0:
      return None
    unread = f' + {self.unread:,} unread' if self.unread is not None else ''
    return (f'{-self.rest:,} more events are accounted for than were published '
            f'({self.events:,} rows + {self.dead_lettered:,} dead letters{unread} > '
            f'{self.published:,}): rows of another run or publisher in the window, or rows '
            'inserted twice')


def accounting(counts: TableCounts, published: int, unread: int | None = None) -> Accounting:
  if published < 0:
    raise ValueError(f'--published must be at least 0, got {published}')
  if unread is not None and unread < 0:
    raise ValueError(f'unread messages must be at least 0, got {unread}')
  return Accounting(published, counts.events, sum(counts.event_dead_letters.values()), unread)


def iso(value: dt.datetime) -> str:
  """An aware datetime as ISO-8601 UTC with a Z, to the microsecond."""
  return value.astimezone(dt.timezone.utc).isoformat().replace('+00:00', 'Z')


def parse_since(text: str) -> dt.datetime:
  """`--since`: ISO-8601 with a time zone (Z or an offset). ValueError naming the option."""
  try:
    value = dt.datetime.fromisoformat(text.strip())
  except ValueError:
    raise ValueError(f'--since must be an ISO-8601 time such as 2026-12-01T10:00:00Z, got '
                     f'{text!r}') from None
  if value.utcoffset() is None:
    raise ValueError(f'--since must name its time zone (e.g. 2026-12-01T10:00:00Z), got {text!r}')
  return value


# ---- Rendering (pure) ---------------------------------------------------------------------------


def render(counts: TableCounts, published: int | None = None, published_label: str = 'published',
           unread: int | None = None) -> str:
  """The counts, labelled as table counts, with the accounting of events when `published` (how
  many events went in: messages published plus file lines) is known; `unread`, messages left in
  the subscription after the job stopped, when counted."""
  scope = counts.scope
  window = (f'rows written since {iso(scope.since)}' if scope.since is not None
            else 'every row (no --since)')
  lines = [f'{TITLE} (exact, read from the tables; {window})',
           f'  dataset {scope.warehouse.project}.{scope.warehouse.dataset}, Firestore collection '
           f'{scope.documents.collection}']
  lines.append(_line('events rows', counts.rows.get('events'),
                     f'{counts.event_ids:,} distinct messageIds; '
                     f'{counts.events - counts.events_from_files:,} from Pub/Sub, '
                     f'{counts.events_from_files:,} from files'))
  if counts.rows.get('dead_letter') is None:
    lines.append(_line('dead letters', None))
  else:
    event_dead = counts.event_dead_letters
    lines.append(_line('event dead letters', sum(event_dead.values())))
    lines.extend(f'    {failure_type:<30} {rows:>10,}' for failure_type, rows in event_dead.items())
    other = counts.other_dead_letters
    if other:
      lines.append(_line('other dead letters', sum(other.values()),
                         'reference rows, rows of other tables, document ids'))
      lines.extend(f'    {key:<30} {rows:>10,}' for key, rows in other.items())
    if counts.wake_ups:
      lines.append(_line('stop wake-ups dead-lettered', counts.wake_ups,
                         'the `{}` messages that wake a stopping local job; not events'))
  for table in ('customer_activity_hourly', 'customer_profiles', 'cart_triggers',
                'audience_membership'):
    lines.append(_line(f'{table} rows', counts.rows.get(table)))
  written = ('' if counts.documents_written is None
             else f'{counts.documents_written:,} last written since the start')
  lines.append(_line('Firestore documents', counts.documents, written))
  if counts.event_ids != counts.events:
    lines.append(f'  NOTE: {counts.events - counts.event_ids:,} events rows repeat a messageId '
                 '(inserted twice, or replayed after a restart beyond the restart dedupe)')
  lines.extend(_accounting_lines(counts, published, published_label, unread))
  return '\n'.join(lines)


def _line(label: str, value: int | None, note: str = '') -> str:
  shown = 'no such table' if value is None else f'{value:,}'
  return f'  {label:<32} {shown:>10}' + (f'  ({note})' if note else '')


def _accounting_lines(counts: TableCounts, published: int | None, label: str,
                      unread: int | None) -> list[str]:
  head = ('  accounting of events: published = events rows + event dead letters'
          f'{" + left unread" if unread is not None else ""} + the rest')
  if published is None:
    return [head, '    events rows and event dead letters are exact (above); the rest (duplicates '
                  'dropped, events in flight) is in no table: give --published N (events that '
                  'went in) to derive it']
  account = accounting(counts, published, unread)
  in_flight = ('read but not yet written (a running job) or lost at a local cancel'
               if unread is not None else
               'not yet read, read but not yet written, or lost at a local cancel')
  lines = [head,
           _line(f'  {label}', account.published, 'given'),
           _line('  events rows', account.events, 'exact, from the table'),
           _line('  event dead letters', account.dead_lettered, 'exact, from the table')]
  if unread is not None:
    lines.append(_line('  left unread in Pub/Sub', unread,
                       'exact, pulled from the subscription after the job stopped'))
  lines.append(_line('  the rest', account.rest,
                     f'derived: duplicates dropped, plus any event {in_flight}'))
  problem = account.problem()
  if problem:
    lines.append(f'  DOES NOT ADD UP: {problem}')
  return lines


# ---- Queries ------------------------------------------------------------------------------------


def _where(column: str) -> str:
  return f'(@since IS NULL OR {column} >= @since)'


def events_sql(table: str) -> str:
  """Rows, distinct ids and file rows of the events table `table` in scope (@since)."""
  return (f'SELECT COUNT(*) AS n, COUNT(DISTINCT message_id) AS ids, '
          f"COUNTIF(source LIKE 'file:%') AS from_files FROM `{table}` "
          f"WHERE {_where(WRITTEN_AT['events'])}")


def dead_letter_sql(table: str) -> str:
  """Rows of the dead_letter table `table` in scope by step, failure type and wake-up."""
  name, value = STOP_WAKE_ATTRIBUTE
  return (f"SELECT step, failure_type, IFNULL(JSON_VALUE(attributes, '$.{name}') = '{value}', "
          f'FALSE) AS wake, COUNT(*) AS n FROM `{table}` '
          f"WHERE {_where(WRITTEN_AT['dead_letter'])} GROUP BY step, failure_type, wake")


def rows_sql(tables: Mapping[str, str]) -> str:
  """One statement counting the rows in scope of each `record -> table` in `tables`."""
  return ' UNION ALL '.join(
      f"SELECT '{record}' AS record, COUNT(*) AS n FROM `{table}` "
      f'WHERE {_where(WRITTEN_AT[record])}'
      for record, table in tables.items())


def count(scope: Scope, bq: bigquery.Client | None = None, fs=None) -> TableCounts:
  """Counts `scope` in BigQuery (honours BIGQUERY_EMULATOR_HOST) and Firestore. TallyError when
  the dataset does not exist or a call fails."""
  try:
    return _count(scope, bq, fs)
  except NotFound as err:
    raise TallyError(f'not found: {_one_line(err)}') from err
  except (GoogleAPICallError, RetryError, OSError) as err:
    raise TallyError(f'{type(err).__name__}: {_one_line(err)}') from err


def _count(scope: Scope, bq, fs) -> TableCounts:
  warehouse = scope.warehouse
  bq = bq or bigquery_client.cloud_client(warehouse.project)
  dataset = f'{warehouse.project}.{warehouse.dataset}'
  try:
    bq.get_dataset(dataset, timeout=CALL_TIMEOUT_SECONDS)
  except NotFound:
    raise TallyError(f'BigQuery dataset {dataset} does not exist') from None
  existing = {t.table_id for t in bq.list_tables(dataset, timeout=CALL_TIMEOUT_SECONDS)}
  tables = {record: f'{dataset}.{schemas.table_id(record)}' for record in WRITTEN_AT
            if schemas.table_id(record) in existing}
  config = bigquery.QueryJobConfig(query_parameters=[
      bigquery.ScalarQueryParameter('since', 'TIMESTAMP', scope.since)])

  def query(sql: str) -> list[dict]:
    job = bq.query(sql, job_config=config, timeout=CALL_TIMEOUT_SECONDS)
    return [dict(row) for row in job.result(timeout=CALL_TIMEOUT_SECONDS)]

  rows: dict[str, int | None] = {record: None for record in WRITTEN_AT}
  event_ids = from_files = 0
  if 'events' in tables:
    found = query(events_sql(tables['events']))[0]
    rows['events'], event_ids, from_files = found['n'], found['ids'], found['from_files'] or 0
  dead: tuple[DeadLetters, ...] = ()
  if 'dead_letter' in tables:
    dead = tuple(sorted(DeadLetters(r['step'], r['failure_type'], bool(r['wake']), r['n'])
                        for r in query(dead_letter_sql(tables['dead_letter']))))
    rows['dead_letter'] = sum(d.rows for d in dead)
  others = {record: table for record, table in tables.items()
            if record not in ('events', 'dead_letter')}
  if others:
    rows.update({r['record']: r['n'] for r in query(rows_sql(others))})
  documents, written = _documents(scope, fs)
  return TableCounts(scope, rows, event_ids, from_files, dead, documents, written)


def _documents(scope: Scope, fs) -> tuple[int, int | None]:
  """(documents in the collection, of them written at or after `scope.since`)."""
  from google.cloud import firestore
  from google.cloud.firestore_v1.base_query import FieldFilter
  location = scope.documents
  own = fs is None  # a client made here is closed here
  fs = fs or firestore.Client(project=location.project, database=location.database)
  collection = fs.collection(location.collection)

  def size(query) -> int:
    return int(query.count().get(timeout=CALL_TIMEOUT_SECONDS)[0][0].value)

  try:
    total = size(collection)
    if scope.since is None:
      return total, None
    return total, size(collection.where(filter=FieldFilter(DOCUMENT_WRITTEN_AT, '>=',
                                                           scope.since)))
  finally:
    if own:
      fs.close()


def _one_line(err: Exception) -> str:
  return ' '.join(str(err).split())[:500]


# ---- CLI ----------------------------------------------------------------------------------------


class UsageError(Exception):
  """Bad arguments (exit 2)."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog='python -m pipeline.tally',
      description='Exact counts of what a run wrote, read from its BigQuery tables and Firestore '
                  'collection (not from the runner\'s counters).')
  parser.add_argument('--project', default=os.environ.get('GOOGLE_CLOUD_PROJECT'),
                      help='Google Cloud project (default: $GOOGLE_CLOUD_PROJECT).')
  parser.add_argument('--dataset', default='personalization',
                      help='BigQuery dataset the job writes (as pipeline.run --dataset).')
  parser.add_argument('--collection', default='customers',
                      help='Firestore collection of the serving documents (as pipeline.run '
                           '--collection).')
  parser.add_argument('--firestore_database', default=FirestoreLocation.database,
                      help='Firestore database id.')
  parser.add_argument('--since', default=None,
                      help='The run\'s start, ISO-8601 with a time zone (2026-12-01T10:00:00Z): '
                           'count only rows written at or after it. Default: every row.')
  parser.add_argument('--published', type=int, default=None,
                      help='How many events went in (messages published plus file lines): '
                           'derives the rest (duplicates dropped, events in flight) and checks '
                           'the accounting.')
  return parser


def parse_args(argv: Sequence[str]) -> tuple[Scope, int | None]:
  """(scope, published); UsageError naming the option when one is bad."""
  args = build_parser().parse_args(list(argv))
  if not args.project:
    raise UsageError('--project is required (or set GOOGLE_CLOUD_PROJECT)')
  if args.published is not None and args.published < 0:
    raise UsageError(f'--published must be at least 0, got {args.published}')
  try:
    since = parse_since(args.since) if args.since is not None else None
    scope = Scope(BigQueryTarget(args.project, args.dataset),
                  FirestoreLocation(args.project, args.collection, args.firestore_database),
                  since)
  except ValueError as err:
    raise UsageError(str(err)) from err
  return scope, args.published


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    scope, published = parse_args(argv)
  except UsageError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  try:
    counts = count(scope)
  except TallyError as err:
    print(f'error: {err}', file=sys.stderr)
    return 1
  print(render(counts, published))
  return 1 if published is not None and accounting(counts, published).problem() else 0


if __name__ == '__main__':
  sys.exit(main())
