"""pipeline.tally's pure parts: which column scopes each table to a run, which dead letters stand
for events, the accounting and its rendering, the CLI's arguments; and how the streaming job's
summary and scripts/stream.py use it (the counts themselves: tests/integration/
test_streaming_pipeline.py and test_make_stream.py; the events writer's label:
tests/unit/test_graph.py)."""
import dataclasses
import datetime as dt

import pytest

import schemas
from pipeline import run as run_module, tally
from pipeline.summary import RunSummary
from scripts import stream
from transforms.clean import STEP as PARSE_STEP
from transforms.settings import BigQueryTarget, FirestoreLocation
from transforms.sinks.bigquery import SINK_REJECTED

SINCE = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.timezone.utc)
SCOPE = tally.Scope(BigQueryTarget('demo-local', 'personalization'),
                    FirestoreLocation('demo-local', 'customers'), SINCE)


def _counts(events=33, ids=None, from_files=1, dead=(), documents=4, written=4, **rows):
  table_rows = {'events': events, 'dead_letter': sum(d.rows for d in dead),
                'customer_activity_hourly': 0, 'customer_profiles': 9, 'cart_triggers': 0,
                'audience_membership': 0, **rows}
  return tally.TableCounts(SCOPE, table_rows, events if ids is None else ids, from_files,
                           tuple(dead), documents, written)


DEAD = (tally.DeadLetters(PARSE_STEP, 'invalid_json', False, 2),
        tally.DeadLetters(PARSE_STEP, 'schema_violation', True, 3),  # stop wake-ups
        tally.DeadLetters(tally.EVENTS_WRITE_STEP, SINK_REJECTED, False, 1),
        tally.DeadLetters('WriteProfiles', SINK_REJECTED, False, 4),
        tally.DeadLetters('ReadCustomers', 'invalid_row', False, 5))


def test_every_warehouse_table_is_scoped_by_a_processing_time_column():
  assert set(tally.WRITTEN_AT) == set(schemas.TABLES)
  for record, column in tally.WRITTEN_AT.items():
    field = {f['name']: f for f in schemas.avro_schema(record)['fields']}[column]
    # Required (never null), a timestamp: every row of the table is in or out of a window.
    assert field['type'] == {'type': 'long', 'logicalType': 'timestamp-micros'}, record
  document = schemas.customer_document_schema()['properties'][tally.DOCUMENT_WRITTEN_AT]
  assert document['format'] == 'date-time'


def test_dead_letters_are_split_into_events_others_and_wake_ups():
  counts = _counts(dead=DEAD)
  assert counts.event_dead_letters == {'invalid_json': 2, SINK_REJECTED: 1}
  assert counts.other_dead_letters == {'ReadCustomers invalid_row': 5,
                                       f'WriteProfiles {SINK_REJECTED}': 4}
  assert counts.wake_ups == 3


def test_accounting_derives_duplicates_and_flags_more_rows_than_published():
  counts = _counts(dead=DEAD)
  account = tally.accounting(counts, 41)
  assert (account.events, account.dead_lettered, account.rest) == (33, 3, 5)
  assert account.problem() is None
  assert tally.accounting(counts, 36).rest == 0 and tally.accounting(counts, 36).problem() is None
  short = tally.accounting(counts, 30)
  assert short.rest == -6 and '6 more events' in short.problem()
  drained = tally.accounting(counts, 41, unread=4)  # left in the subscription: not in the rest
  assert drained.rest == 1 and drained.problem() is None
  assert '+ 6 unread' in tally.accounting(counts, 41, unread=6).problem()
  with pytest.raises(ValueError, match='--published'):
    tally.accounting(counts, -1)
  with pytest.raises(ValueError, match='unread'):
    tally.accounting(counts, 41, unread=-1)


def test_render_labels_table_counts_and_says_what_is_derived():
  text = tally.render(_counts(dead=DEAD), 41, 'accepted by the collector')
  lines = text.splitlines()
  assert lines[0] == ('Table counts (exact, read from the tables; rows written since '
                      '2026-12-01T10:00:00Z)')
  assert any(line.split()[:3] == ['events', 'rows', '33'] and '32 from Pub/Sub, 1 from files'
             in line for line in lines)
  assert ['event', 'dead', 'letters', '3'] == lines[3].split()
  assert any(line.split()[:4] == ['stop', 'wake-ups', 'dead-lettered', '3'] for line in lines)
  assert any(line.split()[:4] == ['other', 'dead', 'letters', '9'] for line in lines)
  assert any(line.split()[:4] == ['Firestore', 'documents', '4', '(4'] for line in lines)
  tail = lines[lines.index(next(l for l in lines if 'accounting of events' in l)):]
  assert [line.split('(')[0].split() for line in tail[1:]] == [
      ['accepted', 'by', 'the', 'collector', '41'], ['events', 'rows', '33'],
      ['event', 'dead', 'letters', '3'], ['the', 'rest', '5']]
  assert '(derived: duplicates dropped, plus any event not yet read' in tail[-1]
  assert 'exact' in tail[2] and 'DOES NOT ADD UP' not in text
  drained = tally.render(_counts(dead=DEAD), 41, 'published', unread=4).splitlines()
  assert [line.split('(')[0].split() for line in drained[-2:]] == [
      ['left', 'unread', 'in', 'Pub/Sub', '4'], ['the', 'rest', '1']]
  assert 'exact, pulled from the subscription' in drained[-2]
  assert 'not yet read' not in drained[-1] and 'lost at a local cancel' in drained[-1]


def test_render_without_published_missing_tables_and_repeated_ids():
  counts = _counts(ids=31, dead_letter=None, cart_triggers=None, written=None)
  counts = dataclasses.replace(counts, scope=dataclasses.replace(SCOPE, since=None))
  text = tally.render(counts)
  assert '(exact, read from the tables; every row (no --since))' in text
  assert 'give --published N' in text and 'the rest  ' not in text
  assert text.count('no such table') == 2
  assert 'NOTE: 2 events rows repeat a messageId' in text
  assert 'last written since' not in text
  assert 'DOES NOT ADD UP' in tally.render(_counts(), 10)


def test_since_needs_a_time_zone():
  assert tally.parse_since('2026-12-01T10:00:00Z') == SINCE
  assert tally.parse_since('2026-12-01T11:00:00+01:00') == SINCE
  with pytest.raises(ValueError, match='--since must name its time zone'):
    tally.parse_since('2026-12-01T10:00:00')
  with pytest.raises(ValueError, match='--since must be an ISO-8601 time'):
    tally.parse_since('yesterday')
  with pytest.raises(ValueError, match='--since must name its time zone'):
    dataclasses.replace(SCOPE, since=dt.datetime(2026, 12, 1))


def test_cli_arguments_and_the_command_that_counts_a_scope_again(monkeypatch, capsys):
  monkeypatch.delenv('GOOGLE_CLOUD_PROJECT', raising=False)
  scope = dataclasses.replace(SCOPE, documents=FirestoreLocation('demo-local', 'c2', 'db2'))
  again, published = tally.parse_args(scope.command().split()[3:] + ['--published=7'])
  assert (again, published) == (scope, 7)
  for argv, message in ((['--dataset=personalization'], '--project is required'),
                        (['--project=p', '--dataset=a-b'], 'dataset'),
                        (['--project=p', '--collection=a/b'], 'collection'),
                        (['--project=p', '--published=-1'], '--published must be at least 0'),
                        (['--project=p', '--since=10:00'], '--since')):
    with pytest.raises(tally.UsageError, match=message):
      tally.parse_args(argv)
  assert tally.main(['--project=p', '--since=today']) == 2
  assert capsys.readouterr().err.startswith('error: --since must be an ISO-8601 time')


def test_streaming_summary_marks_counters_and_shows_the_table_counts():
  s = RunSummary({'events_read': 10, 'events_unique': 9}, exact=False,
                 tables=tally.render(_counts()))
  text = s.render()
  assert text.splitlines()[1].split()[:3] == ['events', 'read', '10']
  assert "(the runner's counters, a lower bound" in text.splitlines()[1]
  assert 'python -m pipeline.tally' in text and text.endswith(tally.render(_counts()))
  assert tally.TITLE not in RunSummary({'events_read': 1, 'events_unique': 1}).render()


def test_a_stopped_job_says_how_to_count_when_the_tables_cannot_be_read(monkeypatch):
  def unreadable(scope):
    raise tally.TallyError('BigQuery dataset demo-local.personalization does not exist')
  monkeypatch.setattr(tally, 'count', unreadable)
  text = run_module.table_counts(SCOPE)
  assert text.startswith('Table counts: not read (BigQuery dataset')
  assert text.endswith('python -m pipeline.tally --project=demo-local --dataset=personalization '
                       '--collection=customers --since=2026-12-01T10:00:00Z')
  assert 'Table counts: not read' in stream.run_counts(SINCE, 5)


def test_stream_shows_the_jobs_counters_without_its_table_block(tmp_path):
  log = tmp_path / 'pipeline.log'
  log.write_text('INFO starting\nRun summary\n  events read 10\n'
                 f'  (streaming: ... "{tally.TITLE}" below ...)\n'
                 f'{tally.TITLE} (exact, ...)\n  events rows 33\n')
  assert stream.job_summary(log) == (f'its summary:\nRun summary\n  events read 10\n'
                                     f'  (streaming: ... "{tally.TITLE}" below ...)')
  assert stream.print_status(tmp_path) == 1  # no run file: no job of scripts.stream runs
