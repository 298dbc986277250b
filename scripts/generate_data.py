"""Generate deterministic, realistic input data for the pipeline: events, customers and catalog.

    python -m scripts.generate_data --out data/sample [--customers 2000] [--products 500]
        [--events 50000] [--seed 42] [--files 4] [--duplicate-share 0.02]
        [--malformed-share 0.005] [--invalid-share 0.01] [--late-share 0.02]
        [--start 2026-11-01T00:00:00Z] [--days 14]
        [--no-campaign | --campaign-id sample-campaign --campaign-holdout-percent 10
         --campaign-base-rate 0.05 --campaign-lift 0.3 --campaign-attribution-days 7
         --campaign-customers N]

Writes into the output directory:

* `events-00000-of-00004.ndjson.gz` ...: Segment-spec calls (track, identify, page), one JSON object
  a line, gzipped, shuffled (not in time order), with controlled bad data mixed in; and, unless
  `--no-campaign`, the events of one email campaign with a holdout, on top of `--events`
  (`campaign_events`: exposures, machine and human opens and clicks, orders with a known true lift;
  docs/ENGAGEMENT.md, "Sample campaigns");
* `customers.csv` and `catalog.csv`: the reference data the events refer to;
* `manifest.json`: the parameters and the exact counts of what was written.

The same parameters give byte-identical files: everything random comes from `random.Random` seeded
from `--seed`, gzip headers carry no name and no mtime. The catalog depends only on (seed,
products), the customers only on (seed, customers), so changing `--events` keeps the reference data.

Counts in the manifest (all exact, computed while writing):

* `lines_total = valid_unique + duplicates + malformed + invalid` (equals `--events`, plus
  `campaign.events` with a campaign);
* `duplicates`: extra byte-identical copies of valid lines (same messageId);
* `malformed`: lines that are not a JSON object (`malformed_kinds`: truncated_json, not_json,
  invalid_utf8, json_array, json_number);
* `invalid`: JSON objects that break the input contract (`invalid_kinds`: missing_message_id,
  missing_ids, price_not_number, bad_timestamp, track_without_event, unknown_type);
  `bad_kinds` holds both kind maps merged, `expected_failure_types` maps them onto the dead-letter
  failure types of `transforms.rules.events`;
* `late`: valid unique events whose receivedAt is 1-3 days after their event time;
* `event_names`: valid unique events by track event name, or `page` / `identify`;
* `user_ids`, `anonymous_ids`: distinct non-empty ids among valid unique events;
* `start`, `end`: min and max event time (the skew-corrected `timestamp`) of valid events;
* `campaign` (with a campaign): its settings, `send_at`, `events` and `event_names` (all valid,
  unique, never late, counted in the totals above too), and per group (`treatment`, `control`)
  `customers`, `conversions` and `orders` (the campaign's own orders), `revenue` (their totals),
  for treatment also `machine_opens`, `human_opens` and `clicks` (distinct customers).

Event time: every valid event has `timestamp == receivedAt - (sentAt - originalTimestamp)`, exactly
(millisecond precision). originalTimestamp and sentAt are read off the device clock, which is off by
up to +-5 minutes on some devices, so receivedAt may be before sentAt.
"""
from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime as dt
import functools
import gzip
import itertools
import json
import math
import pathlib
import random
import sys
import unicodedata
from typing import Any, Iterator, Sequence

from transforms.rules import holdout, machine

try:
  import orjson
except ImportError:  # pragma: no cover - orjson is a runtime dependency; the fallback is identical
  orjson = None

CATALOG_HEADER = ('product_id', 'sku', 'name', 'category', 'brand', 'price', 'currency',
                  'in_stock', 'url', 'image_url')
CUSTOMERS_HEADER = ('customer_id', 'email', 'first_name', 'last_name', 'country', 'language',
                    'email_opt_in', 'created_at', 'loyalty_tier')
SHOP_URL = 'https://shop.example.com'
IMAGE_URL = 'https://img.example.com'
CURRENCY = 'USD'
DEFAULT_START = '2026-11-01T00:00:00Z'

INVALID_KINDS = ('missing_message_id', 'missing_ids', 'price_not_number', 'bad_timestamp',
                 'track_without_event', 'unknown_type')
MALFORMED_KINDS = ('truncated_json', 'not_json', 'invalid_utf8', 'json_array', 'json_number')
# How `transforms.rules.events.parse_event` classifies each kind of bad line.
EXPECTED_FAILURE_TYPE = {
    'truncated_json': 'invalid_json',
    'not_json': 'invalid_json',
    'invalid_utf8': 'invalid_json',
    'json_array': 'schema_violation',
    'json_number': 'schema_violation',
    'missing_message_id': 'schema_violation',
    'missing_ids': 'schema_violation',
    'price_not_number': 'schema_violation',
    'bad_timestamp': 'schema_violation',
    'track_without_event': 'schema_violation',
    'unknown_type': 'unsupported_type',
}

_SECOND = 1000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_CHUNK_LINES = 1 << 16  # lines shuffled together before they are dealt out to the shards

# Share of journeys by visitors who never log in; share of devices that send RudderStack keys.
ANONYMOUS_JOURNEY_SHARE = 0.10
SNAKE_CASE_DEVICE_SHARE = 0.035

_CAMEL_KEYS = ('messageId', 'userId', 'anonymousId', 'originalTimestamp', 'sentAt', 'receivedAt')
_SNAKE_KEYS = ('message_id', 'user_id', 'anonymous_id', 'original_timestamp', 'sent_at',
               'received_at')

# ---- Reference data vocabularies ---------------------------------------------------------------

# name, sku code, url slug, models, nouns, min and max price in cents.
_CATEGORIES = (
    ('Shoes', 'SHO', 'shoes',
     ('Trail Runner', 'Court Classic', 'City Walker', 'Cloud Step', 'Summit Hiker', 'Tempo Racer',
      'Canvas Low', 'Harbor Deck'),
     ('Shoes', 'Sneakers', 'Boots', 'Loafers'), 3999, 24900),
    ('Outerwear', 'OUT', 'outerwear',
     ('Alpine', 'Storm Shell', 'Harbor', 'Metro', 'Quilted', 'Featherlight', 'Ridge'),
     ('Jacket', 'Parka', 'Coat', 'Vest', 'Anorak', 'Puffer'), 5900, 39900),
    ('Accessories', 'ACC', 'accessories',
     ('Everyday', 'Classic', 'Woven', 'Leather', 'Heritage', 'Minimal'),
     ('Belt', 'Scarf', 'Beanie', 'Cap', 'Gloves', 'Sunglasses', 'Wallet'), 999, 8900),
    ('Bags', 'BAG', 'bags',
     ('Commuter', 'Weekender', 'Daypack', 'Crossbody', 'Market', 'Travel'),
     ('Backpack', 'Tote', 'Duffel', 'Bag', 'Messenger'), 2400, 29900),
    ('Dresses', 'DRS', 'dresses',
     ('Linen Wrap', 'Floral Midi', 'Satin Slip', 'Jersey Maxi', 'Poplin Shirt', 'Knit Sweater'),
     ('Dress',), 2900, 19900),
    ('Knitwear', 'KNT', 'knitwear',
     ('Merino Crew', 'Cable Knit', 'Cashmere V-Neck', 'Fisherman', 'Ribbed Turtleneck',
      'Lambswool'),
     ('Sweater', 'Cardigan', 'Jumper'), 3500, 24900),
    ('Sportswear', 'SPT', 'sportswear',
     ('Performance', 'Training', 'Seamless', 'Run', 'Yoga', 'Studio'),
     ('Leggings', 'Tee', 'Shorts', 'Tank', 'Hoodie', 'Sports Bra'), 1500, 12000),
    ('Jeans', 'JNS', 'jeans',
     ('Slim', 'Straight', 'Relaxed', 'Skinny', 'Bootcut', 'Wide Leg', 'Tapered'),
     ('Jeans',), 3900, 17900),
    ('Shirts', 'SHT', 'shirts',
     ('Oxford', 'Poplin', 'Flannel', 'Linen', 'Denim', 'Chambray'),
     ('Shirt', 'Overshirt', 'Blouse'), 2500, 12900),
    ('Home', 'HOM', 'home',
     ('Stoneware', 'Linen', 'Cotton', 'Woven', 'Ceramic', 'Wool'),
     ('Mug Set', 'Throw', 'Cushion Cover', 'Candle', 'Vase', 'Towel Set'), 999, 14900),
    ('Beauty', 'BTY', 'beauty',
     ('Hydrating', 'Daily', 'Vitamin C', 'Gentle', 'Night Repair', 'Mineral'),
     ('Face Cream', 'Serum', 'Cleanser', 'Lip Balm', 'Sunscreen SPF 50', 'Body Lotion'), 999, 8900),
    ('Kids', 'KID', 'kids',
     ('Mini', 'Little Explorer', 'Playground', 'Rainy Day', 'Cozy'),
     ('Hoodie', 'Sneakers', 'Raincoat', 'Pajama Set', 'T-Shirt'), 1200, 7900),
)
_BRANDS = ('Northwind', 'Atelier Nord', 'Harbor & Co.', 'Kestrel', 'Maple Lane', 'Solstice',
           'Urban Fox', 'Bluefjord', 'Terra', 'Oak & Iron', 'Lumen', 'Saltwater', 'Fjällgård')
_COLORS = ('BLK', 'NVY', 'WHT', 'GRY', 'RED', 'OLV', 'BEI', 'BLU')
_PRICE_ENDINGS = (99, 99, 99, 0, 50, 95)

_EN_FIRST = ('James', 'Mary', 'Olivia', 'Liam', 'Emma', 'Noah', 'Ava', 'Ethan', 'Sophia', 'Mason',
             'Chloe', 'Zoë', 'Anna', 'Oliver', 'Amelia', 'George', 'Isla', 'Harry', 'Grace')
_EN_LAST = ('Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Miller', 'Davis', 'Garcia',
            'Wilson', 'Taylor', 'Evans', 'Thomas', 'Roberts', 'Walker', "O'Brien")
# country, language, weight, first names, last names.
_LOCALES = (
    ('US', 'en', 34, _EN_FIRST, _EN_LAST),
    ('GB', 'en', 12, _EN_FIRST, _EN_LAST),
    ('CA', 'en', 4, _EN_FIRST, _EN_LAST),
    ('AU', 'en', 3, _EN_FIRST, _EN_LAST),
    ('DE', 'de', 10, ('Lukas', 'Anna', 'Leon', 'Mia', 'Felix', 'Lena', 'Jürgen', 'Sophie'),
     ('Müller', 'Schmidt', 'Schneider', 'Fischer', 'Weber', 'Becker', 'Wagner')),
    ('FR', 'fr', 8, ('Louis', 'Chloé', 'Hugo', 'Léa', 'Gabriel', 'Manon', 'Élodie', 'Arthur'),
     ('Martin', 'Bernard', 'Dubois', 'Durand', 'Lefèvre', 'Moreau')),
    ('ES', 'es', 6, ('José', 'Lucía', 'Hugo', 'María', 'Pablo', 'Sofía', 'Álvaro'),
     ('García', 'Fernández', 'López', 'Martínez', 'Sánchez', 'Pérez')),
    ('MX', 'es', 3, ('José', 'Lucía', 'Diego', 'María', 'Valentina', 'Mateo'),
     ('Hernández', 'López', 'González', 'Ramírez', 'Flores')),
    ('PL', 'pl', 4, ('Łukasz', 'Zofia', 'Jakub', 'Małgorzata', 'Piotr', 'Anna'),
     ('Nowak', 'Kowalski', 'Wiśniewski', 'Wójcik', 'Kamińska')),
    ('JP', 'ja', 5, ('明', '陽翔', '結衣', 'Sakura', 'Ren', 'Hina'),
     ('佐藤', '鈴木', 'Tanaka', 'Watanabe', 'Ito')),
    ('BR', 'pt', 6, ('João', 'Ana', 'Pedro', 'Júlia', 'Lucas', 'Beatriz'),
     ('Silva', 'Santos', 'Oliveira', 'Souza', 'Pereira')),
)
# Romanisations for the names NFKD cannot reduce to ASCII (used in email addresses).
_ROMAJI = {'明': 'Akira', '陽翔': 'Haruto', '結衣': 'Yui', '佐藤': 'Sato',
           '鈴木': 'Suzuki', 'Ł': 'L', 'ł': 'l', 'ß': 'ss', "'": ''}
_TIERS = (('none', 60), ('silver', 25), ('gold', 11), ('platinum', 4))

_USER_AGENTS = (
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) '
    'Chrome/131.0.0.0 Safari/537.36',
    'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) '
    'Version/18.1 Safari/605.1.15',
    'Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like '
    'Gecko) Version/18.1 Mobile/15E148 Safari/604.1',
    'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) '
    'Chrome/131.0.0.0 Mobile Safari/537.36',
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0',
    'Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) '
    'SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36',
    'Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) '
    'Version/17.6 Mobile/15E148 Safari/604.1',
)
_WEB_LIBRARY = {'name': 'analytics.js', 'version': '4.1.0'}
_RUDDER_LIBRARY = {'name': 'RudderLabs JavaScript SDK', 'version': '3.11.0'}
_SERVER_LIBRARY = {'name': 'analytics-python', 'version': '2.3.3'}
_REFERRERS = ('', '', 'https://www.google.com/', 'https://www.instagram.com/',
              'https://www.facebook.com/', 'https://www.bing.com/', 'https://www.pinterest.com/')
_NO_INTEGRATIONS: dict = {}
_SOME_INTEGRATIONS = {'All': True, 'Mixpanel': False}
_CAMPAIGNS = (
    ('cmp-bf-early-access', 'Black Friday Early Access', 'Early access: up to 40% off {category}'),
    ('cmp-new-in', 'New In', 'New in {category} this week'),
    ('cmp-weekly-picks', 'Weekly Picks', '{first_name}, your picks for this week'),
    ('cmp-back-in-stock', 'Back in Stock', 'It is back: {product}'),
    ('cmp-cyber-monday', 'Cyber Monday', 'Last chance, {first_name}: 30% off ends tonight'),
)

# ---- Reference data ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Product:
  """One catalog row."""
  product_id: str
  sku: str
  name: str
  category: str
  brand: str
  price_cents: int
  in_stock: bool
  currency: str = CURRENCY

  @property
  def price(self) -> float:
    return self.price_cents / 100

  @property
  def url(self) -> str:
    return f'{SHOP_URL}/p/{self.product_id}'

  @property
  def image_url(self) -> str:
    return f'{IMAGE_URL}/{self.product_id}.jpg'

  def row(self) -> tuple[str, ...]:
    """The `catalog.csv` row, in `CATALOG_HEADER` order."""
    return (self.product_id, self.sku, self.name, self.category, self.brand,
            format_cents(self.price_cents), self.currency, _bool(self.in_stock), self.url,
            self.image_url)

  def properties(self) -> dict[str, Any]:
    """Segment e-commerce v2 product properties (as in `Product Viewed`)."""
    return {'product_id': self.product_id, 'sku': self.sku, 'category': self.category,
            'name': self.name, 'brand': self.brand, 'price': self.price,
            'currency': self.currency, 'url': self.url, 'image_url': self.image_url}


@dataclasses.dataclass(frozen=True)
class Customer:
  """One customers.csv row. `email` is as a CRM would hold it: mixed case, sometimes padded."""
  customer_id: str
  email: str
  first_name: str
  last_name: str
  country: str
  language: str
  email_opt_in: bool
  created_at: str
  loyalty_tier: str

  def row(self) -> tuple[str, ...]:
    """The `customers.csv` row, in `CUSTOMERS_HEADER` order."""
    return (self.customer_id, self.email, self.first_name, self.last_name, self.country,
            self.language, _bool(self.email_opt_in), self.created_at, self.loyalty_tier)


def format_cents(cents: int) -> str:
  """12999 -> '129.99'."""
  return f'{cents // 100}.{cents % 100:02d}'


def _bool(value: bool) -> str:
  return 'true' if value else 'false'


def _id_width(count: int, minimum: int) -> int:
  return max(minimum, len(str(count)))


def build_catalog(rng: random.Random, count: int) -> list[Product]:
  """`count` products, p0001.., spread over the categories (so all appear once count >= 12)."""
  width = _id_width(count, 4)
  products = []
  for i in range(1, count + 1):
    name, code, _, models, nouns, low, high = _CATEGORIES[(i - 1) % len(_CATEGORIES)]
    model, noun = rng.choice(models), rng.choice(nouns)
    version = f' {rng.randint(2, 5)}' if rng.random() < 0.3 else ''
    dollars = int(math.exp(rng.uniform(math.log(low), math.log(high))) / 100)
    cents = min(max(dollars * 100 + rng.choice(_PRICE_ENDINGS), low), high)
    product_id = f'p{i:0{width}d}'
    products.append(Product(
        product_id=product_id,
        sku=f'{code}-{i:05d}-{rng.choice(_COLORS)}',
        name=f'{model}{version} {noun}',
        category=name,
        brand=rng.choice(_BRANDS),
        price_cents=cents,
        in_stock=rng.random() < 0.9))
  return products


def ascii_name(name: str) -> str:
  """'José' -> 'Jose', 'Łukasz' -> 'Lukasz', '明' -> 'Akira' (for email addresses)."""
  if name in _ROMAJI:
    return _ROMAJI[name]
  folded = ''.join(_ROMAJI.get(c, c) for c in unicodedata.normalize('NFKD', name))
  return ''.join(c for c in folded if c.isascii() and c.isalnum())


def _email(rng: random.Random, first: str, last: str, number: int) -> str:
  local = f'{ascii_name(first)}.{ascii_name(last)}{number}'
  domain = 'example.com'
  r = rng.random()
  if r < 0.70:
    local = local.lower()
  elif r < 0.77:
    domain = 'Example.com'
  elif r < 0.80:
    local, domain = local.upper(), domain.upper()
  email = f'{local}@{domain}'
  r = rng.random()
  if r < 0.015:
    email = f' {email}'
  elif r < 0.03:
    email = f'{email} '
  return email


def build_customers(rng: random.Random, count: int,
                    before: dt.datetime | None = None) -> list[Customer]:
  """`count` customers, c00001.., created in 2024 or later but before `before`."""
  width = _id_width(count, 5)
  low = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
  high = max(before or dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), low + dt.timedelta(days=2))
  span = int((high - low).total_seconds()) - 86400
  locale_cum = _cumulative([weight for _, _, weight, _, _ in _LOCALES])
  tier_cum = _cumulative([weight for _, weight in _TIERS])
  customers = []
  for i in range(1, count + 1):
    country, language, _, firsts, lasts = _pick(rng, _LOCALES, locale_cum)
    first, last = rng.choice(firsts), rng.choice(lasts)
    created = low + dt.timedelta(seconds=rng.randrange(span))
    customers.append(Customer(
        customer_id=f'c{i:0{width}d}',
        email=_email(rng, first, last, i),
        first_name=first,
        last_name=last,
        country=country,
        language=language,
        email_opt_in=rng.random() < 0.92,
        created_at=created.strftime('%Y-%m-%dT%H:%M:%SZ'),
        loyalty_tier=_pick(rng, _TIERS, tier_cum)[0]))
  return customers


def _cumulative(weights: Sequence[float]) -> list[float]:
  total, out = 0.0, []
  for weight in weights:
    total += weight
    out.append(total)
  return out


def _pick(rng: random.Random, items: Sequence[Any], cum: Sequence[float]) -> Any:
  """A weighted choice (cumulative weights), O(log n)."""
  return items[min(bisect.bisect(cum, rng.random() * cum[-1]), len(items) - 1)]


def zipf_weights(rng: random.Random, count: int, exponent: float = 1.1) -> list[float]:
  """Popularity weights 1/rank^exponent, ranks assigned to items in random order."""
  ranks = list(range(1, count + 1))
  rng.shuffle(ranks)
  return [1.0 / rank**exponent for rank in ranks]


# ---- Time --------------------------------------------------------------------------------------


def parse_time(value: str) -> dt.datetime:
  """ISO-8601 (a trailing Z allowed) -> aware UTC datetime; naive values are taken as UTC."""
  parsed = dt.datetime.fromisoformat(value.strip())
  if parsed.tzinfo is None:
    return parsed.replace(tzinfo=dt.timezone.utc)
  return parsed.astimezone(dt.timezone.utc)


def to_millis(value: dt.datetime) -> int:
  return (value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)


@functools.lru_cache(maxsize=1 << 16)
def _minute_prefix(minute: int) -> str:
  """Minutes since the epoch -> '2026-11-01T08:15:'."""
  day, rest = divmod(minute, 24 * 60)
  date = (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
  return f'{date}T{rest // 60:02d}:{rest % 60:02d}:'


def iso_millis(millis: int) -> str:
  """Milliseconds since the epoch -> '2026-11-01T08:15:02.123Z'."""
  minute, rest = divmod(millis, _MINUTE)
  second, milli = divmod(rest, _SECOND)
  return f'{_minute_prefix(minute)}{second:02d}.{milli:03d}Z'


# ---- Journeys ----------------------------------------------------------------------------------


@dataclasses.dataclass
class World:
  """What journeys are built from: reference data, popularity and the time window."""
  products: list[Product]
  customers: list[Customer]
  start_ms: int
  window_ms: int
  product_props: list[dict]
  product_cum: list[float]
  categories: list[str]
  by_category: dict[str, tuple[list[int], list[float]]]
  customer_cum: list[float]


def build_world(rng: random.Random, products: list[Product], customers: list[Customer],
                start: dt.datetime, days: float) -> World:
  """Precompute popularity (Zipf-like for products, milder for customers) and the window."""
  if not products:
    raise ValueError('at least one product is needed')
  weights = zipf_weights(rng, len(products))
  by_category: dict[str, tuple[list[int], list[float]]] = {}
  for index, product in enumerate(products):
    by_category.setdefault(product.category, ([], []))[0].append(index)
  for indexes, cum in by_category.values():
    cum.extend(_cumulative([weights[i] for i in indexes]))
  return World(
      products=products,
      customers=customers,
      start_ms=to_millis(start),
      window_ms=max(1, int(days * _DAY)),
      product_props=[p.properties() for p in products],
      product_cum=_cumulative(weights),
      categories=sorted(by_category),
      by_category=by_category,
      customer_cum=_cumulative(zipf_weights(rng, len(customers), 0.6)) if customers else [])


@dataclasses.dataclass
class Device:
  """A browser: its anonymousId, its clock skew, its SDK, and what it remembers (login, cart)."""
  anonymous_id: str
  ip: str
  user_agent: str
  locale: str
  skew_ms: int
  snake_case: bool
  null_user_id: bool
  user_id: str | None = None
  cart_id: str | None = None
  cart: dict[int, int] = dataclasses.field(default_factory=dict)


def new_device(rng: random.Random, customer: Customer | None) -> Device:
  """A fresh device; a third of devices have a clock several seconds to 5 minutes off."""
  if customer is None:
    country, language = rng.choice(_LOCALES)[:2]
  else:
    country, language = customer.country, customer.language
  if rng.random() < 0.65:
    skew = rng.randint(-800, 800)
  else:
    skew = rng.choice((-1, 1)) * rng.randint(2 * _SECOND, 5 * _MINUTE)
  snake = rng.random() < SNAKE_CASE_DEVICE_SHARE
  return Device(
      anonymous_id=f'anon-{rng.getrandbits(64):016x}',
      ip=f'{rng.randint(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}',
      user_agent=rng.choice(_USER_AGENTS),
      locale=f'{language}-{country}',
      skew_ms=skew,
      snake_case=snake,
      null_user_id=not snake and rng.random() < 0.7)


@dataclasses.dataclass(slots=True)
class Draft:
  """An event before it is stamped: true time (ms), device clock skew (ms), key style, payload."""
  t: int
  skew: int
  snake_case: bool
  payload: dict


def _hex_id(rng: random.Random, prefix: str, bits: int = 48) -> str:
  return f'{prefix}{rng.getrandbits(bits):0{bits // 4}x}'


class _Journey:
  """Builds one visitor's events in time order (times relative to the journey's start)."""

  def __init__(self, rng: random.Random, world: World, device: Device,
               customer: Customer | None):
    self.rng = rng
    self.world = world
    self.device = device
    self.customer = customer
    self.t = 0
    self.drafts: list[Draft] = []
    self.keys = _SNAKE_KEYS if device.snake_case else _CAMEL_KEYS
    self.library = _RUDDER_LIBRARY if device.snake_case else _WEB_LIBRARY
    self.page_ctx: dict = {}
    self.campaign: dict | None = None

  # -- time and ids

  def tick(self, low: int = _SECOND, mean: int = 20 * _SECOND, cap: int = 10 * _MINUTE) -> None:
    self.t += low + min(int(self.rng.expovariate(1.0 / mean)), cap)

  def _base(self, call_type: str) -> dict:
    message_key, user_key, anonymous_key = self.keys[:3]
    payload = {'type': call_type, message_key: f'{self.rng.getrandbits(128):032x}',
               anonymous_key: self.device.anonymous_id}
    if self.device.user_id:
      payload[user_key] = self.device.user_id
    elif self.device.null_user_id:
      payload[user_key] = None
    return payload

  def _finish(self, payload: dict) -> None:
    context = {'ip': self.device.ip, 'library': self.library, 'locale': self.device.locale,
               'page': self.page_ctx, 'userAgent': self.device.user_agent}
    if self.campaign:
      context['campaign'] = self.campaign
    payload['context'] = context
    payload['integrations'] = (_SOME_INTEGRATIONS if self.rng.random() < 0.02
                               else _NO_INTEGRATIONS)
    if self.device.snake_case:
      payload['channel'] = 'web'
    self.drafts.append(Draft(self.t, self.device.skew_ms, self.device.snake_case, payload))

  # -- calls

  def navigate(self, path: str, title: str, search: str = '',
               referrer: str | None = None) -> dict:
    """Move to another page (context.page of the following events); returns the new page."""
    if referrer is None:
      referrer = self.page_ctx.get('url', '')
    url = f'{SHOP_URL}{path}{search}'
    self.page_ctx = {'path': path, 'referrer': referrer, 'search': search, 'title': title,
                     'url': url}
    return self.page_ctx

  def page(self, name: str, path: str, title: str, category: str | None = None,
           search: str = '', referrer: str | None = None) -> None:
    """Navigate and send a page call."""
    page_ctx = self.navigate(path, title, search, referrer)
    referrer, url = page_ctx['referrer'], page_ctx['url']
    payload = self._base('page')
    payload['name'] = name
    properties = {'path': path, 'referrer': referrer, 'search': search, 'title': title, 'url': url}
    if category:
      payload['category'] = category
      properties['category'] = category
    payload['properties'] = properties
    self._finish(payload)

  def track(self, event: str, properties: dict) -> None:
    payload = self._base('track')
    payload['event'] = event
    payload['properties'] = properties
    self._finish(payload)

  def identify(self) -> None:
    customer = self.customer
    assert customer is not None
    self.device.user_id = customer.customer_id
    payload = self._base('identify')
    traits = {'email': customer.email, 'first_name': customer.first_name,
              'last_name': customer.last_name}
    r = self.rng.random()
    if r < 0.05:
      traits['unsubscribed'] = False
    elif r < 0.08:
      traits['unsubscribed'] = True
    payload['traits'] = traits
    self._finish(payload)

  def server_track(self, t: int, event: str, properties: dict, user_id: str | None,
                   anonymous_id: str | None) -> None:
    """A server-side call (ESP webhook, order system): no device, no clock skew."""
    payload: dict[str, Any] = {'type': 'track', 'event': event,
                               'messageId': f'{self.rng.getrandbits(128):032x}'}
    if user_id:
      payload['userId'] = user_id
    if anonymous_id:
      payload['anonymousId'] = anonymous_id
    payload['properties'] = properties
    payload['context'] = {'library': _SERVER_LIBRARY}
    payload['integrations'] = _NO_INTEGRATIONS
    self.drafts.append(Draft(t, 0, False, payload))

  # -- pieces of a visit

  def _product(self, category: str | None) -> int:
    if category is not None and self.rng.random() < 0.65:
      indexes, cum = self.world.by_category[category]
      return _pick(self.rng, indexes, cum)
    return _pick(self.rng, range(len(self.world.products)), self.world.product_cum)

  def _product_page(self, index: int, search: str = '', referrer: str | None = None,
                    call: bool = True) -> None:
    """Open a product page; without `call` the site navigates without a page call (SPA)."""
    product = self.world.products[index]
    path, title = f'/p/{product.product_id}', f'{product.name} | Example Shop'
    if call:
      self.page('Product', path, title, product.category, search, referrer)
    else:
      self.navigate(path, title, search, referrer)

  def _cart_products(self) -> list[dict]:
    items = []
    for index, quantity in self.device.cart.items():
      product = self.world.products[index]
      items.append({'product_id': product.product_id, 'sku': product.sku, 'name': product.name,
                    'price': product.price, 'quantity': quantity, 'category': product.category})
    return items

  def _ensure_cart(self) -> str:
    if self.device.cart_id is None:
      self.device.cart_id = _hex_id(self.rng, 'cart-')
    return self.device.cart_id

  def _add(self, index: int) -> None:
    r = self.rng.random()
    quantity = 1 if r < 0.85 else 2 if r < 0.97 else 3
    properties = dict(self.world.product_props[index])
    properties['quantity'] = quantity
    properties['cart_id'] = self._ensure_cart()
    self.device.cart[index] = self.device.cart.get(index, 0) + quantity
    self.track('Product Added', properties)

  def _remove(self) -> None:
    index = self.rng.choice(list(self.device.cart))
    properties = dict(self.world.product_props[index])
    properties['quantity'] = self.device.cart.pop(index)
    properties['cart_id'] = self._ensure_cart()
    self.track('Product Removed', properties)

  def _can_log_in(self) -> bool:
    return self.customer is not None and self.device.user_id is None

  def _checkout(self) -> None:
    rng = self.rng
    if self._can_log_in() and rng.random() < 0.85:
      self.tick()
      self.identify()
    self.tick()
    self.page('Checkout', '/checkout', 'Checkout | Example Shop')
    products = self._cart_products()
    subtotal = sum(round(p['price'] * 100) * p['quantity'] for p in products)
    discount = subtotal // 10 if rng.random() < 0.2 else 0
    revenue = subtotal - discount
    order_id = _hex_id(rng, 'ord-')
    self.track('Checkout Started', {
        'order_id': order_id, 'value': revenue / 100, 'revenue': revenue / 100,
        'currency': CURRENCY, 'products': products})
    if rng.random() >= 0.82:
      return  # abandoned at checkout: the cart stays
    self.tick(5 * _SECOND, 60 * _SECOND)
    shipping, tax, total = order_amounts(revenue)
    self.track('Order Completed', {
        'checkout_id': _hex_id(rng, 'chk-'), 'order_id': order_id, 'total': total / 100,
        'revenue': revenue / 100, 'shipping': shipping / 100, 'tax': tax / 100,
        'discount': discount / 100, 'currency': CURRENCY,
        'products': [dict(p) for p in products]})
    self.device.cart.clear()
    self.device.cart_id = None
    if rng.random() < 0.05:
      later = self.t + rng.randint(1 * _HOUR, 48 * _HOUR)
      self.server_track(later, 'Order Cancelled',
                        {'order_id': order_id, 'total': total / 100, 'currency': CURRENCY},
                        self.device.user_id, None if self.device.user_id
                        else self.device.anonymous_id)

  def session(self, landing: int | None = None, search: str = '',
              referrer: str | None = None) -> None:
    """One visit: landing page, browsing, maybe a login, cart changes, maybe an order."""
    rng = self.rng
    world = self.world
    self.page_ctx = {}
    if landing is not None:
      self._product_page(landing, search, referrer or '')
      interest = world.products[landing].category
      self.tick(300, 1500, 5 * _SECOND)
      self.track('Product Viewed', dict(world.product_props[landing]))
    else:
      referrer = rng.choice(_REFERRERS)
      interest = rng.choice(world.categories)
      if rng.random() < 0.55:
        self.page('Home', '/', 'Example Shop', search=search, referrer=referrer)
      else:
        self.page('Category', f'/c/{_category_slug(interest)}', f'{interest} | Example Shop',
                  interest, search, referrer)
    if self._can_log_in() and rng.random() < 0.45:
      self.tick()
      self.identify()
    views = 1 + min(int(rng.expovariate(1 / 2.2)), 9)
    for _ in range(views):
      self.tick()
      index = self._product(interest)
      if rng.random() < 0.6:
        self._product_page(index)
        self.tick(200, 1000, 5 * _SECOND)
      else:
        self._product_page(index, call=False)
      self.track('Product Viewed', dict(world.product_props[index]))
      if rng.random() < 0.22:
        self.tick(2 * _SECOND, 15 * _SECOND)
        self._add(index)
    if self.device.cart and rng.random() < 0.12:
      self.tick()
      self._remove()
    if self._can_log_in() and rng.random() < 0.25:
      self.tick()
      self.identify()
    if not self.device.cart:
      return
    if rng.random() < 0.55:
      self.tick()
      self.page('Cart', '/cart', 'Your cart | Example Shop')
      self.tick(200, 1000, 5 * _SECOND)
      self.track('Cart Viewed', {'cart_id': self._ensure_cart(), 'products': self._cart_products()})
    if rng.random() < 0.45:
      self._checkout()

  def email(self) -> tuple[int, str] | None:
    """Email Opened, maybe Email Link Clicked; returns (product, utm search) when clicked."""
    rng = self.rng
    customer = self.customer
    assert customer is not None
    campaign_id, campaign_name, subject = rng.choice(_CAMPAIGNS)
    index = self._product(None)
    product = self.world.products[index]
    subject = subject.format(category=product.category, first_name=customer.first_name,
                             product=product.name)
    email_id = _hex_id(rng, 'em-', 64)
    base = {'email_id': email_id, 'email_subject': subject, 'campaign_id': campaign_id,
            'campaign_name': campaign_name}
    self.server_track(self.t, 'Email Opened', base, customer.customer_id, None)
    if rng.random() >= 0.45:
      return None
    self.tick(5 * _SECOND, 20 * _MINUTE, 2 * _HOUR)
    search = f'?utm_source=email&utm_medium=email&utm_campaign={campaign_id}'
    clicked = dict(base)
    clicked['link_url'] = f'{product.url}{search}'
    self.server_track(self.t, 'Email Link Clicked', clicked, customer.customer_id, None)
    self.tick(1 * _SECOND, 3 * _SECOND, 10 * _SECOND)
    self.campaign = {'name': campaign_name, 'source': 'email', 'medium': 'email'}
    return index, search


def order_amounts(revenue_cents: int) -> tuple[int, int, int]:
  """(shipping, tax, total) in cents of an order of `revenue_cents`: free shipping from $75."""
  shipping = 0 if revenue_cents >= 7500 else 495
  tax = round(revenue_cents * 0.08)
  return shipping, tax, revenue_cents + shipping + tax


@functools.lru_cache(maxsize=64)
def _category_slug(category: str) -> str:
  for name, _, slug, *_ in _CATEGORIES:
    if name == category:
      return slug
  return category.lower()


def build_journey(rng: random.Random, world: World, customer: Customer | None,
                  device: Device) -> list[Draft]:
  """One visitor's events, in time order, placed at a random time in the world's window.

  Sessions start anonymous (unless the device remembers a login); a known customer may log in
  (identify) on the way or at checkout; some visits add to cart, some buy, some abandon; a quarter
  of journeys come back one to four days later; opted-in customers may first open an email.
  Events that would fall after the window are dropped.
  """
  journey = _Journey(rng, world, device, customer)
  landing = None
  if customer is not None and customer.email_opt_in and rng.random() < 0.25:
    clicked = journey.email()
    if clicked is None:
      if rng.random() < 0.5:
        return _place(rng, world, journey.drafts)
      journey.t += rng.randint(1 * _HOUR, 30 * _HOUR)
    else:
      landing = clicked
  if landing is not None:
    journey.session(landing[0], landing[1], '')
  else:
    journey.session()
  journey.campaign = None
  sessions = 1
  while sessions < 3 and rng.random() < (0.25 if sessions == 1 else 0.3):
    journey.t += rng.randint(1 * _DAY, 4 * _DAY)
    journey.session()
    sessions += 1
  return _place(rng, world, journey.drafts)


def _place(rng: random.Random, world: World, drafts: list[Draft]) -> list[Draft]:
  drafts.sort(key=lambda d: d.t)
  span = drafts[-1].t - drafts[0].t if drafts else 0
  base = world.start_ms + rng.randrange(max(1, world.window_ms - span)) - (
      drafts[0].t if drafts else 0)
  end = world.start_ms + world.window_ms
  placed = []
  for draft in drafts:
    draft.t += base
    if draft.t < end:
      placed.append(draft)
  return placed


def pick_visitor(rng: random.Random, world: World,
                 devices: dict[int, Device]) -> tuple[Customer | None, Device]:
  """Who the next journey belongs to: an anonymous visitor, or a customer on a known or new device.

  `devices` (customer index -> last device) is updated in place.
  """
  if not world.customers or rng.random() < ANONYMOUS_JOURNEY_SHARE:
    return None, new_device(rng, None)
  index = _pick(rng, range(len(world.customers)), world.customer_cum)
  customer = world.customers[index]
  device = devices.get(index)
  if device is None or rng.random() < 0.3:
    device = devices[index] = new_device(rng, customer)
  return customer, device


def journey_drafts(rng: random.Random, world: World, count: int) -> Iterator[Draft]:
  """Exactly `count` drafts: whole journeys one after the other, the last one cut short."""
  devices: dict[int, Device] = {}
  produced = 0
  while produced < count:
    customer, device = pick_visitor(rng, world, devices)
    for draft in build_journey(rng, world, customer, device):
      yield draft
      produced += 1
      if produced == count:
        return


# ---- Stamping, serialising, corrupting ----------------------------------------------------------


def stamp(rng: random.Random, draft: Draft, late: bool = False) -> int:
  """Add the four Segment timestamps to the draft's payload; return the event time (ms).

  originalTimestamp and sentAt are device-clock times (skewed); receivedAt is the server's.
  `timestamp` is the skew-corrected time: receivedAt - (sentAt - originalTimestamp). A late event
  is sent (and received) 1 to 3 days after it happened.
  """
  delay = rng.randint(_DAY, 3 * _DAY - _MINUTE) if late else rng.randint(5, 1500)
  network = rng.randint(10, 400)
  original = draft.t + draft.skew
  sent = original + delay
  received = draft.t + delay + network
  event_time = received - (sent - original)
  keys = _SNAKE_KEYS if draft.snake_case else _CAMEL_KEYS
  payload = draft.payload
  payload['timestamp'] = iso_millis(event_time)
  payload[keys[3]] = iso_millis(original)
  payload[keys[4]] = iso_millis(sent)
  payload[keys[5]] = iso_millis(received)
  return event_time


def dumps(payload: Any) -> bytes:
  """Compact JSON, UTF-8, no ASCII escaping: the same bytes with or without orjson."""
  if orjson is not None:
    return orjson.dumps(payload)
  return json.dumps(payload, ensure_ascii=False, separators=(',', ':')).encode()


def corrupt(rng: random.Random, payload: dict, kind: str) -> dict:
  """A copy of a valid payload that breaks the input contract in the way `kind` names."""
  bad = dict(payload)
  if kind == 'missing_message_id':
    bad.pop('messageId', None)
    bad.pop('message_id', None)
  elif kind == 'missing_ids':
    for key in ('userId', 'user_id', 'anonymousId', 'anonymous_id'):
      bad.pop(key, None)
  elif kind == 'price_not_number':
    properties = dict(bad.get('properties') or {})
    price = properties.get('price')
    if not isinstance(price, (int, float)) and properties.get('products'):
      products = list(properties['products'])
      first = dict(products[0])
      first['price'] = format_cents(round(first['price'] * 100)).replace('.', ',')
      products[0] = first
      properties['products'] = products
    else:
      price = price if isinstance(price, (int, float)) else 12.99
      properties['price'] = format_cents(round(price * 100)).replace('.', ',')
    bad['properties'] = properties
  elif kind == 'bad_timestamp':
    bad['timestamp'] = rng.choice(('yesterday', '31/11/2026 10:00', 'NaN', ''))
  elif kind == 'track_without_event':
    bad['type'] = 'track'
    bad.pop('event', None)
    bad.pop('name', None)
  elif kind == 'unknown_type':
    # Not Segment call types (alias, screen and group are: docs/DATA_CONTRACT.md).
    bad['type'] = rng.choice(('screen2', 'alias2', 'Track', 'group2'))
  else:
    raise ValueError(f'unknown invalid kind {kind!r}')
  return bad


_NOT_JSON = (b'not json at all', b'<html><body><h1>502 Bad Gateway</h1></body></html>',
             b'type=track&event=Product+Viewed', b"{'type': 'track'}")
_ARRAYS = (b'[]', b'[1,2,3]', b'["track","Product Viewed"]', b'[{}]')
_NUMBERS = (b'42', b'-1', b'0', b'3.14', b'1e3')
_FALLBACK_SAMPLE = b'{"type":"track","event":"Product Viewed","properties":{"price":9.99}}'


def malformed_line(rng: random.Random, kind: str, sample: bytes | None) -> bytes:
  """A line that is not a JSON object; `sample` (a real event line) is cut up for some kinds."""
  sample = sample or _FALLBACK_SAMPLE
  if kind == 'truncated_json':
    return sample[:rng.randint(1, len(sample) - 1)]
  if kind == 'not_json':
    return rng.choice(_NOT_JSON)
  if kind == 'invalid_utf8':
    return b'\xff\xfe' + sample
  if kind == 'json_array':
    return rng.choice(_ARRAYS)
  if kind == 'json_number':
    return rng.choice(_NUMBERS)
  raise ValueError(f'unknown malformed kind {kind!r}')


# ---- Campaign ----------------------------------------------------------------------------------

DEFAULT_CAMPAIGN_ID = 'sample-campaign'
# What the treatment customers' mail clients and readers do (docs/ENGAGEMENT.md, "Sample
# campaigns"). Shares of treatment customers unless said otherwise.
APPLE_PRIVACY_SHARE = 0.40  # Apple Mail Privacy Protection: its proxy loads the pixel at delivery
IMAGE_PROXY_SHARE = 0.05    # of the others: a caching image proxy fetches it when they read
READ_SHARE = 0.25           # read the email (an MPP reader's own open is never seen: it is cached)
REOPEN_SHARE = 0.25         # of the readers whose opens are seen: open it once more
CLICK_SHARE = 0.22          # of the readers: follow a link
SCANNER_SHARE = 0.03        # a security gateway's link scanner follows a link at delivery
SEND_SPREAD_MS = 30 * _MINUTE  # the ESP delivers the whole send within this time of send_at
READ_MEAN_MS = 3 * _HOUR       # a reader opens this long after delivery on average (at most 72 h)
ORDER_MEAN_MS = 36 * _HOUR     # a campaign order follows delivery by this on average (cut at the
                               # attribution window)

_APPLE_PROXY_AGENT = 'Mozilla/5.0'  # what Apple's proxy sends (transforms/rules/machine.py)
_IMAGE_PROXY_AGENT = ('Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 '
                      '(via ggpht.com GoogleImageProxy)')
_SCANNER_AGENT = 'Mozilla/5.0 (compatible; Barracuda Sentinel (EE))'


@dataclasses.dataclass(frozen=True)
class Campaign:
  """One email campaign with a holdout, as the generator plays it.

  Every audience customer is assigned by `transforms.rules.holdout.Holdout(holdout_percent,
  holdout_salt)`: control customers get `Email Held Out`, treatment customers `Email Delivered`
  and then machine and human opens and clicks. Each customer orders within `attribution_days` of
  the send with probability `base_rate`, a treatment customer with `base_rate x (1 + lift)`
  (capped at 1): `lift` is the true relative lift a report should find. `customers`: the audience
  is the first that many generated customers (None: all of them).
  """
  campaign_id: str = DEFAULT_CAMPAIGN_ID
  holdout_percent: float = 10
  holdout_salt: str = holdout.DEFAULT_SALT
  base_rate: float = 0.05
  lift: float = 0.3
  attribution_days: int = 7
  customers: int | None = None

  def __post_init__(self):
    if not isinstance(self.campaign_id, str) or not self.campaign_id.strip():
      raise ValueError('--campaign-id must be a non-empty string')
    try:
      holdout.Holdout(self.holdout_percent, self.holdout_salt)
    except ValueError as err:
      raise ValueError(str(err).replace('--holdout_', '--campaign-holdout-')) from None
    if not 0 <= self.base_rate <= 1:
      raise ValueError(f'--campaign-base-rate must be between 0 and 1, got {self.base_rate}')
    if not (math.isfinite(self.lift) and self.lift >= -1):
      raise ValueError(f'--campaign-lift must be -1 or more, got {self.lift}')
    if (isinstance(self.attribution_days, bool) or not isinstance(self.attribution_days, int)
        or self.attribution_days < 1):
      raise ValueError(f'--campaign-attribution-days must be a whole number >= 1, got '
                       f'{self.attribution_days!r}')
    if self.customers is not None and self.customers < 0:
      raise ValueError(f'--campaign-customers must be >= 0, got {self.customers}')

  @property
  def split(self) -> holdout.Holdout:
    return holdout.Holdout(self.holdout_percent, self.holdout_salt)

  @property
  def treatment_rate(self) -> float:
    return min(1.0, self.base_rate * (1 + self.lift))

  def send_at(self, start: dt.datetime, days: float) -> dt.datetime:
    """When the generator sends: centred in the event window so that the attribution window fits
    in it (at the start when the event window is shorter)."""
    return start + dt.timedelta(days=max(0.0, days - self.attribution_days) / 2)


@functools.lru_cache(maxsize=1)
def _default_campaign_products() -> tuple[Product, ...]:
  return tuple(build_catalog(random.Random('campaign-products'), 60))


def campaign_events(rng: random.Random, customer_ids: Sequence[str],
                    start: str | dt.datetime, campaign: Campaign = Campaign(),
                    products: Sequence[Product] | None = None) -> Iterator[dict]:
  """The Segment events of `campaign` sent to `customer_ids` at `start`, customer by customer
  (each customer's in time order), stamped like every generated event.

  Pure apart from `rng`: the same rng state, ids and arguments give the same events. Orders are
  for `products` (default: a fixed 60-product catalog).
  """
  send_at = parse_time(start) if isinstance(start, str) else start.astimezone(dt.timezone.utc)
  for draft in _campaign_drafts(rng, customer_ids, to_millis(send_at), campaign,
                                products or _default_campaign_products()):
    stamp(rng, draft)
    yield draft.payload


def _campaign_drafts(rng: random.Random, customer_ids: Sequence[str], send_at_ms: int,
                     campaign: Campaign, products: Sequence[Product]) -> Iterator[Draft]:
  if not products:
    raise ValueError('a campaign needs at least one product to order')
  split = campaign.split
  window = campaign.attribution_days * _DAY
  for customer_id in customer_ids:
    delivered = send_at_ms + rng.randrange(SEND_SPREAD_MS)
    base = {'email_id': _hex_id(rng, 'em-', 64), 'campaign_id': campaign.campaign_id}
    if split.held_out(customer_id):
      rate = campaign.base_rate
      yield _server_draft(rng, delivered, 'Email Held Out', base, customer_id)
    else:
      rate = campaign.treatment_rate
      yield _server_draft(rng, delivered, 'Email Delivered',
                          {**base, 'campaign_name': 'Sample Campaign',
                           'email_subject': 'Picked for you this week'}, customer_id)
      yield from _engagement(rng, delivered, base, customer_id, products)
    if rng.random() < rate:
      # Strictly inside [delivery, delivery + window): stamping adds at most 400 ms of network.
      yield _campaign_order(rng, delivered + _MINUTE + _truncated_exponential(
          rng, ORDER_MEAN_MS, window - _MINUTE - _SECOND), customer_id, products)


def _truncated_exponential(rng: random.Random, mean: int, cap: int) -> int:
  """An exponential delay (ms) with `mean`, conditioned on being below `cap` (inverse CDF)."""
  u = rng.random()
  return min(cap - 1, int(-mean * math.log(1 - u * (1 - math.exp(-cap / mean)))))


def _server_draft(rng: random.Random, t: int, event: str, properties: dict,
                  user_id: str) -> Draft:
  """A call from a server (the ESP's webhooks, the connector, the order system): no clock skew."""
  return Draft(t, 0, False, {
      'type': 'track', 'event': event, 'messageId': f'{rng.getrandbits(128):032x}',
      'userId': user_id, 'properties': properties, 'context': {'library': _SERVER_LIBRARY},
      'integrations': _NO_INTEGRATIONS})


def _hit(rng: random.Random, t: int, event: str, base: dict, user_id: str, reason: str | None,
         agent: str, ip: str, link_url: str | None = None) -> Draft:
  """An open or a click as the tracking collector publishes it (collector/tracking.py)."""
  properties = {**base, 'machine': reason is not None, 'machine_reason': reason}
  if link_url is not None:
    properties['link_url'] = link_url
  return Draft(t, 0, False, {
      'type': 'track', 'event': event, 'messageId': f'{rng.getrandbits(128):032x}',
      'userId': user_id, 'properties': properties, 'context': {'ip': ip, 'userAgent': agent}})


def _public_ip(rng: random.Random, first: int | None = None) -> str:
  first = rng.randint(11, 223) if first is None else first
  return f'{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}'


def _engagement(rng: random.Random, delivered: int, base: dict, customer_id: str,
                products: Sequence[Product]) -> list[Draft]:
  """A treatment customer's opens and clicks, machines' and the reader's, in time order."""
  def link() -> str:
    product = products[rng.randrange(len(products))]
    return (f'{product.url}?utm_source=email&utm_medium=email&'
            f'utm_campaign={base["campaign_id"]}')

  drafts = []
  apple = rng.random() < APPLE_PRIVACY_SHARE
  if apple:
    drafts.append(_hit(rng, delivered + rng.randint(2 * _SECOND, 3 * _MINUTE), 'Email Opened',
                       base, customer_id, machine.APPLE_PRIVACY, _APPLE_PROXY_AGENT,
                       _public_ip(rng, 17)))
  proxied = not apple and rng.random() < IMAGE_PROXY_SHARE
  if rng.random() < SCANNER_SHARE:
    drafts.append(_hit(rng, delivered + rng.randint(_SECOND, 8 * _SECOND), 'Email Link Clicked',
                       base, customer_id, machine.SCANNER, _SCANNER_AGENT, _public_ip(rng),
                       link()))
  if rng.random() < READ_SHARE:
    # From 5 minutes on: a click is then never within the collector's fast-click window of the
    # email's first open, whichever hit that was.
    read = delivered + 5 * _MINUTE + _truncated_exponential(rng, READ_MEAN_MS, 72 * _HOUR)
    agent, ip = rng.choice(_USER_AGENTS), _public_ip(rng)
    if proxied:
      drafts.append(_hit(rng, read, 'Email Opened', base, customer_id, machine.IMAGE_PROXY,
                         _IMAGE_PROXY_AGENT, _public_ip(rng, 66)))
    elif not apple:
      drafts.append(_hit(rng, read, 'Email Opened', base, customer_id, None, agent, ip))
      if rng.random() < REOPEN_SHARE:
        drafts.append(_hit(rng, read + rng.randint(10 * _MINUTE, 24 * _HOUR), 'Email Opened',
                           base, customer_id, None, agent, ip))
    if rng.random() < CLICK_SHARE:
      drafts.append(_hit(rng, read + rng.randint(20 * _SECOND, 15 * _MINUTE),
                         'Email Link Clicked', base, customer_id, None, agent, ip, link()))
  drafts.sort(key=lambda d: d.t)
  return drafts


def _campaign_order(rng: random.Random, t: int, customer_id: str,
                    products: Sequence[Product]) -> Draft:
  """An `Order Completed` from the order system (E-commerce v2 properties)."""
  picked = rng.sample(range(len(products)), min(len(products), 1 if rng.random() < 0.7 else 2))
  items = [{'product_id': products[i].product_id, 'sku': products[i].sku,
            'name': products[i].name, 'price': products[i].price, 'quantity': 1,
            'category': products[i].category} for i in picked]
  revenue = sum(products[i].price_cents for i in picked)
  shipping, tax, total = order_amounts(revenue)
  return _server_draft(rng, t, 'Order Completed', {
      'order_id': _hex_id(rng, 'ord-'), 'total': total / 100, 'revenue': revenue / 100,
      'shipping': shipping / 100, 'tax': tax / 100, 'discount': 0.0, 'currency': CURRENCY,
      'products': items}, customer_id)


# ---- Plan and output ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """Exact numbers of each kind of line, derived from the requested total and shares."""
  lines: int
  valid: int
  duplicates: int
  malformed: int
  invalid: int
  late: int


def plan_counts(events: int, duplicate_share: float, malformed_share: float,
                invalid_share: float, late_share: float) -> Plan:
  """Split `events` lines: malformed and invalid are shares of all lines, duplicates and late
  are shares of the valid unique events."""
  for name, share in (('duplicate_share', duplicate_share), ('malformed_share', malformed_share),
                      ('invalid_share', invalid_share), ('late_share', late_share)):
    if not 0 <= share <= 1:
      raise ValueError(f'{name} must be between 0 and 1, got {share}')
  if malformed_share + invalid_share > 1:
    raise ValueError('malformed_share + invalid_share must be at most 1')
  if events < 0:
    raise ValueError(f'events must be >= 0, got {events}')
  malformed = round(events * malformed_share)
  invalid = min(round(events * invalid_share), events - malformed)
  rest = events - malformed - invalid
  duplicates = min(round(rest * duplicate_share / (1 + duplicate_share)), rest // 2)
  valid = rest - duplicates
  return Plan(lines=events, valid=valid, duplicates=duplicates, malformed=malformed,
              invalid=invalid, late=round(valid * late_share))


def shard_names(files: int) -> list[str]:
  return [f'events-{i:05d}-of-{files:05d}.ndjson.gz' for i in range(files)]


def _open_gzip(raw: Any, level: int) -> gzip.GzipFile:
  # No file name and mtime 0 in the header: the bytes depend on the content only.
  return gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0, compresslevel=level)


def write_csv(path: pathlib.Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
  with path.open('w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)


class _Tally:
  """Exact counts of what was written."""

  def __init__(self) -> None:
    self.valid = self.duplicates = self.malformed = self.invalid = self.late = 0
    self.snake_case = self.anonymous_only = 0
    self.kinds: dict[str, int] = {}
    self.event_names: dict[str, int] = {}
    self.types: dict[str, int] = {}
    self.user_ids: set[str] = set()
    self.anonymous_ids: set[str] = set()
    self.first: int | None = None
    self.last: int | None = None

  def add_valid(self, draft: Draft, event_time: int, late: bool) -> None:
    payload = draft.payload
    call_type = payload['type']
    name = payload['event'] if call_type == 'track' else call_type
    self.valid += 1
    self.late += late
    self.event_names[name] = self.event_names.get(name, 0) + 1
    self.types[call_type] = self.types.get(call_type, 0) + 1
    keys = _SNAKE_KEYS if draft.snake_case else _CAMEL_KEYS
    self.snake_case += draft.snake_case
    user_id = payload.get(keys[1])
    anonymous_id = payload.get(keys[2])
    if user_id:
      self.user_ids.add(user_id)
    else:
      self.anonymous_only += 1
    if anonymous_id:
      self.anonymous_ids.add(anonymous_id)
    if self.first is None or event_time < self.first:
      self.first = event_time
    if self.last is None or event_time > self.last:
      self.last = event_time

  def add_kind(self, kind: str) -> None:
    self.kinds[kind] = self.kinds.get(kind, 0) + 1


class _CampaignTally:
  """What the campaign wrote, for the manifest: its own events only (the report also counts the
  customers' other orders in the attribution window)."""

  def __init__(self, campaign: Campaign, send_at: int) -> None:
    self.campaign = campaign
    self.send_at = send_at
    self.events = 0
    self.event_names: dict[str, int] = {}
    self.treatment: set[str] = set()
    self.control: set[str] = set()
    self.converted: set[str] = set()
    self.orders = {'treatment': 0, 'control': 0}
    self.revenue_cents = {'treatment': 0, 'control': 0}
    self.machine_opens: set[str] = set()
    self.human_opens: set[str] = set()
    self.clicks: set[str] = set()

  def add(self, payload: dict) -> None:
    name, customer = payload['event'], payload['userId']
    properties = payload['properties']
    self.events += 1
    self.event_names[name] = self.event_names.get(name, 0) + 1
    if name == 'Email Delivered':
      self.treatment.add(customer)
    elif name == 'Email Held Out':
      self.control.add(customer)
    elif name == 'Order Completed':
      group = 'control' if customer in self.control else 'treatment'
      self.converted.add(customer)
      self.orders[group] += 1
      self.revenue_cents[group] += round(properties['total'] * 100)
    elif properties['machine']:
      if name == 'Email Opened':
        self.machine_opens.add(customer)
    else:
      (self.human_opens if name == 'Email Opened' else self.clicks).add(customer)

  def manifest(self) -> dict:
    campaign = self.campaign
    groups = {}
    for group, members in (('treatment', self.treatment), ('control', self.control)):
      groups[group] = {'customers': len(members), 'conversions': len(self.converted & members),
                       'orders': self.orders[group],
                       'revenue': format_cents(self.revenue_cents[group])}
    groups['treatment'].update(machine_opens=len(self.machine_opens),
                               human_opens=len(self.human_opens), clicks=len(self.clicks))
    return {'campaign_id': campaign.campaign_id, 'holdout_percent': campaign.holdout_percent,
            'holdout_salt': campaign.holdout_salt, 'base_rate': campaign.base_rate,
            'lift': campaign.lift, 'attribution_days': campaign.attribution_days,
            'send_at': iso_millis(self.send_at), 'events': self.events,
            'event_names': dict(sorted(self.event_names.items())), 'groups': groups}


def generate(out_dir: pathlib.Path, customers: int = 2000, products: int = 500,
             events: int = 50000, seed: int = 42, files: int = 4,
             duplicate_share: float = 0.02, malformed_share: float = 0.005,
             invalid_share: float = 0.01, late_share: float = 0.02,
             start: str | dt.datetime = DEFAULT_START, days: float = 14,
             compress_level: int = 6, campaign: Campaign | None = None) -> dict:
  """Write events shards, customers.csv, catalog.csv and manifest.json; return the manifest.

  With `campaign`, its events (`campaign_events`, sent to the campaign's audience at
  `Campaign.send_at`) are written too, on top of the `events` lines; the CLI sends one by
  default (`--no-campaign`), this function only when asked.
  """
  if files < 1:
    raise ValueError(f'files must be >= 1, got {files}')
  if customers < 0 or products < 1:
    raise ValueError('need customers >= 0 and products >= 1')
  if days <= 0:
    raise ValueError(f'days must be > 0, got {days}')
  days = int(days) if float(days).is_integer() else float(days)  # same manifest from CLI and API
  start_dt = parse_time(start) if isinstance(start, str) else start.astimezone(dt.timezone.utc)
  plan = plan_counts(events, duplicate_share, malformed_share, invalid_share, late_share)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  catalog = build_catalog(random.Random(f'{seed}:catalog'), products)
  people = build_customers(random.Random(f'{seed}:customers'), customers, start_dt)
  write_csv(out_dir / 'catalog.csv', CATALOG_HEADER, [p.row() for p in catalog])
  write_csv(out_dir / 'customers.csv', CUSTOMERS_HEADER, [c.row() for c in people])

  rng = random.Random(f'{seed}:events')
  world = build_world(rng, catalog, people, start_dt, days)
  names = shard_names(files)
  for stale in out_dir.glob('events-*-of-*.ndjson.gz'):
    if stale.name not in names:
      stale.unlink()
  tally = _Tally()
  lines = _lines(rng, world, plan, tally)
  campaign_tally = None
  if campaign is not None:
    # An ESP emails only customers who opted in (the CRM's email_opt_in).
    subscribed = [c for c in people if c.email_opt_in]
    audience = subscribed if campaign.customers is None else subscribed[:campaign.customers]
    send_at = to_millis(campaign.send_at(start_dt, days))
    campaign_tally = _CampaignTally(campaign, send_at)
    lines = itertools.chain(lines, _campaign_lines(
        random.Random(f'{seed}:campaign'), world, [c.customer_id for c in audience], send_at,
        campaign, tally, campaign_tally))
  lines_per_file = [0] * files
  with contextlib.ExitStack() as stack:
    shards = []
    for name in names:
      raw = stack.enter_context((out_dir / name).open('wb'))
      shards.append(stack.enter_context(_open_gzip(raw, compress_level)))
    # Compression runs on a thread (zlib releases the GIL) while the next chunk is generated.
    writer = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    pending: concurrent.futures.Future | None = None
    buffer: list[bytes] = []
    for line in lines:
      buffer.append(line)
      if len(buffer) >= _CHUNK_LINES:
        pending = _flush(rng, buffer, shards, lines_per_file, writer, pending)
    pending = _flush(rng, buffer, shards, lines_per_file, writer, pending)
    if pending is not None:
      pending.result()

  manifest = _manifest(plan, tally, names, lines_per_file,
                       0 if campaign_tally is None else campaign_tally.events, seed=seed,
                       customers=customers, products=products, events=events, files=files,
                       duplicate_share=duplicate_share, malformed_share=malformed_share,
                       invalid_share=invalid_share, late_share=late_share,
                       start=iso_millis(to_millis(start_dt)), days=days,
                       **({} if campaign is None else {'campaign': dataclasses.asdict(campaign)}))
  if campaign_tally is not None:
    manifest['campaign'] = campaign_tally.manifest()
  (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + '\n',
                                         encoding='utf-8')
  return manifest


def _lines(rng: random.Random, world: World, plan: Plan, tally: _Tally) -> Iterator[bytes]:
  """Every line to write, in generation order (journeys one after another).

  Which journey events become invalid, late or duplicated, and where malformed lines go, is
  decided by selection sampling, so each count comes out exactly as planned.
  """
  drafts = journey_drafts(rng, world, plan.valid + plan.invalid)
  slots_left = plan.valid + plan.invalid + plan.malformed
  malformed_left, invalid_left = plan.malformed, plan.invalid
  valid_left, late_left, duplicates_left = plan.valid, plan.late, plan.duplicates
  sample = None
  while slots_left:
    slots_left -= 1
    if rng.random() * (slots_left + 1) < malformed_left:
      malformed_left -= 1
      kind = rng.choice(MALFORMED_KINDS)
      tally.malformed += 1
      tally.add_kind(kind)
      yield malformed_line(rng, kind, sample)
      continue
    draft = next(drafts)
    if rng.random() * (valid_left + invalid_left) < invalid_left:
      invalid_left -= 1
      stamp(rng, draft)
      kind = rng.choice(INVALID_KINDS)
      tally.invalid += 1
      tally.add_kind(kind)
      yield dumps(corrupt(rng, draft.payload, kind))
      continue
    late = rng.random() * valid_left < late_left
    duplicate = rng.random() * valid_left < duplicates_left
    valid_left -= 1
    late_left -= late
    duplicates_left -= duplicate
    event_time = stamp(rng, draft, late)
    tally.add_valid(draft, event_time, late)
    sample = dumps(draft.payload)
    yield sample
    if duplicate:
      tally.duplicates += 1
      yield sample


def _campaign_lines(rng: random.Random, world: World, customer_ids: list[str], send_at: int,
                    campaign: Campaign, tally: _Tally,
                    campaign_tally: _CampaignTally) -> Iterator[bytes]:
  """The campaign's lines, counted as valid unique events; events that would fall after the
  event window are not written."""
  end = world.start_ms + world.window_ms
  for draft in _campaign_drafts(rng, customer_ids, send_at, campaign, world.products):
    event_time = stamp(rng, draft)
    if event_time >= end:
      continue
    tally.add_valid(draft, event_time, False)
    campaign_tally.add(draft.payload)
    yield dumps(draft.payload)


def deal(rng: random.Random, lines: list[bytes], lines_per_file: list[int]) -> list[bytes]:
  """Shuffle `lines` in place and deal them out round-robin, starting at the emptiest shard.

  Returns each shard's new content and adds the line counts to `lines_per_file`.
  """
  rng.shuffle(lines)
  files = len(lines_per_file)
  first = min(range(files), key=lambda i: (lines_per_file[i], i))
  parts = [b''] * files
  for offset in range(files):
    index = (first + offset) % files
    part = lines[offset::files]
    if part:
      parts[index] = b'\n'.join(part) + b'\n'
      lines_per_file[index] += len(part)
  return parts


def _write_parts(shards: list[gzip.GzipFile], parts: list[bytes]) -> None:
  for shard, part in zip(shards, parts):
    if part:
      shard.write(part)


def _flush(rng: random.Random, buffer: list[bytes], shards: list[gzip.GzipFile],
           lines_per_file: list[int], writer: concurrent.futures.Executor,
           pending: concurrent.futures.Future | None) -> concurrent.futures.Future | None:
  """Deal the buffered lines to the shards on the writer thread, after the previous chunk."""
  if not buffer:
    return pending
  parts = deal(rng, buffer, lines_per_file)
  buffer.clear()
  if pending is not None:
    pending.result()  # one chunk in flight at most; re-raises a write error
  return writer.submit(_write_parts, shards, parts)


def _manifest(plan: Plan, tally: _Tally, names: list[str], lines_per_file: list[int],
              campaign_lines: int = 0, **params: Any) -> dict:
  lines_total = tally.valid + tally.duplicates + tally.malformed + tally.invalid
  assert lines_total - campaign_lines == plan.lines, (lines_total, campaign_lines, plan)
  assert lines_total == sum(lines_per_file), (lines_total, lines_per_file)
  malformed_kinds = {k: tally.kinds[k] for k in sorted(tally.kinds) if k in MALFORMED_KINDS}
  invalid_kinds = {k: tally.kinds[k] for k in sorted(tally.kinds) if k in INVALID_KINDS}
  failure_types: dict[str, int] = {}
  for kind, count in sorted(tally.kinds.items()):
    failure_types[EXPECTED_FAILURE_TYPE[kind]] = failure_types.get(
        EXPECTED_FAILURE_TYPE[kind], 0) + count
  return {
      'generator': 'scripts.generate_data',
      'seed': params['seed'],
      'customers': params['customers'],
      'products': params['products'],
      'params': params,
      'lines_total': lines_total,
      'valid_unique': tally.valid,
      'duplicates': tally.duplicates,
      'malformed': tally.malformed,
      'invalid': tally.invalid,
      'bad_kinds': dict(sorted(tally.kinds.items())),
      'malformed_kinds': malformed_kinds,
      'invalid_kinds': invalid_kinds,
      'expected_failure_types': dict(sorted(failure_types.items())),
      'late': tally.late,
      'event_names': dict(sorted(tally.event_names.items())),
      'types': dict(sorted(tally.types.items())),
      'user_ids': len(tally.user_ids),
      'anonymous_ids': len(tally.anonymous_ids),
      'anonymous_only': tally.anonymous_only,
      'snake_case': tally.snake_case,
      'files': names,
      'lines_per_file': dict(zip(names, lines_per_file)),
      'start': None if tally.first is None else iso_millis(tally.first),
      'end': None if tally.last is None else iso_millis(tally.last),
  }


# ---- CLI ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m scripts.generate_data',
      description='Write deterministic sample events, customers, catalog and a manifest.')
  parser.add_argument('--out', required=True, type=pathlib.Path, help='output directory')
  parser.add_argument('--customers', type=int, default=2000)
  parser.add_argument('--products', type=int, default=500)
  parser.add_argument('--events', type=int, default=50000, help='lines to write, bad ones included')
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--files', type=int, default=4, help='number of events shards')
  parser.add_argument('--duplicate-share', type=float, default=0.02,
                      help='extra exact copies, as a share of valid events')
  parser.add_argument('--malformed-share', type=float, default=0.005,
                      help='lines that are not a JSON object, as a share of all lines')
  parser.add_argument('--invalid-share', type=float, default=0.01,
                      help='JSON objects that break the schema, as a share of all lines')
  parser.add_argument('--late-share', type=float, default=0.02,
                      help='valid events received 1-3 days late, as a share of valid events')
  parser.add_argument('--start', default=DEFAULT_START, help='start of the event time window')
  parser.add_argument('--days', type=float, default=14, help='length of the event time window')
  parser.add_argument('--compress-level', type=int, default=6, choices=range(0, 10),
                      metavar='0-9', help='gzip level (changes the bytes, not the content)')
  sample = parser.add_argument_group(
      'campaign', 'An email campaign with a holdout, on top of --events (docs/ENGAGEMENT.md, '
      '"Sample campaigns")')
  sample.add_argument('--no-campaign', dest='campaign', action='store_false',
                      help='write no campaign events')
  sample.add_argument('--campaign-id', default=DEFAULT_CAMPAIGN_ID,
                      help='properties.campaign_id of its events (default %(default)s)')
  sample.add_argument('--campaign-customers', type=int, default=None, metavar='N',
                      help='audience: the first N customers (default: all)')
  sample.add_argument('--campaign-holdout-percent', type=float, default=10,
                      help='percent held out (transforms.rules.holdout; default %(default)s)')
  sample.add_argument('--campaign-holdout-salt', default=holdout.DEFAULT_SALT,
                      help='holdout salt (default %(default)s)')
  sample.add_argument('--campaign-base-rate', type=float, default=0.05,
                      help='chance that a customer orders in the attribution window because of '
                           'the campaign send, without the email (default %(default)s)')
  sample.add_argument('--campaign-lift', type=float, default=0.3,
                      help='true relative lift: treatment orders at base rate x (1 + lift) '
                           '(default %(default)s)')
  sample.add_argument('--campaign-attribution-days', type=int, default=7,
                      help='orders fall within this many days of delivery (default %(default)s)')
  return parser


def _campaign(args: argparse.Namespace) -> Campaign | None:
  if not args.campaign:
    return None
  percent = float(args.campaign_holdout_percent)  # 10, not 10.0, in the manifest
  return Campaign(
      campaign_id=args.campaign_id, holdout_percent=int(percent) if percent.is_integer()
      else percent, holdout_salt=args.campaign_holdout_salt, base_rate=args.campaign_base_rate,
      lift=args.campaign_lift, attribution_days=args.campaign_attribution_days,
      customers=args.campaign_customers)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    campaign = _campaign(args)
    manifest = generate(
        args.out, customers=args.customers, products=args.products, events=args.events,
        seed=args.seed, files=args.files, duplicate_share=args.duplicate_share,
        malformed_share=args.malformed_share, invalid_share=args.invalid_share,
        late_share=args.late_share, start=args.start, days=args.days,
        compress_level=args.compress_level, campaign=campaign)
  except ValueError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  print(f"wrote {manifest['lines_total']} lines ({manifest['valid_unique']} valid unique, "
        f"{manifest['duplicates']} duplicates, {manifest['malformed']} malformed, "
        f"{manifest['invalid']} invalid, {manifest['late']} late) in {len(manifest['files'])} "
        f"files, {manifest['customers']} customers, {manifest['products']} products "
        f"to {args.out}")
  if 'campaign' in manifest:
    sent = manifest['campaign']
    print(f"  of which campaign {sent['campaign_id']!r}: {sent['events']} events, "
          f"{sent['groups']['treatment']['customers']} treatment and "
          f"{sent['groups']['control']['customers']} control customers, sent "
          f"{sent['send_at']}, true lift {sent['lift']:+.0%} on a base rate of "
          f"{sent['base_rate']:.1%}")
  return 0


if __name__ == '__main__':
  sys.exit(main())
