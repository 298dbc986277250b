"""Entry point: `python -m pipeline.run --events=... [--customers=...] [--catalog=...]`, or
`python -m pipeline.run --streaming --subscription=projects/P/subscriptions/S [--events=...]`.

Sets up logging, parses options, creates the BigQuery tables, builds and runs the graph, and
prints a summary. A batch run exits 1 when the counts do not add up. A streaming run goes on until
it is interrupted (Ctrl-C or SIGTERM): on a local runner it then cancels the pipeline and prints
the runner's counters (incomplete there) and the exact counts read from the tables it wrote
(pipeline/tally.py); on Dataflow it stops waiting and leaves the job running, printing how to drain
it (cancelling a Dataflow job would drop in-flight data).
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)
from google.api_core.exceptions import NotFound

from pipeline import graph, tally
from pipeline.options import PersonalizationOptions
from pipeline.summary import RunSummary
from transforms.sinks import bigquery as bigquery_sink

_log = logging.getLogger('pipeline.run')
DEFAULT_BATCH_RUNNER = 'FnApiRunner'
# Streaming and Pub/Sub need the bundle-based DirectRunner locally (the FnApiRunner is batch-only).
DEFAULT_STREAMING_RUNNER = 'BundleBasedDirectRunner'


class UsageError(Exception):
  """A problem with the job's options or inputs, reported as one line."""


def resolve_options(argv: list[str] | None) -> tuple[PipelineOptions, str]:
  """Parses options, fills local defaults and checks inputs. Returns (options, project).

  Every setting is checked by building it (pipeline/options.py, transforms/settings.py), then
  the input files are matched."""
  options = PipelineOptions(argv)
  standard = options.view_as(StandardOptions)
  if not standard.runner:
    # The plain DirectRunner first tries to download the Prism runner; name a runner instead.
    standard.runner = DEFAULT_STREAMING_RUNNER if standard.streaming else DEFAULT_BATCH_RUNNER
    _log.info('no --runner given: using %s', standard.runner)
  gcp = options.view_as(GoogleCloudOptions)
  if not gcp.project:
    gcp.project = os.environ.get('GOOGLE_CLOUD_PROJECT')
  if not gcp.project:
    raise UsageError('--project is required (or set GOOGLE_CLOUD_PROJECT)')
  opts = options.view_as(PersonalizationOptions)
  try:
    settings = opts.graph_settings()
    opts.cloud_settings(gcp.project)
  except ValueError as err:
    raise UsageError(str(err)) from err
  for label, pattern_list in (('--events', settings.sources.files),
                              ('--customers', [settings.reference.customers]),
                              ('--catalog', [settings.reference.catalog])):
    for pattern in filter(None, pattern_list):
      if not FileSystems.match([pattern])[0].metadata_list:
        raise UsageError(f'{label}: no file matches {pattern!r}')
  return options, gcp.project


def launch(argv: list[str] | None = None):
  """Resolves options, creates the tables, builds the graph and starts it. Returns
  (result, options) without waiting, so a caller can stop a streaming run."""
  options, project = resolve_options(argv)
  opts = options.view_as(PersonalizationOptions)
  if not opts.skip_table_setup:
    created = bigquery_sink.ensure_tables(project, opts.dataset,
                                          location=opts.bigquery_location,
                                          kms_key=opts.bigquery_kms_key)
    _log.info('BigQuery dataset %s.%s ready (created: %s)', project, opts.dataset,
              ', '.join(created) or 'nothing, all tables existed')
  staging = None
  if not options.view_as(StandardOptions).streaming:
    # Batch writes to staging tables of its own and merges them as its last step (docs/
    # OPERATIONS.md, "Re-running the batch job"): they exist before the job starts.
    staging = graph.staged_load(opts, project)
    try:
      bigquery_sink.create_staging_tables(staging)
    except NotFound as err:
      raise UsageError(f'--dataset {opts.dataset}: the batch load needs the dataset and its '
                       f'tables ({err.message}); create them first (run without '
                       '--skip_table_setup)') from err
    _log.info('batch load %s: staging tables %s', staging.run_id,
              ', '.join(staging.table_id(t) for t in staging.tables))
  p = beam.Pipeline(options=options)
  graph.build(p, opts, project, staging)
  _log.info('running on %s', options.view_as(StandardOptions).runner)
  return p.run(), options


def run(argv: list[str] | None = None) -> RunSummary:
  started = dt.datetime.now(dt.timezone.utc)  # every row this job writes is stamped after it
  result, options = launch(argv)
  if not options.view_as(StandardOptions).streaming:
    result.wait_until_finish()
    return RunSummary.from_result(result)
  runner = options.view_as(StandardOptions).runner or ''
  local = is_local_runner(runner)
  _log.info('streaming: Ctrl-C (or SIGTERM) %s', 'stops the pipeline' if local else
            'stops waiting; the job keeps running on the service')
  signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    result.wait_until_finish()
  except KeyboardInterrupt:
    if not local:
      # Cancelling a Dataflow job drops its in-flight data; draining finishes it. Leave the
      # choice (and the job) to the operator: docs/DEPLOY.md, "Update and drain".
      job_id = getattr(result, 'job_id', lambda: None)()
      _log.info('the job %s keeps running. Drain it (finishes in-flight work, then stops): '
                'gcloud dataflow jobs drain %s --region=REGION', job_id, job_id or 'JOB_ID')
      _log.info('exact counts of what it has written, read from the tables: %s',
                table_scope(options, started).command())
      return RunSummary.from_result(result, exact=False)
    _log.info('stopping: cancelling the pipeline (the Pub/Sub reader may take up to 30 s to '
              'notice; messages already read are acknowledged on the DirectRunner)')
    result.cancel()
  summary = RunSummary.from_result(result, exact=not local)
  if local:
    summary.tables = table_counts(table_scope(options, started))
  return summary


def table_scope(options: PipelineOptions, started: dt.datetime) -> tally.Scope:
  """What a streaming job started at `started` wrote: its dataset and serving collection, rows
  written since then."""
  cloud = options.view_as(PersonalizationOptions).cloud_settings()
  return tally.Scope(cloud.bigquery, cloud.documents, started)


def table_counts(scope: tally.Scope) -> str:
  """The exact counts of a stopped job, read from its tables (rendered); one line saying why and
  how to count later when they cannot be read."""
  try:
    return tally.render(tally.count(scope))
  except tally.TallyError as err:
    _log.error('could not read the table counts: %s', err)
    return (f'{tally.TITLE}: not read ({err}); count them with: {scope.command()}')


def is_local_runner(runner: str) -> bool:
  """The in-process runners: stopping the program stops the job. (DataflowRunner and other
  service runners keep the job running without this process.)"""
  name = runner.rsplit('.', 1)[-1] if isinstance(runner, str) else type(runner).__name__
  return name in ('DirectRunner', 'BundleBasedDirectRunner', 'SwitchingDirectRunner',
                  'FnApiRunner', 'PrismRunner')


def _raise_interrupt(signum, frame):
  raise KeyboardInterrupt


def help_text() -> str:
  """What `--help` prints: the job's own options. (Beam's PipelineOptions parser only knows the
  options of the class it is built for, so its own `--help` lists none of them.)"""
  parser = argparse.ArgumentParser(
      prog='python -m pipeline.run', description=(__doc__ or '').split('\n\n')[0],
      epilog="Beam's own options are accepted too: --runner, --project, --region, "
             '--temp_location, --streaming, --max_num_workers, ...')
  PersonalizationOptions._add_argparse_args(parser)
  return parser.format_help()


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '-h' in argv or '--help' in argv:
    print(help_text())
    return 0
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  try:
    summary = run(argv)
  except UsageError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  print(summary.render())
  return 1 if summary.problems() else 0


if __name__ == '__main__':
  sys.exit(main())
