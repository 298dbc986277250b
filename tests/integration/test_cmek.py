"""Customer-managed encryption keys where the project creates resources, against the session's
emulators: the key reaches the requests that create the BigQuery dataset and tables
(`ensure_tables(kms_key=...)`, the job's `--bigquery_kms_key`) and the Pub/Sub topic
(`scripts.publish.ensure_topic_and_subscription(kms_key=...)`).

Neither emulator implements CMEK. The BigQuery emulator accepts the encryption configuration and
drops it (a dataset or table read back has none), so what is checked is the JSON body each create
request carries, recorded at the client's one call into HTTP; and because it keeps no key, the
set-up must warn about the dataset and, found again, every table. The Pub/Sub emulator keeps a
topic's key name (and encrypts nothing), so the topic test reads it back.
"""
import logging
import uuid

import pytest
from google.cloud import bigquery, pubsub_v1

import schemas
from scripts import publish
from transforms.sinks import bigquery as bigquery_sink
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'
KEY = 'projects/demo-local/locations/europe/keyRings/personalization/cryptoKeys/warehouse'


@pytest.fixture
def requests_sent(monkeypatch):
  """Every (method, path, JSON body) the BigQuery client sends, in order (then sent as usual)."""
  sent = []
  original = bigquery.Client._call_api

  def recording(self, retry, span_name=None, span_attributes=None, job_ref=None, headers=None,
                **kwargs):
    sent.append((kwargs.get('method'), kwargs.get('path'), kwargs.get('data')))
    return original(self, retry, span_name=span_name, span_attributes=span_attributes,
                    job_ref=job_ref, headers=headers, **kwargs)

  monkeypatch.setattr(bigquery.Client, '_call_api', recording)
  return sent


def test_the_key_reaches_the_dataset_and_every_table_created(local_stack, unique_name,
                                                              requests_sent, caplog):
  caplog.set_level(logging.WARNING, logger='transforms.sinks.bigquery')
  created = bigquery_sink.ensure_tables(PROJECT, unique_name, location='EU', kms_key=KEY)
  assert sorted(created) == sorted(schemas.table_id(r) for r in schemas.TABLES)
  [dataset] = [body for method, path, body in requests_sent
               if method == 'POST' and path == f'/projects/{PROJECT}/datasets']
  assert dataset['defaultEncryptionConfiguration'] == {'kmsKeyName': KEY}
  assert dataset['location'] == 'EU'
  tables = {body['tableReference']['tableId']: body for method, path, body in requests_sent
            if method == 'POST' and path.endswith(f'/datasets/{unique_name}/tables')}
  assert set(tables) == set(created)
  assert {t: body['encryptionConfiguration'] for t, body in tables.items()} == {
      t: {'kmsKeyName': KEY} for t in created}
  # The tables exist with what the job needs (the emulator answers for them) ...
  client = bigquery_client.cloud_client(PROJECT)
  assert {t.table_id for t in client.list_tables(f'{PROJECT}.{unique_name}')} == set(created)
  # ... and whatever BigQuery reports without the key (the emulator drops it) is named, the
  # dataset as it is created, every table when they are found again.
  def without_key(found) -> bool:
    return (found or bigquery.EncryptionConfiguration()).kms_key_name != KEY
  dataset_dropped = without_key(
      client.get_dataset(f'{PROJECT}.{unique_name}').default_encryption_configuration)
  tables_dropped = [t for t in created if without_key(
      client.get_table(f'{PROJECT}.{unique_name}.{t}').encryption_configuration)]
  warned = [r.getMessage() for r in caplog.records if 'not --bigquery_kms_key' in r.getMessage()]
  assert len(warned) == int(dataset_dropped), warned
  caplog.clear()
  assert bigquery_sink.ensure_tables(PROJECT, unique_name, kms_key=KEY) == []
  warned = [r.getMessage() for r in caplog.records if 'not --bigquery_kms_key' in r.getMessage()]
  assert len(warned) == int(dataset_dropped) + len(tables_dropped) > 0, warned
  assert all('Google-managed encryption' in w and 'bq update' in w for w in warned)


def test_without_a_key_nothing_is_asked_and_nothing_is_warned(local_stack, unique_name,
                                                               requests_sent, caplog):
  caplog.set_level(logging.WARNING, logger='transforms.sinks.bigquery')
  bigquery_sink.ensure_tables(PROJECT, unique_name, records=('events',))
  bigquery_sink.ensure_tables(PROJECT, unique_name, records=('events',))
  bodies = [body for method, _, body in requests_sent if method == 'POST']
  assert len(bodies) == 3  # the dataset twice (the second finds it) and the table once
  assert not any('defaultEncryptionConfiguration' in b or 'encryptionConfiguration' in b
                 for b in bodies)
  assert not [r for r in caplog.records if 'kms' in r.getMessage()]


def test_the_topic_is_created_with_the_key(local_stack, monkeypatch, caplog):
  topic_id, plain_id = f'cmek{uuid.uuid4().hex[:10]}', f'plain{uuid.uuid4().hex[:10]}'
  requests = []
  original = pubsub_v1.PublisherClient.create_topic

  def recording(self, request=None, **kwargs):
    requests.append(request)
    return original(self, request=request, **kwargs)

  monkeypatch.setattr(pubsub_v1.PublisherClient, 'create_topic', recording)
  caplog.set_level(logging.WARNING, logger='scripts.publish')
  topic, _ = publish.ensure_topic_and_subscription(PROJECT, topic_id, kms_key=KEY)
  assert requests == [{'name': topic, 'kms_key_name': KEY}]
  # The Pub/Sub emulator keeps the key name (it encrypts nothing).
  assert pubsub_v1.PublisherClient().get_topic(topic=topic).kms_key_name == KEY
  publish.ensure_topic_and_subscription(PROJECT, topic_id, kms_key=KEY)
  assert not caplog.records
  # A topic made without a key keeps its encryption and is named when a key is asked for.
  plain, _ = publish.ensure_topic_and_subscription(PROJECT, plain_id)
  assert requests[-1] == {'name': plain}
  publish.ensure_topic_and_subscription(PROJECT, plain_id, kms_key=KEY)
  [warning] = [r.getMessage() for r in caplog.records]
  assert warning.startswith(f'topic {plain} exists with Google-managed encryption, not {KEY}')
  assert '--topic-encryption-key' in warning
  assert pubsub_v1.PublisherClient().get_topic(topic=plain).kms_key_name == ''
