"""Every option the job takes beyond Beam's own (`--project`, `--runner`, `--temp_location`, ...),
and the settings built from them.

Names are a contract: the Makefile, the benchmarks and the flex template's metadata.json use them.
The transforms take settings objects (transforms/settings.py), each checked once when it is built:
`graph_settings()` builds those of the graph, `cloud_settings()` those of its sinks, and a bad
value raises ValueError naming the option.
"""
from __future__ import annotations

import decimal
import typing

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

import schemas
from transforms.rules import events, holdout, profile, served
from transforms.rules.audiences import definitions
from transforms.rules.audiences.evaluate import Evaluator
from transforms.rules.events import DEFAULT_MAX_MESSAGE_BYTES
from transforms.settings import (DEFAULT_ALLOWED_LATENESS_HOURS, DEFAULT_DEDUPE_HOURS,
                                 DEFAULT_FIRESTORE_RETRY_SECONDS, DEFAULT_FLUSH_SECONDS,
                                 DEFAULT_IDENTITY_BUFFER_HOURS, DEFAULT_POPULARITY_WINDOW_HOURS,
                                 DEFAULT_REFRESH_MINUTES, DEFAULT_RESTART_DEDUPE_HOURS,
                                 DEFAULT_SHARDS, STREAMING_INSERTS, WRITE_METHODS, BigQueryTarget,
                                 DedupeSettings, EventSources, FirestoreLocation, FirestoreRetry,
                                 HourlySettings, LiveSettings, ParseLimits, PubSubSource,
                                 RedisTier, ReferenceFiles, Sharding, TriggersTopic)


class GraphSettings(typing.NamedTuple):
  """What `pipeline.graph.build_outputs` needs, every part checked."""
  sources: EventSources
  parse: ParseLimits
  reference: ReferenceFiles
  sharding: Sharding          # batch
  dedupe: DedupeSettings      # streaming
  hourly: HourlySettings      # streaming
  live: LiveSettings          # streaming
  profile: profile.Settings
  as_of_micros: int | None    # batch


class CloudSettings(typing.NamedTuple):
  """Where the job writes (and a streaming job reads back), every part checked."""
  bigquery: BigQueryTarget
  documents: FirestoreLocation
  popularity: FirestoreLocation
  firestore_retry: FirestoreRetry
  triggers_topic: TriggersTopic | None
  audience_topic: TriggersTopic | None
  profile_changes_topic: TriggersTopic | None
  redis: RedisTier | None


class PersonalizationOptions(PipelineOptions):

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--events', default=None,
        help='Comma-separated file patterns of Segment events: newline-delimited JSON (.gz is '
             'decompressed) or, for patterns ending in .avro, Avro files of '
             'schemas/segment_event.avsc; local paths or gs://. Required in batch.')
    parser.add_argument(
        '--subscription', default=None,
        help='Streaming (--streaming): Pub/Sub subscription of the events, as a full path '
             'projects/PROJECT/subscriptions/NAME. --events files, if given, are read too and '
             'merged with the stream (a backfill or a nightly drop).')
    parser.add_argument(
        '--pubsub_id_attribute', default=None,
        help='Pub/Sub attribute holding a unique message id, for Pub/Sub-level dedupe '
             '(ReadFromPubSub id_label). Dataflow only: the DirectRunner rejects it. The graph '
             'dedupes by messageId in any case.')
    parser.add_argument(
        '--dedupe_hours', type=float, default=DEFAULT_DEDUPE_HOURS,
        help='Streaming: how long after an event a copy with the same messageId is still dropped '
             '(processing time). Batch dedupe is exact over the whole input.')
    parser.add_argument(
        '--batch_shards', type=int, default=DEFAULT_SHARDS,
        help='Batch: the dedupe and the per-customer fold shuffle events in compressed chunks '
             'per shard of message ids and of customer ids, this many shards each. One worker '
             'holds one shard\'s events in memory at a time (encoded, about 1.5 KB each), and a '
             'shard is the unit of parallelism of those steps: raise it for inputs of hundreds '
             'of millions of events (keep events per shard under about 200,000).')
    parser.add_argument(
        '--allowed_lateness_hours', type=float, default=DEFAULT_ALLOWED_LATENESS_HOURS,
        help='How late (behind the watermark) an event may arrive and still update its hourly '
             'aggregate. Later events still land in the events table.')
    parser.add_argument(
        '--customers', default=None,
        help='CRM export: CSV with a header (customer_id,email,first_name,last_name,country,'
             'language,email_opt_in,created_at,loyalty_tier) or NDJSON with the same fields.')
    parser.add_argument(
        '--catalog', default=None,
        help='Product catalog: CSV with a header (product_id,sku,name,category,brand,price,'
             'currency,in_stock,url,image_url) or NDJSON with the same fields.')
    parser.add_argument(
        '--as_of', default=None,
        help='Batch: the reference time of the documents (ISO-8601, e.g. 2026-11-15T00:00:00Z): '
             'cart abandonment and at-risk are judged at this time. Default: the newest event '
             'time in the input. Streaming uses processing time.')
    parser.add_argument(
        '--cart_abandon_minutes', type=float, default=60,
        help='A cart with items whose last change is older than this (at the reference time) is '
             'abandoned and triggers a cart_abandoned record.')
    parser.add_argument(
        '--document_flush_seconds', type=float, default=DEFAULT_FLUSH_SECONDS,
        help='Streaming: a customer\'s document is written at most once per this many seconds '
             'of processing time (events in between are coalesced into one write). 0 writes '
             'after every event: lowest latency, most Firestore writes.')
    parser.add_argument(
        '--restart_dedupe_hours', type=float, default=DEFAULT_RESTART_DEDUPE_HOURS,
        help='Streaming: at start-up, read the message ids the events table received in the '
             'last this many hours and drop those events if they come again (a job restarted '
             'over the same subscription, or the same events republished). 0 turns it off. '
             'Costs one query and memory for the ids per worker process.')
    parser.add_argument(
        '--firestore_retry_seconds', type=float, default=DEFAULT_FIRESTORE_RETRY_SECONDS,
        help='How long transient Firestore errors (unreachable, overloaded, timed out) are '
             'retried, with exponential backoff, before the write fails the bundle (and a local '
             'run) with a clear error.')
    parser.add_argument(
        '--vip_lifetime_value', type=float, default=500,
        help='Lifetime order value from which a customer is in the vip segment (5 or more '
             'orders also make a vip).')
    parser.add_argument(
        '--audiences', default=None,
        help='A definitions file of computed traits and audiences (YAML, docs/AUDIENCES.md; '
             'check it with `python -m pipeline.audiences check FILE`): every document gets '
             'their `traits` and `audiences`. A file with problems stops the job before it '
             'starts, each problem with its line.')
    parser.add_argument(
        '--holdout_percent', type=float, default=0,
        help='Share of customers in the global holdout (control) group, 0 to 50 in steps of '
             '0.01; 0 turns it off. Their documents carry holdout: true, so the ESP skips them '
             '(docs/ENGAGEMENT.md). Give the connector the same value.')
    parser.add_argument(
        '--holdout_salt', default=holdout.DEFAULT_SALT,
        help='Salt of the holdout assignment (sha256 of "salt:customer_id"): a new salt draws a '
             'new control group. Give the connector the same value.')
    parser.add_argument(
        '--identity_buffer_hours', type=float, default=DEFAULT_IDENTITY_BUFFER_HOURS,
        help='Streaming: how long anonymous events wait in state for an identify that links '
             'their anonymousId to a userId; when the link arrives they are replayed to that '
             'customer. Batch links across the whole input.')
    parser.add_argument(
        '--side_input_refresh_minutes', type=float, default=DEFAULT_REFRESH_MINUTES,
        help='Streaming: how often each worker re-reads --customers and --catalog, so catalog '
             'price or stock changes and new CRM rows reach documents without a restart.')
    parser.add_argument(
        '--popularity_window_hours', type=float, default=DEFAULT_POPULARITY_WINDOW_HOURS,
        help='Streaming: recommendations rank products by the distinct customers who viewed, '
             'added or bought them within this many hours (batch: over the whole input).')
    parser.add_argument(
        '--popularity_collection', default='product_popularity',
        help='Streaming: Firestore collection where the job keeps product popularity; workers '
             're-read it with the CRM and catalog.')
    parser.add_argument(
        '--triggers_topic', default=None,
        help='Pub/Sub topic (projects/PROJECT/topics/NAME) that receives cart-abandonment '
             'triggers as JSON; they always go to the cart_triggers table too.')
    parser.add_argument(
        '--audience_topic', default=None,
        help='Pub/Sub topic (projects/PROJECT/topics/NAME) that receives each change of audience '
             'membership (--audiences) as a Segment track event, Audience Entered or Audience '
             'Exited; they always go to the audience_membership table too.')
    parser.add_argument(
        '--profile_changes_topic', default=None,
        help='Pub/Sub topic (projects/PROJECT/topics/NAME) that receives one JSON message per '
             'customer and document write: the fields that changed with their new values, the '
             "document's version and the audiences entered and exited "
             '(schemas/profile_change.schema.json). The connector\'s sync worker and live stream '
             'read it. A write that changes nothing is skipped and publishes nothing.')
    parser.add_argument(
        '--redis_url', default=None,
        help='Redis serving tier (docs/OPERATIONS.md): redis://HOST:PORT/DB (rediss:// for TLS; '
             'Memorystore on GCP). After each Firestore commit the writer also puts every '
             "customer's served entry (the connector's response bytes, ETag, version, "
             'last_event_at) there, version-checked, and a tombstone for a deleted document. '
             'Redis failing past --firestore_retry_seconds fails the bundle, as Firestore does.')
    parser.add_argument(
        '--redis_key_prefix', default=served.DEFAULT_PREFIX,
        help='Prefix of the Redis keys (one hash per customer); the connector\'s '
             'CONNECTOR_REDIS_KEY_PREFIX must be the same.')
    parser.add_argument(
        '--dataset', default='personalization',
        help='BigQuery dataset of the events, dead_letter and aggregate tables.')
    parser.add_argument(
        '--collection', default='customers',
        help='Firestore collection of the serving documents (one per customer).')
    parser.add_argument(
        '--firestore_database', default='(default)',
        help='Firestore database id.')
    parser.add_argument(
        '--bigquery_write_method', default=STREAMING_INSERTS, choices=WRITE_METHODS,
        help='How rows reach BigQuery. FILE_LOADS (batch only) needs --temp_location. '
             'STORAGE_WRITE_API is not usable yet: Beam 2.77 cannot map the tables\' JSON '
             'columns for it, and it needs a Java expansion service (docs/DEPLOY.md).')
    parser.add_argument(
        '--bigquery_location', default=None,
        help='Location of the BigQuery dataset when the job creates it (e.g. EU, US).')
    parser.add_argument(
        '--bigquery_kms_key', default=None,
        help='Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K, in the dataset\'s '
             'location) that encrypts the BigQuery dataset and tables (CMEK): the default key '
             'of a dataset the job creates and the key of each table it creates. Existing ones '
             'keep theirs (a warning names them). BigQuery\'s service agent needs '
             'roles/cloudkms.cryptoKeyEncrypterDecrypter on it (docs/DEPLOY.md).')
    parser.add_argument(
        '--skip_table_setup', action='store_true', default=False,
        help='Do not create the dataset and tables before the run (they exist already).')
    parser.add_argument(
        '--max_message_bytes', type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
        help='Largest accepted event payload in bytes; larger ones are dead-lettered '
             '(size_violation).')

  def event_patterns(self) -> list[str]:
    return [p.strip() for p in (self.events or '').split(',') if p.strip()]

  def graph_settings(self) -> GraphSettings:
    """The settings of the graph; ValueError naming the option when one is bad."""
    return GraphSettings(
        sources=self.event_sources(),
        parse=ParseLimits(self.max_message_bytes),
        reference=ReferenceFiles(self.customers or None, self.catalog or None),
        sharding=Sharding(self.batch_shards),
        dedupe=DedupeSettings(self.dedupe_hours, self.restart_dedupe_hours),
        hourly=HourlySettings(self.allowed_lateness_hours),
        live=LiveSettings(self.identity_buffer_hours, self.document_flush_seconds,
                          self.side_input_refresh_minutes, self.popularity_window_hours),
        profile=self.profile_settings(),
        as_of_micros=self.as_of_micros())

  def cloud_settings(self, project: str | None = None) -> CloudSettings:
    """Where the job writes, in `project` (default: --project); ValueError when a setting is
    bad."""
    project = project or self.view_as(GoogleCloudOptions).project
    return CloudSettings(
        bigquery=BigQueryTarget(project, self.dataset, self.bigquery_write_method,
                                self.view_as(GoogleCloudOptions).temp_location,
                                kms_key=self.bigquery_kms_key),
        documents=FirestoreLocation(project, self.collection, self.firestore_database),
        popularity=FirestoreLocation(project, self.popularity_collection,
                                     self.firestore_database),
        firestore_retry=FirestoreRetry(self.firestore_retry_seconds),
        triggers_topic=TriggersTopic(self.triggers_topic) if self.triggers_topic else None,
        audience_topic=(TriggersTopic(self.audience_topic, 'audience_topic')
                        if self.audience_topic else None),
        profile_changes_topic=(TriggersTopic(self.profile_changes_topic, 'profile_changes_topic')
                               if self.profile_changes_topic else None),
        redis=(RedisTier(self.redis_url, self.redis_key_prefix, self.firestore_retry_seconds)
               if self.redis_url else None))

  def event_sources(self) -> EventSources:
    """Files (--events) and, streaming, the subscription: batch needs files, streaming a
    subscription."""
    pubsub = None
    if self.view_as(StandardOptions).streaming:
      if not self.subscription:
        raise ValueError('--subscription is required with --streaming '
                         '(projects/PROJECT/subscriptions/NAME)')
      pubsub = PubSubSource(self.subscription, self.pubsub_id_attribute or None)
    return EventSources(tuple(self.event_patterns()), pubsub)

  def profile_settings(self) -> profile.Settings:
    """The fold's and render's settings; ValueError (a DefinitionsError listing every problem
    of --audiences with its line) when one is bad."""
    return profile.Settings(cart_abandon_minutes=self.cart_abandon_minutes,
                            vip_lifetime_value=decimal.Decimal(str(self.vip_lifetime_value)),
                            holdout=holdout.Holdout(self.holdout_percent, self.holdout_salt),
                            audiences=self.audience_definitions())

  def audience_definitions(self) -> Evaluator | None:
    """--audiences read (a local or gs:// path, through Beam's FileSystems) and checked."""
    if not self.audiences:
      return None
    try:
      with FileSystems.open(self.audiences, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read(definitions.MAX_FILE_BYTES + 1)
    except (OSError, BeamIOError) as err:
      raise definitions.DefinitionsError(self.audiences, [definitions.Problem(
          None, None, f'cannot read the file: {err}')]) from None
    return Evaluator(definitions.from_bytes(data, self.audiences))

  def as_of_micros(self) -> int | None:
    """--as_of in epoch microseconds; ValueError when it is not ISO-8601."""
    if not self.as_of:
      return None
    parsed = events.parse_time(self.as_of)
    if parsed is None:
      raise ValueError(f'--as_of is not an ISO-8601 time: {self.as_of!r}')
    return schemas.datetime_to_micros(parsed)
