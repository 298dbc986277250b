"""The ESP adapters: chunking, byte-identical bodies, every verdict branch, options. Pure and fast."""
from __future__ import annotations

import email.utils
import json
import random

import pytest

from connector import destinations
from connector.destinations import base, braze, iterable, klaviyo
from connector.destinations.base import ACCEPTED, FOLLOW_UP, PERMANENT, RETRY, Item

NOW = 1_800_000_000.0


def items(count, **attributes):
  return [Item(f'c{i:05d}', dict(attributes or {'vip': i % 2 == 0})) for i in range(count)]


def body_json(request):
  return json.loads(request.body)


def sent_ids(vendor, request):
  parsed = body_json(request)
  if vendor.type == 'braze':
    return [obj['external_id'] for obj in parsed['attributes']]
  if vendor.type == 'klaviyo':
    return [obj['attributes']['external_id'] for obj in parsed['data']['attributes']['profiles']['data']]
  return [user['userId'] for user in parsed['users']]


# Requests: wire shape, chunking, determinism.

def test_wire_shapes_are_each_vendors_documented_body():
  item = Item('c1', {'first_name': 'Ann', 'in_audience_vip': True, 'ltv': 12.5})
  braze_body = body_json(destinations.make('braze').requests([item])[0])
  assert braze_body == {'attributes': [{'external_id': 'c1', 'first_name': 'Ann', 'in_audience_vip': True,
                                        'ltv': 12.5}]}
  job = body_json(destinations.make('klaviyo').requests([item])[0])
  assert job == {'data': {'type': 'profile-bulk-import-job', 'attributes': {'profiles': {'data': [
      {'type': 'profile', 'attributes': {'external_id': 'c1', 'first_name': 'Ann',
                                         'properties': {'in_audience_vip': True, 'ltv': 12.5}}}]}}}}
  users = body_json(destinations.make('iterable', {'merge_nested_objects': True}).requests([item])[0])
  assert users == {'users': [{'userId': 'c1', 'preferUserId': True, 'mergeNestedObjects': True,
                              'dataFields': {'first_name': 'Ann', 'in_audience_vip': True, 'ltv': 12.5}}]}


def test_headers_and_auth_per_vendor():
  braze_vendor, klaviyo_vendor, iterable_vendor = (destinations.make(t) for t in ('braze', 'klaviyo', 'iterable'))
  assert braze_vendor.auth_headers('k1') == {'Authorization': 'Bearer k1'}
  assert klaviyo_vendor.auth_headers('k1') == {'Authorization': 'Klaviyo-API-Key k1'}
  assert iterable_vendor.auth_headers('k1') == {'Api-Key': 'k1'}
  request = klaviyo_vendor.requests(items(1))[0]
  assert dict(request.headers) == {'Accept': 'application/vnd.api+json', 'Content-Type': 'application/vnd.api+json',
                                   'revision': klaviyo.DEFAULT_REVISION}
  assert (request.method, request.path) == ('POST', '/api/profile-bulk-import-jobs')
  assert dict(braze_vendor.requests(items(1))[0].headers)['Content-Type'] == 'application/json'
  assert iterable_vendor.requests(items(1))[0].path == '/api/users/bulkUpdate'
  for vendor in (braze_vendor, klaviyo_vendor, iterable_vendor):
    assert not any(name.lower() in ('authorization', 'api-key') for name, _ in vendor.requests(items(1))[0].headers)
    for bad in ('', '  ', 'a\r\nX-Evil: 1'):
      with pytest.raises(ValueError):
        vendor.auth_headers(bad)


@pytest.mark.parametrize('type_, count, sizes', [
    ('braze', 160, [75, 75, 10]), ('iterable', 2001, [1000, 1000, 1]), ('klaviyo', 10_001, [10_000, 1])])
def test_chunks_honour_the_count_limit_in_customer_order(type_, count, sizes):
  vendor = destinations.make(type_)
  requests = vendor.requests(items(count))
  assert [len(request.items) for request in requests] == sizes
  flat = [item.customer_id for request in requests for item in request.items]
  assert flat == sorted(flat) and len(set(flat)) == count
  assert [sent_ids(vendor, r) for r in requests[:1]] == [[i.customer_id for i in requests[0].items]]


def test_batch_size_option_lowers_the_count():
  requests = destinations.make('braze', {'batch_size': 50}).requests(items(120))
  assert [len(r.items) for r in requests] == [50, 50, 20]


def test_chunks_honour_the_byte_limit_and_every_body_holds_its_items():
  vendor = destinations.make('iterable')
  big = [Item(f'c{i}', {'blob': 'x' * 900_000}) for i in range(10)]
  requests = vendor.requests(big)
  assert [len(r.items) for r in requests] == [4, 4, 2]
  for request in requests:
    assert len(request.body) <= iterable.MAX_BYTES
    assert sent_ids(vendor, request) == [item.customer_id for item in request.items]
  # one more byte per item would push the fourth over: the split follows the real sizes
  assert len(requests[0].body) + 4 * 100_000 > iterable.MAX_BYTES


def test_same_items_in_any_order_give_the_same_bytes():
  vendor = destinations.make('klaviyo')
  batch = [Item(f'c{i}', {'b': i, 'a': [1, 2], 'first_name': 'Zoë'}) for i in range(300)]
  shuffled = batch[:]
  random.Random(7).shuffle(shuffled)
  assert [r.body for r in vendor.requests(batch)] == [r.body for r in vendor.requests(shuffled)]
  assert 'Zoë'.encode() in vendor.requests(batch)[0].body  # UTF-8, not \u escapes


def test_an_item_alone_over_the_limit_raises_item_too_large_with_every_such_item():
  vendor = destinations.make('klaviyo')
  batch = items(3) + [Item('huge1', {'blob': 'x' * 100_001}), Item('huge2', {'blob': 'y' * 200_000})]
  with pytest.raises(destinations.ItemTooLarge) as raised:
    vendor.requests(batch)
  assert [item.customer_id for item in raised.value.items] == ['huge1', 'huge2']
  assert raised.value.item.customer_id == 'huge1'
  with pytest.raises(destinations.ItemTooLarge):
    destinations.make('braze').requests([Item('huge', {'blob': 'x' * braze.MAX_BYTES})])


def test_unencodable_items_and_duplicates_are_refused():
  with pytest.raises(destinations.ItemProblem) as raised:
    destinations.make('braze').requests([Item('a', {'tags': {1, 2}}), Item('b', {'x': float('nan')})])
  assert not isinstance(raised.value, destinations.ItemTooLarge)
  assert len(raised.value.items) == 2
  with pytest.raises(ValueError, match='twice'):
    destinations.make('iterable').requests([Item('a', {}), Item('a', {'x': 1})])
  assert destinations.make('braze').requests([]) == []


def test_braze_update_existing_only_marks_every_object():
  body = body_json(destinations.make('braze', {'update_existing_only': True}).requests(items(2))[0])
  assert all(obj['_update_existing_only'] is True for obj in body['attributes'])


# Retry-After and rate-limit headers.

def test_retry_after_seconds_http_date_and_garbage():
  assert base.retry_after('7', NOW) == 7.0
  assert base.retry_after(' 1.5 ', NOW) == 1.5
  assert base.retry_after('-3', NOW) == 0.0
  assert base.retry_after(email.utils.formatdate(NOW + 30, usegmt=True), NOW) == pytest.approx(30)
  assert base.retry_after(email.utils.formatdate(NOW - 30, usegmt=True), NOW) == 0.0
  assert base.retry_after('soon', NOW) is None
  assert base.retry_after(None, NOW) is None


@pytest.mark.parametrize('type_, headers, expected', [
    ('braze', {'Retry-After': '12'}, 12.0),
    ('braze', {'retry-after': email.utils.formatdate(NOW + 20, usegmt=True)}, 20.0),
    ('braze', {'X-RateLimit-Reset': str(int(NOW) + 45), 'X-RateLimit-Remaining': '0'}, 45.0),
    ('braze', {}, None),
    ('klaviyo', {'Retry-After': '3'}, 3.0),
    ('klaviyo', {'RateLimit-Reset': '17', 'RateLimit-Remaining': '0'}, 17.0),
    ('klaviyo', {}, None),
    ('iterable', {'Retry-After': '2'}, 2.0),
    ('iterable', {'X-RateLimit-Reset': str(int(NOW) + 45)}, None),  # not an Iterable header
])
def test_429_waits_as_each_vendor_says(type_, headers, expected):
  vendor = destinations.make(type_)
  request = vendor.requests(items(1))[0]
  verdict = vendor.verdict(request, 429, {k.lower(): v for k, v in headers.items()}, b'', NOW)
  assert verdict.kind == RETRY
  assert verdict.retry_after == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize('status, kind', [(408, RETRY), (500, RETRY), (502, RETRY), (503, RETRY),
                                          (400, PERMANENT), (401, PERMANENT), (403, PERMANENT),
                                          (404, PERMANENT), (413, PERMANENT), (415, PERMANENT),
                                          (301, PERMANENT)])
@pytest.mark.parametrize('type_', ['braze', 'klaviyo', 'iterable'])
def test_status_classes(type_, status, kind):
  vendor = destinations.make(type_)
  verdict = vendor.verdict(vendor.requests(items(2))[0], status, {}, b'{"message": "nope"}', NOW)
  assert verdict.kind == kind and verdict.failed == ()
  assert str(status) in verdict.reason


def test_a_5xx_reset_header_with_window_left_is_not_a_wait():
  vendor = destinations.make('braze')
  verdict = vendor.verdict(vendor.requests(items(1))[0], 503,
                           {'x-ratelimit-reset': str(int(NOW) + 60), 'x-ratelimit-remaining': '900'}, b'', NOW)
  assert verdict.kind == RETRY and verdict.retry_after is None


def test_reasons_mask_email_addresses_and_stay_short():
  vendor = destinations.make('braze')
  body = json.dumps({'message': 'bad user ann@example.com ' + 'x' * 500}).encode()
  verdict = vendor.verdict(vendor.requests(items(1))[0], 400, {}, body, NOW)
  assert 'ann@example.com' not in verdict.reason and '<email>' in verdict.reason
  assert len(verdict.reason) <= 200


# Braze 2xx.

def braze_answer(request, status, answer):
  return destinations.make('braze').verdict(request, status, {}, json.dumps(answer).encode(), NOW)


def test_braze_success_partial_errors_by_index_and_queued():
  request = destinations.make('braze').requests(items(4))[0]
  assert braze_answer(request, 201, {'message': 'success', 'attributes_processed': 4}) == base.Verdict(ACCEPTED)
  verdict = braze_answer(request, 201, {'message': 'success', 'errors': [
      {'type': "'external_id' or 'braze_id' or 'user_alias' is required", 'input_array': 'attributes', 'index': 1},
      {'type': 'bad value', 'input_array': 'attributes', 'index': 3}]})
  assert verdict.kind == ACCEPTED
  assert [(item.customer_id, reason) for item, reason in verdict.failed] == [
      ('c00001', "'external_id' or 'braze_id' or 'user_alias' is required"), ('c00003', 'bad value')]
  assert braze_answer(request, 202, {'message': 'queued'}).kind == ACCEPTED


def test_braze_unattributable_error_fails_every_item_and_odd_bodies_retry():
  request = destinations.make('braze').requests(items(3))[0]
  verdict = braze_answer(request, 201, {'message': 'success', 'errors': [{'type': 'something'}]})
  assert verdict.kind == ACCEPTED and len(verdict.failed) == 3
  out_of_range = braze_answer(request, 201, {'message': 'success', 'errors': [{'type': 't', 'index': 9}]})
  assert len(out_of_range.failed) == 3
  assert destinations.make('braze').verdict(request, 201, {}, b'<html>', NOW).kind == RETRY
  assert braze_answer(request, 200, {'message': 'weird'}).kind == RETRY


# Klaviyo: the job chain against canned answers.

def klaviyo_job(status, failed_count=0, job_id='J1'):
  return {'data': {'type': 'profile-bulk-import-job', 'id': job_id, 'attributes': {
      'status': status, 'created_at': '2026-12-01T00:00:00+00:00', 'total_count': 5,
      'completed_count': 5 - failed_count, 'failed_count': failed_count}}}


def import_error(detail, external_id=None, index=None):
  attributes = {'code': 'invalid', 'title': 'Invalid input', 'detail': detail,
                'source': {'pointer': f'/data/attributes/profiles/data/{index}' if index is not None else '/data'}}
  if external_id is not None:
    attributes['original_payload'] = {'external_id': external_id}
  return {'type': 'import-error', 'id': detail, 'attributes': attributes}


def step(vendor, request, status, answer, headers=None):
  body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
  return vendor.verdict(request, status, headers or {}, body, NOW)


def test_klaviyo_poll_chain_end_to_end_with_paginated_import_errors():
  vendor = destinations.make('klaviyo', {'poll_seconds': 0.25})
  submit = vendor.requests(items(5))[0]
  submitted = step(vendor, submit, 202, klaviyo_job('queued'))
  assert submitted.kind == FOLLOW_UP and submitted.follow_up_delay == 0.25
  poll = submitted.follow_up
  assert (poll.method, poll.path, poll.body) == ('GET', '/api/profile-bulk-import-jobs/J1', None)
  assert dict(poll.headers) == {'Accept': 'application/vnd.api+json', 'revision': klaviyo.DEFAULT_REVISION}
  assert poll.items == submit.items
  again = step(vendor, poll, 200, klaviyo_job('processing'))
  assert again.kind == FOLLOW_UP and again.follow_up == poll and again.follow_up_delay == 0.25
  complete = step(vendor, poll, 200, klaviyo_job('complete', failed_count=3))
  assert complete.kind == FOLLOW_UP
  first_page = complete.follow_up
  assert first_page.path == '/api/profile-bulk-import-jobs/J1/import-errors?page%5Bsize%5D=100'
  page1 = {'data': [import_error('bad phone', external_id='c00003'), import_error('bad locale', index=1)],
           'links': {'self': 'x', 'next': 'https://a.klaviyo.com/api/profile-bulk-import-jobs/J1/import-errors?page%5Bcursor%5D=2'}}
  more = step(vendor, first_page, 200, page1)
  assert more.kind == FOLLOW_UP and more.follow_up_delay == 0.0
  assert more.follow_up.path == '/api/profile-bulk-import-jobs/J1/import-errors?page%5Bcursor%5D=2'
  done = step(vendor, more.follow_up, 200, {'data': [import_error('x for a@b.co', external_id='c00004')],
                                            'links': {'self': 'y'}})
  assert done.kind == ACCEPTED
  assert [(item.customer_id, reason) for item, reason in done.failed] == [
      ('c00001', 'bad locale'), ('c00003', 'bad phone'), ('c00004', 'x for <email>')]


def test_klaviyo_a_next_link_to_the_same_page_ends_the_list():
  vendor = destinations.make('klaviyo')
  poll = step(vendor, vendor.requests(items(2))[0], 202, klaviyo_job('queued')).follow_up
  page = step(vendor, poll, 200, klaviyo_job('complete', failed_count=1)).follow_up
  same = {'data': [import_error('bad', external_id='c00001')],
          'links': {'next': 'https://a.klaviyo.com' + page.path}}
  done = step(vendor, page, 200, same)
  assert done.kind == ACCEPTED and [item.customer_id for item, _ in done.failed] == ['c00001']


def test_klaviyo_complete_without_failures_is_accepted_and_cancelled_is_permanent():
  vendor = destinations.make('klaviyo')
  poll = step(vendor, vendor.requests(items(2))[0], 202, klaviyo_job('queued')).follow_up
  assert step(vendor, poll, 200, klaviyo_job('complete')) .kind == ACCEPTED
  assert step(vendor, poll, 200, klaviyo_job('cancelled')).kind == PERMANENT
  assert step(vendor, poll, 200, klaviyo_job('failed')).kind == PERMANENT
  assert step(vendor, poll, 200, {'data': {}}).kind == RETRY
  assert step(vendor, poll, 503, b'').kind == RETRY
  assert step(vendor, poll, 429, b'', {'retry-after': '9'}).retry_after == 9.0
  assert step(vendor, poll, 404, {'errors': [{'detail': 'not found'}]}).kind == PERMANENT


def test_klaviyo_failures_it_cannot_place_fail_every_item():
  vendor = destinations.make('klaviyo')
  poll = step(vendor, vendor.requests(items(3))[0], 202, klaviyo_job('queued')).follow_up
  errors = step(vendor, poll, 200, klaviyo_job('complete', failed_count=2)).follow_up
  done = step(vendor, errors, 200, {'data': [import_error('bad', external_id='c00000')]})  # 1 of 2 listed
  assert done.kind == ACCEPTED
  assert [reason for _, reason in done.failed] == ['bad', '1 import error(s) not tied to a profile',
                                                   '1 import error(s) not tied to a profile']


def test_klaviyo_odd_answers_to_the_submit():
  vendor = destinations.make('klaviyo')
  submit = vendor.requests(items(1))[0]
  assert step(vendor, submit, 202, b'not json').kind == RETRY
  assert step(vendor, submit, 202, {'data': {}}).kind == RETRY
  assert step(vendor, submit, 415, {'errors': [{'detail': 'Unsupported media type'}]}).kind == PERMANENT
  assert step(vendor, submit, 429, b'', {'ratelimit-reset': '4'}).retry_after == 4.0


# Iterable 2xx.

def iterable_answer(request, answer):
  return destinations.make('iterable').verdict(request, 200, {}, json.dumps(answer).encode(), NOW)


def test_iterable_failed_updates_name_the_failed_users():
  request = destinations.make('iterable').requests(
      [Item('c1', {'x': 1}), Item('c2', {'email': 'bad@', 'x': 2}), Item('c3', {'x': 3}), Item('c4', {})])[0]
  assert iterable_answer(request, {'successCount': 4, 'failCount': 0}) == base.Verdict(ACCEPTED)
  verdict = iterable_answer(request, {
      'successCount': 1, 'failCount': 3, 'invalidUserIds': ['c3'],
      'failedUpdates': {'invalidDataUserIds': ['c1'], 'invalidUserIds': ['c3'], 'invalidEmails': ['bad@'],
                        'conflictEmails': [], 'forgottenUserIds': []}})
  assert [(item.customer_id, reason) for item, reason in verdict.failed] == [
      ('c1', 'iterable invalidDataUserIds'), ('c2', 'iterable invalidEmails'), ('c3', 'iterable invalidUserIds')]


def test_iterable_unplaced_failures_dropped_fields_and_odd_bodies():
  request = destinations.make('iterable').requests([Item('c1', {'a': 1}), Item('c2', {'b': 1})])[0]
  unplaced = iterable_answer(request, {'successCount': 1, 'failCount': 1})
  assert [reason for _, reason in unplaced.failed] == ['iterable failCount has 1 user(s) no list names'] * 2
  dropped = iterable_answer(request, {'successCount': 2, 'failCount': 0, 'filteredOutFields': ['b']})
  assert [(item.customer_id, reason) for item, reason in dropped.failed] == [('c2', 'iterable dropped field(s) b')]
  assert iterable_answer(request, {'msg': 'ok'}).kind == RETRY
  assert destinations.make('iterable').verdict(request, 200, {}, b'', NOW).kind == RETRY
  too_large = destinations.make('iterable').verdict(request, 400, {}, b'{"code": "BatchTooLarge", "msg": "x"}', NOW)
  assert too_large.kind == PERMANENT and 'x' in too_large.reason


# Options and attribute checks.

@pytest.mark.parametrize('type_, options, message', [
    ('mailchimp', {}, 'unknown destination type'),
    ('braze', {'rest_key': 'k'}, 'unknown braze option'),
    ('braze', {'batch_size': 76}, 'batch_size'),
    ('braze', {'update_existing_only': 'yes'}, 'update_existing_only'),
    ('klaviyo', {'revision': 'latest'}, 'revision'),
    ('klaviyo', {'revision': '2026-13-45'}, 'not a date'),
    ('klaviyo', {'poll_seconds': 0}, 'poll_seconds'),
    ('klaviyo', {'poll_seconds': True}, 'poll_seconds'),
    ('iterable', {'prefer_user_id': 1}, 'prefer_user_id'),
    ('iterable', {'merge_nested_objects': None}, 'merge_nested_objects'),
    ('iterable', {'batch_size': 0}, 'batch_size'),
    ('iterable', ['prefer_user_id'], 'mapping'),
])
def test_make_refuses_bad_types_and_options(type_, options, message):
  with pytest.raises(ValueError, match=message):
    destinations.make(type_, options)


def test_make_defaults_and_accepted_options():
  assert destinations.make('braze').max_items == 75
  assert destinations.make('klaviyo').max_items == 10_000 and destinations.make('klaviyo').max_bytes == 5_000_000
  assert destinations.make('iterable', {'prefer_user_id': False}).prefer_user_id is False
  vendor = destinations.make('klaviyo', {'revision': '2025-10-15.pre', 'poll_seconds': 2})
  assert dict(vendor.requests(items(1))[0].headers)['revision'] == '2025-10-15.pre'


@pytest.mark.parametrize('type_, name, value, bad', [
    ('braze', 'in_audience_vip', True, False),
    ('braze', '$revenue', base.NAME_ONLY, True),
    ('braze', 'x' * 256, base.NAME_ONLY, True),
    ('braze', 'external_id', base.NAME_ONLY, True),
    ('braze', 'note', 'x' * 256, True),
    ('braze', 'tags', list(range(101)), True),
    ('braze', 'cleared', None, False),
    ('klaviyo', 'first_name', 'Ann', False),
    ('klaviyo', 'properties', base.NAME_ONLY, True),
    ('klaviyo', 'vip', None, True),
    ('klaviyo', 'location', {'city': 'Oslo'}, False),
    ('klaviyo', 'location', {'planet': 'Mars'}, True),
    ('klaviyo', 'first_name', 3, True),
    ('iterable', 'userId', base.NAME_ONLY, True),
    ('iterable', 'a.b', base.NAME_ONLY, True),
    ('iterable', 'score', float('nan'), True),
    ('iterable', 'score', 3.5, False),
    ('iterable', '', base.NAME_ONLY, True),
])
def test_attribute_problem(type_, name, value, bad):
  vendor = destinations.make(type_)
  problem = vendor.attribute_problem(name, value)
  assert (problem is not None) == bad, problem
