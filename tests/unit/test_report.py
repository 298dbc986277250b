"""Tests for pipeline/report.py without BigQuery: the lift math on known counts and on the edge
cases (no control conversions, empty groups), the JSON, table and HTML renderings, and the
CLI's argument errors."""
from __future__ import annotations

import decimal
import json
import math
import re

import pytest

from pipeline import report

D = decimal.Decimal
Z95 = 1.959963984540054  # the normal quantile of 97.5%


def _katz(a: int, n1: int, c: int, n2: int) -> tuple[float, float]:
  """The Katz log interval of the relative risk, written out (independently of scipy)."""
  rr = (a / n1) / (c / n2)
  se = math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
  return rr * math.exp(-Z95 * se), rr * math.exp(Z95 * se)


def _agg(t=(10000, 1000, '10000.00'), c=(10000, 500, '4000.00'), opens=None,
         excluded=0) -> report.Aggregates:
  """Treatment (customers, conversions, revenue), the same for control; by default 15% of the
  treatment opened and 5% clicked."""
  opens = opens or (t[0] * 15 // 100, t[0] * 5 // 100)
  return report.Aggregates(
      report.GroupCounts(t[0], t[1], D(t[2]), *opens),
      report.GroupCounts(c[0], c[1], D(c[2])), excluded)


def test_known_counts():
  aggregates = _agg()
  result = report.lift(aggregates.treatment, aggregates.control)
  assert result.relative == pytest.approx(1.0)
  low, high = _katz(1000, 10000, 500, 10000)
  assert result.ci95 == pytest.approx((low - 1, high - 1), rel=1e-9)
  assert result.ci95 == pytest.approx((0.8029706, 1.2185609), abs=1e-6)
  assert result.incremental_conversions == pytest.approx(500.0)
  # 10,000 x (1.00 - 0.40) revenue per exposed customer.
  assert result.incremental_revenue == D('6000.00')
  assert result.reason is None


def test_unequal_groups_and_a_negative_lift():
  t, c = report.GroupCounts(1800, 90, D('900.50')), report.GroupCounts(200, 14, D('333.33'))
  result = report.lift(t, c)
  assert result.relative == pytest.approx((0.05 - 0.07) / 0.07)
  low, high = _katz(90, 1800, 14, 200)
  assert result.ci95 == pytest.approx((low - 1, high - 1), rel=1e-9)
  assert result.ci95[0] < result.relative < 0 < result.ci95[1]
  assert result.incremental_conversions == pytest.approx(1800 * (0.05 - 0.07))
  # 900.50 - 1800 x 333.33 / 200 = 900.50 - 2999.97
  assert result.incremental_revenue == D('-2099.47')


def test_no_control_conversions():
  t, c = report.GroupCounts(1000, 30, D('300')), report.GroupCounts(100, 0, D('0'))
  result = report.lift(t, c)
  assert result.relative is None and result.ci95 is None
  assert 'no control customer converted' in result.reason
  assert result.incremental_conversions == pytest.approx(30.0)
  assert result.incremental_revenue == D('300.00')


def test_no_treatment_conversions():
  result = report.lift(report.GroupCounts(1000, 0), report.GroupCounts(100, 5, D('50')))
  assert result.relative == -1.0 and result.ci95 is None
  assert 'no treatment customer converted' in result.reason
  assert result.incremental_conversions == pytest.approx(-50.0)
  assert result.incremental_revenue == D('-500.00')


def test_no_conversions_at_all():
  result = report.lift(report.GroupCounts(1000, 0), report.GroupCounts(100, 0))
  assert (result.relative, result.ci95) == (None, None)
  assert result.incremental_conversions == 0 and result.incremental_revenue == 0


@pytest.mark.parametrize('t, c, empty', [
    (report.GroupCounts(100, 5), report.GroupCounts(), 'the control group is empty'),
    (report.GroupCounts(), report.GroupCounts(100, 5), 'the treatment group is empty'),
    (report.GroupCounts(), report.GroupCounts(), 'the treatment and control groups are empty'),
])
def test_empty_groups(t, c, empty):
  result = report.lift(t, c)
  assert (result.relative, result.ci95, result.incremental_conversions,
          result.incremental_revenue) == (None, None, None, None)
  assert result.reason.startswith(empty)


def test_everyone_converts_in_both_groups():
  result = report.lift(report.GroupCounts(50, 50), report.GroupCounts(50, 50))
  assert result.relative == 0.0 and result.ci95 == pytest.approx((0.0, 0.0))


def test_counts_are_checked():
  with pytest.raises(ValueError, match='conversions'):
    report.GroupCounts(10, 11)
  with pytest.raises(ValueError, match='customers'):
    report.GroupCounts(-1, 0)
  with pytest.raises(ValueError, match='clicks'):
    report.GroupCounts(10, 1, D(0), 2, 12)


EDGES = [
    _agg(),
    _agg(t=(1000, 30, '300'), c=(100, 0, '0')),
    _agg(t=(1000, 0, '0'), c=(100, 5, '50')),
    _agg(t=(0, 0, '0'), c=(100, 5, '50'), opens=(0, 0)),
    _agg(t=(100, 5, '50'), c=(0, 0, '0'), excluded=3),
    _agg(t=(0, 0, '0'), c=(0, 0, '0'), opens=(0, 0), excluded=2),
]


def test_the_json_object_has_exactly_the_documented_fields():
  result = report.report('spring', 7, _agg())
  assert list(result) == ['campaign', 'attribution_days', 'groups', 'lift']
  assert result['campaign'] == 'spring' and result['attribution_days'] == 7
  assert set(result['groups']) == {'treatment', 'control'}
  assert set(result['groups']['treatment']) == {
      'customers', 'conversions', 'conversion_rate', 'revenue', 'human_opens', 'clicks',
      'open_rate', 'click_rate'}
  assert set(result['groups']['control']) == {'customers', 'conversions', 'conversion_rate',
                                              'revenue'}
  assert set(result['lift']) == {'relative', 'ci95', 'incremental_conversions',
                                 'incremental_revenue'}
  treatment = result['groups']['treatment']
  assert (treatment['customers'], treatment['conversions'], treatment['revenue']) == (
      10000, 1000, 10000.0)
  assert treatment['conversion_rate'] == 0.1 and treatment['open_rate'] == 0.15
  assert treatment['click_rate'] == 0.05
  assert result['groups']['control']['conversion_rate'] == 0.05
  assert result['lift']['ci95'] == pytest.approx([0.8029706, 1.2185609], abs=1e-6)
  assert result['lift']['incremental_revenue'] == 6000.0


@pytest.mark.parametrize('aggregates', EDGES)
def test_every_case_is_valid_json_without_nan_or_infinity(aggregates):
  result = report.report('c', 7, aggregates)
  text = json.dumps(result, allow_nan=False)
  assert json.loads(text) == result
  if result['lift']['relative'] is None or result['lift']['ci95'] is None:
    assert report.notes(aggregates), 'a missing lift always says why'


def test_revenue_is_rounded_to_cents_half_even():
  result = report.report('c', 7, _agg(t=(10, 1, '0.125'), c=(10, 1, '0.135')))
  assert result['groups']['treatment']['revenue'] == 0.12
  assert result['groups']['control']['revenue'] == 0.14


def test_notes_name_the_excluded_customers_and_the_reason():
  assert report.notes(_agg()) == []
  found = report.notes(_agg(t=(1000, 30, '300'), c=(100, 0, '0'), excluded=3))
  assert found[0].startswith('3 customers exposed in both groups')
  assert 'no control customer converted' in found[1]
  assert report.notes(_agg(excluded=1))[0].startswith('1 customer exposed')


def test_table():
  aggregates = _agg(excluded=2)
  text = report.table(report.report('spring', 7, aggregates), report.notes(aggregates))
  assert "campaign 'spring', orders within 7 days of first exposure" in text
  assert re.search(r'treatment\s+10,000\s+1,000\s+10\.00%\s+10,000\.00\s+1,500\s+15\.00%\s+500'
                   r'\s+5\.00%', text)
  assert re.search(r'control\s+10,000\s+500\s+5\.00%\s+4,000\.00', text)
  assert 'relative lift            +100.0%' in text
  assert '+80.3% .. +121.9%' in text and 'Katz log interval' in text
  assert 'incremental conversions  +500.0' in text
  assert 'incremental revenue      +6,000.00' in text
  assert 'the whole 95% interval is above zero' in text
  assert 'note: 2 customers exposed in both groups' in text


def test_table_without_a_lift_says_why():
  aggregates = _agg(t=(1000, 30, '300'), c=(100, 0, '0'))
  text = report.table(report.report('c', 1, aggregates), report.notes(aggregates))
  assert 'orders within 1 day of' in text
  assert 'relative lift            n/a' in text and '95% interval             n/a' in text
  assert 'note: no control customer converted' in text


@pytest.mark.parametrize('aggregates', EDGES)
def test_html_is_one_self_contained_page(aggregates):
  page = report.html(report.report('<b>"spring" & co</b>', 7, aggregates), aggregates,
                     report.notes(aggregates), 'demo-local.personalization.events')
  assert page.startswith('<!DOCTYPE html>') and page.count('<html') == 1
  assert page.rstrip().endswith('</html>')
  assert '<b>"spring"' not in page and '&lt;b&gt;&quot;spring&quot; &amp; co&lt;/b&gt;' in page
  # Nothing is fetched: no scripts, no links, no external fonts, images or stylesheets.
  lowered = page.lower()
  for needle in ('<script', 'http:', 'https:', '//', '@import', 'url(', '<link', '<img',
                 '<iframe', 'src='):
    assert needle not in lowered, needle
  assert page.count('<svg') == 2 and page.count('</svg>') == 2
  for note in report.notes(aggregates):
    assert report._esc(note) in page


def test_html_shows_the_rates_and_the_lift_with_its_interval():
  aggregates = _agg()
  page = report.html(report.report('spring', 7, aggregates), aggregates, [], 'x')
  assert '+100.0%' in page and '95% interval +80.3% .. +121.9%' in page
  assert '10.00%' in page and '5.00%' in page  # the two bars' labels
  assert 'class="band up"' in page and 'class="point up"' in page
  assert 'no effect' in page  # the zero line of the lift axis
  unsure = _agg(t=(200, 12, '0'), c=(200, 10, '0'))
  page = report.html(report.report('s', 7, unsure), unsure, [], 'x')
  assert 'class="band unsure"' in page and 'includes zero' in page


@pytest.mark.parametrize('argv, message', [
    ([], 'required: COMMAND'),
    (['nope'], "invalid choice: 'nope'"),
    (['lift', '--project', 'p'], 'required: --campaign'),
    (['lift', '--project', 'p', '--campaign', ' '], '--campaign must not be blank'),
    (['lift', '--project', 'p', '--campaign', 'c', '--attribution_days', '0'],
     '--attribution_days must be from 1 to 365'),
    (['lift', '--project', 'p', '--campaign', 'c', '--attribution_days', 'seven'],
     "invalid int value: 'seven'"),
    (['lift', '--project', 'p', '--campaign', 'c', '--format', 'pdf'], "invalid choice: 'pdf'"),
    (['lift', '--project', 'p', '--campaign', 'c', '--dataset', 'a.b'], '--dataset must be'),
    (['lift', '--project', 'p', '--campaign', 'c', '--out', '/no/such/dir/x.html'],
     '--out /no/such/dir/x.html: no directory'),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
  assert report.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and message in err, err


def test_the_project_comes_from_the_environment_or_the_flag(monkeypatch, capsys):
  monkeypatch.delenv('GOOGLE_CLOUD_PROJECT', raising=False)
  assert report.main(['lift', '--campaign', 'c']) == 2
  assert '--project is required' in capsys.readouterr().err


def test_the_sql_is_parameterised():
  # User input travels as query parameters only; the table comes from the default dataset.
  assert '@campaign' in report.LIFT_SQL and '@attribution_days' in report.LIFT_SQL
  assert '{' not in report.LIFT_SQL and '%' not in report.LIFT_SQL
  assert re.search(r'\bFROM events\b', report.LIFT_SQL)
