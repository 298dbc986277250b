"""The strict ESP receivers: requests built by connector.destinations are accepted, contract breaks
get the vendor's documented 4xx, and the fault programming (429 + Retry-After, 5xx, partial
failures, hang/release, delay) behaves. Local only (127.0.0.1), no emulators."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from connector import destinations
from connector.destinations import ACCEPTED, FOLLOW_UP, PERMANENT, RETRY, Item
from tests.receivers.esp import BrazeReceiver, IterableReceiver, KlaviyoReceiver

KEY = 'test-key-0123'
RECEIVERS = {'braze': BrazeReceiver, 'klaviyo': KlaviyoReceiver, 'iterable': IterableReceiver}
OPTIONS = {'braze': {'batch_size': 3}, 'klaviyo': {'poll_seconds': 0.01, 'batch_size': 4},
           'iterable': {'batch_size': 3}}


def local_client(receiver, timeout=5.0):
  """Plain HTTP to 127.0.0.1: verify=False skips loading a CA bundle (~0.15 s per client)."""
  return httpx.Client(base_url=receiver.base_url, timeout=timeout, verify=False)


@pytest.fixture(params=sorted(RECEIVERS))
def esp(request):
  """(vendor adapter, running receiver, httpx client) for each vendor."""
  type_ = request.param
  with RECEIVERS[type_](KEY) as receiver, local_client(receiver) as client:
    yield destinations.make(type_, OPTIONS[type_]), receiver, client


def send(client, vendor, request, key=KEY, **overrides):
  headers = {**dict(request.headers), **vendor.auth_headers(key), **overrides}
  return client.request(request.method, request.path, content=request.body, headers=headers)


def deliver(client, vendor, items):
  """Every request and follow-up to the end; returns the final verdicts and the answers' statuses."""
  finals, statuses = [], []
  for request in vendor.requests(items):
    while True:
      answer = send(client, vendor, request)
      statuses.append(answer.status_code)
      verdict = vendor.verdict(request, answer.status_code, answer.headers, answer.content, time.time())
      if verdict.kind != FOLLOW_UP:
        finals.append(verdict)
        break
      time.sleep(verdict.follow_up_delay)
      request = verdict.follow_up
  return finals, statuses


def customers(count):
  return [Item(f'c{i:03d}', {'first_name': f'N{i}', 'in_audience_vip': i % 2 == 0, 'ltv': i * 2.5})
          for i in range(count)]


def test_adapter_requests_are_accepted_and_partial_failures_reported(esp):
  vendor, receiver, client = esp
  batch = customers(10)
  receiver.reject_items(['c002', 'c003', 'c004'], 'refused by the test')
  finals, statuses = deliver(client, vendor, batch)
  assert all(verdict.kind == ACCEPTED for verdict in finals)
  failed = sorted(item.customer_id for verdict in finals for item, _ in verdict.failed)
  assert failed == ['c002', 'c003', 'c004']
  assert all(200 <= status < 300 for status in statuses)
  expected = {item.customer_id: item.attributes for item in batch if item.customer_id not in failed}
  assert receiver.accepted() == expected
  assert sorted(customer_id for customer_id, _ in receiver.accepted_log()) == sorted(expected)
  records = receiver.recorded
  assert all(record.finished >= record.arrived and record.status == status
             for record, status in zip(records, statuses))
  assert sorted(i for record in records for i in record.customer_ids) == sorted(expected)
  if vendor.type == 'klaviyo':  # c002..c003 in the first job: 2 errors, 1 page; c004 in the second
    assert [record.path.split('?')[0].rsplit('/', 1)[-1] for record in records].count('import-errors') == 2


def test_klaviyo_import_errors_are_paginated_and_polls_until_complete():
  vendor = destinations.make('klaviyo', {'poll_seconds': 0.01})
  with KlaviyoReceiver(KEY, polls_until_complete=3, errors_page_size=2) as receiver, \
      local_client(receiver) as client:
    receiver.reject_items(['c001', 'c003', 'c005', 'c007', 'c008'])
    finals, statuses = deliver(client, vendor, customers(9))
    assert [sorted(item.customer_id for item, _ in verdict.failed) for verdict in finals] == [
        ['c001', 'c003', 'c005', 'c007', 'c008']]
    paths = [record.path for record in receiver.recorded]
    assert len(paths) == 1 + 4 + 3  # submit, 3 not-complete polls + the completing one, 3 error pages
    assert 'page%5Bcursor%5D=4' in paths[-1]
    (job,) = receiver.jobs().values()
    assert job == {'profiles': 4, 'errors': 5, 'polls': 4, 'complete': True}
    assert sorted(receiver.accepted()) == ['c000', 'c002', 'c004', 'c006']
    answer = client.get('/api/profile-bulk-import-jobs/NOPE', headers={
        **vendor.auth_headers(KEY), 'revision': destinations.make('klaviyo').revision})
    assert answer.status_code == 404 and answer.json()['errors'][0]['code'] == 'not_found'


def test_wrong_or_missing_key_gets_the_documented_401(esp):
  vendor, receiver, client = esp
  request = vendor.requests(customers(1))[0]
  for answer in (send(client, vendor, request, key='wrong-key'),
                 client.request(request.method, request.path, content=request.body, headers=dict(request.headers))):
    assert answer.status_code == 401
    assert vendor.verdict(request, 401, answer.headers, answer.content, time.time()).kind == PERMANENT
  bodies = [record.body for record in receiver.recorded]
  assert receiver.accepted() == {} and len(bodies) == 2
  if vendor.type == 'braze':  # the key belongs in a Bearer header, not beside it
    assert send(client, vendor, request, Authorization=KEY).status_code == 401
  if vendor.type == 'iterable':
    assert answer.json()['code'] == 'BadApiKey'


def test_wrong_content_type_is_refused(esp):
  vendor, receiver, client = esp
  answer = send(client, vendor, vendor.requests(customers(1))[0], **{'Content-Type': 'text/plain'})
  assert answer.status_code == 415
  assert receiver.accepted() == {}


def test_malformed_json_gets_400(esp):
  vendor, receiver, client = esp
  request = vendor.requests(customers(2))[0]
  answer = client.request('POST', request.path, content=request.body[:-3],
                          headers={**dict(request.headers), **vendor.auth_headers(KEY)})
  assert answer.status_code == 400
  assert receiver.recorded[0].body is None and receiver.accepted() == {}


def over_count_body(type_):
  """A body one item over the vendor's per-request count (the adapter never builds one)."""
  if type_ == 'braze':
    return {'attributes': [{'external_id': f'c{i}', 'x': 1} for i in range(76)]}
  if type_ == 'klaviyo':
    profiles = [{'type': 'profile', 'attributes': {'external_id': f'c{i}'}} for i in range(10_001)]
    return {'data': {'type': 'profile-bulk-import-job', 'attributes': {'profiles': {'data': profiles}}}}
  return {'users': [{'userId': f'c{i}', 'dataFields': {}} for i in range(1_001)]}


def test_over_limit_batches_get_the_documented_4xx(esp):
  vendor, receiver, client = esp
  request = vendor.requests(customers(1))[0]
  headers = {**dict(request.headers), **vendor.auth_headers(KEY)}
  answer = client.post(request.path, content=json.dumps(over_count_body(vendor.type)), headers=headers)
  assert answer.status_code == 400
  if vendor.type == 'braze':
    assert answer.json()['message'] == 'Max Input Length Exceeded'
  if vendor.type == 'iterable':
    assert answer.json()['code'] == 'BatchTooLarge'
  too_big = b'{"pad":"' + b'x' * vendor.max_bytes + b'"}'
  assert client.post(request.path, content=too_big, headers=headers).status_code == 413
  assert receiver.accepted() == {}


@pytest.mark.parametrize('type_, body, extra_headers', [
    ('braze', {'attributes': [{'external_id': 'c1'}], 'api_key': 'x'}, {}),
    ('braze', {'attributes': []}, {}),
    ('klaviyo', {'data': {'type': 'profile-bulk-import-job', 'attributes': {'profiles': {'data': [
        {'type': 'profile', 'attributes': {'external_id': 'c1', 'favourite': 'tea'}}]}}}}, {}),
    ('klaviyo', {'data': {'type': 'profile', 'attributes': {'profiles': {'data': []}}}}, {}),
    ('klaviyo', None, {'revision': 'latest'}),
    ('iterable', {'users': [{'userId': 'c1', 'email': 'a@b.co'}]}, {}),
    ('iterable', {'users': [{'userId': 'c1'}], 'listId': 3}, {}),
])
def test_body_shape_breaks_get_400(type_, body, extra_headers):
  vendor = destinations.make(type_)
  with RECEIVERS[type_](KEY) as receiver, local_client(receiver) as client:
    request = vendor.requests(customers(1))[0]
    content = request.body if body is None else json.dumps(body).encode()
    answer = client.post(request.path, content=content,
                         headers={**dict(request.headers), **vendor.auth_headers(KEY), **extra_headers})
    assert answer.status_code == 400, answer.text
    assert receiver.accepted() == {}


def test_braze_non_fatal_errors_name_the_index():
  vendor = destinations.make('braze')
  with BrazeReceiver(KEY) as receiver, local_client(receiver) as client:
    body = {'attributes': [{'external_id': 'c1', 'a': 1}, {'a': 2}, {'external_id': 'c3', '$bad': 1}]}
    answer = client.post('/users/track', json=body, headers=vendor.auth_headers(KEY))
    assert answer.status_code == 201
    assert [(error['input_array'], error['index']) for error in answer.json()['errors']] == [
        ('attributes', 1), ('attributes', 2)]
    assert receiver.accepted() == {'c1': {'a': 1}}
    headers = answer.headers
    assert int(headers['X-RateLimit-Limit']) > int(headers['X-RateLimit-Remaining']) >= 0
    assert float(headers['X-RateLimit-Reset']) > time.time() - 1


def test_iterable_refuses_a_changed_field_type_and_malformed_user_ids():
  vendor = destinations.make('iterable')
  with IterableReceiver(KEY) as receiver, local_client(receiver) as client:
    deliver(client, vendor, [Item('c1', {'score': 1})])
    finals, _ = deliver(client, vendor, [Item('c2', {'score': 'high'}), Item('c3 ', {'score': 2})])
    assert [(item.customer_id, reason) for item, reason in finals[0].failed] == [
        ('c2', 'iterable invalidDataUserIds'), ('c3 ', 'iterable invalidUserIds')]
    assert receiver.accepted() == {'c1': {'score': 1}}


def test_429_with_retry_after_then_5xx_then_success(esp):
  vendor, receiver, client = esp
  request = vendor.requests(customers(2))[0]
  receiver.fail_next(1, 429, retry_after=3)
  receiver.fail_next(1, 503)
  first = send(client, vendor, request)
  assert first.status_code == 429 and first.headers['Retry-After'] == '3'
  verdict = vendor.verdict(request, 429, first.headers, first.content, time.time())
  assert verdict.kind == RETRY and verdict.retry_after == pytest.approx(3, abs=1)
  if vendor.type == 'klaviyo':  # RateLimit-* are replaced by Retry-After on a 429
    assert 'RateLimit-Remaining' not in first.headers
  if vendor.type == 'braze':
    assert first.headers['X-RateLimit-Remaining'] == '0'
  second = send(client, vendor, request)
  assert second.status_code == 503
  assert vendor.verdict(request, 503, second.headers, second.content, time.time()).kind == RETRY
  third = send(client, vendor, request)
  assert 200 <= third.status_code < 300
  if vendor.type == 'klaviyo':
    assert {'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset'} <= set(third.headers)
  else:  # Klaviyo accepts at job completion, not here
    assert len(receiver.accepted()) == 2


def test_klaviyo_polls_can_be_failed_separately():
  vendor = destinations.make('klaviyo', {'poll_seconds': 0.01})
  with KlaviyoReceiver(KEY) as receiver, local_client(receiver) as client:
    receiver.fail_next(1, 429, retry_after=1, on='poll')
    submit = vendor.requests(customers(1))[0]
    poll = vendor.verdict(submit, 202, {}, send(client, vendor, submit).content, time.time()).follow_up
    throttled = send(client, vendor, poll)
    assert throttled.status_code == 429
    assert vendor.verdict(poll, 429, throttled.headers, throttled.content, time.time()).retry_after == 1


def test_hang_holds_until_release_and_then_accepts(esp):
  vendor, receiver, client = esp
  request = vendor.requests(customers(1))[0]
  receiver.hang_next()
  answers = []
  sender = threading.Thread(target=lambda: answers.append(send(client, vendor, request)))
  sender.start()
  assert receiver.wait_recorded(1)
  time.sleep(0.1)
  (held,) = receiver.recorded
  assert held.finished is None and held.status is None and answers == []
  receiver.release()
  sender.join(timeout=5)
  assert 200 <= answers[0].status_code < 300
  assert receiver.recorded[0].finished is not None


def test_a_held_request_whose_client_left_is_not_accepted():
  vendor = destinations.make('braze')
  with BrazeReceiver(KEY) as receiver:
    receiver.hang_next()
    request = vendor.requests(customers(2))[0]
    with local_client(receiver, timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
      send(impatient, vendor, request)
    receiver.release()
    assert receiver.wait_finished(1)
    (abandoned,) = receiver.recorded
    assert abandoned.status is None and abandoned.customer_ids == ()
    assert receiver.accepted() == {} and receiver.accepted_log() == []


def test_delay_adds_latency_and_wrong_routes_are_refused():
  vendor = destinations.make('iterable')
  with IterableReceiver(KEY) as receiver, local_client(receiver) as client:
    receiver.delay(0.2)
    started = time.monotonic()
    assert send(client, vendor, vendor.requests(customers(1))[0]).status_code == 200
    assert time.monotonic() - started >= 0.2
    receiver.delay(0)
    assert client.get('/api/users/bulkUpdate', headers=vendor.auth_headers(KEY)).status_code == 405
    assert client.post('/api/users/update', headers=vendor.auth_headers(KEY)).status_code == 404


def test_many_small_requests_stay_fast_and_repeats_show_in_the_log():
  """200 keep-alive requests: a receiver answering in separate writes without TCP_NODELAY would
  take ~40 ms each (Nagle and delayed ACK); here the whole run takes a fraction of a second."""
  vendor = destinations.make('braze', {'batch_size': 10})
  with BrazeReceiver(KEY) as receiver, local_client(receiver) as client:
    batch = customers(2_000)
    started = time.monotonic()
    finals, _ = deliver(client, vendor, batch)
    assert time.monotonic() - started < 4
    assert len(finals) == 200 and not any(verdict.failed for verdict in finals)
    send(client, vendor, vendor.requests(batch[:3])[0])  # a retry of the same items
    assert len(receiver.accepted()) == 2_000
    log = receiver.accepted_log()
    assert len(log) == 2_003 and [customer_id for customer_id, _ in log[-3:]] == ['c000', 'c001', 'c002']
