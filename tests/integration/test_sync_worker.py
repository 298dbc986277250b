"""The sync worker end to end on the emulators, against the strict local ESP receivers
(tests/receivers/esp.py): the batch job's profile changes reach Braze, Klaviyo and Iterable as
exactly the mapped attributes that changed; a re-run with one changed customer sends only that
customer; a SIGKILLed worker loses nothing and resends nothing accepted; the rate limit holds at
the receiver; a 429 storm backs off and recovers; refused items are dead-lettered without the key.
"""
import gzip
import os
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest
import yaml
from google.cloud import firestore, pubsub_v1

from pipeline import run
from scripts import generate_data, publish
from scripts.demo_connector import free_port
from tests.integration.helpers import wait_for
from tests.receivers.esp import BrazeReceiver, IterableReceiver, KlaviyoReceiver
from transforms.rules import changes as profile_changes

PROJECT = 'demo-local'
ROOT = pathlib.Path(__file__).parents[2]
EXAMPLE = ROOT / 'audiences.example.yaml'
AS_OF = '2026-11-20T00:00:00+00:00'
KEYS = {'BRAZE_TEST_KEY': 'braze-rest-key-0123456789', 'KLAVIYO_TEST_KEY': 'pk_test_0123456789abc',
        'ITERABLE_TEST_KEY': 'iterable-key-0123456789'}
FIELDS = {'segment': 'segment', 'orders.lifetime_value': 'lifetime_value',
          'traits.spend_14d': 'spend_14d', 'traits.favourite_category': 'favourite_category',
          'cart.item_count': 'cart_items'}


def wait(predicate, timeout, what):
  return wait_for(predicate, timeout, what, every=0.1)


def pubsub(name):
  """A changes topic with a subscription for the worker, and a dead-letter topic with one for the
  test to read."""
  return {kind: publish.ensure_topic_and_subscription(
      PROJECT, f'{name}-{kind}', f'{name}-{kind}', ack_deadline_seconds=10)
          for kind in ('changes', 'dead')}


def destination(kind, receiver, **extra):
  return {'name': kind, 'type': kind, 'base_url': receiver.base_url,
          'api_key_env': f'{kind.upper()}_TEST_KEY', 'fields': FIELDS, 'audiences': '*',
          'rate_limit': {'requests_per_second': 50, 'burst': 5}, 'backoff_seconds': 0.05,
          'backoff_max_seconds': 1.0, **extra}


class Worker:
  """`python -m connector.sync` as a child process, with its config in tmp_path."""

  def __init__(self, tmp_path, name, paths, destinations, **settings):
    self.port = free_port()
    self.config = tmp_path / f'{name}-sync.yaml'
    self.config.write_text(yaml.safe_dump({
        'subscription': paths['changes'][1], 'dead_letter_topic': paths['dead'][0],
        'state_collection': f'{name}_sync_state', 'batch_seconds': 0.3,
        'ack_deadline_seconds': 10,
        'listen': f'127.0.0.1:{self.port}', 'destinations': destinations, **settings}))
    self.log = tmp_path / f'{name}-sync.log'
    self.process = None

  def start(self):
    env = {**os.environ, **KEYS}
    self.process = subprocess.Popen([sys.executable, '-m', 'connector.sync', '--config',
                                     str(self.config)], cwd=ROOT, env=env,
                                    stdout=self.log.open('ab'), stderr=subprocess.STDOUT)
    wait(self.healthy, 60, 'the sync worker to answer /healthz')
    return self

  def healthy(self):
    assert self.process.poll() is None, self.log.read_text()[-3000:]
    try:
      return httpx.get(f'http://127.0.0.1:{self.port}/healthz', timeout=1).status_code == 200
    except httpx.TransportError:
      return False

  def metric(self, name, **labels):
    """The sum of the samples of `name` (the exposition name, `_total` included) with those
    labels; a name the worker does not expose fails the test rather than reading as 0."""
    text = httpx.get(f'http://127.0.0.1:{self.port}/metrics', timeout=5).text
    assert f'# TYPE {name} ' in text, f'no metric {name}'
    total = 0.0
    for line in text.splitlines():
      if line.startswith(name + '{') or line.startswith(name + ' '):
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
          total += float(line.rsplit(' ', 1)[1])
    return total

  def kill(self):
    self.process.send_signal(signal.SIGKILL)
    self.process.wait(10)

  def stop(self):
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      try:
        self.process.wait(20)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(5)
    printed = self.log.read_text()
    assert not [name for name, key in KEYS.items() if key in printed], 'an API key was logged'
    return self.process.returncode


@pytest.fixture
def receivers():
  made = (BrazeReceiver(KEYS['BRAZE_TEST_KEY']), KlaviyoReceiver(KEYS['KLAVIYO_TEST_KEY']),
          IterableReceiver(KEYS['ITERABLE_TEST_KEY']))
  for receiver in made:
    receiver.start()
  yield dict(zip(('braze', 'klaviyo', 'iterable'), made))
  for receiver in made:
    receiver.stop()


def expected_attributes(document):
  """The mapped attributes of a stored document, as the worker must have sent them."""
  flat = profile_changes.flatten(document)
  out = {attribute: flat[field] for field, attribute in FIELDS.items() if field in flat}
  out.update({f'audience_{key}': True for key in document['audiences']})
  return out


def batch_run(data, name, topic):
  code = run.main([
      f'--events={data}/events-*.ndjson.gz', f'--customers={data}/customers.csv',
      f'--catalog={data}/catalog.csv', f'--project={PROJECT}', '--runner=FnApiRunner',
      f'--dataset={name}', f'--collection={name}', f'--audiences={EXAMPLE}', f'--as_of={AS_OF}',
      f'--profile_changes_topic={topic}'])
  assert code == 0


def documents(collection):
  return {d.id: d.to_dict() for d in firestore.Client(project=PROJECT)
          .collection(collection).stream()}


def test_a_batch_run_then_the_worker_then_a_run_that_changes_one_customer(
    local_stack, unique_name, tmp_path, receivers):
  data = tmp_path / 'data'
  generate_data.generate(data, customers=60, products=30, events=900, seed=5, files=1)
  paths = pubsub(unique_name)
  batch_run(data, unique_name, paths['changes'][0])
  stored = documents(unique_name)
  expected = {c: expected_attributes(d) for c, d in stored.items()}
  assert len(expected) > 20
  worker = Worker(tmp_path, unique_name, paths,
                  [destination(kind, r) for kind, r in receivers.items()]).start()
  try:
    for kind, receiver in receivers.items():
      wait(lambda: len(receiver.accepted()) == len(expected), 60, f'{kind} to hold every customer')
    for kind, receiver in receivers.items():
      assert receiver.accepted() == expected, kind
      # Each customer once: the first run's changes, coalesced, in as few requests as fit.
      assert sorted(c for c, _ in receiver.accepted_log()) == sorted(expected), kind
    assert len([r for r in receivers['braze'].recorded if r.path == '/users/track']) == (
        -(-len(expected) // 75))

    # One customer does something new; the job runs again over the same files plus that event.
    customer = sorted(stored)[0]
    product = (data / 'catalog.csv').read_text().splitlines()[1].split(',')[0]
    event = {'type': 'track', 'event': 'Order Completed', 'userId': customer,
             'messageId': f'{unique_name}-extra', 'timestamp': '2026-11-19T12:00:00Z',
             'properties': {'order_id': f'{unique_name}-o', 'total': 1234.5, 'currency': 'USD',
                            'products': [{'product_id': product, 'price': 1234.5,
                                          'quantity': 1}]}}
    with gzip.open(data / 'events-extra.ndjson.gz', 'wb') as out:
      out.write(orjson.dumps(event) + b'\n')
    logs_before = {kind: len(r.accepted_log()) for kind, r in receivers.items()}
    # The first run: one change per customer, acknowledged once the batch is settled (after the
    # last destination's answer: Klaviyo's job completes on a poll, and the state is saved).
    acked_before = len(expected)
    wait(lambda: worker.metric('sync_messages_total', result='acked') == acked_before, 10,
         'the first batch to be acknowledged')
    batch_run(data, unique_name, paths['changes'][0])
    after = documents(unique_name)
    changed = {c for c in after if expected_attributes(after[c]) != expected[c]}
    assert changed == {customer}
    for kind, receiver in receivers.items():
      wait(lambda: len(receiver.accepted_log()) > logs_before[kind], 30, f'{kind} to get it')
    time.sleep(1.5)  # anything else would have come with it: a batch is 0.3 s
    for kind, receiver in receivers.items():
      new = receiver.accepted_log()[logs_before[kind]:]
      sent = {a: v for a, v in expected_attributes(after[customer]).items()
              if expected[customer].get(a) != v}
      assert [c for c, _ in new] == [customer], kind
      assert new[0][1] == sent, kind  # only the attributes that changed
      assert receiver.accepted()[customer] == expected_attributes(after[customer])
    # The re-run published one change, that customer's: the others' documents did not change.
    assert worker.metric('sync_messages_total', result='acked') == acked_before + 1
    assert worker.metric('sync_items_dead_lettered_total') == 0
  finally:
    assert worker.stop() == 0


def publish_changes(topic, customers, version, **changed):
  publisher = pubsub_v1.PublisherClient()
  futures = []
  for customer in customers:
    change = {'change_id': profile_changes.change_id(customer, version), 'customer_id': customer,
              'version': version, 'last_event_at': '2026-11-19T12:00:00+00:00',
              'written_at': '2026-11-19T12:00:01+00:00', 'deleted': False,
              'changed': {'segment': f'{customer}-{version}', **changed},
              'audiences': {'entered': ['vip'], 'exited': []}}
    futures.append(publisher.publish(topic, orjson.dumps(change), change_id=change['change_id'],
                                     customer_id=customer))
  for future in futures:
    future.result(timeout=30)


def test_a_killed_worker_loses_nothing_and_resends_nothing_accepted(
    local_stack, unique_name, tmp_path, receivers):
  braze = receivers['braze']
  paths = pubsub(unique_name)
  customers = [f'k{i:04d}' for i in range(150)]  # 2 Braze requests of 75
  before = time.time()
  publish_changes(paths['changes'][0], customers, 10)
  after = time.time()
  # Two requests a second: after the first is answered, there is time to hold the next.
  worker = Worker(tmp_path, unique_name, paths, [destination(
      'braze', braze, rate_limit={'requests_per_second': 2, 'burst': 1})],
      batch_seconds=2.0, max_batch=150).start()
  wait(lambda: braze.wait_finished(1, timeout=0.1), 30, 'a first answered request')
  braze.hang_next(10)
  wait(lambda: len(braze.recorded) >= 2, 30, 'the second request, held')
  assert [r.status for r in braze.recorded] == [201, None]
  # The batch is held, unacknowledged: the gauge is the oldest change's age since publishing.
  asked = time.time()
  age = worker.metric('sync_oldest_message_age_seconds')
  assert asked - after - 0.05 <= age <= time.time() - before + 0.05, (age, asked - after)
  worker.kill()  # mid-batch: one request accepted, one in flight
  braze.reset_faults()
  braze.release()
  accepted_before = [c for c, _ in braze.accepted_log()]
  assert len(accepted_before) == 75

  worker.start()  # the batch comes back after the subscription's 10 s ack deadline
  try:
    wait(lambda: len(braze.accepted()) == len(customers), 60, 'every customer after the restart')
    log = [c for c, _ in braze.accepted_log()]
    assert sorted(log) == sorted(customers)  # each exactly once: nothing resent, nothing lost
    assert all(braze.accepted()[c]['segment'] == f'{c}-10' for c in customers)
    assert worker.metric('sync_attributes_skipped_total', destination='braze', reason='older') == 75 * 2
    wait(lambda: worker.metric('sync_oldest_message_age_seconds') == 0, 10,
         'the gauge to say nothing is held once every change was acknowledged')
  finally:
    assert worker.stop() == 0


def test_the_rate_limit_holds_at_the_receiver_and_a_429_storm_backs_off_and_recovers(
    local_stack, unique_name, tmp_path, receivers):
  iterable, braze, klaviyo = receivers['iterable'], receivers['braze'], receivers['klaviyo']
  paths = pubsub(unique_name)
  rate, burst = 8.0, 2
  worker = Worker(tmp_path, unique_name, paths, [
      destination('braze', braze, rate_limit={'requests_per_second': rate, 'burst': burst}),
      destination('iterable', iterable, max_attempts=12),
      destination('klaviyo', klaviyo, timeout_seconds=1.0, options={'poll_seconds': 0.1})],
      batch_seconds=0.5)
  iterable.fail_next(6, 429, retry_after=0.2)
  klaviyo.fail_next(2, 503)  # two 503s, then a job request that times out on the worker's side
  klaviyo.hang_next(1)
  braze.reject_items(['r0007'], 'bad attribute value')
  worker.start()
  try:
    customers = [f'r{i:04d}' for i in range(1200)]  # 16 Braze requests: a burst at the limit
    publish_changes(paths['changes'][0], customers, 20)
    wait(lambda: len(braze.accepted()) == len(customers) - 1, 60, 'braze to hold the customers')
    wait(lambda: len(iterable.accepted()) == len(customers), 60, 'iterable to recover')
    track = sorted((r for r in braze.recorded if r.path == '/users/track'),
                   key=lambda r: r.arrived)
    assert len(track) >= 16
    # The token bucket: at most burst + rate * T requests start in any T. The receiver sees
    # arrivals, which lag the starts by a transit delay that varies under load (seen: 53 ms),
    # so arrivals alone can look denser than the starts were. Requests to one destination go
    # one at a time, so request k started after request k-1 was answered and before it arrived:
    # the starts of requests i..j lie within [finished(i-1), arrived(j)], and a correct bucket
    # holds j - i + 1 <= burst + rate * (arrived(j) - finished(i-1)), transit jitter or not.
    for i in range(1, len(track)):
      for j in range(i, len(track)):
        span = track[j].arrived - track[i - 1].finished
        assert j - i + 1 <= burst + rate * span, (i, j, span)
    storm = [r for r in iterable.recorded if r.path.startswith('/api/users/bulkUpdate')]
    assert [r.status for r in storm[:6]] == [429] * 6 and storm[6].status == 200
    for before, after in zip(storm[:6], storm[1:7]):
      assert after.arrived - before.arrived >= 0.2  # Retry-After honoured every time
    assert worker.metric('sync_requests_retried_total', destination='iterable', status='429') == 6
    assert worker.metric('sync_items_sent_total', destination='iterable') == len(customers)
    assert worker.metric('sync_items_dead_lettered_total', destination='braze') == 1
    wait(lambda: len(klaviyo.accepted()) == len(customers), 60, 'klaviyo to recover')
    jobs = [r for r in klaviyo.recorded if r.method == 'POST']
    assert [r.status for r in jobs[:3]] == [503, 503, None]  # the third timed out
    assert jobs[3:] and all(r.status == 202 for r in jobs[3:])
    assert worker.metric('sync_requests_retried_total', destination='klaviyo', status='error') == 1
    assert worker.metric('sync_requests_retried_total', destination='klaviyo', status='503') == 2
    dead = pubsub_v1.SubscriberClient().pull(subscription=paths['dead'][1], max_messages=10,
                                             timeout=10).received_messages
    assert len(dead) == 1
    letter = orjson.loads(dead[0].message.data)
    assert (letter['destination'], letter['customer_id'], letter['status']) == (
        'braze', 'r0007', 201)
    assert 'bad attribute value' in letter['response'] + letter['reason']
    assert KEYS['BRAZE_TEST_KEY'] not in dead[0].message.data.decode()
  finally:
    assert worker.stop() == 0


def test_a_backfill_sends_a_new_destination_what_it_lacks_once(local_stack, unique_name, tmp_path,
                                                               receivers):
  braze = receivers['braze']
  paths = pubsub(unique_name)
  collection = firestore.Client(project=PROJECT).collection(unique_name)
  stored = {f'b{i}': {'customer_id': f'b{i}', 'segment': 'vip', 'version': 5 + i,
                      'orders': {'count': i, 'lifetime_value': 10.0 * i},
                      'traits': {'spend_14d': 1.5 * i}, 'audiences': ['shoes_fans'] if i else []}
            for i in range(3)}
  for customer, document in stored.items():
    collection.document(customer).set(document)
  worker = Worker(tmp_path, unique_name, paths, [destination('braze', braze)],
                  documents_collection=unique_name)

  def backfill():
    return subprocess.run([sys.executable, '-m', 'connector.sync', '--config', str(worker.config),
                           '--backfill', 'braze'], cwd=ROOT, env={**os.environ, **KEYS},
                          capture_output=True, text=True, timeout=120)

  done = backfill()
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'backfill braze: 3 documents read, 0 customers incomplete' in done.stdout
  assert braze.accepted() == {c: expected_attributes(d) for c, d in stored.items()}
  requests = len(braze.recorded)
  assert backfill().returncode == 0
  assert len(braze.recorded) == requests  # the second backfill had nothing to send


def test_the_worker_exits_non_zero_when_its_subscription_goes(local_stack, unique_name, tmp_path,
                                                              receivers):
  paths = pubsub(unique_name)
  worker = Worker(tmp_path, unique_name, paths, [destination('braze', receivers['braze'])]).start()
  pubsub_v1.SubscriberClient().delete_subscription(subscription=paths['changes'][1])
  try:
    assert worker.process.wait(60) == 1
  finally:
    worker.stop()
  assert 'the subscription stream ended' in worker.log.read_text()


def test_a_batch_coalesces_each_customer_and_an_older_version_is_never_sent_after_a_newer(
    local_stack, unique_name, tmp_path, receivers):
  iterable = receivers['iterable']
  paths = pubsub(unique_name)
  topic = paths['changes'][0]
  for version in (2, 3, 1):  # out of order, all in one batch
    publish_changes(topic, ['c1', 'c2'], version)
  worker = Worker(tmp_path, unique_name, paths, [destination('iterable', iterable)],
                  batch_seconds=1.0).start()
  try:
    wait(lambda: len(iterable.accepted()) == 2, 30, 'both customers')
    assert [(c, a['segment']) for c, a in iterable.accepted_log()] == [('c1', 'c1-3'),
                                                                       ('c2', 'c2-3')]
    assert len(iterable.recorded) == 1  # one request for the whole batch
    publish_changes(topic, ['c1'], 2)  # a late redelivery of an older version
    wait(lambda: worker.metric('sync_messages_total', result='acked') == 7, 30, 'the late one')
    assert len(iterable.recorded) == 1 and iterable.accepted()['c1']['segment'] == 'c1-3'
  finally:
    assert worker.stop() == 0
