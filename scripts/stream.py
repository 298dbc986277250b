"""The real-time path, locally: emulators, the tracking collector, the streaming job and the real
Segment Python client replaying the sample through the collector.

    python -m scripts.stream [--rate 10] [--limit N] [--seconds S] [--data data/sample]
    python -m scripts.stream --status      # exact counts of the running job (make stream-status)

What `make stream` runs. In order: starts the local stack (scripts.localstack, its own state dir
so it never touches the demo's), generates the sample data if missing, creates the events topic,
the pipeline's subscription and the triggers topic, starts the streaming job (`python -m
pipeline.run --streaming` on the BundleBasedDirectRunner, log in <state-dir>/pipeline.log), the
collector (`python -m collector` on 127.0.0.1:--collector-port, log in <state-dir>/collector.log)
with the local-only write key scripts.collect.LOCAL_WRITE_KEY (source `sample`), and a replayer
(`python -m scripts.replay`) that sends the sample events at --rate events/s through
`segment.analytics.Client(host=<collector>)`, their times moved to now. Every 10 s it prints how
many events the collector accepted and how many documents the serving collection holds. While it
runs, any SDK pointed at the printed collector URL with that key feeds the same job.

Ctrl-C (SIGINT) or SIGTERM stops everything in order: the replayer (it flushes what its client
holds), the collector (it answers what is in flight, flushes to Pub/Sub and exits 0), then the job
(it cancels itself on SIGTERM; what it read is already acknowledged: docs/STREAMING.md says what
that means), then the emulators this script started. The job, the collector and the replayer run
in their own process groups so a terminal's Ctrl-C reaches only this script, which stops them in
that order. --seconds or --limit end the run by themselves (handy for tests and CI).

Counts: when the job has stopped it prints the job's summary (the runner's own counters, which
the DirectRunner under-counts) and then the exact counts of this run read from the tables
(pipeline/tally.py: rows written since the job started), with the accounting of what the
collector accepted: accepted = events rows + event dead letters + events left unread in the
subscription (pulled once the job stopped; all three exact) + the rest (derived: duplicates
dropped, and events lost at the cancel). `--status` prints the same for the job while it runs
(without the unread term: pulling would take them from the job), from <state-dir>/run.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

from pipeline import tally
from scripts import collect, localstack, publish
from scripts.demo_connector import free_port, wait_ready
from transforms.settings import BigQueryTarget, FirestoreLocation

_log = logging.getLogger('scripts.stream')
PROJECT = 'demo-local'
TOPIC = 'events'
SUBSCRIPTION = 'events-pipeline'
TRIGGERS_TOPIC = 'cart-triggers'
COLLECTION = 'customers'
SOURCE = 'sample'  # the collector's source name for the replayed sample (the `source` attribute)
DATASET = 'personalization'
# What `--status` needs of the running job (when it started, the collector's URL); removed on stop.
RUN_FILE = 'run.json'
ACCEPTED_LABEL = 'accepted by the collector'


class _Stop(Exception):
  """Raised by the signal handlers: leave the wait loop and stop everything."""


class _NotStarted(Exception):
  """A component did not come up; the message says which and ends with its log."""


def _raise_stop(signum, frame):
  raise _Stop(signal.Signals(signum).name)


def pipeline_command(subscription: str, extra: list[str]) -> list[str]:
  return [sys.executable, '-m', 'pipeline.run', '--streaming',
          '--runner=BundleBasedDirectRunner', f'--project={PROJECT}',
          f'--subscription={subscription}', *extra]


def start_process(command: list[str], log_path: pathlib.Path, env=None) -> subprocess.Popen:
  """Starts `command` in its own process group (a terminal's Ctrl-C does not reach it), its
  output appended to `log_path`."""
  with open(log_path, 'ab') as log:
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def stop_pipeline(process: subprocess.Popen, topic: str, timeout: float = 90) -> int | None:
  """Stops a streaming job started by `start_process`: SIGTERM (the job cancels itself and prints
  its summary). The DirectRunner's Pub/Sub reader blocks in a pull for up to 30 s, so a message
  is published every 2 s until the job has exited (`{}` with the attribute wake=stop: should the
  cancelling job still read one, it dead-letters it like any invalid event, and the table counts
  show such rows apart, as wake-ups). SIGKILL to its
  process group after `timeout`. Returns the exit code."""
  if process.poll() is not None:
    return process.returncode
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient()
  process.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + timeout
  try:
    while process.poll() is None and time.monotonic() < deadline:
      try:
        publisher.publish(topic, b'{}', **dict([tally.STOP_WAKE_ATTRIBUTE])).result(timeout=10)
      except Exception:  # the wake-up is best effort; the deadline still applies
        pass
      try:
        process.wait(timeout=2)
      except subprocess.TimeoutExpired:
        pass
  finally:
    # Its batching thread and channel end here, not at interpreter exit, after the stack (and
    # the emulator it talks to) is gone.
    publisher.stop()
  if process.poll() is None:
    _log.error('the pipeline did not stop within %.0f s: killing its process group', timeout)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  return process.returncode


def job_summary(log_path: pathlib.Path) -> str:
  """The run summary the job printed last, up to its table counts, which `run_counts` prints with
  the collector's accounting (its log's tail when there is no summary)."""
  text = log_path.read_text(errors='replace') if log_path.exists() else ''
  start = text.rfind('Run summary')
  if start >= 0:
    end = text.find('\n' + tally.TITLE, start)
    return 'its summary:\n' + text[start:end if end >= 0 else None].rstrip()
  return 'no summary; its log ends with:\n' + '\n'.join(localstack.tail_lines(log_path, 20))


def run_scope(since: dt.datetime) -> tally.Scope:
  """This script's dataset and collection, rows written since `since`."""
  return tally.Scope(BigQueryTarget(PROJECT, DATASET), FirestoreLocation(PROJECT, COLLECTION),
                     since)


def run_counts(since: dt.datetime, accepted: int | None, unread: int | None = None) -> str:
  """The exact counts of the run started at `since`, read from the tables, with the accounting
  of the `accepted` events when the collector could tell, `unread` of them left in the
  subscription (a line saying why when they cannot be read)."""
  scope = run_scope(since)
  try:
    return tally.render(tally.count(scope), accepted, ACCEPTED_LABEL, unread)
  except tally.TallyError as err:
    return f'{tally.TITLE}: not read ({err}); with the stack up: {scope.command()}'


def drain_unread(subscription: str) -> int | None:
  """Pulls (and acknowledges) what the stopped job left in `subscription`: the events it never
  read, stop wake-ups not counted. None when the emulator cannot be read. Only for a stack about
  to be stopped: the messages are gone afterwards."""
  from google.api_core.exceptions import GoogleAPICallError, RetryError
  from google.cloud import pubsub_v1
  name, value = tally.STOP_WAKE_ATTRIBUTE
  unread = 0
  try:
    with pubsub_v1.SubscriberClient() as subscriber:
      while True:
        reply = subscriber.pull(subscription=subscription, max_messages=1000, timeout=10,
                                return_immediately=True)
        if not reply.received_messages:
          return unread
        unread += sum(1 for r in reply.received_messages
                      if r.message.attributes.get(name) != value)
        subscriber.acknowledge(subscription=subscription,
                               ack_ids=[r.ack_id for r in reply.received_messages])
  except (GoogleAPICallError, RetryError) as err:
    _log.error('could not count the messages left in %s: %s', subscription, err)
    return None


def write_run_file(state_dir: pathlib.Path, since: dt.datetime, collector_url: str) -> None:
  (state_dir / RUN_FILE).write_text(json.dumps({'since': tally.iso(since),
                                                'collector': collector_url}))


def print_status(state_dir: pathlib.Path) -> int:
  """`--status` (`make stream-status`): the exact counts of the job a running `python -m
  scripts.stream` started, with what its collector has accepted so far. 1 when none runs or the
  tables cannot be read."""
  path = state_dir / RUN_FILE
  if not path.exists():
    print(f'no streaming job of scripts.stream is running ({path} is missing)', file=sys.stderr)
    return 1
  run = json.loads(path.read_text())
  try:
    os.environ.update(localstack.environment(state_dir))
  except localstack.LocalStackError as err:
    print(f'the stack of {state_dir} is not running: {err}', file=sys.stderr)
    return 1
  scope = run_scope(tally.parse_since(run['since']))
  try:
    counts = tally.count(scope)
  except tally.TallyError as err:
    print(f'error: {err}', file=sys.stderr)
    return 1
  # Read after the tables: every row counted was accepted by then, so the rest is never negative
  # for a reason of timing (the collector only ever adds to what it has accepted).
  accepted = accepted_events(run['collector'])
  print(f'the streaming job of scripts.stream started at {run["since"]}; its collector at '
        f'{run["collector"]} has accepted {accepted} events so far')
  print(tally.render(counts, int(accepted) if accepted.isdigit() else None, ACCEPTED_LABEL))
  return 0


def document_count(collection: str) -> int | None:
  try:
    from google.cloud import firestore
    with contextlib.closing(firestore.Client(project=PROJECT)) as client:
      return int(client.collection(collection).count().get(timeout=5)[0][0].value)
  except Exception:  # progress output only; never stop the run over it
    return None


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  logging.getLogger('httpx').setLevel(logging.WARNING)  # one line per /metrics or /readyz call
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rate', type=float, default=10.0, help='events sent per second')
  parser.add_argument('--limit', type=int, default=None,
                      help='send this many events, then keep running until stopped')
  parser.add_argument('--seconds', type=float, default=None,
                      help='stop everything after this many seconds (default: until Ctrl-C)')
  parser.add_argument('--data', type=pathlib.Path, default=pathlib.Path('data/sample'),
                      help='sample data directory (generated when missing)')
  parser.add_argument('--state-dir', type=pathlib.Path,
                      default=pathlib.Path('.localstack/stream'))
  parser.add_argument('--collector-port', type=int, default=collect.DEFAULT_PORT,
                      help='port of the collector (a free one when it is taken)')
  parser.add_argument('--pipeline-arg', action='append', default=[],
                      help='extra option for the streaming job (repeatable)')
  parser.add_argument('--status', action='store_true',
                      help='print the exact table counts of the running job and exit')
  args = parser.parse_args(argv)
  if args.status:
    return print_status(args.state_dir)
  if args.rate <= 0:
    parser.error('--rate must be positive')
  args.state_dir.mkdir(parents=True, exist_ok=True)
  signal.signal(signal.SIGINT, _raise_stop)
  signal.signal(signal.SIGTERM, _raise_stop)
  job = collector = replayer = None
  topic = base = subscription = None
  job_log = args.state_dir / 'pipeline.log'
  collector_log = args.state_dir / 'collector.log'
  replayer_log = args.state_dir / 'replayer.log'
  status = 0
  accepted = job_started = None
  try:
    env = localstack.start(args.state_dir)
    os.environ.update(env)
    if not any(args.data.glob('events-*.ndjson.gz')):
      _log.info('generating the sample data in %s', args.data)
      subprocess.run([sys.executable, '-m', 'scripts.generate_data', '--out', str(args.data)],
                     check=True)
    topic, subscription = publish.ensure_topic_and_subscription(PROJECT, TOPIC, SUBSCRIPTION)
    triggers, _ = publish.ensure_topic_and_subscription(PROJECT, TRIGGERS_TOPIC)
    for old_log in (job_log, collector_log, replayer_log):
      old_log.unlink(missing_ok=True)  # what is shown at the end must be this run's
    job_started = dt.datetime.now(dt.timezone.utc)  # every row the job writes is later
    job = start_process(pipeline_command(subscription, [
        f'--customers={args.data / "customers.csv"}', f'--catalog={args.data / "catalog.csv"}',
        f'--collection={COLLECTION}', f'--dataset={DATASET}', f'--triggers_topic={triggers}',
        # One executor thread, shared with a Pub/Sub pull that blocks up to 30 s when the
        # subscription is empty: a coalescing delay would hold the last documents of a burst
        # until the next message (docs/STREAMING.md). Render right after each event instead.
        '--document_flush_seconds=0', *args.pipeline_arg]),
        job_log)
    _log.info('streaming job started (pid %d), log: %s', job.pid, job_log)
    port = args.collector_port
    if not localstack.port_is_free(port):
      port = free_port()
    base = f'http://127.0.0.1:{port}'
    collector = collect.start_collector(collector_log, PROJECT, TOPIC,
                                        {collect.LOCAL_WRITE_KEY: SOURCE}, port)
    if not wait_ready(base, collector):
      raise _NotStarted(
          'the collector did not start; its log ends with:\n'
          + '\n'.join(localstack.tail_lines(collector_log, 20)))
    _log.info('collector started (pid %d) on %s, log: %s; write key %s (local only, not a '
              'secret): any SDK pointed there feeds this job', collector.pid, base,
              collector_log, collect.LOCAL_WRITE_KEY)
    write_run_file(args.state_dir, job_started, base)
    _log.info('exact counts while it runs: make stream-status (python -m scripts.stream --status '
              '--state-dir %s)', args.state_dir)
    replayer_command = [sys.executable, '-m', 'scripts.replay', '--host', base,
                        '--write-key', collect.LOCAL_WRITE_KEY,
                        '--events', str(args.data / 'events-*.ndjson.gz'), '--rate', str(args.rate)]
    if args.limit is not None:
      replayer_command += ['--limit', str(args.limit)]
    replayer = start_process(replayer_command, replayer_log)
    _log.info('replayer started (pid %d): the sample through the collector with the Segment '
              'Python client at %.0f events/s (log: %s); Ctrl-C stops everything',
              replayer.pid, args.rate, replayer_log)
    started = time.monotonic()
    next_report = started + 10
    while args.seconds is None or time.monotonic() - started < args.seconds:
      for name, process, log_path in (('streaming job', job, job_log),
                                      ('collector', collector, collector_log)):
        if process.poll() is not None:
          _log.error('the %s exited with code %s; its log ends with:\n%s', name,
                     process.returncode, '\n'.join(localstack.tail_lines(log_path, 30)))
          status = 1
      if status:
        break
      if time.monotonic() >= next_report:
        next_report += 10
        _log.info('events the collector accepted (source %s): %s; serving documents in '
                  'Firestore: %s', SOURCE, accepted_events(base), document_count(COLLECTION))
      time.sleep(0.5)
  except _Stop as stop:
    _log.info('%s: stopping', stop)
  except (localstack.LocalStackError, subprocess.CalledProcessError, _NotStarted) as err:
    _log.error('%s', err)
    status = 1
  finally:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    collect.stop_collector(replayer, timeout=30)  # SIGTERM: it flushes its client first
    if replayer is not None:
      _log.info('replayer exited with code %s; %s', replayer.returncode,
                (localstack.tail_lines(replayer_log, 1) or ['no log'])[-1])
    (args.state_dir / RUN_FILE).unlink(missing_ok=True)
    if collector is not None:
      accepted = accepted_events(base)
      _log.info('collector exited with code %s (it accepted %s events)',
                collect.stop_collector(collector), accepted)
    try:
      if job is not None:
        _log.info('stopping the streaming job (up to about 30 s on the DirectRunner)')
        code = stop_pipeline(job, topic)
        _log.info('streaming job exited with code %s; %s', code, job_summary(job_log))
        _log.info('this run, exact:\n%s', run_counts(
            job_started, int(accepted) if accepted and accepted.isdigit() else None,
            drain_unread(subscription)))
    finally:
      localstack.stop(args.state_dir)
  return status


def accepted_events(base: str | None) -> str:
  """How many events the collector published for the sample's source ('?' if it cannot tell)."""
  try:
    return str(int(collect.metric(base, 'collector_events_accepted_total', source=SOURCE)))
  except Exception:  # progress output only; never stop the run over it
    return '?'


if __name__ == '__main__':
  sys.exit(main())
