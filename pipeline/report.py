"""Campaign reports from the warehouse: `python -m pipeline.report lift --project P [--dataset D]
--campaign C [--attribution_days 7] [--format table|json|html] [--out FILE]`.

The lift report compares a campaign's treatment group (customers with an `Email Delivered` of the
campaign) with its holdout (customers with an `Email Held Out`), both read from the `events`
table (docs/ENGAGEMENT.md, "The lift report"):

* a customer is the event's `user_id`, else the user_id its `anonymous_id` is linked to by the
  earliest event carrying both (transforms/rules/identity.py); their first exposure is their
  earliest exposure event of the campaign; a customer exposed in both groups is left out and
  counted (a warning);
* per group: `customers`, `conversions` (customers with an `Order Completed` in [first exposure,
  first exposure + attribution_days days)), `revenue` (those orders' `total`, else `revenue`, each
  order_id once), and for treatment the distinct customers with a human (`properties.machine` not
  true) `Email Opened` / `Email Link Clicked` of the campaign;
* the lift: relative = (treatment rate - control rate) / control rate, with the Katz log interval
  of the relative risk (scipy.stats.contingency.relative_risk) minus 1 as its 95% interval, and the
  incremental conversions and revenue over the treatment group.

One SQL statement (`LIFT_SQL`, query parameters only) fetches the per-group aggregates; the pure
functions below (`lift`, `report`) turn them into rates and the lift, and `table` / `html` render
them. The query honours BIGQUERY_EMULATOR_HOST (transforms.sinks.bigquery_client).

Exit codes: 0 report written; 1 the campaign has no exposures, or a BigQuery call failed; 2 bad
arguments.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import decimal
import html as html_lib
import json
import math
import os
import pathlib
import re
import sys
from typing import Sequence

from google.api_core.exceptions import GoogleAPICallError, RetryError
from google.cloud import bigquery
from scipy.stats import binomtest
from scipy.stats.contingency import relative_risk

from transforms.sinks import bigquery_client

GROUPS = ('treatment', 'control')
EXCLUDED = 'excluded'
DEFAULT_ATTRIBUTION_DAYS = 7
MAX_ATTRIBUTION_DAYS = 365
FORMATS = ('table', 'json', 'html')
CONFIDENCE = 0.95
INTERVAL_METHOD = 'Katz log interval of the relative risk (scipy.stats.contingency.relative_risk)'
_CENT = decimal.Decimal('0.01')
_DATASET_ID = re.compile(r'[A-Za-z0-9_]{1,1024}')

# The per-group aggregates of one campaign. Standard GoogleSQL; it also runs on the local
# emulator. `events` is the job's default dataset's table; @campaign STRING, @attribution_days
# INT64. One row per group: 'treatment', 'control', and 'excluded' (customers exposed in both).
LIFT_SQL = """
WITH relevant AS (
  SELECT message_id, event, user_id, anonymous_id, event_time, order_id,
         COALESCE(total, revenue) AS amount,
         JSON_VALUE(properties, '$.campaign_id') AS campaign_id,
         JSON_VALUE(properties, '$.machine') AS machine
  FROM events
  WHERE type = 'track'
    AND event IN ('Email Delivered', 'Email Held Out', 'Email Opened', 'Email Link Clicked',
                  'Order Completed')
),
links AS (
  -- Identity stitching: an anonymous_id belongs to the user_id of the earliest event carrying
  -- both, ties by user_id (transforms/rules/identity.py), for the anonymous events above.
  SELECT anonymous_id,
         ARRAY_AGG(user_id ORDER BY event_time, user_id LIMIT 1)[OFFSET(0)] AS user_id
  FROM events
  WHERE user_id IS NOT NULL
    AND anonymous_id IN (SELECT anonymous_id FROM relevant
                         WHERE user_id IS NULL AND anonymous_id IS NOT NULL)
  GROUP BY anonymous_id
),
resolved AS (
  SELECT r.*, COALESCE(r.user_id, l.user_id) AS customer_id
  FROM relevant AS r
  LEFT JOIN links AS l ON r.user_id IS NULL AND l.anonymous_id = r.anonymous_id
),
exposures AS (
  SELECT customer_id,
         MIN(event_time) AS first_exposure,
         LOGICAL_OR(event = 'Email Delivered') AS delivered,
         LOGICAL_OR(event = 'Email Held Out') AS held_out
  FROM resolved
  WHERE event IN ('Email Delivered', 'Email Held Out') AND campaign_id = @campaign
    AND customer_id IS NOT NULL
  GROUP BY customer_id
),
exposed AS (
  SELECT customer_id, first_exposure,
         CASE WHEN delivered AND held_out THEN 'excluded'
              WHEN delivered THEN 'treatment'
              ELSE 'control' END AS group_name
  FROM exposures
),
attributed AS (
  -- Orders in each customer's attribution window, each order_id once (its newest event).
  SELECT x.customer_id, o.amount
  FROM exposed AS x
  JOIN resolved AS o ON o.customer_id = x.customer_id
  WHERE x.group_name != 'excluded' AND o.event = 'Order Completed'
    AND o.event_time >= x.first_exposure
    AND o.event_time < TIMESTAMP_ADD(x.first_exposure, INTERVAL @attribution_days DAY)
  QUALIFY ROW_NUMBER() OVER (PARTITION BY COALESCE(o.order_id, o.message_id)
                             ORDER BY o.event_time DESC, o.message_id DESC) = 1
),
converted AS (
  SELECT customer_id, SUM(amount) AS revenue FROM attributed GROUP BY customer_id
),
engaged AS (
  -- Human engagement: opens and clicks of the campaign whose properties.machine is not true
  -- (nor the text "true" in any case, as the profile fold reads it: transforms/rules/profile).
  SELECT customer_id,
         LOGICAL_OR(event = 'Email Opened') AS opened,
         LOGICAL_OR(event = 'Email Link Clicked') AS clicked
  FROM resolved
  WHERE event IN ('Email Opened', 'Email Link Clicked') AND campaign_id = @campaign
    AND LOWER(TRIM(IFNULL(machine, ''))) != 'true' AND customer_id IS NOT NULL
  GROUP BY customer_id
)
SELECT x.group_name,
       COUNT(*) AS customers,
       COUNTIF(c.customer_id IS NOT NULL) AS conversions,
       IFNULL(SUM(c.revenue), 0) AS revenue,
       COUNTIF(IFNULL(g.opened, FALSE)) AS human_opens,
       COUNTIF(IFNULL(g.clicked, FALSE)) AS clicks
FROM exposed AS x
LEFT JOIN converted AS c ON c.customer_id = x.customer_id
LEFT JOIN engaged AS g ON g.customer_id = x.customer_id
GROUP BY x.group_name
"""


class UsageError(Exception):
  """Bad arguments, reported as one line (exit 2)."""


class NoExposures(Exception):
  """The campaign has no exposure events (exit 1)."""


# ---- Aggregates and the lift (pure) ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupCounts:
  """What the query counts for one group: customers, converted customers, their attributed
  revenue, and the customers with a human open / click."""
  customers: int = 0
  conversions: int = 0
  revenue: decimal.Decimal = decimal.Decimal(0)
  human_opens: int = 0
  clicks: int = 0

  def __post_init__(self):
    for name in ('customers', 'conversions', 'human_opens', 'clicks'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{name} must be a whole number >= 0, got {value!r}')
    for name in ('conversions', 'human_opens', 'clicks'):
      if getattr(self, name) > self.customers:
        raise ValueError(f'{name} ({getattr(self, name)}) exceeds customers ({self.customers})')
    object.__setattr__(self, 'revenue', decimal.Decimal(self.revenue))


@dataclasses.dataclass(frozen=True)
class Aggregates:
  """The query's result: both groups and how many customers were exposed in both."""
  treatment: GroupCounts = GroupCounts()
  control: GroupCounts = GroupCounts()
  excluded: int = 0

  @property
  def exposed(self) -> int:
    return self.treatment.customers + self.control.customers + self.excluded


@dataclasses.dataclass(frozen=True)
class Lift:
  """The lift of treatment over control. `reason` says why `relative` / `ci95` are None."""
  relative: float | None
  ci95: tuple[float, float] | None
  incremental_conversions: float | None
  incremental_revenue: decimal.Decimal | None
  reason: str | None = None


def rate(count: int, total: int) -> float | None:
  return count / total if total else None


def lift(treatment: GroupCounts, control: GroupCounts,
         confidence: float = CONFIDENCE) -> Lift:
  """The relative lift with its interval, and the incremental conversions and revenue.

  relative = (t_rate - c_rate) / c_rate; the interval is the Katz log interval of the relative
  risk t_rate / c_rate, minus 1. None (with the reason) when a group is empty, when control has
  no conversions (relative and interval), or when treatment has none (interval only: its log
  is -infinity).
  """
  empty = [name for name, group in zip(GROUPS, (treatment, control)) if not group.customers]
  if empty:
    return Lift(None, None, None, None,
                f'the {" and ".join(empty)} group{"s are" if len(empty) == 2 else " is"} empty: '
                f'there is nothing to compare')
  t_rate = treatment.conversions / treatment.customers
  c_rate = control.conversions / control.customers
  incremental_conversions = treatment.customers * (t_rate - c_rate)
  incremental_revenue = (treatment.revenue - treatment.customers * control.revenue
                         / control.customers).quantize(_CENT, decimal.ROUND_HALF_EVEN)
  if not control.conversions:
    return Lift(None, None, incremental_conversions, incremental_revenue,
                'no control customer converted: the relative lift is undefined (division by '
                'zero)')
  relative = (t_rate - c_rate) / c_rate
  if not treatment.conversions:
    return Lift(relative, None, incremental_conversions, incremental_revenue,
                'no treatment customer converted: the interval is undefined (log of zero)')
  interval = relative_risk(treatment.conversions, treatment.customers, control.conversions,
                           control.customers).confidence_interval(confidence)
  low, high = float(interval.low) - 1, float(interval.high) - 1
  if not (math.isfinite(low) and math.isfinite(high)):  # pragma: no cover - guarded above
    return Lift(relative, None, incremental_conversions, incremental_revenue,
                'the interval is undefined for these counts')
  return Lift(relative, (low, high), incremental_conversions, incremental_revenue)


def _money(value: decimal.Decimal | None) -> float | None:
  if value is None:
    return None
  return float(decimal.Decimal(value).quantize(_CENT, decimal.ROUND_HALF_EVEN))


def report(campaign: str, attribution_days: int, aggregates: Aggregates) -> dict:
  """The report as one JSON-ready object: campaign, attribution_days, groups, lift."""
  groups = {}
  for name in GROUPS:
    group = getattr(aggregates, name)
    groups[name] = {'customers': group.customers, 'conversions': group.conversions,
                    'conversion_rate': rate(group.conversions, group.customers),
                    'revenue': _money(group.revenue)}
  treatment = aggregates.treatment
  groups['treatment'].update(
      human_opens=treatment.human_opens, clicks=treatment.clicks,
      open_rate=rate(treatment.human_opens, treatment.customers),
      click_rate=rate(treatment.clicks, treatment.customers))
  result = lift(aggregates.treatment, aggregates.control)
  return {
      'campaign': campaign,
      'attribution_days': attribution_days,
      'groups': groups,
      'lift': {'relative': result.relative,
               'ci95': None if result.ci95 is None else list(result.ci95),
               'incremental_conversions': result.incremental_conversions,
               'incremental_revenue': _money(result.incremental_revenue)},
  }


def notes(aggregates: Aggregates) -> list[str]:
  """Warnings a reader of the report must see: customers left out, why a lift is missing."""
  found = []
  if aggregates.excluded:
    found.append(f'{aggregates.excluded:,} customer{"s" if aggregates.excluded != 1 else ""} '
                 f'exposed in both groups (Email Delivered and Email Held Out) left out of both')
  reason = lift(aggregates.treatment, aggregates.control).reason
  if reason:
    found.append(reason)
  return found


# ---- BigQuery ----------------------------------------------------------------------------------


def fetch_aggregates(client: bigquery.Client, dataset: bigquery.DatasetReference, campaign: str,
                     attribution_days: int) -> Aggregates:
  """Runs LIFT_SQL over `dataset`.events."""
  config = bigquery.QueryJobConfig(
      default_dataset=dataset,
      query_parameters=[bigquery.ScalarQueryParameter('campaign', 'STRING', campaign),
                        bigquery.ScalarQueryParameter('attribution_days', 'INT64',
                                                      attribution_days)])
  counts, excluded = {}, 0
  for row in client.query(LIFT_SQL, job_config=config).result():
    if row['group_name'] == EXCLUDED:
      excluded = row['customers']
      continue
    counts[row['group_name']] = GroupCounts(
        customers=row['customers'], conversions=row['conversions'],
        revenue=decimal.Decimal(row['revenue'] or 0), human_opens=row['human_opens'],
        clicks=row['clicks'])
  return Aggregates(counts.get('treatment', GroupCounts()), counts.get('control', GroupCounts()),
                    excluded)


# ---- Rendering ---------------------------------------------------------------------------------


def _pct(value: float | None, signed: bool = False, digits: int = 1) -> str:
  if value is None:
    return 'n/a'
  return f'{value * 100:{"+" if signed else ""}.{digits}f}%'


def _amount(value: float | None, signed: bool = False) -> str:
  if value is None:
    return 'n/a'
  return f'{value:{"+" if signed else ""},.2f}'


def _interval(ci95: Sequence[float] | None) -> str:
  return 'n/a' if ci95 is None else f'{_pct(ci95[0], True)} .. {_pct(ci95[1], True)}'


def verdict(result: dict) -> str:
  """One sentence on what the interval says."""
  ci95 = result['lift']['ci95']
  if ci95 is None:
    return 'No interval: see the notes.'
  if ci95[0] > 0:
    return 'The email lifted conversions: the whole 95% interval is above zero.'
  if ci95[1] < 0:
    return 'The email lowered conversions: the whole 95% interval is below zero.'
  return ('Not distinguishable from no effect: the 95% interval includes zero (more customers, '
          'a larger holdout or a longer window narrow it).')


def table(result: dict, warnings: Sequence[str]) -> str:
  """A plain-text table of the report."""
  treatment, control = result['groups']['treatment'], result['groups']['control']
  days = result['attribution_days']
  lines = [f'Lift report: campaign {result["campaign"]!r}, orders within {days} '
           f'day{"s" if days != 1 else ""} of first exposure', '',
           f'  {"group":<10} {"customers":>10} {"conversions":>12} {"rate":>8} {"revenue":>13} '
           f'{"human opens":>12} {"open rate":>10} {"clicks":>7} {"click rate":>11}']
  for name, group in (('treatment', treatment), ('control', control)):
    row = (f'  {name:<10} {group["customers"]:>10,} {group["conversions"]:>12,} '
           f'{_pct(group["conversion_rate"], digits=2):>8} {_amount(group["revenue"]):>13}')
    if name == 'treatment':
      row += (f' {group["human_opens"]:>12,} {_pct(group["open_rate"], digits=2):>10} '
              f'{group["clicks"]:>7,} {_pct(group["click_rate"], digits=2):>11}')
    lines.append(row)
  lift_ = result['lift']
  incremental = lift_['incremental_conversions']
  lines += ['',
            f'  relative lift            {_pct(lift_["relative"], True)}',
            f'  95% interval             {_interval(lift_["ci95"])}  (Katz log interval)',
            f'  incremental conversions  '
            f'{"n/a" if incremental is None else f"{incremental:+,.1f}"}',
            f'  incremental revenue      {_amount(lift_["incremental_revenue"], True)}',
            '', f'  {verdict(result)}']
  lines += [f'  note: {warning}' for warning in warnings]
  return '\n'.join(lines) + '\n'


def _esc(value: object) -> str:
  return html_lib.escape(str(value), quote=True)


def _nice_step(span: float) -> float:
  raw = span / 5
  magnitude = 10 ** math.floor(math.log10(raw))
  for factor in (1, 2, 2.5, 5, 10):
    if raw <= factor * magnitude:
      return factor * magnitude
  return 10 * magnitude  # pragma: no cover


def _ticks(low: float, high: float, step: float) -> list[float]:
  """Multiples of `step` from below `low` to above `high` (exact zero included)."""
  first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
  return [round(i * step, 12) for i in range(first, max(last, first + 1) + 1)]


def _tick_digits(step: float) -> int:
  """Decimals of a percent label for ticks `step` apart (2.5% needs one)."""
  percent = step * 100
  return 0 if abs(percent - round(percent)) < 1e-9 else 1


def _wilson(conversions: int, customers: int) -> tuple[float, float] | None:
  if not customers:
    return None
  ci = binomtest(conversions, customers).proportion_ci(CONFIDENCE, method='wilson')
  return float(ci.low), float(ci.high)


def _rates_svg(result: dict, aggregates: Aggregates) -> str:
  """Two horizontal bars (conversion rate per group) with their 95% Wilson intervals."""
  width, left, right, bar, gap, top = 640, 110, 40, 34, 22, 16
  rows = []
  top_rate = 0.0
  for name in GROUPS:
    group = getattr(aggregates, name)
    value = result['groups'][name]['conversion_rate']
    ci = _wilson(group.conversions, group.customers)
    rows.append((name, value, ci, group))
    top_rate = max(top_rate, value or 0, ci[1] if ci else 0)
  top_rate = top_rate or 0.01
  step = _nice_step(top_rate)
  ticks = _ticks(0.0, top_rate, step)
  axis_max = ticks[-1]
  plot = width - left - right
  height = top + 2 * bar + gap + 34

  def x(value: float) -> float:
    return left + plot * value / axis_max

  parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="Conversion rate by group" '
           f'class="chart">']
  for tick in ticks:
    parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top - 6}" '
                 f'y2="{top + 2 * bar + gap + 6}" class="grid"/>')
    parts.append(f'<text x="{x(tick):.1f}" y="{top + 2 * bar + gap + 24}" class="tick" '
                 f'text-anchor="middle">{_pct(tick, digits=_tick_digits(step))}</text>')
  for index, (name, value, ci, group) in enumerate(rows):
    y = top + index * (bar + gap)
    parts.append(f'<text x="{left - 12}" y="{y + bar / 2 + 5}" class="label" text-anchor="end">'
                 f'{name}</text>')
    if value is None:
      parts.append(f'<text x="{left + 8}" y="{y + bar / 2 + 5}" class="muted">no customers'
                   f'</text>')
      continue
    parts.append(f'<rect x="{left}" y="{y}" width="{max(x(value) - left, 1):.1f}" height="{bar}" '
                 f'rx="4" class="bar {name}"><title>{name}: {group.conversions:,} of '
                 f'{group.customers:,} converted ({_pct(value, digits=2)})</title></rect>')
    if ci:
      mid = y + bar / 2
      parts.append(f'<line x1="{x(ci[0]):.1f}" x2="{x(ci[1]):.1f}" y1="{mid}" y2="{mid}" '
                   f'class="whisker"/>')
      for end in ci:
        parts.append(f'<line x1="{x(end):.1f}" x2="{x(end):.1f}" y1="{mid - 8}" y2="{mid + 8}" '
                     f'class="whisker"/>')
    label_x = max(x(value), x(ci[1]) if ci else 0) + 8
    anchor = 'start'
    if label_x > width - 70:
      label_x, anchor = x(value) - 8, 'end'
    parts.append(f'<text x="{label_x:.1f}" y="{y + bar / 2 + 5}" class="value {anchor}" '
                 f'text-anchor="{anchor}">{_pct(value, digits=2)}</text>')
  parts.append('</svg>')
  return ''.join(parts)


def _lift_svg(result: dict) -> str:
  """The relative lift as a point with its 95% interval on an axis through zero."""
  lift_ = result['lift']
  width, left, right, top, height = 640, 60, 60, 36, 116
  relative, ci95 = lift_['relative'], lift_['ci95']
  if relative is None:
    return (f'<svg viewBox="0 0 {width} 60" role="img" aria-label="No lift" class="chart">'
            f'<text x="{width / 2}" y="35" text-anchor="middle" class="muted">No relative lift '
            f'to draw: see the notes.</text></svg>')
  low, high = (ci95 if ci95 else (relative, relative))
  lo, hi = min(low, 0.0, relative), max(high, 0.0, relative)
  pad = max((hi - lo) * 0.08, 0.02)
  step = _nice_step(hi - lo + 2 * pad)
  ticks = _ticks(lo - pad, hi + pad, step)
  lo, hi = ticks[0], ticks[-1]
  plot = width - left - right

  def x(value: float) -> float:
    return left + plot * (value - lo) / (hi - lo)

  if ci95 is None:
    tone = 'unsure'
  elif ci95[0] > 0:
    tone = 'up'
  elif ci95[1] < 0:
    tone = 'down'
  else:
    tone = 'unsure'
  mid = top + 26
  parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="Relative lift with its '
           f'95% interval" class="chart">']
  for tick in ticks:
    parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{mid + 26}" '
                 f'class="grid"/>')
    parts.append(f'<text x="{x(tick):.1f}" y="{mid + 46}" class="tick" text-anchor="middle">'
                 f'{_pct(tick, signed=tick != 0, digits=_tick_digits(step))}</text>')
  parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 8}" y2="{mid + 30}" '
               f'class="zero"/>')
  parts.append(f'<text x="{x(0):.1f}" y="{top - 14}" class="muted" text-anchor="middle">'
               f'no effect</text>')
  if ci95 is not None:
    parts.append(f'<rect x="{x(low):.1f}" y="{mid - 9}" width="{max(x(high) - x(low), 2):.1f}" '
                 f'height="18" rx="9" class="band {tone}"><title>95% interval '
                 f'{_interval(ci95)}</title></rect>')
    parts.append(f'<text x="{x(low) - 6:.1f}" y="{mid + 4}" class="muted" text-anchor="end">'
                 f'{_pct(low, True)}</text>')
    parts.append(f'<text x="{x(high) + 6:.1f}" y="{mid + 4}" class="muted">{_pct(high, True)}'
                 f'</text>')
  parts.append(f'<circle cx="{x(relative):.1f}" cy="{mid}" r="8" class="point {tone}">'
               f'<title>relative lift {_pct(relative, True)}</title></circle>')
  parts.append(f'<text x="{x(relative):.1f}" y="{mid - 15}" class="value" text-anchor="middle">'
               f'{_pct(relative, True)}</text>')
  parts.append('</svg>')
  return ''.join(parts)


_CSS = """
:root { --ink: #1f2933; --muted: #66788a; --line: #d9e2ec; --treatment: #2f6fde;
  --control: #9aa5b1; --up: #1f9d55; --down: #d64545; --unsure: #d69e2e; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f7fa; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 760px; margin: 32px auto; padding: 0 20px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0 0 12px; }
.sub { color: var(--muted); margin: 0 0 24px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 20px 24px;
  margin-bottom: 16px; }
.headline { display: flex; gap: 24px; align-items: center; }
.big { font-size: 44px; font-weight: 700; line-height: 1; }
.big.up { color: var(--up); } .big.down { color: var(--down); }
.big.unsure { color: var(--unsure); }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.kpi { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
.kpi b { display: block; font-size: 20px; } .kpi span { color: var(--muted); font-size: 13px; }
.chart { width: 100%; height: auto; display: block; }
.grid { stroke: var(--line); } .zero { stroke: var(--ink); stroke-dasharray: 4 3; }
.tick, .muted { fill: var(--muted); font-size: 12px; } .label { font-size: 14px; fill: var(--ink); }
.value { font-size: 14px; font-weight: 600; fill: var(--ink); }
.bar.treatment { fill: var(--treatment); } .bar.control { fill: var(--control); }
.whisker { stroke: var(--ink); stroke-width: 1.5; }
.band { opacity: .28; } .band.up, .point.up { fill: var(--up); }
.band.down, .point.down { fill: var(--down); } .band.unsure, .point.unsure { fill: var(--unsure); }
.point { stroke: #fff; stroke-width: 2; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th:first-child, td:first-child { text-align: left; }
.note { background: #fffbea; border-color: #f0d88a; }
.foot { color: var(--muted); font-size: 13px; }
"""


def html(result: dict, aggregates: Aggregates, warnings: Sequence[str], source: str,
         generated_at: dt.datetime | None = None) -> str:
  """One self-contained page: inline CSS and SVG, no scripts, fonts or other requests."""
  generated_at = generated_at or dt.datetime.now(dt.timezone.utc)
  lift_ = result['lift']
  treatment, control = result['groups']['treatment'], result['groups']['control']
  relative, ci95 = lift_['relative'], lift_['ci95']
  tone = ('unsure' if ci95 is None or ci95[0] <= 0 <= ci95[1]
          else 'up' if ci95[0] > 0 else 'down')
  incremental = lift_['incremental_conversions']
  days = result['attribution_days']
  kpis = [
      ('incremental conversions', 'n/a' if incremental is None else f'{incremental:+,.1f}'),
      ('incremental revenue', _amount(lift_['incremental_revenue'], True)),
      ('human open rate', _pct(treatment['open_rate'])),
      ('click rate', _pct(treatment['click_rate'])),
  ]
  rows = []
  for name in GROUPS:
    group = result['groups'][name]
    rows.append(
        f'<tr><td>{name}</td><td>{group["customers"]:,}</td><td>{group["conversions"]:,}</td>'
        f'<td>{_pct(group["conversion_rate"], digits=2)}</td><td>{_amount(group["revenue"])}</td>'
        + (f'<td>{group["human_opens"]:,}</td><td>{group["clicks"]:,}</td>'
           if name == 'treatment' else '<td>&ndash;</td><td>&ndash;</td>') + '</tr>')
  note_html = ''.join(f'<p>{_esc(w)}</p>' for w in warnings)
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Lift: {_esc(result['campaign'])}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>Campaign {_esc(result['campaign'])}: measured lift</h1>
<p class="sub">Treatment received the email, control was held out. A conversion is an order within
{days} day{'s' if days != 1 else ''} of the customer's first exposure.</p>
<section class="card headline">
<div class="big {tone}">{_pct(relative, True)}</div>
<div><b>relative lift in conversion rate</b><br>95% interval {_esc(_interval(ci95))}<br>
{_esc(verdict(result))}</div>
</section>
{'<section class="card note">' + note_html + '</section>' if warnings else ''}
<section class="kpis">
{''.join(f'<div class="kpi"><b>{_esc(value)}</b><span>{_esc(label)}</span></div>'
         for label, value in kpis)}
</section>
<section class="card" style="margin-top:16px">
<h2>Conversion rate by group</h2>
{_rates_svg(result, aggregates)}
<p class="foot">Whiskers: 95% Wilson interval of each group's rate.</p>
</section>
<section class="card">
<h2>Relative lift and its 95% interval</h2>
{_lift_svg(result)}
</section>
<section class="card">
<h2>Numbers</h2>
<table><thead><tr><th>group</th><th>customers</th><th>conversions</th><th>rate</th>
<th>revenue</th><th>human opens</th><th>clicks</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
</section>
<p class="foot">Relative lift = (treatment rate &minus; control rate) / control rate; its interval
is the {_esc(INTERVAL_METHOD)}, minus 1. Incremental conversions = treatment customers &times; the
difference in rates; incremental revenue = treatment customers &times; the difference in revenue per
exposed customer. Opens and clicks count customers with a human hit (machine hits such as Apple Mail
Privacy Protection left out). Source: {_esc(source)}, generated
{generated_at:%Y-%m-%d %H:%M} UTC.</p>
</main></body></html>
"""


# ---- CLI ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  """argparse that raises UsageError instead of printing usage and exiting."""

  def error(self, message):
    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog='python -m pipeline.report',
                   description='Reports over the warehouse the pipeline writes.')
  commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True,
                                   parser_class=_Parser)
  lift_parser = commands.add_parser(
      'lift', help='conversion lift of a campaign over its holdout',
      description='Conversion lift of a campaign: treatment (Email Delivered) against control '
                  '(Email Held Out), with its 95%% interval (docs/ENGAGEMENT.md).')
  lift_parser.add_argument('--project', default=os.environ.get('GOOGLE_CLOUD_PROJECT'),
                           help='Google Cloud project (default: $GOOGLE_CLOUD_PROJECT).')
  lift_parser.add_argument('--dataset', default='personalization',
                           help='BigQuery dataset the pipeline writes (as pipeline.run --dataset).')
  lift_parser.add_argument('--campaign', required=True,
                           help='properties.campaign_id of the exposure events.')
  lift_parser.add_argument('--attribution_days', type=int, default=DEFAULT_ATTRIBUTION_DAYS,
                           help='Orders within this many days of a customer\'s first exposure '
                                'count (default %(default)s).')
  lift_parser.add_argument('--format', choices=FORMATS, default='table',
                           help='table (default), json (one object) or html (one page).')
  lift_parser.add_argument('--out', metavar='FILE',
                           help='Write the report to FILE instead of standard output.')
  return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  args = build_parser().parse_args(list(argv))
  if not args.project or not args.project.strip():
    raise UsageError('--project is required (or set GOOGLE_CLOUD_PROJECT)')
  if not _DATASET_ID.fullmatch(args.dataset):
    raise UsageError(f'--dataset must be letters, digits and underscores, got {args.dataset!r}')
  if not args.campaign.strip():
    raise UsageError('--campaign must not be blank')
  if not 1 <= args.attribution_days <= MAX_ATTRIBUTION_DAYS:
    raise UsageError(f'--attribution_days must be from 1 to {MAX_ATTRIBUTION_DAYS}, got '
                     f'{args.attribution_days}')
  if args.out is not None:
    parent = pathlib.Path(args.out).resolve().parent
    if not parent.is_dir():
      raise UsageError(f'--out {args.out}: no directory {parent}')
  return args


def run_lift(args: argparse.Namespace) -> str:
  """The rendered report; NoExposures when the campaign has none."""
  dataset = bigquery.DatasetReference(args.project, args.dataset)
  client = bigquery_client.cloud_client(args.project)
  aggregates = fetch_aggregates(client, dataset, args.campaign, args.attribution_days)
  if not aggregates.exposed:
    raise NoExposures(
        f'campaign {args.campaign!r} has no exposures in {args.project}.{args.dataset}.events '
        f'(no Email Delivered or Email Held Out event with properties.campaign_id = '
        f'{args.campaign!r})')
  result = report(args.campaign, args.attribution_days, aggregates)
  warnings = notes(aggregates)
  for warning in warnings:
    print(f'warning: {warning}', file=sys.stderr)
  if args.format == 'json':
    return json.dumps(result, indent=2, ensure_ascii=False) + '\n'
  if args.format == 'html':
    return html(result, aggregates, warnings, f'{args.project}.{args.dataset}.events')
  return table(result, warnings)


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    args = parse_args(argv)
    output = run_lift(args)
  except UsageError as err:
    print(f'error: {err}\n(python -m pipeline.report lift --help for the options)',
          file=sys.stderr)
    return 2
  except NoExposures as err:
    print(f'error: {err}', file=sys.stderr)
    return 1
  except (GoogleAPICallError, RetryError) as err:
    print(f'error: BigQuery: {" ".join(str(err).split())}', file=sys.stderr)
    return 1
  if args.out is None:
    sys.stdout.write(output)
  else:
    pathlib.Path(args.out).write_text(output, encoding='utf-8')
    print(f'wrote {args.out}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
