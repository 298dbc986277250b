"""The definitions file of traits and audiences (transforms/rules/audiences/definitions.py) and
`python -m pipeline.audiences check` (pipeline/audiences.py).

The bad-file corpus, `tests/unit/audiences_corpus/`, holds one file per mistake; its leading
`# expect: LINE KEY: TEXT` comments name every problem `check` must report (KEY `-` for none,
TEXT a part of the message), and `check` must report no others.
"""
import pathlib
import pickle
import re
import subprocess
import sys

import pytest

from pipeline import audiences as cli
from transforms.rules.audiences import definitions, expressions
from transforms.rules.profile.fold import machine as folds_machine_rule

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = pathlib.Path(__file__).resolve().parent / 'audiences_corpus'
EXAMPLE = ROOT / 'audiences.example.yaml'
EXPECT = re.compile(rb'^# expect: (\d+) (\S+): (.+)$', re.MULTILINE)
PROBLEM = re.compile(r'^(?P<file>.+?):(?P<line>\d+): (?P<key>\S+): (?P<message>.+)$')
CASES = sorted(CORPUS.glob('*.yaml'))


def expectations(path: pathlib.Path) -> list[tuple[int, str, str]]:
  return [(int(line), key.decode(), text.decode())
          for line, key, text in EXPECT.findall(path.read_bytes())]


def check(path, capsys) -> tuple[int, list[str], str]:
  code = cli.main(['check', str(path)])
  out, err = capsys.readouterr()
  return code, err.splitlines(), out


def test_the_corpus_has_a_file_for_each_rule():
  assert len(CASES) >= 50
  for path in CASES:
    assert expectations(path), f'{path.name} names no expected problem'


@pytest.mark.parametrize('path', CASES, ids=[p.stem for p in CASES])
def test_check_reports_exactly_the_expected_problems(path, capsys):
  code, lines, out = check(path, capsys)
  assert code == 2 and out == ''
  reported = []
  for line in lines:
    match = PROBLEM.match(line)
    assert match, f'not FILE:LINE: KEY: MESSAGE: {line!r}'
    assert match['file'] == str(path)
    reported.append((int(match['line']), match['key'], match['message']))
  missing = list(expectations(path))
  unexpected = []
  for line, key, message in reported:
    found = next((e for e in missing if e[:2] == (line, key) and e[2] in message), None)
    if found is None:
      unexpected.append((line, key, message))
    else:
      missing.remove(found)
  assert not missing and not unexpected, f'missing {missing}, unexpected {unexpected}'
  assert [r[0] for r in reported] == sorted(r[0] for r in reported), 'not in line order'


def test_all_problems_at_once_from_parse():
  with pytest.raises(definitions.DefinitionsError) as caught:
    definitions.load(CORPUS / 'many_problems.yaml')
  problems = caught.value.problems
  assert len(problems) == len(expectations(CORPUS / 'many_problems.yaml')) == 10
  assert all(isinstance(p, definitions.Problem) for p in problems)
  assert str(caught.value).splitlines() == caught.value.lines()


# -- the shipped example


def test_the_example_passes_check(capsys):
  code, err, out = check(EXAMPLE, capsys)
  assert (code, err) == (0, [])
  assert out.startswith(f'{EXAMPLE}: ok: 13 traits (count 5, sum 1, max 1, avg 1, last 2, '
                        'most_frequent 1, unique_count 1, unique_list 1), 7 audiences')


def test_the_example_defines_what_the_issue_asks_for():
  parsed = definitions.load(EXAMPLE)
  audiences = {a.key: a for a in parsed.audiences}
  assert {'high_value_cart_abandoners', 'lapsed_buyers', 'shoes_fans', 'openers_never_click',
          'vips_at_risk', 'browsers_never_bought'} <= set(audiences)
  assert audiences['high_value_cart_abandoners'].when.source == (
      'cart.abandoned && cart.value > 100')
  assert all(a.description for a in parsed.audiences)
  assert {'count', 'sum', 'avg', 'last', 'unique_list', 'most_frequent'} <= {
      t.kind for t in parsed.traits}
  events = {t.event for t in parsed.traits}
  assert events <= {'Product Viewed', 'Product Added', 'Order Completed', 'Email Opened',
                    'Email Link Clicked'}
  # File order, lines of the entries.
  assert parsed.traits[0].key == 'product_views_14d'
  assert parsed.traits[0].line == EXAMPLE.read_text().splitlines().index(
      '  - key: product_views_14d') + 1


def activation(properties, name='Email Opened'):
  return expressions.event_activation(
      {'type': 'track', 'event': name, 'properties': properties, 'event_time': 0,
       'product_id': None, 'price': None, 'traits': None}, name)


MACHINE_FLAGS = [True, False, None, 'true', 'TRUE', ' True ', 'false', 'yes', 1, 0, 1.0, [],
                 {}, [True], {'machine': True}, 'truee']


@pytest.mark.parametrize('flag', MACHINE_FLAGS + ['<absent>'], ids=repr)
def test_the_examples_people_only_filter_is_the_folds_machine_rule(flag):
  """A human open or click for the example's traits is exactly what the fold's engagement
  takes for a person's (transforms.rules.profile.fold.machine)."""
  traits = {t.key: t for t in definitions.load(EXAMPLE).traits}
  properties = {} if flag == '<absent>' else {'machine': flag, 'email_id': 'em-1'}
  person = not folds_machine_rule(properties)
  for key in ('human_opens_14d', 'human_clicks_14d', 'last_campaign_opened'):
    assert traits[key].where.test(activation(properties)) is person, key


def test_the_simple_people_only_filter_of_the_brief_takes_absent_as_a_person():
  where = expressions.compile_event('!(has(properties.machine) && properties.machine == true)')
  assert where.test(activation({}))
  assert where.test(activation({'machine': False}))
  assert not where.test(activation({'machine': True}))
  # Without has(), an absent flag is an error, which counts as false: nobody would match.
  naive = expressions.compile_event('properties.machine != true')
  assert not naive.test(activation({}))


def test_the_example_evaluates_on_a_document():
  parsed = definitions.load(EXAMPLE)
  document = {'cart': {'abandoned': True, 'value': 120.5, 'items': []},
              'orders': {'count': 0, 'lifetime_value': 0}, 'segment': 'prospect'}
  traits = {'product_views_14d': 9, 'products_viewed_7d': 6, 'shoes_views_7d': 1,
            'human_opens_14d': 0, 'human_clicks_14d': 0, 'orders_7d': 0, 'spend_14d': 0}
  members = {a.key for a in parsed.audiences
             if a.when.test(expressions.document_activation(document, traits))}
  assert members == {'high_value_cart_abandoners', 'browsers_never_bought'}


# -- parse: what the definitions hold


GOOD = '''\
version: 1
traits:
  - key: games_views_7d            # becomes traits.games_views_7d
    kind: count
    event: Product Viewed
    where: 'product.category == "Games"'
    within_days: 7
  - key: spend_90d
    kind: sum
    event: Order Completed
    value: properties.total
    within_days: 90.5
  - key: spend_90d_first
    kind: first
    event: identify
    value: traits.plan
audiences:
  - key: games_fans
    when: 'traits.games_views_7d >= 3 && orders.count == 0'
    description: Viewed games three times in a week, never ordered
  - key: spend_90d                 # an audience may share a trait's key
    when: 'traits["spend_90d"] > 100 && segment != "traits.nothing_here"'
'''


def test_parse_builds_the_definitions_in_file_order():
  parsed = definitions.parse(GOOD, 'good.yaml')
  games, spend, first = parsed.traits
  assert (games.key, games.kind, games.event, games.within_days, games.line) == (
      'games_views_7d', 'count', 'Product Viewed', 7.0, 3)
  assert isinstance(games.within_days, float) and games.value is None
  assert games.where.source == 'product.category == "Games"'
  assert games.where.variables == expressions.EVENT_VARIABLES
  assert (spend.value.source, spend.within_days, spend.where) == ('properties.total', 90.5, None)
  assert (first.event, first.within_days) == ('identify', None)
  fans, big = parsed.audiences
  assert (fans.key, fans.line, fans.description) == (
      'games_fans', 18, 'Viewed games three times in a week, never ordered')
  assert fans.when.variables == expressions.document_variables()
  assert (big.key, big.description) == ('spend_90d', None)


def test_traits_or_audiences_alone_are_enough():
  only_audiences = definitions.parse("version: 1\naudiences:\n  - {key: a, when: 'true'}\n")
  assert only_audiences.traits == () and len(only_audiences.audiences) == 1
  only_traits = definitions.parse('version: 1\ntraits: []\naudiences:\n'
                                  "  - {key: a, when: 'true'}\n")
  assert only_traits.traits == ()


def test_definitions_pickle_and_evaluate_after_the_round_trip():
  for parsed in (definitions.parse(GOOD), definitions.load(EXAMPLE)):
    again = pickle.loads(pickle.dumps(parsed))
    assert again == parsed
    assert again.traits[0].line == parsed.traits[0].line
  games = pickle.loads(pickle.dumps(definitions.parse(GOOD))).traits[0]
  record = activation({'category': 'Games'}, name='Product Viewed')
  record['product'] = {'category': 'Games'}
  assert games.where.test(record)


def test_type_is_the_call_type_in_a_where():
  parsed = definitions.parse('version: 1\ntraits:\n  - key: tracks\n    kind: count\n'
                             '    event: Product Viewed\n    where: type == "track"\n')
  assert parsed.traits[0].where.test(activation({}, name='Product Viewed'))


@pytest.mark.parametrize('source, references', [
    ('traits.a > 1', [('a', 1, 1)]),
    ('traits["b"] > 1 && traits.c', [('b', 1, 1), ('c', 1, 20)]),
    ('x.traits.a == "traits.b" && \'traits.c\' == r"traits.d"', []),
    ('has(traits.a)\n  || traits.b', [('a', 1, 5), ('b', 2, 6)]),
    ('traits[name] > 1 || traits["x\\n"] > 1', []),
    ('"""traits.a\ntraits.b""" == traits.c', [('c', 2, 16)]),
    ('traits . spaced', [('spaced', 1, 1)]),
])
def test_trait_references_skip_fields_and_string_literals(source, references):
  assert definitions.trait_references(source) == references


def test_a_when_may_reference_a_trait_that_has_another_problem():
  """A trait with a bad kind is reported once; audiences naming it are not wrong for that."""
  text = ('version: 1\ntraits:\n  - {key: views, kind: counts, event: Product Viewed}\n'
          "audiences:\n  - {key: a, when: 'traits.views > 1'}\n")
  with pytest.raises(definitions.DefinitionsError) as caught:
    definitions.parse(text, 'x.yaml')
  assert caught.value.lines() == [
      "x.yaml:3: views: unknown kind the text 'counts': one of count, sum, min, max, avg, "
      'first, last, most_frequent, unique_count, unique_list']


def test_aliases_reuse_an_expression_and_errors_point_at_the_anchor():
  text = ('version: 1\ntraits:\n'
          '  - {key: a, kind: count, event: E, where: &w "name ==="}\n'
          '  - {key: b, kind: count, event: E, where: *w}\n')
  with pytest.raises(definitions.DefinitionsError) as caught:
    definitions.parse(text, 'x.yaml')
  assert [(p.line, p.key) for p in caught.value.problems] == [(3, 'a'), (3, 'b')]


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
  path = tmp_path / 'big.yaml'
  path.write_bytes(b'version: 1\n' + b'#' * definitions.MAX_FILE_BYTES)
  with pytest.raises(definitions.DefinitionsError) as caught:
    definitions.load(path)
  (problem,) = caught.value.problems
  assert problem.line is None and 'over 1,000,000 bytes' in problem.message
  with pytest.raises(definitions.DefinitionsError):
    definitions.parse('#' * (definitions.MAX_FILE_BYTES + 1))


def test_an_alias_bomb_under_the_size_limit_stays_cheap():
  """Aliases compose to shared nodes, and the checker never builds a list it refuses: ten
  levels of ten (10^10 leaves if expanded) are reported at once."""
  lines = ['version: 1', 'a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
  lines += [f'a{i}: &a{i} [' + ', '.join([f'*a{i - 1}'] * 10) + ']' for i in range(1, 10)]
  lines += ['traits: *a9']
  with pytest.raises(definitions.DefinitionsError) as caught:
    definitions.parse('\n'.join(lines) + '\n')
  messages = [(p.line, p.message.split(' (')[0]) for p in caught.value.problems]
  # Each entry is the list anchored &a8, on line 10.
  assert sorted(messages) == sorted(
      [(i + 2, f"unknown key 'a{i}' at the top level") for i in range(10)] +
      [(10, 'an entry of traits must be a mapping')] * 10)


def test_yaml_nested_too_deeply_is_a_problem_not_a_crash():
  with pytest.raises(definitions.DefinitionsError) as caught:
    definitions.parse('version: 1\ntraits: ' + '[' * 50_000)
  assert caught.value.problems[0].line is not None


def test_a_file_that_cannot_be_read(tmp_path, capsys):
  code, err, out = check(tmp_path / 'missing.yaml', capsys)
  assert (code, out) == (2, '')
  assert err == [f'{tmp_path / "missing.yaml"}: cannot read the file: No such file or directory']
  code, err, _ = check(tmp_path, capsys)
  assert code == 2 and err[0].startswith(f'{tmp_path}: cannot read the file: ')


def test_a_bom_is_allowed():
  parsed = definitions.parse("\ufeffversion: 1\naudiences:\n  - {key: a, when: 'true'}\n")
  assert parsed.audiences[0].key == 'a'


# -- the command line


def test_check_as_a_process_bad_file():
  path = CORPUS / 'many_problems.yaml'
  done = subprocess.run([sys.executable, '-m', 'pipeline.audiences', 'check', str(path)],
                        cwd=ROOT, capture_output=True, text=True, check=False)
  assert done.returncode == 2 and done.stdout == ''
  lines = done.stderr.splitlines()
  assert len(lines) == 10
  assert lines[0] == f"{path}:13: -: unknown key 'trait' at the top level (known: version, " \
      'traits, audiences)'
  assert all(PROBLEM.match(line) for line in lines)


def test_check_as_a_process_good_file():
  done = subprocess.run([sys.executable, '-m', 'pipeline.audiences', 'check',
                         'audiences.example.yaml'], cwd=ROOT, capture_output=True, text=True,
                        check=False)
  assert (done.returncode, done.stderr) == (0, '')
  assert done.stdout.startswith('audiences.example.yaml: ok: 13 traits (')
  assert done.stdout.count('\n') == 1


def test_help_documents_check(capsys):
  with pytest.raises(SystemExit) as caught:
    cli.main(['check', '--help'])
  assert caught.value.code == 0
  out = capsys.readouterr().out
  assert 'FILE:LINE: KEY: MESSAGE' in out and 'exit' in out
  with pytest.raises(SystemExit) as caught:
    cli.main(['--help'])
  assert 'check' in capsys.readouterr().out


def test_no_command_or_no_file_is_a_usage_error(capsys):
  for argv in ([], ['check'], ['frobnicate']):
    with pytest.raises(SystemExit) as caught:
      cli.main(argv)
    assert caught.value.code == 2
  capsys.readouterr()
