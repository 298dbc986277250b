"""A corpus of real-world bad events: `tests/data/bad/`, one file per case holding the raw bytes as
they arrive (a Pub/Sub message body or one NDJSON line), and `expected.json` saying what each must
become (a failure type, or `valid`) and why.

Each case goes through `parse_event` on its own, then the whole corpus goes through the batch
graph's parse step, where every record read must come out valid or dead-lettered with its original
payload.
"""
import collections
import decimal
import json
import pathlib
import pickle

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

import schemas
from pipeline.options import PersonalizationOptions
from tests.unit.beam_helpers import batch_pipeline
from transforms import metrics
from transforms.clean import ParseEvents
from transforms.rules import events, profile
from transforms.rules.dead_letters import Rejection, dead_letter, original_payload, redact_emails
from transforms.settings import ParseLimits

CORPUS = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'bad'
MANIFEST = json.loads((CORPUS / 'expected.json').read_text(encoding='utf-8'))
# Files in the directory that are not cases.
NOT_CASES = {'expected.json', '.gitattributes'}
FAILURE_TYPES = {events.INVALID_JSON, events.SCHEMA_VIOLATION, events.SIZE_VIOLATION,
                 events.UNSUPPORTED_TYPE}
VALID = 'valid'


def payload(name: str) -> bytes:
  return (CORPUS / name).read_bytes()


def source(name: str) -> str:
  return f'file:tests/data/bad/{name}'


def at(value, path: str):
  """`value` at a dotted path (`traits.first_name`)."""
  for part in path.split('.'):
    value = value[part]
  return value


def is_utf8(data: bytes) -> bool:
  try:
    data.decode('utf-8')
  except UnicodeDecodeError:
    return False
  return True


def test_every_file_is_in_the_manifest_and_every_entry_has_a_file():
  files = sorted(p.name for p in CORPUS.iterdir() if p.name not in NOT_CASES)
  assert files == sorted(MANIFEST)
  for name, spec in MANIFEST.items():
    assert spec['expected'] in FAILURE_TYPES | {VALID}, name
    assert spec['note'].strip(), name
  # Every outcome is represented, so the pipeline test below exercises each path.
  assert {spec['expected'] for spec in MANIFEST.values()} == FAILURE_TYPES | {VALID}


def test_the_corpus_is_sized_against_the_pipelines_default_limit():
  # The size cases are built around the --max_message_bytes default; if it changes, they must too.
  options = PipelineOptions(flags=[]).view_as(PersonalizationOptions)
  assert options.max_message_bytes == events.DEFAULT_MAX_MESSAGE_BYTES
  assert len(payload('size_exactly_at_limit.json')) == events.DEFAULT_MAX_MESSAGE_BYTES
  assert len(payload('size_one_byte_over_limit.json')) == events.DEFAULT_MAX_MESSAGE_BYTES + 1


def test_binary_cases_really_are_binary_and_text_cases_are_utf8_text():
  # `.bin` marks the cases that are not UTF-8 text (dead letters carry them as base64) or hold a
  # raw NUL (valid UTF-8, but git and editors treat the file as binary).
  for name in MANIFEST:
    raw = payload(name)
    assert (not is_utf8(raw) or b'\x00' in raw) == name.endswith('.bin'), name


@pytest.mark.parametrize('name', sorted(MANIFEST))
def test_each_case_through_parse_event(name):
  spec = MANIFEST[name]
  raw = payload(name)
  result = events.parse_event(raw, source(name), 1)
  if spec['expected'] != VALID:
    assert isinstance(result, Rejection), f'{name} was accepted: {spec["note"]}'
    assert result.failure_type == spec['expected'], result.message
    assert result.message
    record = dead_letter(result.failure_type, result.message, 'ParseEvents', raw, source(name), 1)
    assert original_payload(record) == redact_emails(raw)
    assert record['payload_encoding'] == ('utf-8' if is_utf8(raw) else 'base64')
    return
  assert isinstance(result, dict), f'{name}: {result}'
  # Text that must survive exactly as sent: compared with an independent decoding of the file.
  original = json.loads(raw.decode('utf-8'))
  for sent, kept in spec.get('verbatim', {}).items():
    assert at(result, kept) == at(original, sent), (sent, kept)
  for field, expected in spec.get('fields', {}).items():
    value = result[field]
    if isinstance(value, decimal.Decimal):
      expected = decimal.Decimal(expected)
    assert value == expected, field
  # A valid event must get through everything downstream of the parser as well.
  orjson.dumps(schemas.to_bigquery_row('events', result))
  assert pickle.loads(pickle.dumps(result)) == result
  state = profile.apply(profile.new_state(result['user_id'] or result['anonymous_id']), result)
  document = profile.render(state, result['event_time'])
  assert document is not None and document['last_event_at'] is not None


def test_verbatim_checks_cover_the_text_cases():
  # Emoji, RTL, SQL and HTML are valid: the point of those cases is that the text is untouched.
  for name in ('emoji_and_rtl_names.json', 'emoji_user_and_product.json', 'sql_in_strings.json',
               'html_in_strings.json', 'escaped_null_in_string.json'):
    assert MANIFEST[name]['expected'] == VALID and MANIFEST[name]['verbatim'], name
  names = events.parse_event(payload('emoji_and_rtl_names.json'), 's', 1)['traits']
  assert '\u200d' in names['first_name'] and '\u200f' in names['last_name']  # ZWJ, RLM kept
  html = events.parse_event(payload('html_in_strings.json'), 's', 1)['properties']['name']
  assert html.startswith('<script>') and '&lt;' not in html


def nested(depth: int, kind: str = 'object') -> bytes:
  """A valid event whose properties hold a value nested so that the event is `depth` deep."""
  # The event object is level 1 and properties level 2: `depth - 2` more containers inside.
  levels = depth - 2
  opening, closing = (b'{"a":', b'}') if kind == 'object' else (b'[', b']')
  value = opening * levels + (b'1' if kind == 'object' else b'') + closing * levels
  return (b'{"type":"track","event":"Product Viewed","messageId":"deep","userId":"c1",'
          b'"timestamp":"2026-11-02T10:00:00Z","properties":{"x":' + value + b'}}')


@pytest.mark.parametrize('kind', ['object', 'array'])
def test_nesting_up_to_the_limit_is_valid_and_serialisable_one_more_level_is_rejected(kind):
  deepest = events.parse_event(nested(events.MAX_NESTING_DEPTH, kind), 's', 1)
  assert isinstance(deepest, dict)
  orjson.dumps(schemas.to_bigquery_row('events', deepest))
  for too_deep in (nested(events.MAX_NESTING_DEPTH + 1, kind),
                   nested(events.MAX_NESTING_DEPTH + 1, kind).decode()):  # bytes or text
    rejection = events.parse_event(too_deep, 's', 1)
    assert isinstance(rejection, Rejection)
    assert rejection.failure_type == events.SCHEMA_VIOLATION
    assert str(events.MAX_NESTING_DEPTH) in rejection.message


def test_brackets_inside_strings_do_not_count_as_nesting():
  event = orjson.loads(nested(3))
  event['properties']['text'] = '{[' * 100
  assert isinstance(events.parse_event(orjson.dumps(event), 's', 1), dict)


@pytest.mark.parametrize('depth', [300, 1000, 1023, 1024, 1025, 10_000, 100_000])
def test_deep_nesting_under_a_larger_size_limit_is_rejected_never_a_recursion_error(depth):
  # With the default limit the 10,000-level case is a size_violation; a job run with a larger
  # --max_message_bytes must still reject it, not crash. orjson itself refuses more than 1,024
  # levels (invalid_json); below that the parser's own nesting limit applies (schema_violation).
  result = events.parse_event(nested(depth), 's', 1, max_bytes=10**7)
  assert isinstance(result, Rejection)
  assert result.failure_type == (events.SCHEMA_VIOLATION if depth <= 1024 else events.INVALID_JSON)


def test_the_10000_level_case_under_a_larger_size_limit_is_rejected():
  result = events.parse_event(payload('deep_nesting_10000.json'), 's', 1, max_bytes=10**7)
  assert isinstance(result, Rejection) and result.failure_type == events.INVALID_JSON


def test_dead_letters_of_payloads_with_emails_do_not_keep_the_address():
  for name in ('truncated_with_email.json', 'invalid_utf8.bin'):
    raw = payload(name)
    assert b'@example.' in raw.lower()
    rejection = events.parse_event(raw, 's', 1)
    record = dead_letter(rejection.failure_type, rejection.message, 'ParseEvents', raw, 's', 1)
    assert b'@example.' not in original_payload(record).lower()
    assert b'[email-sha256:' in original_payload(record)


def test_the_corpus_through_the_batch_parse_step():
  names = sorted(MANIFEST)
  valid = sorted(source(n) for n in names if MANIFEST[n]['expected'] == VALID)
  rejected = sorted(
      (source(n), MANIFEST[n]['expected'], 'ParseEvents',
       'utf-8' if is_utf8(payload(n)) else 'base64', redact_emails(payload(n)))
      for n in names if MANIFEST[n]['expected'] != VALID)
  p = batch_pipeline()
  out = (p | beam.Create([(source(n), payload(n), None) for n in names])
         | ParseEvents(ParseLimits(max_message_bytes=events.DEFAULT_MAX_MESSAGE_BYTES)))
  assert_that(out.events | beam.Map(lambda e: e['source']), equal_to(valid), label='Valid')
  assert_that(out.dead_letter | beam.Map(
      lambda d: (d['source'], d['failure_type'], d['step'], d['payload_encoding'],
                 original_payload(d))), equal_to(rejected), label='DeadLetters')
  result = p.run()
  result.wait_until_finish()
  counters = {c.key.metric.name: c.committed for c in result.metrics().query(
      MetricsFilter().with_namespace(metrics.NAMESPACE))['counters']}
  read = counters[metrics.EVENTS_READ]
  assert read == len(names)
  assert read == counters[metrics.EVENTS_VALID] + counters[metrics.EVENTS_DEAD_LETTERED]
  assert counters[metrics.EVENTS_VALID] == len(valid)
  by_type = collections.Counter(spec['expected'] for spec in MANIFEST.values()
                                if spec['expected'] != VALID)
  for failure_type, count in by_type.items():
    assert counters[metrics.DEAD_LETTER_BY_TYPE.format(failure_type=failure_type)] == count
