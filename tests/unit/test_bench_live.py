"""The live-composites benchmark runs end to end on a small input (both sides, their own checks),
and its FnApiRunner workaround gives same-named timers of two DoFns back to their own DoFn."""
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


def _keyed_timer_fn(name: str):
  class _Fn(beam.DoFn):
    FLUSH = TimerSpec('flush', TimeDomain.REAL_TIME)

    def process(self, element, flush=beam.DoFn.TimerParam(FLUSH)):
      flush.set(Timestamp.now() + Duration(seconds=1))

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam):
      yield f'{name}:{key}'

  _Fn.__name__ = f'_{name}Fn'
  return _Fn()


def test_same_named_timers_of_two_fused_dofns_reach_their_own_dofn():
  options = PipelineOptions(flags=[], runner='FnApiRunner', direct_num_workers=1)
  with beam.Pipeline(options=options) as p:
    keys = p | beam.Create(['k1', 'k2'])
    fired = [keys
             | f'Key[{name}]' >> beam.Map(lambda k, n=name: (f'{n}-{k}', 1)).with_output_types(
                 tuple[str, int])
             | f'Timer[{name}]' >> beam.ParDo(_keyed_timer_fn(name))
             for name in ('A', 'B')]
    assert_that(fired | beam.Flatten(),
                equal_to(['A:A-k1', 'A:A-k2', 'B:B-k1', 'B:B-k2']))
    assert len(live.distinct_timer_families(p)) == 2
