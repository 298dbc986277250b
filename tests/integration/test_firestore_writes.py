"""The Firestore writer against the emulator: monotonic (never back to an older state), deletes on
withdrawn consent, batches over 500, and what it reports as written."""
import datetime as dt

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
from google.cloud import firestore

from tests.unit.beam_helpers import batch_pipeline
from transforms import reference_data
from transforms.settings import FirestoreLocation
from transforms.sinks.firestore import WriteDocuments

PROJECT = 'demo-local'
T1 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
T2 = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


def location(collection):
  return FirestoreLocation(PROJECT, collection)


def stored(collection):
  return {d.id: d.to_dict() for d in firestore.Client(project=PROJECT)
          .collection(collection).stream()}


def doc(segment, last_event_at):
  return {'customer_id': 'x', 'segment': segment, 'last_event_at': last_event_at}


def test_writes_are_monotonic_and_consent_deletes(local_stack, unique_name):
  with batch_pipeline() as p:
    out = p | beam.Create([('c1', doc('active', T2)), ('c2', doc('vip', T1)),
                           ('c3', doc('prospect', T1))]) | WriteDocuments(location(unique_name))
    assert_that(out.written | beam.MapTuple(lambda doc_id, d, at: doc_id),
                equal_to(['c1', 'c2', 'c3']))
  # A replay of older state for c1, newer state for c2, and c3 withdrew consent.
  with batch_pipeline() as p:
    out = p | beam.Create([('c1', doc('prospect', T1)), ('c2', doc('at_risk', T2)),
                           ('c3', None), ('c4', None)]) | WriteDocuments(location(unique_name))
    assert_that(out.written | beam.MapTuple(lambda doc_id, d, at: doc_id), equal_to(['c2']))
  now = stored(unique_name)
  assert set(now) == {'c1', 'c2'}
  assert now['c1']['segment'] == 'active' and now['c1']['last_event_at'] == T2
  assert now['c2']['segment'] == 'at_risk'
  assert now['c2']['updated_at'] is not None


def test_more_than_one_commit_of_documents_and_invalid_ids_dead_lettered(local_stack, unique_name):
  pairs = [(f'c{i:04d}', doc('prospect', T1)) for i in range(1203)] + [('a/b', doc('vip', T1))]
  with batch_pipeline() as p:
    out = p | beam.Create(pairs) | WriteDocuments(location(unique_name))
    assert_that(out.written | beam.combiners.Count.Globally(), equal_to([1203]), label='Count')
    assert_that(out.dead_letter | beam.Map(lambda d: (d['failure_type'], d['step'])),
                equal_to([('invalid_document_id', 'WriteDocuments')]), label='Dead')
  assert len(stored(unique_name)) == 1203


def test_streaming_reference_data_reads_popularity_back(local_stack, unique_name, tmp_path):
  db = firestore.Client(project=PROJECT)
  for product_id, customers in (('p1', 1), ('p2', 7), ('p3', 3)):
    db.collection(unique_name).document(product_id).set({'customers': customers})
  catalog = tmp_path / 'catalog.csv'
  catalog.write_text('product_id,sku,name,category,brand,price,currency,in_stock,url,image_url\n'
                     'p1,S,A,Shoes,B,1,USD,true,u,i\np2,S,B,Shoes,B,1,USD,true,u,i\n'
                     'p3,S,C,Hats,B,1,USD,true,u,i\n')
  data = reference_data.load(None, str(catalog), location(unique_name))
  assert [r['product_id'] for r in data.recommender.recommend(['Shoes'], set())] == [
      'p2', 'p1', 'p3']
