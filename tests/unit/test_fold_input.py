"""`profile.fold_input` cuts an event down to what the fold reads; the batch graph groups only the
cut-down records by customer. These tests check that folding them (after the encoding the graph
gives them) yields the same profile state and the same interacted products as folding the full
records: on generated histories, on the sample generator's output and on the bad-input corpus.
"""
import gzip
import pathlib

from hypothesis import HealthCheck, given, settings

import schemas
from scripts import generate_data
from tests.unit.test_profile_properties import histories, parsed
from transforms.rules import events, profile
from transforms.sources import file_source

CORPUS = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'bad'


def through_the_graph(event: dict) -> dict:
  """What the fold gets in the batch graph: the cut-down record, encoded and decoded."""
  return schemas.decode_record('events', schemas.encode_record('events', profile.fold_input(event)))


def assert_same_fold(records: list[dict]) -> None:
  by_customer: dict[str, list] = {}
  for record in records:
    by_customer.setdefault(record.get('user_id') or record.get('anonymous_id'), []).append(record)
  assert by_customer
  for customer, full in by_customer.items():
    slim = [through_the_graph(event) for event in full]
    assert profile.fold(customer, slim) == profile.fold(customer, full)
    for small, event in zip(slim, full):
      assert profile.interacted_products(small) == profile.interacted_products(event)
      assert small['product_id'] == event['product_id']


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_generated_histories_fold_the_same(calls):
  records = parsed(calls)
  if records:
    assert_same_fold(records)


def test_the_sample_data_folds_the_same(tmp_path):
  manifest = generate_data.generate(tmp_path, customers=60, products=40, events=4000, seed=7,
                                    files=1)
  path = tmp_path / manifest['files'][0]
  source = file_source(str(path))
  with gzip.open(path, 'rb') as lines:
    results = [events.parse_event(line.rstrip(b'\n'), source, 1) for line in lines]
  records = [r for r in results if isinstance(r, dict)]
  assert len(records) > 3500
  assert {profile.event_name(r) for r in records} >= {
      profile.PRODUCT_VIEWED, profile.PRODUCT_ADDED, profile.ORDER_COMPLETED, 'identify'}
  assert_same_fold(records)


def test_the_bad_input_corpus_folds_the_same():
  records = []
  for path in sorted(CORPUS.iterdir()):
    result = events.parse_event(path.read_bytes(), 'file:corpus', 1)
    if isinstance(result, dict):
      records.append(result)
  assert len(records) > 10
  assert_same_fold(records)


def test_odd_shapes_are_kept_as_the_fold_reads_them():
  event = {'message_id': 'm', 'event_time': 5, 'type': 'track', 'event': 'Order Completed',
           'context': {'ip': '1.2.3.4'}, 'traits': 'not a dict',
           'properties': {'products': [{'product_id': 'p1', 'sku': 'x', 'price': 2}, 'line',
                                       None], 'coupon': 'SAVE', 'name': 'n'}}
  slim = profile.fold_input(event)
  assert 'context' not in slim and 'traits' not in slim
  assert slim['properties'] == {'name': 'n', 'products': [{'product_id': 'p1', 'price': 2},
                                                          'line', None]}
  assert profile.fold_input({**event, 'properties': {'products': 'abc'}})['properties'] == {
      'products': 'abc'}
