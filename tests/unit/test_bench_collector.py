"""The collector load benchmark runs end to end on a tiny load (its own Pub/Sub emulator, the
collector, generator processes): every event of a 200 answer is counted on the subscription and
by the collector's metric, and the ratios are computed from the measured figures. Its delivery
check fails on a missing event or a counter that disagrees."""
import json

from bench import collector_load


def test_collector_benchmark_counts_every_event_on_a_tiny_run(tmp_path, capsys):
  out = tmp_path / 'collector-load.json'
  assert collector_load.main([
      '--rate', '100', '--seconds', '1', '--warmup_seconds', '0.5', '--batch_size', '10',
      '--concurrency', '2', '--batch_seconds', '1', '--batch_warmup_seconds', '0.3',
      '--raw_messages', '500', '--idle_check_seconds', '0', '--out', str(out)]) == 0
  result = json.loads(out.read_text())
  assert result['problems'] == []
  warm, baseline, track = result['warmup_track'], result['baseline_healthz'], result['track']
  assert baseline['statuses'] == {'200': 100} and warm['statuses'] == {'200': 50}
  assert track['statuses'] == {'200': 100} and track['errors'] == 0
  assert track['delivery']['delivered'] == track['delivery']['confirmed'] == 150
  assert track['delivery']['accepted_metric'] == 150
  batch = result['batch']
  answered = batch['statuses']['200'] + result['batch_warmup']['statuses']['200']
  assert batch['statuses']['200'] > 0
  assert batch['delivery']['delivered'] == batch['delivery']['confirmed'] == answered * 10
  assert batch['delivery']['accepted_metric'] == answered * 10
  assert batch['events_per_s'] == round(batch['statuses']['200'] * 10 / batch['seconds'], 1)
  raw = result['raw_publish']
  assert raw['delivery']['delivered'] == raw['messages'] == 500 and raw['failed'] == 0
  assert result['batch_vs_raw_ratio'] == round(batch['events_per_s'] / raw['messages_per_s'], 3)
  assert result['p99_ratio_track_vs_healthz'] == round(track['p99_ms'] / baseline['p99_ms'], 2)
  assert 0 < baseline['p50_ms'] <= baseline['p99_ms'] <= baseline['max_ms']
  assert track['cores']['collector'] > 0 and raw['cores']['load'] > 0
  printed = capsys.readouterr().out
  assert 'p99 track / healthz' in printed and 'PROBLEM' not in printed


def test_delivery_check_reports_missing_events_and_a_counter_that_disagrees():
  figures, problems = collector_load.check_delivery(
      'batch', {'a', 'b', 'c'}, {'a': 1, 'b': 2, 'x': 1}, ['b'], accepted_metric=12.0,
      accepted_before=10.0)
  assert figures == {'confirmed': 3, 'delivered': 2, 'missing': 1, 'delivered_unconfirmed': 1,
                     'redelivered': 1, 'data_mismatch': 1, 'accepted_metric': 2.0}
  assert len(problems) == 3
  assert "1 of 3 confirmed events never reached the subscription, e.g. ['c']" in problems[0]
  assert 'does not hold their messageId' in problems[1]
  assert 'grew by 2, the 200 answers carried 3 events' in problems[2]
  _, problems = collector_load.check_delivery('track', {'a'}, {'a': 1}, [], 1.0)
  assert problems == []
