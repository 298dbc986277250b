"""BigQuery sinks: tables derived from `schemas/`, created ahead of the writes, and a write step
that turns rows BigQuery rejects into dead letters instead of losing them."""
from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.transforms import window
import orjson
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from google.api_core.exceptions import NotFound
from google.cloud import bigquery

import schemas
from transforms import metrics
from transforms.rules import dead_letters
from transforms.settings import (FILE_LOADS, STORAGE_WRITE_API, STREAMING_INSERTS, WRITE_METHODS,
                                 BigQueryTarget)
from transforms.sinks import bigquery_client

__all__ = ['FILE_LOADS', 'SINK_REJECTED', 'STORAGE_WRITE_API', 'STREAMING_INSERTS',
           'WRITE_METHODS', 'BigQueryTarget', 'WriteTable', 'ensure_tables', 'table_definition']
SINK_REJECTED = 'sink_rejected'

_log = logging.getLogger(__name__)


def table_definition(project: str, dataset: str, record: str) -> bigquery.Table:
  """The BigQuery table of record `record`: schema, DAY partitioning and clustering from
  `schemas/<record>.avsc`."""
  table = bigquery.Table(
      f'{project}.{dataset}.{schemas.table_id(record)}',
      schema=[bigquery.SchemaField.from_api_repr(dict(f)) for f in schemas.bigquery_fields(record)])
  partitioning = schemas.time_partitioning(record)
  table.time_partitioning = bigquery.TimePartitioning(type_=partitioning['type'],
                                                      field=partitioning['field'])
  table.clustering_fields = schemas.clustering_fields(record) or None
  table.description = schemas.avro_schema(record).get('doc')
  return table


def ensure_tables(project: str, dataset: str, records=schemas.TABLES,
                  location: str | None = None) -> list[str]:
  """Creates the dataset and any missing table (existing tables are left as they are).

  Runs where the job is launched, before the graph, so the sinks can use CREATE_NEVER: Beam's
  own table creation cannot set clustering on every write path. Returns the table ids it created.
  """
  client = bigquery_client.cloud_client(project)
  ds = bigquery.Dataset(f'{project}.{dataset}')
  if location:
    ds.location = location
  client.create_dataset(ds, exists_ok=True)
  created = []
  for record in records:
    table = table_definition(project, dataset, record)
    try:
      client.get_table(table.reference)
    except NotFound:
      client.create_table(table)
      created.append(table.table_id)
      _log.info('created table %s (DAY-partitioned on %s, clustered by %s)', table.full_table_id
                or table.table_id, table.time_partitioning.field, table.clustering_fields)
  return created


class _ToRowFn(beam.DoFn):
  """Record -> BigQuery JSON row, counted per table."""

  def __init__(self, record: str):
    self._record = record
    self._sent = metrics.counter(metrics.ROWS_SENT.format(table=schemas.table_id(record)))

  def process(self, record):
    self._sent.inc()
    yield schemas.to_bigquery_row(self._record, record)


class _RejectedToDeadLetterFn(beam.DoFn):
  """(destination, row, errors) from WriteToBigQuery -> dead-letter record."""

  def __init__(self, table: str, step: str):
    self._step = step
    self._rejected = metrics.counter(metrics.ROWS_REJECTED.format(table=table))

  def process(self, element):
    destination, row, errors = element
    self._rejected.inc()
    yield dead_letters.dead_letter(
        SINK_REJECTED, f'BigQuery rejected the row for {destination}: {errors}', self._step,
        orjson.dumps(row), 'pipeline', time.time_ns() // 1000)


class WriteTable(beam.PTransform):
  """Writes records of `record` (a schema in `schemas/`) to `<table>` of the `target` dataset.

  Input: records shaped like `schemas/<record>.avsc` (times as epoch microseconds, JSON columns as
  Python objects). Output: dead-letter records for rows BigQuery rejected permanently (transient
  errors are retried by Beam). The table must exist (see `ensure_tables`). When
  BIGQUERY_EMULATOR_HOST is set every call goes to the emulator.
  """

  def __init__(self, record: str, target: BigQueryTarget):
    super().__init__()
    self._record = record
    self._table = schemas.table_id(record)
    self._project = target.project
    self._dataset = target.dataset
    self._method = target.method
    self._temp_location = target.temp_location

  def expand(self, pcoll):
    write = WriteToBigQuery(
        table=f'{self._project}:{self._dataset}.{self._table}',
        schema=schemas.bigquery_schema(self._record),
        create_disposition=BigQueryDisposition.CREATE_NEVER,
        write_disposition=BigQueryDisposition.WRITE_APPEND,
        method=self._method,
        insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
        custom_gcs_temp_location=self._temp_location if self._method == FILE_LOADS else None,
        validate=False,
        test_client=bigquery_client.beam_test_client(self._project))
    result = (pcoll
              | 'ToRow' >> beam.ParDo(_ToRowFn(self._record))
              | 'Write' >> write)
    if self._method == FILE_LOADS:
      # Load jobs fail as a whole (and fail the pipeline): there are no per-row rejections.
      return pcoll.pipeline | 'NoRejections' >> beam.Create([])
    return (result.failed_rows_with_errors
            | 'RejectedToDeadLetter' >> beam.ParDo(
                _RejectedToDeadLetterFn(self._table, self.label))
            # Windowed inputs (hourly rows) reject windowed rows; dead letters are unwindowed.
            | 'RejectedToGlobalWindow' >> beam.WindowInto(window.GlobalWindows()))
