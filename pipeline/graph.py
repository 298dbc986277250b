"""The whole graph on one screen.

`build_outputs` assembles sources and transforms and returns the PCollections the sinks take;
`build` adds the sinks. Tests hand `build_outputs` a TestPipeline and assert on what it returns;
`run` hands `build` a real pipeline. The same graph serves batch (files) and streaming (Pub/Sub,
plus optional files); only the dedupe and the profile fold switch strategy.
"""
from __future__ import annotations

import logging
import typing

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

from pipeline.options import PersonalizationOptions
from transforms.clean import ParseEvents
from transforms.dedupe import DedupeEvents, Warehouse
from transforms.features import BuildProfiles
from transforms.rules import reference, serving
from transforms.sinks.bigquery import WriteTable
from transforms.sinks.firestore import WriteDocuments
from transforms.sinks.pubsub import PublishRecords
from transforms.sources import ReadEventFiles, ReadPubSubEvents, ReadReference
from transforms.windows import AssignEventTime, HourlyActivity

_log = logging.getLogger(__name__)


class Outputs(typing.NamedTuple):
  events: beam.PCollection        # unique event records (schemas/events.avsc)
  dead_letters: beam.PCollection  # dead-letter records (schemas/dead_letter.avsc)
  hourly: beam.PCollection        # hourly activity rows (schemas/customer_activity_hourly.avsc)
  documents: beam.PCollection     # (customer_id, serving document, or None: delete it)
  triggers: beam.PCollection      # cart-abandonment records (schemas/cart_triggers.avsc)
  popularity: beam.PCollection    # streaming: (product_id, popularity document)
  customers: beam.PCollection | None  # CRM records (transforms.rules.reference.parse_customer)
  catalog: beam.PCollection | None    # product records (transforms.rules.reference.parse_product)


def _read_events(p: beam.Pipeline, opts: PersonalizationOptions, streaming: bool):
  patterns = opts.event_patterns()
  sources = []
  if streaming:
    if not opts.subscription:
      raise ValueError('--subscription is required with --streaming')
    sources.append(p | 'ReadPubSub' >> ReadPubSubEvents(opts.subscription,
                                                         opts.pubsub_id_attribute))
  elif not patterns:
    raise ValueError('--events is required: comma-separated patterns of event files')
  if patterns:
    sources.append(p | 'ReadEvents' >> ReadEventFiles(patterns, streaming))
  if len(sources) == 1:
    return sources[0]
  return sources | 'MergeSources' >> beam.Flatten()


def build_outputs(p: beam.Pipeline, opts: PersonalizationOptions) -> Outputs:
  streaming = opts.view_as(StandardOptions).streaming
  parsed = _read_events(p, opts, streaming) | 'ParseEvents' >> ParseEvents(opts.max_message_bytes)
  warehouse = Warehouse(opts.view_as(GoogleCloudOptions).project, opts.dataset,
                        opts.restart_dedupe_hours) if streaming else None
  events = parsed.events | 'DedupeEvents' >> DedupeEvents(streaming, opts.dedupe_hours, warehouse,
                                                          opts.batch_shards)
  # Element timestamps matter only to the streaming windows: the batch fast path of
  # HourlyActivity groups on the `event_time` field (one step less over every event).
  timed = events | 'AssignEventTime' >> AssignEventTime() if streaming else events
  hourly = timed | 'HourlyActivity' >> HourlyActivity(opts.allowed_lateness_hours, streaming,
                                                           opts.batch_shards)
  dead = [parsed.dead_letter]
  customers = catalog = None
  if opts.customers:
    crm = p | 'ReadCustomers' >> ReadReference('customers', opts.customers,
                                                reference.parse_customer)
    customers = crm.records
    dead.append(crm.dead_letter)
  if opts.catalog:
    products = p | 'ReadCatalog' >> ReadReference('catalog', opts.catalog,
                                                  reference.parse_product)
    catalog = products.records
    dead.append(products.dead_letter)
  profiles = events | 'BuildProfiles' >> BuildProfiles(
      streaming, opts.profile_settings(), customers, catalog, opts.as_of_micros(),
      opts.identity_buffer_hours, opts.customers, opts.catalog, opts.side_input_refresh_minutes,
      (opts.view_as(GoogleCloudOptions).project, opts.firestore_database,
       opts.popularity_collection), opts.popularity_window_hours, opts.document_flush_seconds,
      opts.batch_shards)
  dead_letters = dead | 'FlattenDeadLetters' >> beam.Flatten()
  return Outputs(events, dead_letters, hourly, profiles.documents, profiles.triggers,
                 profiles.popularity, customers, catalog)


class _ReportLostFn(beam.DoFn):
  """Dead letters that the dead-letter table itself rejected: the last resort is the log."""

  def process(self, record):
    _log.error('dead letter could not be written to BigQuery and is logged instead: %s', record)


def build(p: beam.Pipeline, opts: PersonalizationOptions, project: str) -> Outputs:
  """The graph with its sinks: BigQuery tables and the Firestore serving layer."""
  out = build_outputs(p, opts)
  method, temp = opts.bigquery_write_method, opts.view_as(GoogleCloudOptions).temp_location
  rejected_events = out.events | 'WriteEvents' >> WriteTable(
      'events', project, opts.dataset, method, temp)
  rejected_hourly = out.hourly | 'WriteHourlyActivity' >> WriteTable(
      'customer_activity_hourly', project, opts.dataset, method, temp)
  documents = out.documents | 'WriteDocuments' >> WriteDocuments(
      project, opts.collection, opts.firestore_database, opts.firestore_retry_seconds)
  rejected_profiles = (documents.written
                       | 'ProfileRows' >> beam.MapTuple(serving.profile_row)
                       | 'WriteProfiles' >> WriteTable('customer_profiles', project, opts.dataset,
                                                       method, temp))
  popularity = out.popularity | 'WritePopularity' >> WriteDocuments(
      project, opts.popularity_collection, opts.firestore_database, opts.firestore_retry_seconds)
  rejected_triggers = out.triggers | 'WriteTriggers' >> WriteTable(
      'cart_triggers', project, opts.dataset, method, temp)
  if opts.triggers_topic:
    _ = out.triggers | 'PublishTriggers' >> PublishRecords(opts.triggers_topic, 'cart_triggers')
  lost = ((out.dead_letters, rejected_events, rejected_hourly, documents.dead_letter,
           popularity.dead_letter, rejected_profiles, rejected_triggers)
          | 'AllDeadLetters' >> beam.Flatten()
          | 'WriteDeadLetters' >> WriteTable('dead_letter', project, opts.dataset, method, temp))
  _ = lost | 'ReportLostDeadLetters' >> beam.ParDo(_ReportLostFn())
  return out
