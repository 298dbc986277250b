"""Failures injected into the real emulators: nothing is lost silently.

- Firestore stops answering in the middle of a batch run (its process is paused with SIGSTOP,
  so calls hang and time out) and comes back: the writer retries with backoff and the run ends
  with every document equal to an undisturbed run's.
- Firestore is unreachable for good: the run fails loudly, naming Firestore, after its bounded
  retries.
- BigQuery stops answering mid-run and comes back: every valid event is in `events` exactly once.
- The streaming job is stopped and a new one started over the same subscription, and the same
  events are published again: no event twice in the warehouse, documents end as they were.
"""
import logging
import socket
import threading
import time

import orjson
import pytest
from google.cloud import firestore

from pipeline import run
from scripts import generate_data, publish
from tests.integration.helpers import paused, stop_streaming, wait_for
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'
pytestmark = pytest.mark.faults


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
  out = tmp_path_factory.mktemp('faults-sample')
  manifest = generate_data.generate(out, customers=120, products=40, events=1500, seed=11,
                                    files=1)
  return out, manifest


def _batch_args(data, dataset, collection, *extra):
  return [f'--events={data}/events-*.ndjson.gz', f'--customers={data}/customers.csv',
          f'--catalog={data}/catalog.csv', f'--project={PROJECT}', '--runner=FnApiRunner',
          f'--dataset={dataset}', f'--collection={collection}', *extra]


def _documents(collection):
  """Stored documents without `updated_at` and `version` (commit time and the writer's clock
  differ between runs)."""
  return {d.id: {k: v for k, v in d.to_dict().items() if k not in ('updated_at', 'version')}
          for d in firestore.Client(project=PROJECT).collection(collection).stream()}


class _Seen(logging.Handler):
  """Sets `event` when a log record containing `text` is emitted."""

  def __init__(self, text):
    super().__init__(logging.WARNING)
    self.text = text
    self.event = threading.Event()

  def emit(self, record):
    if self.text in record.getMessage():
      self.event.set()


def test_firestore_paused_mid_run_is_retried_and_documents_are_complete(
    local_stack, local_stack_dir, unique_name, sample, capsys):
  data, manifest = sample
  reference = f'{unique_name}_ref'
  assert run.main(_batch_args(data, reference, reference)) == 0
  expected = _documents(reference)
  assert len(expected) > 50
  capsys.readouterr()

  seen = _Seen('Firestore call failed')
  logger = logging.getLogger('transforms.sinks.firestore')
  logger.addHandler(seen)
  result = {}
  try:
    with paused(local_stack_dir, 'firestore'):
      worker = threading.Thread(target=lambda: result.setdefault('code', run.main(_batch_args(
          data, unique_name, unique_name, '--firestore_retry_seconds=20'))))
      worker.start()
      # Firestore stays down until the writer has met it: a call timed out and is retried.
      assert seen.event.wait(120), 'the writer never reported a failed Firestore call'
    worker.join(300)
  finally:
    logger.removeHandler(seen)
  printed = capsys.readouterr().out
  assert not worker.is_alive()
  assert result['code'] == 0, printed
  assert 'Firestore calls retried (transient errors)' in printed
  assert _documents(unique_name) == expected


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_firestore_unreachable_fails_the_run_loudly(local_stack, unique_name, sample,
                                                    monkeypatch):
  data, _ = sample
  monkeypatch.setenv('FIRESTORE_EMULATOR_HOST', f'127.0.0.1:{_free_port()}')
  started = time.monotonic()
  with pytest.raises(Exception, match='kept failing for 3 s of retries'):
    run.run(_batch_args(data, unique_name, unique_name, '--firestore_retry_seconds=3'))
  assert time.monotonic() - started < 120


def test_bigquery_paused_mid_run_keeps_every_event_exactly_once(
    local_stack, local_stack_dir, unique_name, sample, capsys):
  data, manifest = sample
  result = {}
  worker = threading.Thread(target=lambda: result.setdefault('code', run.main(
      _batch_args(data, unique_name, unique_name, '--skip_table_setup'))))
  from transforms.sinks import bigquery as bigquery_sink
  bigquery_sink.ensure_tables(PROJECT, unique_name)
  with paused(local_stack_dir, 'bigquery'):
    worker.start()
    time.sleep(15)  # the run parses, dedupes and folds meanwhile; its inserts hang
  worker.join(300)
  printed = capsys.readouterr().out
  assert not worker.is_alive()
  assert result['code'] == 0, printed
  bq = bigquery_client.cloud_client(PROJECT)
  rows = list(bq.query(f'SELECT message_id, COUNT(*) AS n FROM `{PROJECT}.{unique_name}.events` '
                       'GROUP BY message_id').result())
  assert len(rows) == manifest['valid_unique']
  assert all(r['n'] == 1 for r in rows)


def _event(i, user, stamp):
  return orjson.dumps({'type': 'track', 'event': 'Product Viewed', 'messageId': f'restart-{i}',
                       'userId': user, 'timestamp': stamp,
                       'properties': {'product_id': f'p{i % 7}', 'price': 12.5}})


def _launch(subscription, name):
  result, _ = run.launch([
      '--streaming', f'--subscription={subscription}', f'--project={PROJECT}',
      '--runner=BundleBasedDirectRunner', f'--dataset={name}', f'--collection={name}',
      f'--popularity_collection={name}-popularity', '--document_flush_seconds=0'])
  return result


def test_streaming_restart_with_the_same_events_writes_nothing_twice(local_stack, unique_name):
  topic, subscription = publish.ensure_topic_and_subscription(
      PROJECT, f'{unique_name}-events', f'{unique_name}-pipeline')
  stamp = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(time.time() - 60)) + '.000Z'
  first = [_event(i, f'c{i % 3}', stamp) for i in range(20)]
  bq = bigquery_client.cloud_client(PROJECT)
  table = f'{PROJECT}.{unique_name}.events'

  def count():
    return list(bq.query(f'SELECT COUNT(*) AS n FROM `{table}`').result())[0]['n']

  job = _launch(subscription, unique_name)
  try:
    publish.publish(iter(first), topic, rate=100, keep_times=True)
    wait_for(lambda: count() == 20, 120, '20 events in BigQuery from the first job')
    wait_for(lambda: len(_documents(unique_name)) == 3, 60, 'three documents')
    time.sleep(2)
    before = _documents(unique_name)
  finally:
    stop_streaming(job, topic)

  job = _launch(subscription, unique_name)
  try:
    # The same events again, then one new event for another customer: once that one is in,
    # the second job has read everything published before it.
    late = _event(99, 'c9', stamp)
    publish.publish(iter(first + [late]), topic, rate=100, keep_times=True)
    wait_for(lambda: 'c9' in _documents(unique_name), 120, "the new customer's document")
    wait_for(lambda: count() >= 21, 60, 'the new event in BigQuery')
    time.sleep(3)  # give duplicates a chance to (wrongly) arrive
  finally:
    stop_streaming(job, topic)
  ids = [r['message_id'] for r in bq.query(f'SELECT message_id FROM `{table}`').result()]
  assert sorted(ids) == sorted([f'restart-{i}' for i in range(20)] + ['restart-99'])
  after = _documents(unique_name)
  assert {k: v for k, v in after.items() if k != 'c9'} == before
