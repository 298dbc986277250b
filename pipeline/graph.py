"""The whole graph on one screen.

`build_outputs` assembles sources and transforms and returns the PCollections the sinks take;
`build` adds the sinks. Tests hand `build_outputs` a TestPipeline and assert on what it returns;
`run` hands `build` a real pipeline. The graph forks once: batch (files) and streaming (Pub/Sub,
plus optional files) each apply their own composites under the same step labels.
"""
from __future__ import annotations

import datetime
import logging
import typing
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from pipeline.options import PersonalizationOptions
from transforms.audience_changes import BatchAudienceChanges
from transforms.batch_profiles import BatchProfiles
from transforms.clean import ParseEvents
from transforms.dedupe import DedupeBatch, DedupeStream
from transforms.live_profiles import LiveProfiles
from transforms.rules import loads, reference, serving
from transforms.settings import StagedLoad
from transforms.sinks.bigquery import WriteTable
from transforms.sinks.bigquery_merge import MergeStaged
from transforms.sinks.firestore import WriteDocuments
from transforms.sinks.pubsub import PublishAudienceChanges, PublishRecords
from transforms.sources import (ReadEventFiles, ReadPubSubEvents, ReadReference,
                                ReadWholeEventFiles)
from transforms.windows import AssignEventTime, HourlyBatch, HourlyWindowed

_log = logging.getLogger(__name__)


class Outputs(typing.NamedTuple):
  events: beam.PCollection        # unique event records (schemas/events.avsc)
  dead_letters: beam.PCollection  # dead-letter records (schemas/dead_letter.avsc)
  hourly: beam.PCollection        # hourly activity rows (schemas/customer_activity_hourly.avsc)
  documents: beam.PCollection     # (customer_id, serving document, or None: delete it)
  triggers: beam.PCollection      # cart-abandonment records (schemas/cart_triggers.avsc)
  popularity: beam.PCollection | None  # streaming: (product_id, popularity document)
  customers: beam.PCollection | None   # CRM records (transforms.rules.reference.parse_customer)
  catalog: beam.PCollection | None     # product records (transforms.rules.reference.parse_product)
  # --audiences: streaming, audience_membership records; batch, each rendered customer's
  # (customer_id, (audience keys, reference time)), diffed against the table by `build`.
  audience_changes: beam.PCollection | None
  audience_renders: beam.PCollection | None


def build_outputs(p: beam.Pipeline, opts: PersonalizationOptions) -> Outputs:
  settings = opts.graph_settings()
  files, reference_files = settings.sources.files, settings.reference
  customers = catalog = None
  dead = []
  if reference_files.customers:
    crm = p | 'ReadCustomers' >> ReadReference('customers', reference_files.customers,
                                                reference.parse_customer)
    customers = crm.records
    dead.append(crm.dead_letter)
  if reference_files.catalog:
    products = p | 'ReadCatalog' >> ReadReference('catalog', reference_files.catalog,
                                                  reference.parse_product)
    catalog = products.records
    dead.append(products.dead_letter)

  streaming = opts.view_as(StandardOptions).streaming
  if streaming:
    cloud = opts.cloud_settings()
    reads = [p | 'ReadPubSub' >> ReadPubSubEvents(settings.sources.pubsub)]
    if files:
      reads.append(p | 'ReadEvents' >> ReadWholeEventFiles(files))
    raw = reads[0] if len(reads) == 1 else reads | 'MergeSources' >> beam.Flatten()
    parsed = raw | 'ParseEvents' >> ParseEvents(settings.parse)
    events = parsed.events | 'DedupeEvents' >> DedupeStream(settings.dedupe, cloud.bigquery)
    hourly = (events
              | 'AssignEventTime' >> AssignEventTime()
              | 'HourlyActivity' >> HourlyWindowed(settings.hourly))
    profiles = events | 'BuildProfiles' >> LiveProfiles(settings.profile, settings.live,
                                                         reference_files, cloud.popularity)
    popularity = profiles.popularity
    changes = profiles.audience_changes if settings.profile.audiences else None
    renders = None
  else:
    parsed = (p
              | 'ReadEvents' >> ReadEventFiles(files)
              | 'ParseEvents' >> ParseEvents(settings.parse))
    events = parsed.events | 'DedupeEvents' >> DedupeBatch(settings.sharding)
    # The hour comes from `event_time`: batch needs no element timestamps.
    hourly = events | 'HourlyActivity' >> HourlyBatch(settings.sharding)
    profiles = events | 'BuildProfiles' >> BatchProfiles(
        settings.profile, settings.sharding, settings.as_of_micros, customers, catalog)
    popularity = None  # counted inside BatchProfiles, over the whole input: nothing to write
    changes = None
    renders = profiles.audiences if settings.profile.audiences else None

  dead_letters = [parsed.dead_letter, *dead] | 'FlattenDeadLetters' >> beam.Flatten()
  return Outputs(events, dead_letters, hourly, profiles.documents, profiles.triggers,
                 popularity, customers, catalog, changes, renders)


class _ReportLostFn(beam.DoFn):
  """Dead letters that the dead-letter table itself rejected: the last resort is the log."""

  def process(self, record):
    _log.error('dead letter could not be written to BigQuery and is logged instead: %s', record)


def staged_load(opts: PersonalizationOptions, project: str) -> StagedLoad:
  """Batch: a new run's staging tables (fresh run id), one per table the batch graph merges:
  events, hourly activity, triggers, audience changes with --audiences, dead letters
  (transforms/rules/loads.py). `customer_profiles` is written directly."""
  tables = ('events', 'customer_activity_hourly', 'cart_triggers',
            *(('audience_membership',) if opts.audiences else ()), 'dead_letter')
  run_id = loads.new_run_id(datetime.datetime.now(datetime.timezone.utc), uuid.uuid4().hex[:8])
  return StagedLoad(opts.cloud_settings(project).bigquery, run_id, tables)


def build(p: beam.Pipeline, opts: PersonalizationOptions, project: str,
          staging: StagedLoad | None = None) -> Outputs:
  """The graph with its sinks: BigQuery tables, the Firestore serving layer and, streaming, the
  product popularity the job reads back.

  Batch writes the tables of `staging` (`staged_load`) to the run's staging tables, which must
  exist (`pipeline.run.launch` creates them), and merges them into the tables as its last step
  (`MergeStaged`), so a re-run adds nothing twice. Without `staging` a batch graph gets fresh
  names whose tables nobody created: for graphs that are only constructed (tests). Streaming
  appends to the tables (its dedupe is `DedupeStream`'s)."""
  out = build_outputs(p, opts)
  cloud = opts.cloud_settings(project)
  warehouse, retry = cloud.bigquery, cloud.firestore_retry
  if opts.view_as(StandardOptions).streaming:
    if staging is not None:
      raise ValueError('a streaming job appends to its tables: staging tables are for batch')
  elif staging is None:
    staging = staged_load(opts, project)
  staged = []

  def write(record: str, label: str, rows: beam.PCollection) -> beam.PCollection:
    destination = None
    if staging is not None and record in staging.tables:
      destination = staging.table_id(record)
    rejected_rows = rows | label >> WriteTable(record, warehouse, destination)
    if destination is not None:
      staged.append(rejected_rows)
    return rejected_rows

  rejected = [write('events', 'WriteEvents', out.events),
              write('customer_activity_hourly', 'WriteHourlyActivity', out.hourly)]
  documents = out.documents | 'WriteDocuments' >> WriteDocuments(
      cloud.documents, retry, cloud.profile_changes_topic, cloud.redis)
  rejected.append(documents.dead_letter)
  if out.popularity is not None:
    popularity = out.popularity | 'WritePopularity' >> WriteDocuments(cloud.popularity, retry)
    rejected.append(popularity.dead_letter)
  rejected += [documents.written
               | 'ProfileRows' >> beam.MapTuple(serving.profile_row)
               | 'WriteProfiles' >> WriteTable('customer_profiles', warehouse),
               write('cart_triggers', 'WriteTriggers', out.triggers)]
  if cloud.triggers_topic is not None:
    _ = out.triggers | 'PublishTriggers' >> PublishRecords(cloud.triggers_topic, 'cart_triggers')
  changes = out.audience_changes
  if out.audience_renders is not None:  # batch: what changed since the table's memberships
    changes = out.audience_renders | 'AudienceChanges' >> BatchAudienceChanges(warehouse)
  if changes is not None:
    rejected.append(write('audience_membership', 'WriteAudienceMembership', changes))
    if cloud.audience_topic is not None:
      _ = changes | 'PublishAudienceChanges' >> PublishAudienceChanges(cloud.audience_topic)
  lost = write('dead_letter', 'WriteDeadLetters',
               (out.dead_letters, *rejected) | 'AllDeadLetters' >> beam.Flatten())
  _ = lost | 'ReportLostDeadLetters' >> beam.ParDo(_ReportLostFn())
  if staging is not None:
    _ = tuple(staged) | 'MergeStaged' >> MergeStaged(staging)
  return out
