import pytest

from pipeline import run as run_module
from pipeline.summary import RunSummary


def summary(**counters):
  return RunSummary(counters)


def test_summary_adds_up():
  s = summary(events_read=10, events_valid=8, events_unique=6, events_duplicate=2,
              events_dead_lettered=2, customers_read=3, customers_valid=2,
              customers_dead_lettered=1, rows_sent_events=6, dead_letter_invalid_json=2,
              documents_written=4)
  assert s.problems() == []
  text = s.render()
  assert 'check: read 10 = written 6 + duplicates 2 + dead-lettered 2' in text
  assert 'invalid_json' in text and 'documents written' in text
  assert 'bad source attribute' not in text
  assert 'Pub/Sub messages with a bad source attribute' in summary(
      pubsub_source_attribute_invalid=3).render()


@pytest.mark.parametrize('counters, words', [
    (dict(events_read=10, events_valid=8, events_unique=6, events_duplicate=2,
          events_dead_lettered=1), 'events read 10'),
    (dict(events_read=3, events_valid=2, events_unique=1, events_duplicate=0,
          events_dead_lettered=2), 'valid events 2'),
    (dict(catalog_read=5, catalog_valid=3, catalog_dead_lettered=1), 'catalog rows read 5'),
    (dict(events_read=1, events_valid=1, events_unique=1, rows_sent_events=0), 'rows sent'),
    (dict(rows_rejected_dead_letter=2), 'rejected by the dead_letter table'),
])
def test_summary_reports_every_way_counts_fail_to_add_up(counters, words):
  s = summary(**counters)
  assert any(words in problem for problem in s.problems())
  assert 'DOES NOT ADD UP' in s.render()


def test_options_need_events_and_a_project(tmp_path, monkeypatch):
  monkeypatch.delenv('GOOGLE_CLOUD_PROJECT', raising=False)
  events = tmp_path / 'e.ndjson'
  events.write_text('{}\n')
  with pytest.raises(run_module.UsageError, match='--project is required'):
    run_module.resolve_options([f'--events={events}'])
  with pytest.raises(run_module.UsageError, match='--events is required'):
    run_module.resolve_options(['--project=demo-local'])
  with pytest.raises(run_module.UsageError, match="--events: no file matches"):
    run_module.resolve_options(['--project=demo-local', f'--events={tmp_path}/none-*.ndjson'])
  with pytest.raises(run_module.UsageError, match="--catalog: no file matches"):
    run_module.resolve_options(['--project=demo-local', f'--events={events}',
                                f'--catalog={tmp_path}/missing.csv'])
  with pytest.raises(run_module.UsageError, match='FILE_LOADS needs --temp_location'):
    run_module.resolve_options(['--project=demo-local', f'--events={events}',
                                '--bigquery_write_method=FILE_LOADS'])


def test_options_default_to_a_named_local_runner(tmp_path, monkeypatch):
  monkeypatch.setenv('GOOGLE_CLOUD_PROJECT', 'demo-local')
  events = tmp_path / 'e.ndjson'
  events.write_text('{}\n')
  options, project = run_module.resolve_options([f'--events={events},{events}'])
  assert project == 'demo-local'
  assert options.view_as(run_module.StandardOptions).runner == 'FnApiRunner'
  opts = options.view_as(run_module.PersonalizationOptions)
  assert opts.event_patterns() == [str(events), str(events)]
  assert (opts.dataset, opts.collection) == ('personalization', 'customers')


def test_main_reports_usage_errors_in_one_line(capsys, monkeypatch):
  monkeypatch.delenv('GOOGLE_CLOUD_PROJECT', raising=False)
  assert run_module.main(['--events=/nonexistent/*.ndjson', '--project=demo-local']) == 2
  assert capsys.readouterr().err.strip() == "error: --events: no file matches '/nonexistent/*.ndjson'"


def test_inexact_counters_are_reported_but_not_checked():
  s = RunSummary({'events_read': 1, 'events_unique': 5}, exact=False)
  assert s.problems() == []
  text = s.render()
  assert 'lower bound' in text and 'check:' not in text and 'DOES NOT ADD UP' not in text


def test_streaming_needs_a_full_subscription_path(tmp_path, monkeypatch):
  monkeypatch.setenv('GOOGLE_CLOUD_PROJECT', 'demo-local')
  with pytest.raises(run_module.UsageError, match='--subscription is required'):
    run_module.resolve_options(['--streaming'])
  with pytest.raises(run_module.UsageError, match='full path'):
    run_module.resolve_options(['--streaming', '--subscription=events'])
  options, _ = run_module.resolve_options(
      ['--streaming', '--subscription=projects/demo-local/subscriptions/events'])
  assert options.view_as(run_module.StandardOptions).runner == 'BundleBasedDirectRunner'
  with pytest.raises(run_module.UsageError, match='--dedupe_hours'):
    run_module.resolve_options(['--streaming', '--dedupe_hours=0',
                                '--subscription=projects/demo-local/subscriptions/events'])


def test_pubsub_paths_and_the_triggers_topic_option(tmp_path, monkeypatch):
  from transforms.rules import resources
  assert resources.pubsub_path_problem('projects/p/topics/t', 'topic') is None
  assert resources.pubsub_path_problem('projects/p/subscriptions/s', 'topic') is not None
  assert resources.pubsub_path_problem(None, 'subscription') is not None
  monkeypatch.setenv('GOOGLE_CLOUD_PROJECT', 'demo-local')
  events = tmp_path / 'e.ndjson'
  events.write_text('{}\n')
  with pytest.raises(run_module.UsageError, match='--triggers_topic must be a full path'):
    run_module.resolve_options([f'--events={events}', '--triggers_topic=triggers'])


def test_a_dataset_id_that_bigquery_refuses_is_a_usage_error():
  for bad in ('has-dash', 'p:ds', 'p.ds', ''):
    with pytest.raises(run_module.UsageError, match='not a BigQuery dataset id'):
      run_module.resolve_options(['--project=demo-local', '--events=x', f'--dataset={bad}'])


def test_only_in_process_runners_are_cancelled_on_interrupt():
  from pipeline.run import is_local_runner
  for runner in ('BundleBasedDirectRunner', 'DirectRunner', 'FnApiRunner',
                 'apache_beam.runners.portability.fn_api_runner.FnApiRunner'):
    assert is_local_runner(runner), runner
  for runner in ('DataflowRunner', 'dataflow', 'apache_beam.runners.DataflowRunner', ''):
    assert not is_local_runner(runner), runner


@pytest.mark.parametrize('option', ['dedupe_hours', 'allowed_lateness_hours',
                                    'identity_buffer_hours', 'document_flush_seconds',
                                    'popularity_window_hours', 'cart_abandon_minutes',
                                    'vip_lifetime_value', 'restart_dedupe_hours'])
@pytest.mark.parametrize('value', ['inf', 'nan', '-1'])
def test_non_finite_or_negative_numbers_are_usage_errors_naming_the_option(option, value):
  # Infinity used to reach the graph and fail there (OverflowError converting a Duration), NaN
  # in --vip_lifetime_value raised decimal.InvalidOperation.
  with pytest.raises(run_module.UsageError, match=f'--{option} must be'):
    run_module.resolve_options(['--project=demo-local', '--streaming',
                                '--subscription=projects/demo-local/subscriptions/s',
                                f'--{option}={value}'])
