"""The live-composites benchmark runs end to end on a small input (both sides, their own checks)."""
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from bench import live


def test_live_benchmark_measures_both_sides_on_a_small_input(tmp_path, capsys):
  assert live.main(['--events', '2000', '--repeat', '1', '--workdir', str(tmp_path)]) == 0
  result = json.loads((tmp_path / 'live-2000.json').read_text())
  assert result['events'] == 2000
  assert result['live_events_per_s'] > 0 and result['batch_events_per_s'] > 0
  assert result['live_events_per_cpu_s'] > 0 and result['ratio'] > 0
  produced = result['live_produced']
  assert produced['customers'] == result['expected']['customers'] > 0
  assert produced['documents'] >= produced['customers']
  assert produced['events'] == result['batch_produced']['events']
  assert all(result['agree'].values()) and not result['problems']
  assert 'ratio live/batch' in capsys.readouterr().out
