"""Publish sample events to Pub/Sub at a chosen rate (the local emulator when PUBSUB_EMULATOR_HOST
is set).

    python -m scripts.publish --events 'data/sample/events-*.ndjson.gz' --rate 200 \\
        [--topic events] [--subscription events-pipeline] [--limit 1000] [--keep-times]

Creates the topic (and the subscription, when named) if missing. By default each event's times
are moved to the moment it is published (keeping the device clock skew between originalTimestamp,
sentAt and receivedAt), so a streaming run sees live traffic rather than events weeks late;
--keep-times publishes the lines unchanged. Lines that are not JSON objects are published as they
are (the pipeline dead-letters them).
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import gzip
import logging
import os
import sys
import time
from typing import Iterator

import orjson
from google.api_core import exceptions
from google.cloud import pubsub_v1

from transforms.rules import resources

_log = logging.getLogger('scripts.publish')
_TIME_KEYS = ('timestamp', 'originalTimestamp', 'sentAt', 'receivedAt', 'original_timestamp',
              'sent_at', 'received_at')


def topic_path(project: str, topic: str) -> str:
  return topic if topic.startswith('projects/') else f'projects/{project}/topics/{topic}'


def subscription_path(project: str, subscription: str) -> str:
  return (subscription if subscription.startswith('projects/')
          else f'projects/{project}/subscriptions/{subscription}')


def ensure_topic_and_subscription(project: str, topic: str, subscription: str | None = None,
                                  ack_deadline_seconds: int = 60,
                                  kms_key: str | None = None) -> tuple[str, str | None]:
  """Creates the topic and subscription (with that ack deadline) when they do not exist;
  returns their full paths. `kms_key` (CMEK) encrypts the messages of a topic it creates; a topic
  that exists with another key, or none, keeps it and is logged as a warning."""
  topic = topic_path(project, topic)
  publisher = pubsub_v1.PublisherClient()
  request = {'name': topic, 'kms_key_name': kms_key} if kms_key else {'name': topic}
  try:
    publisher.create_topic(request=request)
  except exceptions.AlreadyExists:
    if kms_key:
      has = publisher.get_topic(topic=topic).kms_key_name
      if has != kms_key:
        _log.warning('topic %s exists with %s, not %s: it keeps its encryption (gcloud pubsub '
                     'topics update %s --topic-encryption-key=KEY changes it)', topic,
                     f'key {has}' if has else 'Google-managed encryption', kms_key, topic)
  if subscription:
    subscription = subscription_path(project, subscription)
    with pubsub_v1.SubscriberClient() as subscriber:
      try:
        subscriber.create_subscription(name=subscription, topic=topic,
                                       ack_deadline_seconds=ack_deadline_seconds)
      except exceptions.AlreadyExists:
        pass
  return topic, subscription


def read_lines(patterns: list[str]) -> Iterator[bytes]:
  """Lines of the matching NDJSON files (gzipped by extension), in file order."""
  paths = sorted(path for pattern in patterns for path in glob.glob(pattern))
  if not paths:
    raise SystemExit(f'no file matches {patterns}')
  for path in paths:
    with (gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')) as lines:
      for line in lines:
        line = line.rstrip(b'\r\n')
        if line.strip():
          yield line


def retime(line: bytes, now: dt.datetime) -> bytes:
  """Moves an event's times so that its event time is `now`, keeping their differences."""
  try:
    event = orjson.loads(line)
  except orjson.JSONDecodeError:
    return line
  if not isinstance(event, dict):
    return line
  reference = event.get('timestamp') or event.get('originalTimestamp') or \
      event.get('original_timestamp')
  try:
    shift = now - dt.datetime.fromisoformat(reference)
  except (TypeError, ValueError):
    return line
  for key in _TIME_KEYS:
    value = event.get(key)
    if isinstance(value, str):
      try:
        moved = dt.datetime.fromisoformat(value) + shift
      except ValueError:
        continue
      event[key] = moved.astimezone(dt.timezone.utc).isoformat(timespec='milliseconds').replace(
          '+00:00', 'Z')
  return orjson.dumps(event)


def publish(lines, topic: str, rate: float, limit: int | None = None,
            keep_times: bool = False, attributes: dict[str, str] | None = None) -> int:
  """Publishes up to `limit` lines at `rate` messages/s; returns how many were published."""
  if rate <= 0:
    raise ValueError('rate must be positive')
  publisher = pubsub_v1.PublisherClient()
  futures = []
  start = time.monotonic()
  last_report = start
  count = 0
  for line in lines:
    if limit is not None and count >= limit:
      break
    due = start + count / rate
    delay = due - time.monotonic()
    if delay > 0:
      time.sleep(delay)
    payload = line if keep_times else retime(line, dt.datetime.now(dt.timezone.utc))
    futures.append(publisher.publish(topic, payload, **(attributes or {})))
    count += 1
    if time.monotonic() - last_report >= 5:
      last_report = time.monotonic()
      _log.info('published %d messages (%.0f/s)', count, count / (last_report - start))
  for future in futures:
    future.result(timeout=60)
  elapsed = time.monotonic() - start
  _log.info('published %d messages in %.1f s (%.0f/s) to %s', count, elapsed,
            count / elapsed if elapsed else 0, topic)
  return count


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--events', required=True, help='comma-separated NDJSON(.gz) file patterns')
  parser.add_argument('--project', default=os.environ.get('GOOGLE_CLOUD_PROJECT', 'demo-local'))
  parser.add_argument('--topic', default='events')
  parser.add_argument('--subscription', default=None,
                      help='also create this subscription on the topic (name or full path)')
  parser.add_argument('--topic-kms-key', default=None, metavar='KEY',
                      help='Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that '
                           'encrypts the topic when it is created (CMEK)')
  parser.add_argument('--rate', type=float, default=100.0, help='messages per second')
  parser.add_argument('--limit', type=int, default=None, help='stop after this many messages')
  parser.add_argument('--keep-times', action='store_true',
                      help='publish the lines unchanged instead of moving their times to now')
  args = parser.parse_args(argv)
  if args.topic_kms_key and resources.kms_key_problem(args.topic_kms_key):
    parser.error(f'--topic-kms-key {resources.kms_key_problem(args.topic_kms_key)}')
  if not os.environ.get('PUBSUB_EMULATOR_HOST'):
    _log.warning('PUBSUB_EMULATOR_HOST is not set: publishing to real Pub/Sub in %s', args.project)
  topic, subscription = ensure_topic_and_subscription(args.project, args.topic, args.subscription,
                                                      kms_key=args.topic_kms_key)
  if subscription:
    _log.info('subscription %s ready', subscription)
  try:
    publish(read_lines(args.events.split(',')), topic, args.rate, args.limit, args.keep_times)
  except KeyboardInterrupt:
    _log.info('interrupted')
  return 0


if __name__ == '__main__':
  sys.exit(main())
