"""The last step of a batch run: merge the run's staging tables into the warehouse tables, then
drop them (transforms/rules/loads.py has the keys and the SQL; docs/OPERATIONS.md, "Re-running
the batch job", what a re-run and a backfill do).

Why a step of the graph rather than code in the launcher after the job: the step runs where the
job runs, after its writes, even when nothing waits for the job (a launcher that exits, a
Dataflow job whose launching process was stopped). It waits for the writes by taking each
staged write's output as a side input: a side input is ready only once the PCollection is
complete, and a write's output (its rejected rows, or for FILE_LOADS the finished load jobs) is
complete only once every row of it is in the staging table.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import apache_beam as beam
from google.api_core.exceptions import NotFound

import schemas
from transforms import metrics
from transforms.rules import loads
from transforms.settings import StagedLoad
from transforms.sinks import bigquery_client

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MergeResult:
  """What merging one staging table did: `considered` rows (staged rows, deduplicated by key
  where the key is unique within a run; for the hourly table the rows recomputed from `events`),
  of which `added` were inserted and the rest the table already held (`present`), in `seconds`
  (the statements' wall time)."""
  table: str
  considered: int
  added: int
  seconds: float = 0.0

  @property
  def present(self) -> int:
    return self.considered - self.added


def _scalar(client, sql: str, job_config=None):
  rows = list(client.query(sql, job_config=job_config).result())
  return rows[0][0] if rows else None


def _merge_keyed(client, load: StagedLoad, table: str) -> MergeResult:
  staging, target = load.path(table), load.path(table, staged=False)
  considered = _scalar(client, loads.count_sql(loads.merge_source_sql(staging, table)))
  columns = [field['name'] for field in schemas.bigquery_fields(table)]
  job = client.query(loads.merge_sql(target, staging, table, columns))
  job.result()
  return MergeResult(table, considered, job.num_dml_affected_rows or 0)


def _rebuild_hourly(client, load: StagedLoad, table: str) -> MergeResult:
  from google.cloud import bigquery
  staging, hourly = load.path(table), load.path(table, staged=False)
  events = load.path('events', staged=False)
  [bounds] = list(client.query(loads.hourly_range_sql(staging)).result())
  if bounds['lo'] is None:  # no hourly rows staged
    return MergeResult(table, 0, 0)
  config = bigquery.QueryJobConfig(query_parameters=[
      bigquery.ScalarQueryParameter('lo', 'TIMESTAMP', bounds['lo']),
      bigquery.ScalarQueryParameter('hi', 'TIMESTAMP', bounds['hi'])])
  considered = _scalar(client, loads.hourly_rebuilt_count_sql(hourly, staging, events), config)
  job = client.query(loads.hourly_rebuild_sql(hourly, staging, events), job_config=config)
  job.result()
  return MergeResult(table, considered, job.num_dml_affected_rows or 0)


def merge_staged(load: StagedLoad) -> list[MergeResult]:
  """Merges every staging table of `load` in `loads.MERGE_ORDER` (events before the hourly
  rebuild, which reads them), then drops them all. A staging table that is gone was merged and
  dropped by an earlier attempt of this step (a retried bundle): it is skipped, logged. Any
  other failure raises: the staging tables stay (until they expire) and a re-run of the job
  merges again, adding nothing twice."""
  client = bigquery_client.cloud_client(load.target.project)
  results = []
  try:
    for table in (t for t in loads.MERGE_ORDER if t in load.tables):
      try:
        client.get_table(load.path(table))
      except NotFound:
        _log.warning('staging table %s is gone: merged and dropped by an earlier attempt',
                     load.path(table))
        continue
      started = time.monotonic()
      merge = _rebuild_hourly if table == loads.HOURLY else _merge_keyed
      result = merge(client, load, table)
      results.append(dataclasses.replace(result, seconds=time.monotonic() - started))
    for table in load.tables:
      client.delete_table(load.path(table), not_found_ok=True)
  finally:
    client.close()
  return results


class _MergeFn(beam.DoFn):
  """None (one seed element) -> a MergeResult per staging table, once every staged write is
  done (the side inputs); counted per table."""

  def __init__(self, load: StagedLoad):
    self._load = load

  def process(self, _, *writes_done):
    for result in merge_staged(self._load):
      metrics.counter(metrics.ROWS_ADDED.format(table=result.table)).inc(result.added)
      metrics.counter(metrics.ROWS_PRESENT.format(table=result.table)).inc(result.present)
      _log.info('merged batch load %s into %s: %d rows added, %d already present (%.1f s)',
                self._load.run_id, result.table, result.added, result.present, result.seconds)
      yield result


class MergeStaged(beam.PTransform):
  """Batch: merges the run's staging tables (`load`) into the warehouse tables once the writes
  into them are complete, then drops them.

  Input: a tuple of the staged writes' outputs (WriteTable's rejected-row dead letters; only
  their completion is used). Output: one MergeResult per staging table merged.
  """

  def __init__(self, load: StagedLoad):
    super().__init__()
    self._load = load

  def expand(self, writes):
    done = [beam.pvalue.AsList(write | f'WriteDone{i}' >> beam.Filter(lambda _: False))
            for i, write in enumerate(writes)]
    return (writes[0].pipeline
            | 'Seed' >> beam.Create([None])
            | 'Merge' >> beam.ParDo(_MergeFn(self._load), *done))
