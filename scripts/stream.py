"""The real-time path, locally: emulators, the streaming job and a publisher replaying the sample.

    python -m scripts.stream [--rate 10] [--limit N] [--seconds S] [--data data/sample]

What `make stream` runs. In order: starts the local stack (scripts.localstack, its own state dir
so it never touches the demo's), generates the sample data if missing, creates the events topic,
the pipeline's subscription and the triggers topic, starts the streaming job (`python -m
pipeline.run --streaming` on the BundleBasedDirectRunner, log in <state-dir>/pipeline.log) and a
publisher (`python -m scripts.publish`) that replays the sample events at --rate events/s with
their times moved to now. Every 10 s it prints what was published and what the serving
collection holds.

Ctrl-C (SIGINT) or SIGTERM stops everything in order: the publisher, then the job (it cancels
itself on SIGTERM; what it read is already acknowledged: docs/STREAMING.md says what that means),
then the emulators this script started. The job and the publisher run in their
own process groups so a terminal's Ctrl-C reaches only this script, which stops them in that
order. --seconds or --limit end the run by themselves (handy for tests and CI).
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

from scripts import localstack, publish

_log = logging.getLogger('scripts.stream')
PROJECT = 'demo-local'
TOPIC = 'events'
SUBSCRIPTION = 'events-pipeline'
TRIGGERS_TOPIC = 'cart-triggers'
COLLECTION = 'customers'


class _Stop(Exception):
  """Raised by the signal handlers: leave the wait loop and stop everything."""


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
  cancelling job still read one, it dead-letters it like any invalid event). SIGKILL to its
  process group after `timeout`. Returns the exit code."""
  if process.poll() is not None:
    return process.returncode
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient()
  process.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + timeout
  while process.poll() is None and time.monotonic() < deadline:
    try:
      publisher.publish(topic, b'{}', wake='stop').result(timeout=10)
    except Exception:  # the wake-up is best effort; the deadline still applies
      pass
    try:
      process.wait(timeout=2)
    except subprocess.TimeoutExpired:
      pass
  if process.poll() is None:
    _log.error('the pipeline did not stop within %.0f s: killing its process group', timeout)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  return process.returncode


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
  if process is None or process.poll() is not None:
    return
  process.send_signal(signal.SIGTERM)
  try:
    process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def job_summary(log_path: pathlib.Path) -> str:
  """The run summary the job printed last (its log's tail when there is none)."""
  text = log_path.read_text(errors='replace') if log_path.exists() else ''
  start = text.rfind('Run summary')
  if start >= 0:
    return 'its summary:\n' + text[start:].rstrip()
  return 'no summary; its log ends with:\n' + '\n'.join(localstack.tail_lines(log_path, 20))


def document_count(collection: str) -> int | None:
  try:
    from google.cloud import firestore
    query = firestore.Client(project=PROJECT).collection(collection).count()
    return int(query.get(timeout=5)[0][0].value)
  except Exception:  # progress output only; never stop the run over it
    return None


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rate', type=float, default=10.0, help='events published per second')
  parser.add_argument('--limit', type=int, default=None,
                      help='publish this many events, then keep running until stopped')
  parser.add_argument('--seconds', type=float, default=None,
                      help='stop everything after this many seconds (default: until Ctrl-C)')
  parser.add_argument('--data', type=pathlib.Path, default=pathlib.Path('data/sample'),
                      help='sample data directory (generated when missing)')
  parser.add_argument('--state-dir', type=pathlib.Path,
                      default=pathlib.Path('.localstack/stream'))
  parser.add_argument('--pipeline-arg', action='append', default=[],
                      help='extra option for the streaming job (repeatable)')
  args = parser.parse_args(argv)
  if args.rate <= 0:
    parser.error('--rate must be positive')
  args.state_dir.mkdir(parents=True, exist_ok=True)
  signal.signal(signal.SIGINT, _raise_stop)
  signal.signal(signal.SIGTERM, _raise_stop)
  job = publisher = None
  topic = None
  job_log = args.state_dir / 'pipeline.log'
  status = 0
  try:
    env = localstack.start(args.state_dir)
    os.environ.update(env)
    if not any(args.data.glob('events-*.ndjson.gz')):
      _log.info('generating the sample data in %s', args.data)
      subprocess.run([sys.executable, '-m', 'scripts.generate_data', '--out', str(args.data)],
                     check=True)
    topic, subscription = publish.ensure_topic_and_subscription(PROJECT, TOPIC, SUBSCRIPTION)
    triggers, _ = publish.ensure_topic_and_subscription(PROJECT, TRIGGERS_TOPIC)
    for old_log in (job_log, args.state_dir / 'publisher.log'):
      old_log.unlink(missing_ok=True)  # the summary shown at the end must be this run's
    job = start_process(pipeline_command(subscription, [
        f'--customers={args.data / "customers.csv"}', f'--catalog={args.data / "catalog.csv"}',
        f'--collection={COLLECTION}', f'--triggers_topic={triggers}',
        # One executor thread, shared with a Pub/Sub pull that blocks up to 30 s when the
        # subscription is empty: a coalescing delay would hold the last documents of a burst
        # until the next message (docs/STREAMING.md). Render right after each event instead.
        '--document_flush_seconds=0', *args.pipeline_arg]),
        job_log)
    _log.info('streaming job started (pid %d), log: %s', job.pid, job_log)
    publisher_command = [sys.executable, '-m', 'scripts.publish', '--topic', TOPIC,
                         '--events', str(args.data / 'events-*.ndjson.gz'),
                         '--rate', str(args.rate)]
    if args.limit is not None:
      publisher_command += ['--limit', str(args.limit)]
    publisher = start_process(publisher_command, args.state_dir / 'publisher.log')
    _log.info('publishing the sample at %.0f events/s (log: %s); Ctrl-C stops everything',
              args.rate, args.state_dir / 'publisher.log')
    started = time.monotonic()
    next_report = started + 10
    while args.seconds is None or time.monotonic() - started < args.seconds:
      if job.poll() is not None:
        _log.error('the streaming job exited with code %s; its log ends with:\n%s',
                   job.returncode, '\n'.join(localstack.tail_lines(job_log, 30)))
        status = 1
        break
      if time.monotonic() >= next_report:
        next_report += 10
        published = '?'
        lines = localstack.tail_lines(args.state_dir / 'publisher.log', 1)
        if lines and 'published' in lines[-1]:
          published = lines[-1].split('published ', 1)[1]
        _log.info('publisher: %s; serving documents in Firestore: %s', published,
                  document_count(COLLECTION))
      time.sleep(0.5)
  except _Stop as stop:
    _log.info('%s: stopping', stop)
  except (localstack.LocalStackError, subprocess.CalledProcessError) as err:
    _log.error('%s', err)
    status = 1
  finally:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_process(publisher)
    if job is not None:
      _log.info('stopping the streaming job (up to about 30 s on the DirectRunner)')
      code = stop_pipeline(job, topic)
      _log.info('streaming job exited with code %s; %s', code, job_summary(job_log))
    localstack.stop(args.state_dir)
  return status


if __name__ == '__main__':
  sys.exit(main())
