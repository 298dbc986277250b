"""BigQuery sinks: tables derived from `schemas/`, created ahead of the writes, and a write step
that turns rows BigQuery rejects into dead letters instead of losing them."""
from __future__ import annotations

import datetime
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
from transforms.rules import dead_letters, loads
from transforms.settings import (FILE_LOADS, STORAGE_WRITE_API, STREAMING_INSERTS, WRITE_METHODS,
                                 BigQueryTarget, StagedLoad)
from transforms.sinks import bigquery_client

__all__ = ['FILE_LOADS', 'SINK_REJECTED', 'STORAGE_WRITE_API', 'STREAMING_INSERTS',
           'WRITE_METHODS', 'BigQueryTarget', 'WriteTable', 'create_staging_tables', 'ensure_tables',
           'table_definition']
SINK_REJECTED = 'sink_rejected'

_log = logging.getLogger(__name__)


def table_definition(project: str, dataset: str, record: str,
                     table_id: str | None = None) -> bigquery.Table:
  """The BigQuery table of record `record`: schema, DAY partitioning and clustering from
  `schemas/<record>.avsc`; named `table_id` when given (a staging table), else the record's."""
  table = bigquery.Table(
      f'{project}.{dataset}.{table_id or schemas.table_id(record)}',
      schema=[bigquery.SchemaField.from_api_repr(dict(f)) for f in schemas.bigquery_fields(record)])
  partitioning = schemas.time_partitioning(record)
  table.time_partitioning = bigquery.TimePartitioning(type_=partitioning['type'],
                                                      field=partitioning['field'])
  table.clustering_fields = schemas.clustering_fields(record) or None
  table.description = schemas.avro_schema(record).get('doc')
  return table


def ensure_tables(project: str, dataset: str, records=schemas.TABLES,
                  location: str | None = None, kms_key: str | None = None) -> list[str]:
  """Creates the dataset and any missing table (existing tables are left as they are).

  Runs where the job is launched, before the graph, so the sinks can use CREATE_NEVER: Beam's
  own table creation cannot set clustering on every write path. Returns the table ids it created.
  With `kms_key` (CMEK) a new dataset gets it as its default key (so tables made later in it,
  such as load and staging tables, inherit it) and each new table gets it explicitly; a dataset
  or table that BigQuery reports with another key, or none (one that existed before; the local
  emulator keeps no key at all), is logged as a warning: BigQuery applies a key when it creates a
  table (docs/DEPLOY.md, "Encryption keys", says how to re-key one).
  """
  client = bigquery_client.cloud_client(project)
  ds = bigquery.Dataset(f'{project}.{dataset}')
  if location:
    ds.location = location
  if kms_key:
    ds.default_encryption_configuration = bigquery.EncryptionConfiguration(kms_key)
  ds = client.create_dataset(ds, exists_ok=True)
  _warn_on_other_key(f'dataset {project}.{dataset}', ds.default_encryption_configuration, kms_key)
  created = []
  for record in records:
    table = table_definition(project, dataset, record)
    if kms_key:
      table.encryption_configuration = bigquery.EncryptionConfiguration(kms_key)
    try:
      found = client.get_table(table.reference)
    except NotFound:
      client.create_table(table)
      created.append(table.table_id)
      _log.info('created table %s (DAY-partitioned on %s, clustered by %s)', table.full_table_id
                or table.table_id, table.time_partitioning.field, table.clustering_fields)
    else:
      _warn_on_other_key(f'table {project}.{dataset}.{table.table_id}',
                         found.encryption_configuration, kms_key)
  return created


def other_key(found: bigquery.EncryptionConfiguration | None, kms_key: str | None) -> str | None:
  """What a dataset's or table's encryption says when it is not `kms_key`: the key it has, or
  'Google-managed encryption'; None when it matches (or no key is asked for)."""
  if not kms_key:
    return None
  has = found.kms_key_name if found is not None else None
  if has == kms_key:
    return None
  return f'key {has}' if has else 'Google-managed encryption'


def _warn_on_other_key(what: str, found, kms_key: str | None) -> None:
  has = other_key(found, kms_key)
  if has:
    _log.warning('%s has %s, not --bigquery_kms_key %s: BigQuery applies a key when a dataset '
                 'or table is created, so it keeps its encryption (re-key a table with `bq '
                 'update --destination_kms_key KEY DATASET.TABLE`, set a dataset\'s default with '
                 '`bq update --default_kms_key KEY DATASET`)', what, has, kms_key)


def create_staging_tables(load: StagedLoad) -> list[str]:
  """Creates the run's staging tables (`load.tables`, shaped like their tables, expiring after
  `loads.STAGING_EXPIRATION_HOURS` in case the run fails before it drops them). The dataset must
  exist, and so must the tables the staging tables merge into (their MERGE ends the run): NotFound
  when one does not (asked first: the emulator answers a table creation in a missing dataset with
  a 500, which the client would retry for minutes). Returns the staging table ids."""
  client = bigquery_client.cloud_client(load.target.project)
  expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
      hours=loads.STAGING_EXPIRATION_HOURS)
  created = []
  try:
    client.get_dataset(f'{load.target.project}.{load.target.dataset}')
    for record in load.tables:
      client.get_table(load.path(record, staged=False))
    for record in load.tables:
      table = table_definition(load.target.project, load.target.dataset, record,
                               load.table_id(record))
      table.expires = expires
      table.description = f'Staging table of batch load {load.run_id} (dropped after its MERGE)'
      client.create_table(table)
      created.append(table.table_id)
  finally:
    client.close()
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
  errors are retried by Beam), complete only once every row is written (a batch MERGE waits on
  it). `destination` names another table of the dataset with the same schema (a batch run's
  staging table); counters keep the record's table name. The table must exist (see
  `ensure_tables`). When BIGQUERY_EMULATOR_HOST is set every call goes to the emulator.
  """

  def __init__(self, record: str, target: BigQueryTarget, destination: str | None = None):
    super().__init__()
    self._record = record
    self._table = schemas.table_id(record)
    self._destination = destination or self._table
    self._project = target.project
    self._dataset = target.dataset
    self._method = target.method
    self._temp_location = target.temp_location

  def expand(self, pcoll):
    write = WriteToBigQuery(
        table=f'{self._project}:{self._dataset}.{self._destination}',
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
      # Load jobs fail as a whole (and fail the pipeline): there are no per-row rejections. The
      # empty output is derived from the finished load and copy jobs (Beam's job-triggering
      # steps wait for their jobs when a bundle finishes), so it completes after the writes.
      return ((result.destination_load_jobid_pairs, result.destination_copy_jobid_pairs)
              | 'JobsDone' >> beam.Flatten()
              | 'NoRejections' >> beam.FlatMap(lambda _: ()))
    return (result.failed_rows_with_errors
            | 'RejectedToDeadLetter' >> beam.ParDo(
                _RejectedToDeadLetterFn(self._table, self.label))
            # Windowed inputs (hourly rows) reject windowed rows; dead letters are unwindowed.
            | 'RejectedToGlobalWindow' >> beam.WindowInto(window.GlobalWindows()))
