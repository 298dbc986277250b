"""Customer-managed encryption key settings, checked before anything is created: the key names
the job, the template and scripts.publish accept, and how the table set-up judges the encryption
BigQuery reports (tests/integration/test_cmek.py sends them to the emulators)."""
import pytest
from google.cloud import bigquery

from pipeline import run as run_module
from pipeline.options import PersonalizationOptions
from scripts import publish
from transforms.rules import resources
from transforms.settings import BigQueryTarget
from transforms.sinks import bigquery as bigquery_sink

KEY = 'projects/my-project/locations/europe/keyRings/personalization/cryptoKeys/warehouse'
SUBSCRIPTION = 'projects/my-project/subscriptions/events-pipeline'


@pytest.mark.parametrize('name', [
    KEY, 'projects/example.com:kms-1/locations/europe-west1/keyRings/r_1/cryptoKeys/k-2',
    'projects/p/locations/global/keyRings/r/cryptoKeys/k'])
def test_key_names(name):
  assert resources.kms_key_problem(name) is None


@pytest.mark.parametrize('name, words', [
    (KEY + '/cryptoKeyVersions/3', 'not one of its versions'),
    ('projects/p/locations/eu/keyRings/r', 'must be a Cloud KMS key name'),
    ('warehouse', 'must be a Cloud KMS key name'),
    ('projects/p/locations/EU/keyRings/r/cryptoKeys/k', 'must be a Cloud KMS key name'),
    ('projects/p/locations/eu/keyRings/r/cryptoKeys/k ', 'must be a Cloud KMS key name'),
    ('', 'must be a Cloud KMS key name')])
def test_what_is_not_a_key_name_says_why(name, words):
  assert words in resources.kms_key_problem(name)


def test_a_bad_bigquery_kms_key_stops_the_job_before_it_starts():
  assert BigQueryTarget('p', 'personalization', kms_key=KEY).kms_key == KEY
  assert BigQueryTarget('p', 'personalization').kms_key is None
  with pytest.raises(ValueError, match=r'^--bigquery_kms_key must name the key, not one of'):
    BigQueryTarget('p', 'personalization', kms_key=KEY + '/cryptoKeyVersions/1')
  with pytest.raises(run_module.UsageError, match=r'--bigquery_kms_key must be a Cloud KMS key'):
    run_module.resolve_options(['--streaming', '--project=my-project',
                                f'--subscription={SUBSCRIPTION}', '--bigquery_kms_key=warehouse'])
  options, _ = run_module.resolve_options(['--streaming', '--project=my-project',
                                           f'--subscription={SUBSCRIPTION}',
                                           f'--bigquery_kms_key={KEY}'])
  assert options.view_as(PersonalizationOptions).cloud_settings().bigquery.kms_key == KEY


def test_what_bigquery_reports_is_judged_against_the_key():
  assert bigquery_sink.other_key(bigquery.EncryptionConfiguration(KEY), KEY) is None
  assert bigquery_sink.other_key(None, KEY) == 'Google-managed encryption'
  assert bigquery_sink.other_key(bigquery.EncryptionConfiguration(), KEY) == (
      'Google-managed encryption')
  other = KEY.replace('warehouse', 'old')
  assert bigquery_sink.other_key(bigquery.EncryptionConfiguration(other), KEY) == f'key {other}'
  # No key asked for: whatever the table has is fine.
  assert bigquery_sink.other_key(bigquery.EncryptionConfiguration(other), None) is None


def test_the_publish_script_refuses_a_bad_topic_key_before_touching_pub_sub(capsys):
  with pytest.raises(SystemExit) as exited:
    publish.main(['--events', 'none.ndjson', '--topic-kms-key', KEY + '/cryptoKeyVersions/1'])
  assert exited.value.code == 2
  assert '--topic-kms-key must name the key, not one of its versions' in capsys.readouterr().err
