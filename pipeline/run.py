"""Entry point: `python -m pipeline.run --events=... [--customers=...] [--catalog=...]`.

Sets up logging, parses options, creates the BigQuery tables, builds and runs the graph, and
prints a summary whose counts must add up (the exit status is 1 when they do not).
"""
from __future__ import annotations

import logging
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from pipeline import graph
from pipeline.options import PersonalizationOptions
from pipeline.summary import RunSummary
from transforms.sinks import bigquery as bigquery_sink

_log = logging.getLogger('pipeline.run')
DEFAULT_BATCH_RUNNER = 'FnApiRunner'


class UsageError(Exception):
  """A problem with the job's options or inputs, reported as one line."""


def resolve_options(argv: list[str] | None) -> tuple[PipelineOptions, str]:
  """Parses options, fills local defaults and checks inputs. Returns (options, project)."""
  options = PipelineOptions(argv)
  standard = options.view_as(StandardOptions)
  if not standard.runner:
    # The plain DirectRunner first tries to download the Prism runner; name a runner instead.
    standard.runner = DEFAULT_BATCH_RUNNER
    _log.info('no --runner given: using %s', DEFAULT_BATCH_RUNNER)
  gcp = options.view_as(GoogleCloudOptions)
  if not gcp.project:
    gcp.project = os.environ.get('GOOGLE_CLOUD_PROJECT')
  if not gcp.project:
    raise UsageError('--project is required (or set GOOGLE_CLOUD_PROJECT)')
  opts = options.view_as(PersonalizationOptions)
  patterns = opts.event_patterns()
  if not patterns:
    raise UsageError('--events is required: comma-separated patterns of NDJSON event files')
  for label, pattern_list in (('--events', patterns), ('--customers', [opts.customers]),
                              ('--catalog', [opts.catalog])):
    for pattern in filter(None, pattern_list):
      if not FileSystems.match([pattern])[0].metadata_list:
        raise UsageError(f'{label}: no file matches {pattern!r}')
  if opts.max_message_bytes <= 0:
    raise UsageError('--max_message_bytes must be positive')
  if opts.bigquery_write_method == bigquery_sink.FILE_LOADS and not gcp.temp_location:
    raise UsageError('--bigquery_write_method=FILE_LOADS needs --temp_location')
  return options, gcp.project


def run(argv: list[str] | None = None) -> RunSummary:
  options, project = resolve_options(argv)
  opts = options.view_as(PersonalizationOptions)
  if not opts.skip_table_setup:
    created = bigquery_sink.ensure_tables(project, opts.dataset,
                                          location=opts.bigquery_location)
    _log.info('BigQuery dataset %s.%s ready (created: %s)', project, opts.dataset,
              ', '.join(created) or 'nothing, all tables existed')
  p = beam.Pipeline(options=options)
  graph.build(p, opts, project)
  _log.info('running on %s', options.view_as(StandardOptions).runner)
  result = p.run()
  result.wait_until_finish()
  summary = RunSummary.from_result(result)
  return summary


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  try:
    summary = run(argv if argv is not None else sys.argv[1:])
  except UsageError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  print(summary.render())
  return 1 if summary.problems() else 0


if __name__ == '__main__':
  sys.exit(main())
