"""The pipeline's Beam metrics: one namespace, one place that names every counter.

The run summary reads these back; tests assert on collected outputs, not on counters alone
(the BundleBasedDirectRunner under-counts).
"""
from apache_beam.metrics import Metrics

NAMESPACE = 'personalization'


def counter(name: str):
  return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
  return Metrics.distribution(NAMESPACE, name)


# Events: read = unique + duplicates + dead_lettered.
EVENTS_READ = 'events_read'
EVENTS_VALID = 'events_valid'
EVENTS_DUPLICATE = 'events_duplicate'
EVENTS_UNIQUE = 'events_unique'
EVENTS_DEAD_LETTERED = 'events_dead_lettered'
BLANK_LINES = 'blank_lines_skipped'
# Pub/Sub messages whose `source` attribute is not a valid name (tagged `pubsub`, still parsed).
PUBSUB_SOURCE_INVALID = 'pubsub_source_attribute_invalid'
# Reference data: read = valid + dead_lettered, per kind (customers, catalog).
REFERENCE_READ = '{kind}_read'
REFERENCE_VALID = '{kind}_valid'
REFERENCE_DEAD_LETTERED = '{kind}_dead_lettered'
# Dead letters by failure type: dead_letter_<failure_type>.
DEAD_LETTER_BY_TYPE = 'dead_letter_{failure_type}'
# Sinks.
ROWS_SENT = 'rows_sent_{table}'
ROWS_REJECTED = 'rows_rejected_{table}'
# Batch loads (transforms/sinks/bigquery_merge.py): rows a MERGE (or the hourly rebuild) added to
# the table, and staged (or rebuilt) rows the table already held.
ROWS_ADDED = 'rows_added_{table}'
ROWS_PRESENT = 'rows_present_{table}'
DOCUMENTS_WRITTEN = 'documents_written'
DOCUMENTS_DELETED = 'documents_deleted'
# A write skipped because Firestore already holds a newer document (replay or retry).
DOCUMENTS_STALE_SKIPPED = 'documents_stale_skipped'
# Customers with no document because consent forbids one.
DOCUMENTS_SUPPRESSED = 'documents_suppressed'
EVENTS_STITCHED = 'events_stitched'
EVENTS_ANONYMOUS_UNLINKED = 'events_anonymous_unlinked'
# Streaming: an anonymousId whose winning link changed (an earlier link arrived after a later one).
ANONYMOUS_IDS_RELINKED = 'anonymous_ids_relinked'
PRODUCTS_NOT_IN_CATALOG = 'events_product_not_in_catalog'
TRIGGERS_PUBLISHED = 'cart_triggers_published'
AUDIENCE_CHANGES_PUBLISHED = 'audience_changes_published'
# Versions of a document replaced by a newer one in the same commit (streaming).
DOCUMENTS_SUPERSEDED = 'documents_superseded'
FIRESTORE_COMMITS = 'firestore_commits'
# A write skipped because the stored document already has the same content (a re-run, a replay).
DOCUMENTS_UNCHANGED = 'documents_unchanged'
# Profile change messages published on --profile_changes_topic (one per document write).
PROFILE_CHANGES_PUBLISHED = 'profile_changes_published'
# Firestore calls that failed transiently and were retried.
FIRESTORE_RETRIES = 'firestore_retries'
# --redis_url: served entries put into Redis after the commit, entries Redis already held at the
# same or a newer version (a re-run, a replay), and Redis calls retried.
REDIS_ENTRIES_WRITTEN = 'redis_entries_written'
REDIS_ENTRIES_NOT_NEWER = 'redis_entries_not_newer'
REDIS_RETRIES = 'redis_retries'
# Freshness, per document written (distributions, milliseconds): from the newest event's event
# time, and from its Pub/Sub publish time (streaming), to the Firestore commit.
DOCUMENT_EVENT_LAG_MS = 'document_event_lag_ms'
DOCUMENT_PUBLISH_LAG_MS = 'document_publish_lag_ms'
