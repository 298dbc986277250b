"""Idempotent batch loads: the natural key of each warehouse table and the SQL that merges a
run's staging table into it. Pure functions, no Beam, no BigQuery client
(transforms/sinks/bigquery_merge.py runs the statements; docs/OPERATIONS.md, "Re-running the
batch job", says what they guarantee).

A batch run writes its rows to staging tables of its own (`<table>__staging_<run id>`) and then:

- `events`, `dead_letter`, `cart_triggers`, `audience_membership`: one `MERGE ... WHEN NOT
  MATCHED THEN INSERT` on the table's natural key (`MERGE_KEYS`): a row whose key the table holds
  is not added again. Keys that are unique within one run (`UNIQUE_IN_RUN`) are also deduplicated
  inside the staging table, so a retried streaming insert cannot double a row.
- `customer_activity_hourly` (`HOURLY`): an hour's row depends on every event of that hour, not
  only on the run's, so the touched (hour, customer, event name) rows are recomputed from the
  `events` table after its MERGE, and a row is added as the next pane only where the totals
  differ from the table's current pane (`hourly_rebuild_sql`).
- `customer_profiles` is not staged: its rows record Firestore writes that have already happened,
  and a re-run writes no unchanged document (transforms/sinks/firestore.py).

BigQuery's emulator runs all of this (measured); it does not parse `INSERT ROW`, which is why
the statements spell out their column lists.
"""
from __future__ import annotations

import datetime
import re
from typing import Sequence

# Each merged table's natural key. Every key column is REQUIRED in its schema (tested): a NULL
# never equals anything in SQL, so a nullable key column would re-insert its row on every run.
MERGE_KEYS = {
    'events': ('message_id',),
    # A rejected record: what failed, where, from which source, with which bytes. Not the message
    # (it may name a staging table) nor `failed_at` (the run's clock).
    'dead_letter': ('failure_type', 'step', 'source', 'payload_encoding', 'payload'),
    'cart_triggers': ('trigger_id',),
    'audience_membership': ('customer_id', 'audience', 'change', 'changed_at'),
}
# Tables whose key is unique within one run by construction (dedupe by message id, one trigger
# per cart, one change per customer and audience). Dead letters are not: two identical bad lines
# are two rejected records, and both are kept on the first load.
UNIQUE_IN_RUN = frozenset({'events', 'cart_triggers', 'audience_membership'})
HOURLY = 'customer_activity_hourly'
# The order the merges run in: the hourly rebuild reads `events` after its MERGE.
MERGE_ORDER = ('events', HOURLY, 'cart_triggers', 'audience_membership', 'dead_letter')
# A staging table left by a failed run expires after this long (the MERGE step drops it
# otherwise), so a table holding customer data does not linger.
STAGING_EXPIRATION_HOURS = 72

_RUN_ID = re.compile(r'[a-z0-9_]{1,64}')
_TABLE_PATH = re.compile(r'[A-Za-z0-9_.:-]+')


def new_run_id(now: datetime.datetime, token: str) -> str:
  """A load run id from the launch time (UTC) and a random token: `20261201t120000_ab12cd34`."""
  return f'{now.astimezone(datetime.timezone.utc):%Y%m%dt%H%M%S}_{token.lower()}'


def staging_table_id(table: str, run_id: str) -> str:
  """The staging table of `table` for run `run_id` (lower-case letters, digits, underscores)."""
  if not _RUN_ID.fullmatch(run_id or ''):
    raise ValueError(f'a load run id is 1 to 64 lower-case letters, digits or underscores, got '
                     f'{run_id!r}')
  return f'{table}__staging_{run_id}'


def quoted(path: str) -> str:
  """`project.dataset.table` as a quoted SQL table path (project ids may contain `-`)."""
  if not _TABLE_PATH.fullmatch(path or ''):
    raise ValueError(f'not a BigQuery table path: {path!r}')
  return f'`{path}`'


def merge_source_sql(staging: str, table: str) -> str:
  """The rows of `staging` a MERGE into `table` inserts from: all of them, or one per key for the
  tables whose key is unique within a run."""
  if table not in UNIQUE_IN_RUN:
    return f'SELECT * FROM {quoted(staging)}'
  key = ', '.join(MERGE_KEYS[table])
  return (f'SELECT * EXCEPT(_copy) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {key}) '
          f'AS _copy FROM {quoted(staging)}) WHERE _copy = 1')


def merge_sql(target: str, staging: str, table: str, columns: Sequence[str]) -> str:
  """`MERGE` of `staging` into `target` (both full table paths) on `table`'s natural key, inserting
  every column of `columns` for the rows whose key `target` does not hold."""
  on = ' AND '.join(f't.{c} = s.{c}' for c in MERGE_KEYS[table])
  return (f'MERGE {quoted(target)} t USING ({merge_source_sql(staging, table)}) s ON {on} '
          f'WHEN NOT MATCHED THEN INSERT ({", ".join(columns)}) '
          f'VALUES ({", ".join("s." + c for c in columns)})')


def count_sql(source: str) -> str:
  """Counts the rows of a `SELECT` (the MERGE's source: staged rows considered)."""
  return f'SELECT COUNT(*) AS n FROM ({source})'


def hourly_range_sql(staging: str) -> str:
  """The hours a run's hourly staging rows cover: `lo` (first hour) and `hi` (end of the last),
  NULL when it has none. The rebuild reads only those partitions of `events` and the hourly
  table."""
  return (f'SELECT MIN(window_start) AS lo, TIMESTAMP_ADD(MAX(window_start), INTERVAL 1 HOUR) '
          f'AS hi FROM {quoted(staging)}')


def _hourly_cte(hourly: str, staging: str, events: str) -> str:
  """The touched keys, their totals recomputed from `events`, and the hourly table's current
  pane per key, between the query parameters @lo and @hi.

  The totals follow the rules HourlyBatch applies (transforms/rules/activity.py and
  `profile.event_name`): the customer is the userId, else the anonymousId (an event with neither
  counts nowhere); the name is the track event name, else the call type, `page` for a screen;
  only `Order Completed` has revenue (`total`, else `revenue`), and keys on its currency when it
  has one (so each stored key is one group). tests/integration/test_batch_pipeline.py checks the
  result against those Python rules.
  """
  return f"""WITH touched AS (
  SELECT DISTINCT window_start, customer_id, identified, event_name FROM {quoted(staging)}
), named AS (
  SELECT TIMESTAMP_TRUNC(event_time, HOUR) AS window_start,
    COALESCE(NULLIF(user_id, ''), NULLIF(anonymous_id, '')) AS customer_id,
    IFNULL(user_id != '', FALSE) AS identified,
    CASE WHEN type = 'track' AND IFNULL(event, '') != '' THEN event
      WHEN type = 'screen' THEN 'page' ELSE type END AS event_name,
    currency, total, revenue
  FROM {quoted(events)} WHERE event_time >= @lo AND event_time < @hi
), contributions AS (
  SELECT window_start, customer_id, identified, event_name, currency,
    IF(event_name = 'Order Completed', COALESCE(total, revenue), NULL) AS revenue
  FROM named WHERE customer_id IS NOT NULL
), keyed AS (
  SELECT *, IF(revenue IS NULL, NULL, currency) AS key_currency FROM contributions
), totals AS (
  SELECT c.window_start, c.customer_id, c.identified, c.event_name, c.key_currency,
    COUNT(*) AS event_count, SUM(c.revenue) AS revenue
  FROM keyed c JOIN touched k ON c.window_start = k.window_start
    AND c.customer_id = k.customer_id AND c.identified = k.identified
    AND c.event_name = k.event_name
  GROUP BY c.window_start, c.customer_id, c.identified, c.event_name, c.key_currency
), rebuilt AS (
  SELECT window_start, customer_id, identified, event_name, event_count, revenue,
    key_currency AS currency
  FROM totals
), stored AS (
  SELECT window_start, customer_id, identified, event_name, currency, event_count, revenue,
    pane_index, MAX(pane_index) OVER (PARTITION BY window_start, customer_id, identified,
      event_name, currency) AS last_pane
  FROM {quoted(hourly)} WHERE window_start >= @lo AND window_start < @hi
), panes AS (
  SELECT DISTINCT window_start, customer_id, identified, event_name, currency, last_pane
  FROM stored
), current_panes AS (
  SELECT * FROM stored WHERE pane_index = last_pane
), changed AS (
  SELECT r.*, p.last_pane FROM rebuilt r
  LEFT JOIN panes p ON r.window_start = p.window_start AND r.customer_id = p.customer_id
    AND r.identified = p.identified AND r.event_name = p.event_name
    AND IFNULL(r.currency, '') = IFNULL(p.currency, '')
  WHERE NOT EXISTS (
    SELECT 1 FROM current_panes c WHERE c.window_start = r.window_start
      AND c.customer_id = r.customer_id AND c.identified = r.identified
      AND c.event_name = r.event_name AND IFNULL(c.currency, '') = IFNULL(r.currency, '')
      AND c.event_count = r.event_count
      AND (c.revenue = r.revenue OR (c.revenue IS NULL AND r.revenue IS NULL)))
)"""


HOURLY_COLUMNS = ('window_start', 'window_end', 'customer_id', 'identified', 'event_name',
                  'event_count', 'revenue', 'currency', 'pane_index', 'pane_timing', 'emitted_at')


def hourly_rebuild_sql(hourly: str, staging: str, events: str) -> str:
  """Adds a pane to `hourly` for every key `staging` touched whose totals over `events` differ
  from the table's current pane (the highest `pane_index`): pane 0 `ON_TIME` for a key the table
  does not hold, else the next index, `LATE`. Totals equal to the current pane add nothing, so a
  re-run adds no row. Query parameters: @lo and @hi (TIMESTAMP, `hourly_range_sql`)."""
  return (f'INSERT INTO {quoted(hourly)} ({", ".join(HOURLY_COLUMNS)})\n'
          f'{_hourly_cte(hourly, staging, events)}\n'
          'SELECT window_start, TIMESTAMP_ADD(window_start, INTERVAL 1 HOUR), customer_id, '
          'identified, event_name, event_count, revenue, currency, IFNULL(last_pane + 1, 0), '
          "IF(last_pane IS NULL, 'ON_TIME', 'LATE'), CURRENT_TIMESTAMP() FROM changed")


def hourly_rebuilt_count_sql(hourly: str, staging: str, events: str) -> str:
  """How many rows the rebuild computes (`rebuilt`; those equal to the current pane are the
  ones already present). Same parameters as `hourly_rebuild_sql`."""
  return f'{_hourly_cte(hourly, staging, events)}\nSELECT COUNT(*) AS n FROM rebuilt'
