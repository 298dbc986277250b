"""`python -m pipeline.audiences preview` (transforms/rules/audiences/preview.py, pipeline/audiences.py):
the input's accounting (invalid lines, duplicate messageIds, stitching, consent), audience sizes
and trait distributions, the reference time, the CLI's output and exit codes, and agreement with
the batch job on a generated sample with the shipped example."""
import functools
import gzip
import json
import pathlib
import random

import orjson
import pytest
from apache_beam.testing.util import assert_that

from pipeline import audiences as cli
from pipeline import graph
from pipeline.options import PersonalizationOptions
from scripts import generate_data
from tests.unit.beam_helpers import batch_pipeline
from transforms.rules import profile
from transforms.rules.audiences import definitions, preview
from transforms.rules.audiences.evaluate import Evaluator

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / 'audiences.example.yaml'
CORPUS = pathlib.Path(__file__).parent / 'audiences_corpus'

DEFINITIONS = '''
version: 1
traits:
  - key: views
    kind: count
    event: Product Viewed
  - key: views_2d
    kind: count
    event: Product Viewed
    within_days: 2
  - key: spend
    kind: sum
    event: Order Completed
    value: properties.total
  - key: best_price
    kind: max
    event: Product Viewed
    value: properties.offer
  - key: colour
    kind: most_frequent
    event: Product Viewed
    value: properties.colour
  - key: colours
    kind: unique_list
    event: Product Viewed
    value: properties.colour
audiences:
  - key: viewers
    when: 'traits.views >= 1'
  - key: recent_viewers
    when: 'traits.views_2d >= 1'
  - key: buyers
    when: 'orders.count >= 1'
'''
CUSTOMERS = {'c1': {'customer_id': 'c1', 'email_opt_in': True, 'loyalty_tier': 'gold'},
             'c2': {'customer_id': 'c2', 'email_opt_in': True},
             'c3': {'customer_id': 'c3', 'email_opt_in': False}}   # no consent: no document


def line(message_id: str, day: int, kind: str = 'Product Viewed', user=None, anon=None,
         received: str | None = None, **properties) -> bytes:
  """A Segment call `day` days into November 2026 (track, or identify for kind 'identify')."""
  payload = {'messageId': message_id, 'timestamp': f'2026-11-{day:02d}T12:00:00Z'}
  if kind == 'identify':
    payload.update(type='identify', traits=properties)
  else:
    payload.update(type='track', event=kind, properties=properties)
  if user:
    payload['userId'] = user
  if anon:
    payload['anonymousId'] = anon
  if received:
    payload['receivedAt'] = received
  return orjson.dumps(payload)


def history() -> list[bytes]:
  return [
      line('v1', 1, user='c1', product_id='p1', offer=5, colour='red'),
      line('v2', 9, user='c1', product_id='p2', offer=12.5, colour='red'),
      line('v3', 10, user='c1', product_id='p1', offer='free', colour='blue'),  # offer skipped
      line('o1', 10, 'Order Completed', user='c1', order_id='o1', total=30),
      # c2 browses anonymously, then identifies on the device: both views are c2's.
      line('a1', 2, anon='anon-2', product_id='p1', offer=7, colour='blue'),
      line('a2', 3, anon='anon-2', product_id='p3', offer=9, colour='green'),
      line('i2', 4, 'identify', user='c2', anon='anon-2', first_name='Bo'),
      # A visitor never linked to anyone, and a customer without consent.
      line('x1', 5, anon='nobody', product_id='p1', offer=1),
      line('n1', 8, user='c3', product_id='p1', offer=1, colour='red'),
      # Bad lines and a duplicate messageId.
      b'{"not json', b'{"messageId": "t1", "type": "page_view", "timestamp": "2026-11-01T00:00:00Z"}',
      line('v1', 1, user='c1', product_id='p1', offer=5, colour='red'),
  ]


def sample_of(lines, source='file:sample.ndjson') -> preview.Sample:
  sample = preview.Sample()
  for payload in lines:
    sample.add(payload, source)
  return sample


def report_of(lines, as_of=None, customers=CUSTOMERS, text=DEFINITIONS) -> dict:
  settings = profile.Settings(audiences=Evaluator(definitions.parse(text, 'test.yaml')))
  return preview.estimate(sample_of(lines), settings, customers, {}, as_of)


def by_key(items: list[dict]) -> dict:
  return {item['key']: item for item in items}


def test_the_input_is_accounted_for_as_the_batch_job_does():
  report = report_of(history())
  n = report['input']
  assert n['lines'] == 12
  assert n['invalid'] == 2 and n['invalid_by_type'] == {'invalid_json': 1, 'unsupported_type': 1}
  assert n['duplicates'] == 1 and n['events'] == 9
  assert n['stitched'] == 2 and n['unattributed'] == 1
  assert (report['customers'], report['suppressed'], report['documents']) == (3, 1, 2)
  assert report['reference_time'] == '2026-11-10T12:00:00.000000Z'
  assert report['reference_from'] == 'newest_event'


def test_audience_sizes_count_documents_and_suppressed_customers_are_in_none():
  audiences = by_key(report_of(history())['audiences'])
  # c3 viewed, but has no document (no consent), so is in no audience.
  assert audiences['viewers']['customers'] == 2 and audiences['viewers']['share'] == 1.0
  assert audiences['recent_viewers']['customers'] == 1      # c1's views on the 9th and 10th
  assert audiences['buyers']['customers'] == 1 and audiences['buyers']['share'] == 0.5
  assert audiences['viewers']['description'] is None


def test_trait_distributions():
  traits = by_key(report_of(history())['traits'])
  # c1: 3 views, c2: 2 views.
  assert traits['views'] == {'key': 'views', 'kind': 'count', 'with_value': 2, 'skipped': 0,
                             'min': 2, 'median': 2, 'p90': 3, 'max': 3}
  assert (traits['spend']['min'], traits['spend']['max']) == (0, 30)
  # An offer of 'free' is not a number: skipped and counted; the max of c1 is 12.5, of c2 9.
  assert traits['best_price']['skipped'] == 1
  assert (traits['best_price']['min'], traits['best_price']['max']) == (9, 12.5)
  # c1's most frequent colour is red, c2's a tie of blue and green: the smallest, blue.
  assert traits['colour']['top'] == [{'value': 'blue', 'customers': 1},
                                     {'value': 'red', 'customers': 1}]
  assert traits['colours']['top'] == [{'value': 'blue', 'customers': 2},
                                      {'value': 'green', 'customers': 1},
                                      {'value': 'red', 'customers': 1}]
  assert traits['colours']['distinct'] == 3 and traits['colours']['with_value'] == 2


def test_as_of_moves_the_windows():
  early = report_of(history(), as_of=preview_micros('2026-11-04T00:00:00Z'))
  assert early['reference_from'] == 'as_of'
  assert early['reference_time'] == '2026-11-04T00:00:00.000000Z'
  # At the 4th, c2's views of the 2nd and 3rd are within two days; c1's of the 1st is not, and
  # c1's later ones count (a window has no upper bound).
  traits = by_key(early['traits'])
  assert traits['views_2d']['max'] == 2 and traits['views_2d']['min'] == 2
  late = report_of(history(), as_of=preview_micros('2026-12-01T00:00:00Z'))
  assert by_key(late['audiences'])['recent_viewers']['customers'] == 0


def preview_micros(text: str) -> int:
  from transforms.rules.events import parse_time
  import schemas
  return schemas.datetime_to_micros(parse_time(text))


def test_the_report_does_not_depend_on_line_order():
  lines = history()
  expected = report_of(lines)
  rng = random.Random(7)
  for _ in range(5):
    rng.shuffle(lines)
    assert report_of(lines) == expected


def test_the_dedupe_keeps_the_copy_the_batch_job_keeps():
  # Two payloads under one messageId: the earliest received wins, whichever comes first.
  first = line('m', 3, user='c1', received='2026-11-03T12:00:01Z', product_id='p1', colour='red')
  second = line('m', 3, user='c1', received='2026-11-03T12:00:02Z', product_id='p1',
                colour='blue')
  for lines in ([first, second], [second, first]):
    traits = by_key(report_of(lines)['traits'])
    assert traits['colour']['top'] == [{'value': 'red', 'customers': 1}]


def test_the_earliest_link_of_a_shared_device_wins():
  lines = [line('a', 5, anon='dev', product_id='p1'),
           line('late', 6, 'identify', user='c2', anon='dev'),
           line('early', 1, 'identify', user='c1', anon='dev')]
  report = report_of(lines)
  assert by_key(report['audiences'])['viewers']['customers'] == 1
  sample = sample_of(lines)
  attribution = preview.attribute(sample, {})
  assert len(attribution.by_customer['c1']) == 2 and len(attribution.by_customer['c2']) == 1


def test_no_events_gives_an_empty_report():
  report = report_of([b'', b'garbage'])
  assert report['reference_time'] is None and report['documents'] == 0
  assert all(a['customers'] == 0 and a['share'] == 0.0 for a in report['audiences'])
  assert by_key(report['traits'])['views']['median'] is None
  assert 'none (no events)' in preview.format_table(report)


def test_percentile_is_nearest_rank():
  assert preview.percentile([], 50) is None
  assert preview.percentile([1, 2, 3, 4], 50) == 2
  assert preview.percentile(list(range(1, 11)), 90) == 9
  assert preview.percentile([7], 90) == 7


def test_a_preview_needs_definitions():
  with pytest.raises(ValueError, match='needs definitions'):
    preview.estimate(preview.Sample(), profile.Settings(), {}, {})


def test_the_table_shows_every_audience_and_trait():
  table = preview.format_table(report_of(history()), 'test.yaml: preview')
  assert table.splitlines()[0] == 'test.yaml: preview'
  assert '12 lines: 9 events, 2 invalid (invalid_json 1, unsupported_type 1), 1 duplicate' in table
  rows = {row.split()[0]: row.split() for row in table.splitlines() if row}
  assert rows['viewers'][1:] == ['2', '100.0%'] and rows['buyers'][1:] == ['1', '50.0%']
  assert rows['views'][1:] == ['count', '2', '2', '2', '3', '3', '0']
  assert rows['best_price'][-1] == '1'
  assert rows['colours'][1:4] == ['unique_list', '2', '0'] and '"blue" 2' in ' '.join(rows['colours'])


# --- the command ------------------------------------------------------------------------------

def write_inputs(tmp_path) -> dict:
  events = tmp_path / 'events.ndjson.gz'
  with gzip.open(events, 'wb') as f:
    f.write(b'\n'.join(history()) + b'\n\n')
  (tmp_path / 'customers.csv').write_text(
      'customer_id,email,first_name,last_name,country,language,email_opt_in,created_at,'
      'loyalty_tier\nc1,a@b.c,Ann,L,SE,sv,true,,gold\nc2,b@b.c,,L,DE,de,true,,\n'
      'c3,c@b.c,,L,DE,de,false,,\n,x@b.c,,,,,true,,\n')
  (tmp_path / 'catalog.csv').write_text(
      'product_id,sku,name,category,brand,price,currency,in_stock,url,image_url\n'
      'p1,S1,Boot,Shoes,B,120.00,USD,true,u1,i1\n')
  (tmp_path / 'defs.yaml').write_text(DEFINITIONS)
  return {'file': str(tmp_path / 'defs.yaml'), 'events': str(events),
          'customers': str(tmp_path / 'customers.csv'), 'catalog': str(tmp_path / 'catalog.csv')}


def run(capsys, inputs, *extra, file=None):
  code = cli.main(['preview', file or inputs['file'], '--events', inputs['events'],
                   '--customers', inputs['customers'], '--catalog', inputs['catalog'], *extra])
  out, err = capsys.readouterr()
  return code, out, err


def test_the_command_prints_the_table(tmp_path, capsys):
  inputs = write_inputs(tmp_path)
  code, out, err = run(capsys, inputs)
  assert code == 0 and err == ''
  assert out.startswith(f'{inputs["file"]}: preview over {inputs["events"]}\n')
  assert 'note: 1 customers rows rejected by the parser' in out
  assert 'note: 2 events name a product the catalog does not have' in out
  assert 'viewers' in out and 'colours' in out


def test_the_command_prints_json_equal_to_the_pure_report(tmp_path, capsys):
  inputs = write_inputs(tmp_path)
  code, out, _ = run(capsys, inputs, '--format', 'json', '--as_of', '2026-11-04T00:00:00Z')
  assert code == 0
  report = json.loads(out)
  assert report['reference_time'] == '2026-11-04T00:00:00.000000Z'
  assert report['input']['reference_rows_rejected'] == {'customers': 1, 'catalog': 0}
  assert (report['documents'], report['suppressed']) == (2, 1)
  assert by_key(report['traits'])['views_2d']['max'] == 2


def test_the_jobs_settings_reach_the_render(tmp_path, capsys):
  inputs = write_inputs(tmp_path)
  holdout = tmp_path / 'holdout.yaml'
  holdout.write_text('version: 1\naudiences:\n  - key: held\n    when: holdout\n')
  _, out, _ = run(capsys, inputs, '--format', 'json', '--holdout_percent', '50', file=str(holdout))
  held = by_key(json.loads(out)['audiences'])['held']['customers']
  from transforms.rules.holdout import Holdout
  assert held == sum(Holdout(50).held_out(c) for c in ('c1', 'c2'))
  _, out, _ = run(capsys, inputs, '--format', 'json', file=str(holdout))
  assert by_key(json.loads(out)['audiences'])['held']['customers'] == 0


def test_a_bad_definitions_file_prints_what_check_prints(tmp_path, capsys):
  inputs = write_inputs(tmp_path)
  bad = str(CORPUS / 'many_problems.yaml')
  code, out, err = run(capsys, inputs, file=bad)
  assert code == 2 and out == ''
  assert cli.main(['check', bad]) == 2
  assert capsys.readouterr().err == err


@pytest.mark.parametrize('change, message', [
    ({'events': '{dir}/none-*.ndjson'}, "--events: no file matches '{dir}/none-*.ndjson'"),
    ({'customers': '{dir}/missing.csv'}, '--customers: '),
    ({'events': ' , '}, '--events needs at least one file pattern'),
])
def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys, change, message):
  inputs = write_inputs(tmp_path)
  inputs.update({k: v.format(dir=tmp_path) for k, v in change.items()})
  code, out, err = run(capsys, inputs)
  assert code == 2 and out == ''
  assert err.startswith('preview: ' + message.format(dir=tmp_path))


@pytest.mark.parametrize('extra, message', [
    (['--as_of', 'yesterday'], "--as_of is not an ISO-8601 time: 'yesterday'"),
    (['--holdout_percent', '80'], '--holdout_percent must be a number from 0 to 50'),
    (['--cart_abandon_minutes', '0'], '--cart_abandon_minutes'),
])
def test_bad_settings_exit_2_with_a_message(tmp_path, capsys, extra, message):
  code, out, err = run(capsys, write_inputs(tmp_path), *extra)
  assert code == 2 and out == '' and err.startswith('preview: ') and message in err


def test_usage_errors_exit_2(tmp_path, capsys):
  inputs = write_inputs(tmp_path)
  for argv in (['preview'], ['preview', inputs['file']],
               ['preview', inputs['file'], '--events', inputs['events']],
               ['preview', inputs['file'], '--events', inputs['events'], '--customers',
                inputs['customers'], '--catalog', inputs['catalog'], '--format', 'csv']):
    with pytest.raises(SystemExit) as caught:
      cli.main(argv)
    assert caught.value.code == 2
  capsys.readouterr()
  with pytest.raises(SystemExit) as caught:
    cli.main(['preview', '--help'])
  assert caught.value.code == 0
  out = capsys.readouterr().out
  assert '--events' in out and '--as_of' in out and 'exits 2' in out


def test_progress_goes_to_stderr(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(cli, 'PROGRESS_EVERY', 4)
  code, out, err = run(capsys, write_inputs(tmp_path), '--format', 'json')
  assert code == 0 and json.loads(out)['input']['lines'] == 12
  assert err.splitlines() == ['preview: 4 lines read, 4 unique events',
                              'preview: 8 lines read, 8 unique events',
                              'preview: 12 lines read, 9 unique events',
                              'preview: 12 lines read from 1 file; folding']


def test_the_files_are_read_as_the_jobs_readers_give_them(tmp_path):
  import fastavro
  import schemas
  plain = tmp_path / 'a.ndjson'
  plain.write_bytes(b'{"a": 1}\r\n\n  \n{"b": 2}')
  packed = tmp_path / 'b.ndjson.gz'
  packed.write_bytes(gzip.compress(b'{"c": 3}\n'))
  avro = tmp_path / 'c.avro'
  with open(avro, 'wb') as out:
    fastavro.writer(out, fastavro.parse_schema(schemas.segment_event_avro_schema()),
                    [{'type': 'page', 'messageId': 'm', 'anonymousId': 'x'}])
  paths = [path for pattern in (f'{tmp_path}/*.ndjson*', str(avro))
           for path in cli._matched(pattern, '--events')]
  assert [(source, orjson.loads(payload)) for payload, source in cli.event_payloads(paths)] == [
      (f'file:{plain}', {'a': 1}), (f'file:{plain}', {'b': 2}), (f'file:{packed}', {'c': 3}),
      (f'file:{avro}', {'type': 'page', 'messageId': 'm', 'anonymousId': 'x'})]


# --- agreement with the batch job -------------------------------------------------------------

@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  out = tmp_path_factory.mktemp('preview-sample')
  campaign = generate_data.Campaign(holdout_percent=10)
  generate_data.generate(out, customers=150, products=50, events=4000, seed=23, files=2,
                         campaign=campaign)
  return {'events': f'{out}/events-*.ndjson.gz', 'customers': f'{out}/customers.csv',
          'catalog': f'{out}/catalog.csv'}


_FOUND: dict = {}


def _keep(actual):
  _FOUND['documents'] = list(actual)


def batch_documents(inputs: dict, holdout_percent: float) -> dict:
  """{customer_id: document or None} from the batch job's graph (pipeline.graph.build_outputs:
  ReadEventFiles, ParseEvents, DedupeBatch, BatchProfiles) on the FnApiRunner."""
  _FOUND.clear()
  p = batch_pipeline()
  opts = p.options.view_as(PersonalizationOptions)
  opts.holdout_percent = holdout_percent
  opts.events, opts.customers, opts.catalog = (inputs['events'], inputs['customers'],
                                               inputs['catalog'])
  opts.audiences = str(EXAMPLE)
  out = graph.build_outputs(p, opts)
  assert_that(out.documents, _keep, label='KeepDocuments')
  p.run().wait_until_finish()
  return dict(_FOUND['documents'])


def comparable(document):
  return None if document is None else orjson.dumps(
      {'traits': document['traits'], 'audiences': document['audiences']},
      option=orjson.OPT_SORT_KEYS)


def test_the_preview_agrees_with_the_batch_job(generated, capsys):
  batch = batch_documents(generated, 10)
  code = cli.main(['preview', str(EXAMPLE), '--events', generated['events'], '--customers',
                   generated['customers'], '--catalog', generated['catalog'], '--format',
                   'json', '--holdout_percent=10'])
  out, _ = capsys.readouterr()
  assert code == 0
  report = json.loads(out)

  documents = [d for d in batch.values() if d is not None]
  sizes = {a.key: sum(a.key in d['audiences'] for d in documents)
           for a in definitions.load(EXAMPLE).audiences}
  assert {a['key']: a['customers'] for a in report['audiences']} == sizes
  assert (report['customers'], report['documents'], report['suppressed']) == (
      len(batch), len(documents), len(batch) - len(documents))
  # The sample exercises the definitions: most audiences and every suppression path have members.
  assert sum(1 for n in sizes.values() if n) >= 5 and report['suppressed'] > 0

  # Customer by customer: the same traits and audiences.
  sample = preview.Sample()
  for payload, source in cli.event_payloads(cli._matched(generated['events'], '--events')):
    sample.add(payload, source)
  from transforms.rules import reference
  customers, _ = cli.reference_records(generated['customers'], '--customers',
                                       reference.parse_customer)
  catalog, _ = cli.reference_records(generated['catalog'], '--catalog', reference.parse_product)
  from transforms.rules.holdout import Holdout
  settings = profile.Settings(holdout=Holdout(10),
                              audiences=Evaluator(definitions.load(EXAMPLE)))
  attribution = preview.attribute(sample, catalog)
  rendered = preview.render_customers(attribution, attribution.reference_time(), settings,
                                      customers, catalog)
  assert {r.customer_id: comparable(r.document) for r in rendered} == {
      customer_id: comparable(document) for customer_id, document in batch.items()}
