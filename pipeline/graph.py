"""The whole graph on one screen.

`build_outputs` assembles sources and transforms and returns the PCollections the sinks take;
`build` adds the sinks. Tests hand `build_outputs` a TestPipeline and assert on what it returns;
`run` hands `build` a real pipeline.
"""
from __future__ import annotations

import logging
import typing

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions

from pipeline.options import PersonalizationOptions
from transforms.clean import ParseEvents
from transforms.dedupe import DedupeEvents
from transforms.features import BuildProfiles
from transforms.rules import reference
from transforms.sinks.bigquery import WriteTable
from transforms.sinks.firestore import WriteDocuments
from transforms.sources import ReadEventFiles, ReadReference

_log = logging.getLogger(__name__)


class Outputs(typing.NamedTuple):
  events: beam.PCollection        # unique event records (schemas/events.avsc)
  dead_letters: beam.PCollection  # dead-letter records (schemas/dead_letter.avsc)
  documents: beam.PCollection     # (customer_id, serving document)
  customers: beam.PCollection | None  # CRM records (transforms.rules.reference.parse_customer)
  catalog: beam.PCollection | None    # product records (transforms.rules.reference.parse_product)


def build_outputs(p: beam.Pipeline, opts: PersonalizationOptions) -> Outputs:
  patterns = opts.event_patterns()
  if not patterns:
    raise ValueError('--events is required: comma-separated patterns of NDJSON event files')
  parsed = (p
            | 'ReadEvents' >> ReadEventFiles(patterns)
            | 'ParseEvents' >> ParseEvents(opts.max_message_bytes))
  events = parsed.events | 'DedupeEvents' >> DedupeEvents()
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
  documents = events | 'BuildProfiles' >> BuildProfiles()
  dead_letters = dead | 'FlattenDeadLetters' >> beam.Flatten()
  return Outputs(events, dead_letters, documents, customers, catalog)


class _ReportLostFn(beam.DoFn):
  """Dead letters that the dead-letter table itself rejected: the last resort is the log."""

  def process(self, record):
    _log.error('dead letter could not be written to BigQuery and is logged instead: %s', record)


def build(p: beam.Pipeline, opts: PersonalizationOptions, project: str) -> Outputs:
  """The graph with its sinks: BigQuery tables and the Firestore serving layer."""
  out = build_outputs(p, opts)
  rejected_events = out.events | 'WriteEvents' >> WriteTable(
      'events', project, opts.dataset, opts.bigquery_write_method, _temp(opts))
  rejected_documents = out.documents | 'WriteDocuments' >> WriteDocuments(
      project, opts.collection, opts.firestore_database)
  lost = ((out.dead_letters, rejected_events, rejected_documents)
          | 'AllDeadLetters' >> beam.Flatten()
          | 'WriteDeadLetters' >> WriteTable('dead_letter', project, opts.dataset,
                                             opts.bigquery_write_method, _temp(opts)))
  _ = lost | 'ReportLostDeadLetters' >> beam.ParDo(_ReportLostFn())
  return out


def _temp(opts: PersonalizationOptions) -> str | None:
  return opts.view_as(GoogleCloudOptions).temp_location
