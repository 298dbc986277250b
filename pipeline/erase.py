"""Erasure (right to be forgotten): `python -m pipeline.erase --project P (--customer_id ID ... |
--customer_ids_file FILE) [--dataset personalization] [--collection customers]
[--firestore_database '(default)'] [--sync_state_collection sync_state]
[--redis_url redis://HOST:PORT/DB [--redis_key_prefix P]] [--dry_run]`.

Deletes a customer's serving document (`<collection>/<customer_id>` in Firestore), the sync
worker's state of them for every destination (`<sync_state_collection>/<destination>/customers/
<customer_id>`, connector/sync/state.py), their entry in the Redis serving tier when the job
writes one (`--redis_url`, the same as the pipeline's: transforms/sinks/redis_tier.py) and their rows in every warehouse table (one DML
`DELETE` per table for a chunk of customers, ids passed as query parameters, never spliced into
SQL), then records one `erasure_log` row per customer (`schemas/erasure_log.avsc`; it has no
column for the sync state, which the summary and the log lines report). The input is the
customer id (the Segment userId), never an email. Running it again deletes nothing more and logs
again with zero counts, so a failed run is simply run again.

Which rows are "theirs" (docs/DATA_CONTRACT.md, "Erasure"):

* events: `user_id` is the customer, or `user_id` is null and `anonymous_id` is one the
  customer's own events linked to them (stitched anonymous browsing);
* customer_activity_hourly: identified rows of the customer, unidentified rows of those
  anonymousIds;
* customer_profiles, cart_triggers, audience_membership: `customer_id`;
* dead_letter: rows whose payload mentions the customer id or one of those anonymousIds as a JSON
  string (`"c00042"`, anywhere in the payload, also in truncated JSON and in base64 payloads), or,
  for CRM rows (step `ReadCustomers`), as a CSV field. Found by a SQL pre-filter and this module's
  `dead_letter_mentions`, deleted by payload hash.

Order: Firestore first (the serving documents, what ESPs read at send time, then the sync
state), then the tables derived from events, and `events` last, because the links to
anonymousIds live there: a run that fails half-way still finds them when it is run again.

Exit codes: 0 done (also when there was nothing to delete), 1 a BigQuery or Firestore call failed
(the chunk being erased is not logged; run again), 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import io
import json
import logging
import os
import pathlib
import sys
import time
import uuid
from typing import Iterable, Iterator, Sequence

from google.api_core.exceptions import GoogleAPICallError, NotFound, RetryError
from google.cloud import bigquery, firestore

import schemas
from transforms.rules import dead_letters, served
from transforms.settings import RedisTier
from transforms.sinks import bigquery as bigquery_sink
from transforms.sinks import bigquery_client
from transforms.sinks.firestore import document_id_problem
from transforms.sinks.redis_tier import RedisUnavailable, RedisWriter

# Bumped whenever the rules for finding a customer's rows change; logged with every row.
VERSION = '1'
TOOL_VERSION = f'pipeline.erase/{VERSION}'
LOG_RECORD = 'erasure_log'
DEFAULT_CHUNK_SIZE = 500
FIRESTORE_BATCH_LIMIT = 500
# The sync worker's state (connector/sync/state.py): one document per destination and customer
# at <collection>/<destination>/customers/<customer_id>; the default is the worker's.
DEFAULT_SYNC_STATE_COLLECTION = 'sync_state'
SYNC_STATE_CUSTOMERS = 'customers'
# Tables in the order their rows are deleted: events last (see the module docstring).
DELETE_ORDER = ('customer_profiles', 'cart_triggers', 'audience_membership',
                'customer_activity_hourly', 'dead_letter', 'events')
# Steps whose dead letters are CSV rows of the CRM export (the customer id is a field).
CSV_CUSTOMER_STEPS = frozenset({'ReadCustomers'})

_log = logging.getLogger('pipeline.erase')


class UsageError(Exception):
  """Bad arguments or input, reported as one line (exit 2)."""


class LogRejected(Exception):
  """BigQuery refused the erasure_log rows (the deletes before it were done)."""


# ---- Arguments and input -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  """argparse that raises UsageError instead of printing usage and exiting."""

  def error(self, message):
    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog='python -m pipeline.erase',
      description='Erase customers: their Firestore document, the sync worker\'s state of '
                  'them and their rows in every BigQuery table, logged in the erasure_log '
                  'table. Idempotent.')
  parser.add_argument('--project', default=os.environ.get('GOOGLE_CLOUD_PROJECT'),
                      help='Google Cloud project (default: $GOOGLE_CLOUD_PROJECT).')
  parser.add_argument('--dataset', default='personalization',
                      help='BigQuery dataset the pipeline writes (as pipeline.run --dataset).')
  parser.add_argument('--collection', default='customers',
                      help='Firestore collection of the serving documents.')
  parser.add_argument('--firestore_database', default='(default)', help='Firestore database id.')
  parser.add_argument('--sync_state_collection', default=DEFAULT_SYNC_STATE_COLLECTION,
                      help='Firestore collection of the sync worker\'s state (its config\'s '
                           'state_collection): the customer\'s state under every destination '
                           'in it is deleted.')
  ids = parser.add_mutually_exclusive_group(required=True)
  parser.add_argument('--redis_url', default=None,
                      help="The pipeline's --redis_url, when it writes a Redis serving tier: the "
                           "customers' entries there are deleted too.")
  parser.add_argument('--redis_key_prefix', default=served.DEFAULT_PREFIX,
                      help="The pipeline's --redis_key_prefix.")
  ids.add_argument('--customer_id', action='extend', nargs='+', metavar='ID',
                   help='Customer id(s) to erase (the Segment userId); repeatable.')
  ids.add_argument('--customer_ids_file', metavar='FILE',
                   help='UTF-8 text file with one customer id a line (empty lines are skipped).')
  parser.add_argument('--dry_run', action='store_true', default=False,
                      help='Count what would be deleted and log it (dry_run = true); delete '
                           'nothing.')
  parser.add_argument('--chunk_size', type=int, default=DEFAULT_CHUNK_SIZE,
                      help='Customers per DELETE statement (and per progress line).')
  return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """(arguments, customer ids in input order without duplicates); UsageError when bad."""
  args = build_parser().parse_args(list(argv))
  if not args.project:
    raise UsageError('--project is required (or set GOOGLE_CLOUD_PROJECT)')
  for name in ('dataset', 'collection', 'firestore_database', 'sync_state_collection'):
    if not getattr(args, name).strip():
      raise UsageError(f'--{name} must not be blank')
  if '/' in args.sync_state_collection:
    raise UsageError('--sync_state_collection must be a top-level collection id (no "/"), got '
                     f'{args.sync_state_collection!r}')
  if args.chunk_size < 1:
    raise UsageError(f'--chunk_size must be at least 1, got {args.chunk_size}')
  if args.customer_ids_file is not None:
    ids = read_ids_file(args.customer_ids_file)
  else:
    ids = [check_id(value, '--customer_id') for value in args.customer_id]
  return args, list(dict.fromkeys(ids))


def check_id(value: str, where: str) -> str:
  """`value` when it can be a customer id; UsageError naming `where` otherwise. Ids are taken
  exactly: surrounding whitespace is refused rather than trimmed, so a typo never erases
  someone else."""
  if not value.strip():
    raise UsageError(f'{where}: blank customer id')
  if value != value.strip():
    raise UsageError(f'{where}: customer id {value!r} has leading or trailing whitespace')
  return value


def read_ids_file(path: str) -> list[str]:
  """The customer ids of a file, one a line; empty lines are skipped."""
  file = pathlib.Path(path)
  try:
    text = file.read_bytes().decode('utf-8-sig')
  except FileNotFoundError:
    raise UsageError(f'--customer_ids_file {path}: no such file') from None
  except IsADirectoryError:
    raise UsageError(f'--customer_ids_file {path}: is a directory') from None
  except UnicodeDecodeError as err:
    raise UsageError(f'--customer_ids_file {path}: not UTF-8 text ({err.reason} at byte '
                     f'{err.start})') from None
  except OSError as err:
    raise UsageError(f'--customer_ids_file {path}: {err.strerror}') from None
  ids = [check_id(line, f'{path} line {number}')
         for number, line in enumerate(text.splitlines(), 1) if line]
  if not ids:
    raise UsageError(f'--customer_ids_file {path}: holds no customer ids')
  return ids


# ---- Matching rules (pure) ---------------------------------------------------------------------


def json_string_forms(value: str) -> set[str]:
  """How `value` appears as a JSON string: quoted and escaped, with non-ASCII raw or as \\u."""
  return {json.dumps(value), json.dumps(value, ensure_ascii=False)}


def dead_letter_needles(values: Iterable[str]) -> list[str]:
  """Substrings for the SQL pre-filter of dead letters: every JSON-escaped form of each value
  without its quotes (so it also finds the raw value, as in a CSV row). A superset of what
  `dead_letter_mentions` accepts."""
  return sorted({form[1:-1] for value in values for form in json_string_forms(value)})


def dead_letter_text(payload: str, encoding: str) -> str:
  """A dead letter's payload as text (base64 payloads decoded, invalid UTF-8 replaced)."""
  if encoding == 'base64':
    return dead_letters.original_payload(
        {'payload': payload, 'payload_encoding': encoding}).decode('utf-8', errors='replace')
  return payload


def dead_letter_mentions(payload: str, encoding: str, step: str,
                         ids_by_customer: dict[str, set[str]]) -> set[str]:
  """The customers (keys of `ids_by_customer`: customer -> their id and linked anonymousIds)
  a dead letter belongs to: its payload holds one of their ids as a complete JSON string (so
  `"c1"` does not match `"c10"`), or, for a CRM row (step in CSV_CUSTOMER_STEPS), as a CSV field.
  """
  text = dead_letter_text(payload, encoding)
  fields: set[str] = set()
  if step in CSV_CUSTOMER_STEPS:
    try:
      fields = {f for row in csv.reader(io.StringIO(text, newline='')) for f in row}
    except csv.Error:
      fields = set()
  found = set()
  for customer, values in ids_by_customer.items():
    if any(form in text for value in values for form in json_string_forms(value)) or (
        fields & values):
      found.add(customer)
  return found


def chunked(items: Sequence, size: int) -> Iterator[Sequence]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


# ---- The tables' rules -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TableRule:
  """How a table's rows of a chunk of customers are found. `where` uses @ids (the customer ids)
  and @anonymous_ids (their linked anonymousIds); `key` is the column naming whose row it is and
  `identified` says whether that key is a customer id (else an anonymousId)."""
  where: str
  key: str
  identified: str


ROW_RULES = {
    'events': TableRule(
        where='user_id IN UNNEST(@ids) OR (user_id IS NULL AND anonymous_id IN '
              'UNNEST(@anonymous_ids))',
        key='COALESCE(user_id, anonymous_id)', identified='user_id IS NOT NULL'),
    'customer_activity_hourly': TableRule(
        where='(identified AND customer_id IN UNNEST(@ids)) OR (NOT identified AND customer_id '
              'IN UNNEST(@anonymous_ids))',
        key='customer_id', identified='identified'),
    # `customer_id IS NOT NULL` is always true here (a REQUIRED column): an expression rather
    # than TRUE because BigQuery cannot GROUP BY a literal.
    'customer_profiles': TableRule(where='customer_id IN UNNEST(@ids)', key='customer_id',
                                   identified='customer_id IS NOT NULL'),
    'cart_triggers': TableRule(where='customer_id IN UNNEST(@ids)', key='customer_id',
                               identified='customer_id IS NOT NULL'),
    'audience_membership': TableRule(where='customer_id IN UNNEST(@ids)', key='customer_id',
                                     identified='customer_id IS NOT NULL'),
}
# dead_letter has no customer column: its rows are matched by payload (dead_letter_mentions).
DEAD_LETTER_CANDIDATES = (
    "SELECT payload, payload_encoding, step, TO_HEX(SHA256(payload)) AS payload_sha256 "
    "FROM `{table}` WHERE payload_encoding = 'base64' OR EXISTS ("
    "SELECT 1 FROM UNNEST(@needles) AS needle WHERE STRPOS(payload, needle) > 0)")
DEAD_LETTER_DELETE = 'DELETE FROM `{table}` WHERE TO_HEX(SHA256(payload)) IN UNNEST(@hashes)'
LINKS = ('SELECT DISTINCT user_id, anonymous_id FROM `{table}` '
         'WHERE user_id IN UNNEST(@ids) AND anonymous_id IS NOT NULL')


# ---- Running it --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one table holds of a chunk's customers, counted before the DELETE: rows per customer,
  distinct rows in all (a row can belong to two customers of the chunk) and, for dead_letter,
  the payload hashes to delete."""
  counts: dict[str, int]
  matched: int
  hashes: tuple[str, ...] = ()


@dataclasses.dataclass
class CustomerResult:
  customer_id: str
  document_deleted: bool = False
  anonymous_ids: int = 0
  rows: dict[str, int] = dataclasses.field(default_factory=dict)
  # Destinations whose sync-state document of the customer existed (and was deleted).
  sync_states: list[str] = dataclasses.field(default_factory=list)
  # --redis_url: whether the serving tier held an entry of the customer (and it was deleted).
  redis_deleted: bool = False


class Eraser:
  """Erases chunks of customers in one dataset, Firestore collection and sync-state collection,
  and logs each."""

  def __init__(self, project: str, dataset: str, collection: str, database: str,
               dry_run: bool, bq: bigquery.Client, fs,
               sync_state_collection: str = DEFAULT_SYNC_STATE_COLLECTION,
               redis: RedisWriter | None = None):
    self.project, self.dataset = project, dataset
    self._redis = redis
    self.collection, self.database = collection, database
    self.sync_state_collection = sync_state_collection
    self.dry_run = dry_run
    self._bq, self._fs = bq, fs
    self.run_id = uuid.uuid4().hex
    self.requested_at = time.time_ns() // 1000
    self.tables: tuple[str, ...] = ()

  def prepare(self) -> list[str]:
    """Checks the dataset, creates the log table if missing and finds which warehouse tables
    exist (missing ones are skipped: nothing was ever written there). Returns the missing."""
    try:
      self._bq.get_dataset(f'{self.project}.{self.dataset}')
    except NotFound:
      raise UsageError(f'BigQuery dataset {self.project}.{self.dataset} does not exist') from None
    bigquery_sink.ensure_tables(self.project, self.dataset, records=(LOG_RECORD,))
    existing = {t.table_id for t in self._bq.list_tables(f'{self.project}.{self.dataset}')}
    self.tables = tuple(t for t in DELETE_ORDER if schemas.table_id(t) in existing)
    return [t for t in DELETE_ORDER if t not in self.tables]

  def _table(self, record: str) -> str:
    return f'{self.project}.{self.dataset}.{schemas.table_id(record)}'

  def _query(self, sql: str, **arrays: list[str]):
    """Runs `sql` with ARRAY<STRING> parameters (those it uses). Returns (rows, DML count)."""
    config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ArrayQueryParameter(name, 'STRING', list(values))
        for name, values in arrays.items() if f'@{name}' in sql])
    job = self._bq.query(sql, job_config=config)
    rows = list(job.result())
    return rows, job.num_dml_affected_rows

  def erase_chunk(self, ids: Sequence[str]) -> list[CustomerResult]:
    results = {cid: CustomerResult(cid) for cid in ids}
    owners = self._links(ids)  # anonymousId -> customers of this chunk it is linked to
    for cid in ids:
      results[cid].anonymous_ids = sum(cid in who for who in owners.values())
    anonymous_ids = sorted(owners)
    # Count first (per customer), for the log and the dry run.
    plans = {}
    for record in self.tables:
      plans[record] = (self._dead_letter_plan(ids, owners) if record == 'dead_letter'
                       else self._count(record, ids, anonymous_ids, owners))
      for cid in ids:
        results[cid].rows[record] = plans[record].counts.get(cid, 0)
    existed = self._firestore(ids)
    for cid in ids:
      results[cid].document_deleted = cid in existed
    states = self._sync_state(ids)
    for cid in ids:
      results[cid].sync_states = states.get(cid, [])
    if self._redis is not None:  # after Firestore: no new entry can come from a deleted document
      held = self._redis.present(ids)
      if not self.dry_run and held:
        self._redis.delete(held)
      for cid in ids:
        results[cid].redis_deleted = cid in held
    if not self.dry_run:
      for record in self.tables:  # DELETE_ORDER: events last
        affected = self._delete(record, ids, anonymous_ids, plans[record])
        if len(ids) == 1:
          results[ids[0]].rows[record] = affected  # exact for one customer
        elif affected != plans[record].matched:
          _log.warning('%s: the DELETE removed %d rows, the count before it found %d (rows '
                       'written in between); the log has the counts', record, affected,
                       plans[record].matched)
    self._write_log(results.values())
    return list(results.values())

  def _delete(self, record: str, ids: Sequence[str], anonymous_ids: list[str],
              plan: Plan) -> int:
    """One DML DELETE of the chunk's rows in `record`; returns the rows it deleted."""
    if record == 'dead_letter':
      if not plan.hashes:
        return 0
      return self._query(DEAD_LETTER_DELETE.format(table=self._table(record)),
                         hashes=list(plan.hashes))[1]
    return self._query(f'DELETE FROM `{self._table(record)}` WHERE {ROW_RULES[record].where}',
                       ids=list(ids), anonymous_ids=anonymous_ids)[1]

  def _links(self, ids: Sequence[str]) -> dict[str, set[str]]:
    if 'events' not in self.tables:
      return {}
    rows, _ = self._query(LINKS.format(table=self._table('events')), ids=list(ids))
    owners: dict[str, set[str]] = collections.defaultdict(set)
    for row in rows:
      owners[row['anonymous_id']].add(row['user_id'])
    return dict(owners)

  def _count(self, record: str, ids: Sequence[str], anonymous_ids: list[str],
             owners: dict[str, set[str]]) -> Plan:
    rule = ROW_RULES[record]
    rows, _ = self._query(
        f'SELECT {rule.identified} AS identified, {rule.key} AS owner_key, COUNT(*) AS n '
        f'FROM `{self._table(record)}` WHERE {rule.where} GROUP BY identified, owner_key',
        ids=list(ids), anonymous_ids=anonymous_ids)
    counts: dict[str, int] = collections.Counter()
    for row in rows:
      # A row of an anonymousId linked to several customers of the chunk counts for each.
      for cid in ({row['owner_key']} if row['identified']
                  else owners.get(row['owner_key'], set())):
        counts[cid] += row['n']
    return Plan(dict(counts), sum(row['n'] for row in rows))

  def _dead_letter_plan(self, ids: Sequence[str], owners: dict[str, set[str]]) -> Plan:
    ids_by_customer = {cid: {cid} for cid in ids}
    for anonymous_id, customers in owners.items():
      for cid in customers:
        ids_by_customer[cid].add(anonymous_id)
    needles = dead_letter_needles(v for values in ids_by_customer.values() for v in values)
    rows, _ = self._query(DEAD_LETTER_CANDIDATES.format(table=self._table('dead_letter')),
                          needles=needles)
    counts: dict[str, int] = collections.Counter()
    hashes, matched = set(), 0
    for row in rows:
      customers = dead_letter_mentions(row['payload'], row['payload_encoding'], row['step'],
                                       ids_by_customer)
      if customers:
        matched += 1
        hashes.add(row['payload_sha256'])
        for cid in customers:
          counts[cid] += 1
    return Plan(dict(counts), matched, tuple(sorted(hashes)))

  def _firestore(self, ids: Sequence[str]) -> set[str]:
    """Deletes the documents (unless a dry run); returns the ids whose document existed."""
    refs = []
    for cid in ids:
      problem = document_id_problem(cid)
      if problem:
        _log.warning('no Firestore document to erase for %r: %s', cid, problem)
      else:
        refs.append(self._fs.collection(self.collection).document(cid))
    existed = {snap.id for snap in self._fs.get_all(refs) if snap.exists} if refs else set()
    if not self.dry_run:
      for group in chunked(refs, FIRESTORE_BATCH_LIMIT):
        batch = self._fs.batch()
        for ref in group:
          batch.delete(ref)  # deleting a missing document is a no-op: idempotent
        batch.commit()
    return existed

  def destinations(self) -> list[str]:
    """The destinations in the sync-state collection: its documents, also those that exist only
    as parents of their `customers` subcollection (the worker never writes the parent)."""
    return sorted(ref.id for ref in self._fs.collection(self.sync_state_collection)
                  .list_documents())

  def _sync_state(self, ids: Sequence[str]) -> dict[str, list[str]]:
    """Deletes the customers' sync-state documents under every destination (unless a dry run);
    returns customer id -> the destinations whose document existed. Listed again for every
    chunk, so a destination the worker starts during a long run is not missed."""
    destinations = self.destinations()
    refs = [self._fs.collection(self.sync_state_collection).document(destination)
            .collection(SYNC_STATE_CUSTOMERS).document(cid)
            for destination in destinations for cid in ids if document_id_problem(cid) is None]
    existed: dict[str, list[str]] = collections.defaultdict(list)
    for group in chunked(refs, FIRESTORE_BATCH_LIMIT):
      for snap in self._fs.get_all(group):
        if snap.exists:
          existed[snap.id].append(snap.reference.parent.parent.id)
    if not self.dry_run:
      for group in chunked(refs, FIRESTORE_BATCH_LIMIT):
        batch = self._fs.batch()
        for ref in group:
          batch.delete(ref)  # a missing document is a no-op, as for the serving documents
        batch.commit()
    per_destination = collections.Counter(d for where in existed.values() for d in where)
    if per_destination:
      _log.info('sync state: %s the documents of %d customers: %s',
                'would delete' if self.dry_run else 'deleted', len(existed),
                ', '.join(f'{d} {n}' for d, n in sorted(per_destination.items())))
    return {cid: sorted(where) for cid, where in existed.items()}

  def _write_log(self, results: Iterable[CustomerResult]) -> None:
    completed_at = time.time_ns() // 1000
    rows = []
    for result in results:
      tables = [{'table_name': schemas.table_id(record), 'rows_deleted': result.rows[record]}
                for record in self.tables]
      rows.append(schemas.to_bigquery_row(LOG_RECORD, {
          'erasure_id': uuid.uuid4().hex,
          'run_id': self.run_id,
          'customer_id': result.customer_id,
          'requested_at': self.requested_at,
          'completed_at': completed_at,
          'dry_run': self.dry_run,
          'firestore_document': f'{self.collection}/{result.customer_id}',
          'firestore_database': self.database,
          'firestore_document_deleted': result.document_deleted,
          'anonymous_ids_linked': result.anonymous_ids,
          'tables': tables,
          'rows_deleted_total': sum(t['rows_deleted'] for t in tables),
          'tool_version': TOOL_VERSION,
      }))
    errors = self._bq.insert_rows_json(self._table(LOG_RECORD), rows)
    if errors:
      raise LogRejected(f'the erasure_log rejected rows: {errors[:3]}')


def erase(args: argparse.Namespace, ids: Sequence[str], bq=None, fs=None) -> list[CustomerResult]:
  """Erases `ids` in chunks of `args.chunk_size`, logging progress after each chunk."""
  if bq is None:
    bq = bigquery_client.cloud_client(args.project)
  if fs is None:
    fs = firestore.Client(project=args.project, database=args.firestore_database)
  redis = None
  if args.redis_url:
    try:
      redis = RedisWriter(RedisTier(args.redis_url, args.redis_key_prefix, retry_seconds=30))
    except ValueError as err:
      raise UsageError(str(err)) from None
  eraser = Eraser(args.project, args.dataset, args.collection, args.firestore_database,
                  args.dry_run, bq, fs, args.sync_state_collection, redis)
  missing = eraser.prepare()
  if missing:
    _log.warning('tables not in %s.%s (skipped, nothing to erase there): %s', args.project,
                 args.dataset, ', '.join(missing))
  _log.info('sync state in %s: %s', args.sync_state_collection,
            ', '.join(eraser.destinations()) or 'no destinations (nothing to erase there)')
  _log.info('erasure run %s: %d customers, chunks of %d%s', eraser.run_id, len(ids),
            args.chunk_size, ' (dry run)' if args.dry_run else '')
  results: list[CustomerResult] = []
  for chunk in chunked(ids, args.chunk_size):
    try:
      results.extend(eraser.erase_chunk(chunk))
    except (GoogleAPICallError, RetryError, LogRejected, RedisUnavailable) as err:
      raise ChunkFailed(len(results), len(chunk), err) from err
    _log.info('%s %d/%d customers (%.0f%%)', 'checked' if args.dry_run else 'erased',
              len(results), len(ids), 100 * len(results) / len(ids))
  return results


class ChunkFailed(Exception):
  """A BigQuery or Firestore call failed while erasing customers done+1 .. done+size."""

  def __init__(self, done: int, size: int, cause: Exception):
    super().__init__(f'erased and logged {done} customers; the next {size} are not logged: '
                     f'{_one_line(cause)}')
    self.cause = cause


def _one_line(err: Exception) -> str:
  text = ' '.join(str(err).split())[:500]
  if 'streaming buffer' in text:
    text += (' (BigQuery cannot DELETE rows streamed in the last 30 minutes or so: run the '
             'same command again later; it is idempotent)')
  return f'{type(err).__name__}: {text}'


def summary(args: argparse.Namespace, results: Sequence[CustomerResult]) -> str:
  totals: dict[str, int] = collections.Counter()
  states: dict[str, int] = collections.Counter()
  for result in results:
    totals.update(result.rows)
    states.update(result.sync_states)
  verb = 'would delete' if args.dry_run else 'deleted'
  lines = [f'{"dry run: " if args.dry_run else ""}{len(results)} customers, Firestore documents '
           f'{verb}: {sum(r.document_deleted for r in results)}',
           f'sync state ({args.sync_state_collection}) {verb}: ' + (', '.join(
               f'{destination} {states[destination]:,}' for destination in sorted(states))
               or 'none'),
           *([f'Redis serving tier entries {verb}: '
              f'{sum(r.redis_deleted for r in results)}'] if args.redis_url else []),
           f'BigQuery rows {verb}: ' + (', '.join(
               f'{schemas.table_id(t)} {totals[t]:,}' for t in DELETE_ORDER if t in totals)
               or 'none (no tables)'),
           f'logged to {args.project}.{args.dataset}.{schemas.table_id(LOG_RECORD)} '
           f'({len(results)} rows)']
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '-h' in argv or '--help' in argv:
    print(build_parser().format_help())
    return 0
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  try:
    args, ids = parse_args(argv)
    results = erase(args, ids)
  except UsageError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  except ChunkFailed as err:
    print(f'error: {err}', file=sys.stderr)
    return 1
  except (GoogleAPICallError, RetryError) as err:
    print(f'error: {_one_line(err)}', file=sys.stderr)
    return 1
  print(summary(args, results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
