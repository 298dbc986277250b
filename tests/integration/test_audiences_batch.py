"""Audiences through the batch job against the real emulators: documents carry traits and
audiences, audience_membership gets one row per change, and a re-run over the same input adds no
row (the job diffs against the table)."""
import collections
import pathlib

import pytest
from google.cloud import firestore

from pipeline import run
from scripts import generate_data
from transforms.rules.audiences import definitions
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'
EXAMPLE = pathlib.Path(__file__).parents[2] / 'audiences.example.yaml'


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
  out = tmp_path_factory.mktemp('audiences')
  manifest = generate_data.generate(out, customers=120, products=50, events=2500, seed=11,
                                    files=1)
  return out, manifest


def _run(data, dataset, capsys):
  code = run.main([
      f'--events={data}/events-*.ndjson.gz', f'--customers={data}/customers.csv',
      f'--catalog={data}/catalog.csv', f'--project={PROJECT}', '--runner=FnApiRunner',
      f'--dataset={dataset}', f'--collection={dataset}', f'--audiences={EXAMPLE}'])
  printed = capsys.readouterr().out
  assert code == 0, printed


def test_membership_is_recorded_once_per_change_and_a_rerun_adds_nothing(local_stack,
                                                                         unique_name, sample,
                                                                         capsys):
  data, _ = sample
  _run(data, unique_name, capsys)
  bq = bigquery_client.cloud_client(PROJECT)
  table = bq.get_table(f'{PROJECT}.{unique_name}.audience_membership')
  assert (table.time_partitioning.type_, table.time_partitioning.field) == ('DAY', 'changed_at')
  assert table.clustering_fields == ['audience', 'customer_id']
  query = f'SELECT * FROM `{PROJECT}.{unique_name}.audience_membership`'
  rows = [dict(r) for r in bq.query(query).result()]
  assert rows and {r['change'] for r in rows} == {'entered'}  # a first run: entries only
  assert len({(r['customer_id'], r['audience']) for r in rows}) == len(rows)

  # The documents say the same memberships.
  documents = {d.id: d.to_dict() for d in firestore.Client(project=PROJECT)
               .collection(unique_name).stream()}
  members = collections.Counter()
  for document in documents.values():
    assert isinstance(document['traits'], dict) and document['audiences'] == sorted(
        document['audiences'])
    members.update(document['audiences'])
  assert members == collections.Counter(r['audience'] for r in rows)
  # The kinds that always have a value (0 or []) are in every document's traits.
  always = {t.key for t in definitions.load(EXAMPLE).traits
            if t.kind in ('count', 'sum', 'unique_count', 'unique_list')}
  assert always and all(always <= set(d['traits']) for d in documents.values())

  _run(data, unique_name, capsys)
  again = [dict(r) for r in bq.query(query).result()]
  assert len(again) == len(rows)
