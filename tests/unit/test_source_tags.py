"""The `source` tag of input records (transforms.rules.source_tags)."""
import pytest

from transforms.rules import source_tags


def test_files_are_tagged_with_their_path():
  assert source_tags.file_source('gs://b/events-0.ndjson.gz') == 'file:gs://b/events-0.ndjson.gz'


@pytest.mark.parametrize('attributes, tag', [
    ({'source': 'web'}, 'pubsub:web'),
    ({'source': 'server', 'received_at': '2026-11-02T10:00:00Z'}, 'pubsub:server'),
    ({'source': 'ios-app_2.1'}, 'pubsub:ios-app_2.1'),
    ({'source': 'A' * 64}, 'pubsub:' + 'A' * 64),
    (None, 'pubsub'),
    ({}, 'pubsub'),
    ({'origin': 'web'}, 'pubsub'),
])
def test_a_valid_source_attribute_names_the_pubsub_source(attributes, tag):
  assert source_tags.pubsub_source(attributes) == tag
  assert not source_tags.has_bad_source(attributes)


@pytest.mark.parametrize('value', [
    'A' * 65, '', 'web app', 'web\n', '\nweb', 'web/1', 'pubsub:web', 'wéb', 'web\x00', ' web',
])
def test_a_bad_source_attribute_keeps_the_plain_pubsub_tag_and_is_flagged(value):
  attributes = {'source': value}
  assert source_tags.pubsub_source(attributes) == 'pubsub'
  assert source_tags.has_bad_source(attributes)


def test_only_names_of_the_allowed_characters_are_source_names():
  assert source_tags.is_source_name('a.b-c_D9')
  assert not source_tags.is_source_name(None)
  assert not source_tags.is_source_name(42)
  assert source_tags.MAX_NAME_CHARS == 64
