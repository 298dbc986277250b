"""Audiences through the send-time API over real HTTP against the Firestore emulator: member
listings paged by cursor (every member once, in id order), their refusals, auth, metrics and a
Firestore outage; `fields=traits,audiences` on the personalization endpoint."""
import asyncio
import json
import pathlib
import random
import time
import urllib.parse

import pytest
from google.cloud import firestore

from connector import audiences
from connector.config import Settings
from connector.store import DocumentStore
from tests.integration.helpers import paused
from scripts.demo_connector import free_port
from tests.integration.test_connector_api import document, serving

PROJECT = 'demo-local'
KEY = 'k-audiences-0123456789abcdef'
MEMBERS = '/v1/audiences/{key}/members'


def _ids():
  """250 ids whose id order is not their numeric order, with mixed case, spaces, non-ASCII and
  characters either side of the digits in byte order."""
  rng = random.Random(15)
  odd = ['Zeta', 'a b', 'c-1', 'c1 ', 'zoë', 'émile', '🦄', '~tilde', 'C1', 'cust.7']
  numbered = rng.sample(range(100_000), 250 - len(odd))
  return odd + [f'c{n}' for n in numbered]


IDS = _ids()


def audiences_of(index: int) -> list[str]:
  keys = ['everyone']
  if index % 2 == 0:
    keys.append('games_fans')
  if index % 3 == 0:
    keys.append('vip')
  if index < 100:
    keys.append('hundred')       # exactly a page of 100
  if index % 20 == 7:
    keys.append('few')           # 13 members, paged one at a time
  if index == 42:
    keys.append('lonely')
  return sorted(keys)


def members_of(key: str) -> list[str]:
  return sorted(customer_id for i, customer_id in enumerate(IDS) if key in audiences_of(i))


@pytest.fixture(scope='module')
def api(local_stack):
  collection = f'aud{int(time.time() * 1000)}'
  db = firestore.Client(project=PROJECT)
  batch = db.batch()
  for index, customer_id in enumerate(IDS):
    seeded = document(customer_id)
    seeded['traits'] = {'games_views_7d': index % 5, 'spend_90d': float(index)}
    seeded['audiences'] = audiences_of(index)
    batch.set(db.collection(collection).document(customer_id), seeded)
  # Documents that must never be listed: written before audiences existed, in none, and in keys
  # that are prefixes, extensions or case variants of the listed ones.
  batch.set(db.collection(collection).document('old'), document('old'))
  batch.set(db.collection(collection).document('none'), {**document('none'), 'audiences': []})
  batch.set(db.collection(collection).document('near'),
            {**document('near'), 'audiences': ['VIP', 'everyone_else', 'games_fans_x']})
  batch.commit()
  settings = Settings(project=PROJECT, collection=collection, api_keys=(KEY,),
                      cache_ttl_seconds=30, port=free_port())
  with serving(settings, timeout=30) as client:
    yield client, db.collection(collection)


def get(client, path, key=KEY, **kwargs):
  headers = kwargs.pop('headers', {})
  if key is not None:
    headers.setdefault('Authorization', f'Bearer {key}')
  return client.get(path, headers=headers, **kwargs)


def pages(client, key, limit=None):
  """Every page of audience `key`, following next_cursor until it is null."""
  answers, cursor = [], None
  while True:
    params = {k: v for k, v in (('limit', limit), ('cursor', cursor)) if v is not None}
    reply = get(client, MEMBERS.format(key=key), params=params)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {'audience', 'members', 'next_cursor'} and body['audience'] == key
    answers.append(body)
    cursor = body['next_cursor']
    if cursor is None:
      return answers
    assert len(answers) <= len(IDS), 'next_cursor never became null'


@pytest.mark.parametrize('key', ['everyone', 'games_fans', 'vip'])
def test_pages_of_100_list_every_member_once_in_id_order(api, key):
  client, _ = api
  answers = pages(client, key, limit=100)
  listed = [m for page in answers for m in page['members']]
  assert listed == members_of(key)  # exactly the members, in order: no duplicate, no gap
  assert [len(page['members']) for page in answers[:-1]] == [100] * (len(answers) - 1)
  assert 1 <= len(answers[-1]['members']) <= 100
  assert len(answers) == -(-len(members_of(key)) // 100)


def test_all_250_members_come_in_pages_of_100_100_50(api):
  client, _ = api
  answers = pages(client, 'everyone', limit=100)
  assert [len(page['members']) for page in answers] == [100, 100, 50]
  assert members_of('everyone') == sorted(IDS)


def test_the_default_limit_is_100_and_a_full_last_page_says_it_is_the_last(api):
  client, _ = api
  first = get(client, MEMBERS.format(key='everyone')).json()
  assert first['members'] == sorted(IDS)[:100] and first['next_cursor'] is not None
  # Exactly 100 members: one page, and it already says there is no next one.
  assert pages(client, 'hundred') == [
      {'audience': 'hundred', 'members': members_of('hundred'), 'next_cursor': None}]
  assert [len(p['members']) for p in pages(client, 'hundred', limit=50)] == [50, 50]


def test_limit_1_pages_one_member_at_a_time(api):
  client, _ = api
  answers = pages(client, 'few', limit=1)
  assert [page['members'] for page in answers] == [[m] for m in members_of('few')]
  assert len(members_of('few')) == 13
  assert pages(client, 'lonely', limit=1) == [
      {'audience': 'lonely', 'members': [IDS[42]], 'next_cursor': None}]


@pytest.mark.parametrize('key', ['nobody_is_in_this', 'every', 'vi', 'games_fans_', 'z' * 63])
def test_an_audience_nobody_is_in_is_an_empty_200(api, key):
  # The connector cannot know which keys are defined: a well-formed key lists who is in it, and
  # a key is matched whole (prefixes of listed keys are other audiences).
  client, _ = api
  reply = get(client, MEMBERS.format(key=key))
  assert reply.status_code == 200
  assert reply.json() == {'audience': key, 'members': [], 'next_cursor': None}


def test_keys_are_matched_whole(api):
  client, _ = api
  assert get(client, MEMBERS.format(key='everyone_else')).json()['members'] == ['near']
  assert get(client, MEMBERS.format(key='games_fans_x')).json()['members'] == ['near']


def test_membership_is_as_of_the_last_document_write(api):
  client, collection = api
  assert get(client, MEMBERS.format(key='fresh')).json()['members'] == []
  collection.document(IDS[3]).update({'audiences': firestore.ArrayUnion(['fresh'])})
  collection.document(IDS[5]).update({'audiences': firestore.ArrayUnion(['fresh'])})
  assert get(client, MEMBERS.format(key='fresh')).json()['members'] == sorted([IDS[3], IDS[5]])
  collection.document(IDS[3]).update({'audiences': firestore.ArrayRemove(['fresh'])})
  # Not cached: the next listing already follows the write.
  reply = get(client, MEMBERS.format(key='fresh'))
  assert reply.json()['members'] == [IDS[5]] and reply.headers['cache-control'] == 'no-store'


def test_a_cursor_member_deleted_between_pages_leaves_no_gap(api):
  # The cursor is a position in id order, not a document: the page after it starts at the next
  # id whether or not its document still exists (a suppressed customer is deleted).
  client, collection = api
  names = [f'gap{i:02d}' for i in range(6)]
  for name in names:
    collection.document(name).set({**document(name), 'audiences': ['gappy']})
  first = get(client, MEMBERS.format(key='gappy'), params={'limit': 3}).json()
  assert first['members'] == names[:3]
  collection.document(names[2]).delete()
  rest = get(client, MEMBERS.format(key='gappy'),
             params={'limit': 3, 'cursor': first['next_cursor']}).json()
  assert rest == {'audience': 'gappy', 'members': names[3:], 'next_cursor': None}


@pytest.mark.parametrize('path', [
    MEMBERS.format(key='VIP'), MEMBERS.format(key='games-fans'), MEMBERS.format(key='1vip'),
    MEMBERS.format(key='_vip'), MEMBERS.format(key='v' * 64), MEMBERS.format(key='g%C3%A4mes'),
    MEMBERS.format(key='vip%0A'), MEMBERS.format(key='vip%20'), MEMBERS.format(key='%2e%2e'),
    MEMBERS.format(key='%2e')])
def test_a_bad_key_is_400(api, path):
  client, _ = api
  reply = get(client, path)
  assert reply.status_code == 400, (path, reply.status_code)
  assert reply.json() == {'error': 'bad_request',
                          'message': 'audience key must match [a-z][a-z0-9_]{0,62}'}


@pytest.mark.parametrize('limit', ['0', '1001', '-1', 'abc', '', '1.5', '1e3', ' 5', '99999999999'])
def test_a_limit_out_of_range_or_not_a_number_is_400_not_422(api, limit):
  client, _ = api
  reply = get(client, MEMBERS.format(key='vip'), params={'limit': limit})
  assert reply.status_code == 400
  assert reply.json() == {'error': 'bad_request',
                          'message': 'limit must be a whole number from 1 to 1000'}


@pytest.mark.parametrize('cursor', [
    '', 'null', 'not a cursor', 'YzE=', 'YzF', 'Y', '%%%', 'A' * 5000,
    audiences.encode_cursor('a/b'), audiences.encode_cursor('__name__')])
def test_a_bad_cursor_is_400(api, cursor):
  client, _ = api
  reply = get(client, MEMBERS.format(key='vip'), params={'cursor': cursor})
  assert reply.status_code == 400
  assert reply.json() == {'error': 'bad_request', 'message': 'cursor is not one this endpoint gave'}


def test_a_key_with_a_slash_is_no_route(api):
  client, _ = api
  assert get(client, '/v1/audiences/vip%2Fx/members').status_code == 404
  assert get(client, '/v1/audiences//members').status_code == 404
  assert get(client, '/v1/audiences/vip/members/').status_code == 404


@pytest.mark.parametrize('headers', [
    {}, {'Authorization': 'Bearer wrong-key-0123456789'}, {'X-API-Key': KEY[:-1]}])
def test_no_key_is_401_before_anything_is_checked_or_looked_up(api, headers):
  client, _ = api
  for path, params in [(MEMBERS.format(key='vip'), {}), (MEMBERS.format(key='Bad-Key'), {}),
                       (MEMBERS.format(key='vip'), {'limit': '0', 'cursor': 'null'})]:
    reply = get(client, path, key=None, headers=dict(headers), params=params)
    assert reply.status_code == 401 and reply.content == b'{"error":"unauthorized"}'
  assert get(client, MEMBERS.format(key='vip'), key=None,
             headers={'X-API-Key': KEY}).status_code == 200


def test_the_endpoint_is_counted_by_its_route_template(api):
  client, _ = api
  get(client, MEMBERS.format(key='lonely'))
  get(client, MEMBERS.format(key='Bad'))
  metrics = get(client, '/metrics').text
  assert ('connector_requests_total{endpoint="/v1/audiences/{key}/members",status="200"}'
          in metrics)
  assert ('connector_requests_total{endpoint="/v1/audiences/{key}/members",status="400"}'
          in metrics)
  assert 'connector_request_seconds_count{endpoint="/v1/audiences/{key}/members"}' in metrics
  assert 'lonely' not in metrics  # keys are not labels


def test_the_query_transfers_no_document_fields(api):
  """The store's query, run as the library would, gives snapshots with no data: the emulator
  honours the id-only projection (production Firestore bills per document either way)."""
  _, collection = api
  store = DocumentStore(PROJECT, '(default)', collection.id)

  async def run():
    try:
      return [(s.id, s.to_dict()) async for s in store.members_query('vip', None, 5).stream()]
    finally:
      await store.close()

  assert asyncio.run(run()) == [(m, {}) for m in members_of('vip')[:5]]


def _all_threads_stopped(local_stack_dir, component) -> bool:
  """Whether every thread of the component's process group is stopped: SIGSTOP is delivered
  asynchronously, so the test asks for the state it needs instead of trusting killpg's return."""
  state = json.loads((local_stack_dir / 'state.json').read_text())
  pgid = int(state['components'][component]['pgid'])
  states = []
  for stat in pathlib.Path('/proc').glob('[0-9]*/task/[0-9]*/stat'):
    try:
      fields = stat.read_text().rsplit(')', 1)[1].split()  # state, ppid, pgrp, ...
    except OSError:  # a thread or process that ended meanwhile
      continue
    if int(fields[2]) == pgid:
      states.append(fields[0])
  return bool(states) and all(s in 'tT' for s in states)


def test_firestore_not_answering_is_503_with_retry_after(api, local_stack_dir):
  client, _ = api
  with paused(local_stack_dir, 'firestore'):
    deadline = time.monotonic() + 30
    while not _all_threads_stopped(local_stack_dir, 'firestore'):
      assert time.monotonic() < deadline, 'the paused emulator did not stop'
      time.sleep(0.01)
    reply = get(client, MEMBERS.format(key='vip'))
  assert (reply.status_code, reply.headers.get('retry-after')) == (503, '1'), (
      reply.status_code, reply.text)
  assert reply.json() == {'error': 'unavailable'}
  assert get(client, MEMBERS.format(key='lonely')).json()['members'] == [IDS[42]]


def test_personalization_serves_traits_and_audiences(api):
  client, _ = api
  customer_id = IDS[42]
  reply = get(client, f'/v1/customers/{urllib.parse.quote(customer_id)}/personalization',
              params={'fields': 'traits,audiences'})
  assert reply.status_code == 200
  assert reply.json() == {'customer_id': customer_id,
                          'traits': {'games_views_7d': 2, 'spend_90d': 42.0},
                          'audiences': audiences_of(42)}
  assert list(get(client, f'/v1/customers/{urllib.parse.quote(customer_id)}/personalization',
                  params={'fields': 'audiences'}).json()) == ['customer_id', 'audiences']
  full = get(client, f'/v1/customers/{urllib.parse.quote(customer_id)}/personalization').json()
  assert full['traits'] == {'games_views_7d': 2, 'spend_90d': 42.0}
  assert full['audiences'] == audiences_of(42)


def test_personalization_404_and_400_are_unchanged_with_the_new_fields(api):
  client, _ = api
  missing = get(client, '/v1/customers/nobody/personalization',
                params={'fields': 'traits,audiences'})
  assert missing.status_code == 404 and missing.json() == {'error': 'not_found'}
  bad = get(client, f'/v1/customers/{IDS[10]}/personalization',
            params={'fields': 'traits,audiences,email_sha256'})
  assert bad.status_code == 400 and bad.json() == {
      'error': 'bad_request', 'message': 'unknown field(s): email_sha256'}
  # A document written before audiences existed serves them as null, like any absent field.
  old = get(client, '/v1/customers/old/personalization', params={'fields': 'traits,audiences'})
  assert old.status_code == 200 and old.json() == {'customer_id': 'old', 'traits': None,
                                                   'audiences': None}
