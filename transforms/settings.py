"""The settings the transforms take: small frozen objects, each checked once, when it is built.

`pipeline/options.py` builds them from the job's options and `pipeline/run.py` builds them before
anything starts, so a bad value fails on the laptop with one message; the transforms take them
as one parameter each and do not check them again. A check that concerns one option names it
(`--dedupe_hours must be positive, got 0`), so the message can be shown as it is.
"""
from __future__ import annotations

import dataclasses
import re

from transforms.rules import checks, loads, resources, served
from transforms.rules.events import DEFAULT_MAX_MESSAGE_BYTES

# Batch shuffles (transforms/shards.py).
DEFAULT_SHARDS = 256
# Lines buffered per shard before a chunk is compressed and emitted: a few hundred encoded
# events, enough for zstd to compress them well (docs/PERFORMANCE.md, "Shuffles of compressed
# chunks").
CHUNK_BYTES = 256 * 1024

DEFAULT_DEDUPE_HOURS = 24
DEFAULT_RESTART_DEDUPE_HOURS = 6
DEFAULT_ALLOWED_LATENESS_HOURS = 24
DEFAULT_IDENTITY_BUFFER_HOURS = 24
DEFAULT_FLUSH_SECONDS = 0.5
DEFAULT_REFRESH_MINUTES = 60
DEFAULT_POPULARITY_WINDOW_HOURS = 24
DEFAULT_FIRESTORE_RETRY_SECONDS = 120.0
DEFAULT_DATABASE = '(default)'

# How rows reach BigQuery (transforms/sinks/bigquery.py).
STREAMING_INSERTS = 'STREAMING_INSERTS'
FILE_LOADS = 'FILE_LOADS'
STORAGE_WRITE_API = 'STORAGE_WRITE_API'
WRITE_METHODS = (STREAMING_INSERTS, FILE_LOADS, STORAGE_WRITE_API)


def _positive(value, option: str) -> None:
  checks.positive(value, f'--{option}')


def _non_negative(value, option: str) -> None:
  checks.non_negative(value, f'--{option}')


def _pubsub_path(path: str | None, kind: str, option: str) -> None:
  problem = resources.pubsub_path_problem(path, kind)
  if problem:
    raise ValueError(f'--{option} {problem}')


@dataclasses.dataclass(frozen=True)
class PubSubSource:
  """The events subscription (`--subscription`, `projects/P/subscriptions/S`) and the attribute
  Pub/Sub may dedupe on (`--pubsub_id_attribute`, Dataflow only)."""
  subscription: str
  id_attribute: str | None = None

  def __post_init__(self):
    _pubsub_path(self.subscription, 'subscription', 'subscription')


@dataclasses.dataclass(frozen=True)
class EventSources:
  """Where events come from: file patterns (`--events`) and, streaming, a subscription."""
  files: tuple[str, ...] = ()
  pubsub: PubSubSource | None = None

  def __post_init__(self):
    if not self.files and self.pubsub is None:
      raise ValueError('--events is required: comma-separated patterns of event files')


@dataclasses.dataclass(frozen=True)
class ParseLimits:
  """The largest accepted event payload (`--max_message_bytes`); larger ones are dead letters."""
  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

  def __post_init__(self):
    _positive(self.max_message_bytes, 'max_message_bytes')


@dataclasses.dataclass(frozen=True)
class ReferenceFiles:
  """File patterns of the CRM export (`--customers`) and the catalog (`--catalog`), or None."""
  customers: str | None = None
  catalog: str | None = None


@dataclasses.dataclass(frozen=True)
class Sharding:
  """How the batch shuffles are cut (transforms/shards.py): `shards` shards of keys
  (`--batch_shards`), chunks of about `chunk_bytes` of lines."""
  shards: int = DEFAULT_SHARDS
  chunk_bytes: int = CHUNK_BYTES

  def __post_init__(self):
    _positive(self.shards, 'batch_shards')
    checks.positive(self.chunk_bytes, 'chunk_bytes')


@dataclasses.dataclass(frozen=True)
class DedupeSettings:
  """Streaming dedupe: later copies of a message id are dropped for `hours` after the first
  (`--dedupe_hours`); a new job also drops the ids the events table received in the last
  `restart_hours` (`--restart_dedupe_hours`, 0 turns that off)."""
  hours: float = DEFAULT_DEDUPE_HOURS
  restart_hours: float = DEFAULT_RESTART_DEDUPE_HOURS

  def __post_init__(self):
    _positive(self.hours, 'dedupe_hours')
    _non_negative(self.restart_hours, 'restart_dedupe_hours')


@dataclasses.dataclass(frozen=True)
class HourlySettings:
  """Streaming hourly activity: how late (behind the watermark) an event may arrive and still
  update its hour (`--allowed_lateness_hours`)."""
  allowed_lateness_hours: float = DEFAULT_ALLOWED_LATENESS_HOURS

  def __post_init__(self):
    _non_negative(self.allowed_lateness_hours, 'allowed_lateness_hours')


@dataclasses.dataclass(frozen=True)
class LiveSettings:
  """Streaming profiles: how long anonymous events wait for a link (`--identity_buffer_hours`),
  how often a customer's document is written at most (`--document_flush_seconds`), how often
  the reference data is re-read (`--side_input_refresh_minutes`), and the window product
  popularity counts over (`--popularity_window_hours`)."""
  identity_buffer_hours: float = DEFAULT_IDENTITY_BUFFER_HOURS
  flush_seconds: float = DEFAULT_FLUSH_SECONDS
  refresh_minutes: float = DEFAULT_REFRESH_MINUTES
  popularity_window_hours: float = DEFAULT_POPULARITY_WINDOW_HOURS

  def __post_init__(self):
    _positive(self.identity_buffer_hours, 'identity_buffer_hours')
    _non_negative(self.flush_seconds, 'document_flush_seconds')
    _positive(self.refresh_minutes, 'side_input_refresh_minutes')
    _positive(self.popularity_window_hours, 'popularity_window_hours')


@dataclasses.dataclass(frozen=True)
class BigQueryTarget:
  """The dataset the job writes its tables to (`--project`, `--dataset`), and how
  (`--bigquery_write_method`; FILE_LOADS stages files under `--temp_location`); `kms_key`
  (`--bigquery_kms_key`) encrypts the dataset and the tables the job creates (CMEK)."""
  project: str
  dataset: str
  method: str = STREAMING_INSERTS
  temp_location: str | None = None
  kms_key: str | None = None

  def __post_init__(self):
    if not self.project:
      raise ValueError(f'a BigQuery target needs a project and a dataset, got project '
                       f'{self.project!r}')
    if not re.fullmatch(r'[A-Za-z0-9_]{1,1024}', self.dataset or ''):
      raise ValueError(f'--dataset {self.dataset!r} is not a BigQuery dataset id (letters, '
                       'digits and underscores; the project comes from --project)')
    if self.method not in WRITE_METHODS:
      raise ValueError(f'unknown BigQuery write method {self.method!r}: use one of '
                       f'{WRITE_METHODS}')
    if self.method == FILE_LOADS and not self.temp_location:
      raise ValueError('--bigquery_write_method=FILE_LOADS needs --temp_location')
    if self.kms_key is not None and resources.kms_key_problem(self.kms_key):
      raise ValueError(f'--bigquery_kms_key {resources.kms_key_problem(self.kms_key)}')


@dataclasses.dataclass(frozen=True)
class StagedLoad:
  """Batch: the run's staging tables (transforms/rules/loads.py). Each table of `tables` is
  written to `<table>__staging_<run_id>` of the `target` dataset (created by `pipeline.run`
  before the job starts), then merged into `<table>` by the job's last step and dropped."""
  target: BigQueryTarget
  run_id: str
  tables: tuple[str, ...]

  def __post_init__(self):
    unknown = [t for t in self.tables if t not in loads.MERGE_ORDER]
    if unknown:
      raise ValueError(f'tables {unknown} are not merged by batch loads (transforms/rules/'
                       f'loads.py MERGE_ORDER)')
    loads.staging_table_id('events', self.run_id)  # checks the run id

  def table_id(self, table: str) -> str:
    """The staging table id of `table` (dataset-relative)."""
    return loads.staging_table_id(table, self.run_id)

  def path(self, table: str, staged: bool = True) -> str:
    """`project.dataset.table` of `table`'s staging table (or, `staged=False`, of the table)."""
    name = self.table_id(table) if staged else table
    return f'{self.target.project}.{self.target.dataset}.{name}'


@dataclasses.dataclass(frozen=True)
class FirestoreLocation:
  """A top-level Firestore collection: serving documents (`--collection`) or product popularity
  (`--popularity_collection`), in `--firestore_database` of the project."""
  project: str
  collection: str
  database: str = DEFAULT_DATABASE

  def __post_init__(self):
    if not self.project or not self.collection:
      raise ValueError(f'a Firestore location needs a project and a collection, got '
                       f'{self.project!r} and {self.collection!r}')
    if '/' in self.collection:
      raise ValueError(f'collection must be a top-level collection name, got '
                       f'{self.collection!r}')


@dataclasses.dataclass(frozen=True)
class FirestoreRetry:
  """How long transient Firestore errors are retried before a write fails its bundle
  (`--firestore_retry_seconds`)."""
  seconds: float = DEFAULT_FIRESTORE_RETRY_SECONDS

  def __post_init__(self):
    _positive(self.seconds, 'firestore_retry_seconds')


@dataclasses.dataclass(frozen=True)
class RedisTier:
  """The Redis serving tier (`--redis_url`, `--redis_key_prefix`): the Firestore writer also
  writes each customer's served entry there (transforms/rules/served.py). `retry_seconds` bounds
  the retries of a failing Redis before the bundle fails (`--firestore_retry_seconds`)."""
  url: str
  prefix: str = served.DEFAULT_PREFIX
  retry_seconds: float = DEFAULT_FIRESTORE_RETRY_SECONDS

  def __post_init__(self):
    if not served.is_redis_url(self.url):
      raise ValueError(f'--redis_url must be redis://HOST:PORT/DB (rediss:// for TLS, unix:// '
                       f'for a socket), got {(self.url or "")[:100]!r}')
    if not served.is_key_prefix(self.prefix):
      raise ValueError(f'--redis_key_prefix must be non-empty, without spaces, got '
                       f'{self.prefix!r}')
    _positive(self.retry_seconds, 'firestore_retry_seconds')

  def __repr__(self):  # the URL may carry a password
    return f'RedisTier(prefix={self.prefix!r})'


@dataclasses.dataclass(frozen=True)
class TriggersTopic:
  """A Pub/Sub topic the job publishes to (`projects/P/topics/T`): cart-abandonment triggers
  (`--triggers_topic`) or audience changes (`--audience_topic`); `option` names it in errors."""
  path: str
  option: str = 'triggers_topic'

  def __post_init__(self):
    _pubsub_path(self.path, 'topic', self.option)
