"""CEL expressions of audience and trait definitions: compiled once, evaluated per event or per
document (docs/AUDIENCES.md, "Expressions"). Pure, no Beam.

The runtime is `cel-expr-python`, Google's C++ CEL implementation, chosen for speed (a two-clause
filter over a dict in a few microseconds; docs/PERFORMANCE.md). Every variable is declared `dyn`:
events and documents are JSON-like, so a field's type is known only at evaluation, and the
checker still refuses unknown variables and syntax errors, with their position, at compile time.

Absent fields: CEL reports reading a missing key (or comparing null with a number) as an error
value, not false. A definition's boolean (`where`, `when`) that evaluates to an error or to
anything but a bool counts as false, and a `value` that errors counts as no value: "a field that
is absent or null makes a comparison false rather than an error". `has(properties.price)` tests
for a field explicitly. CEL compares int with double as numbers (`properties.price < 5` holds for 3
and 3.5); money (Decimal) enters as a double, times as CEL timestamps.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
from typing import Any, Iterable, Mapping

from cel_expr_python import cel
from google.protobuf import timestamp_pb2

import schemas

# What a `where` or `value` sees of an event, and a `when` of a document (every served field of
# the serving document, and `traits`).
EVENT_VARIABLES = ('type', 'name', 'properties', 'product', 'traits', 'timestamp')
PRODUCT_FIELDS = ('product_id', 'name', 'category', 'brand', 'price', 'in_stock')
MAX_EXPRESSION_CHARS = 4096
# `<input>:LINE:COLUMN: message` in the runtime's compile errors.
_POSITION = re.compile(r'<input>:(\d+):(\d+): (.*)')
# CEL's standard environment owns the identifier `type` (the type of types, as in
# `type(x) == int`), so no variable can take that name. The definitions' `type` (the call type)
# is declared as TYPE_VARIABLE, and `_rename_type` rewrites the bare identifier to it. A tokenizer
# of CEL's string literals and identifiers is all that takes; the runtime offers no hook for it.
TYPE_VARIABLE = 'type_'
_TOKEN = re.compile(
    r"(?P<string>[rRbB]{0,2}(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"
    r"\"(?:\\.|[^\"\\\n])*\"))|(?P<name>[A-Za-z_][A-Za-z0-9_]*)", re.DOTALL)


class ExpressionError(ValueError):
  """An expression that does not compile: `message` says why, `line` and `column` (1-based,
  within the expression) where, when the runtime says."""

  def __init__(self, message: str, line: int | None = None, column: int | None = None):
    super().__init__(message if line is None else f'{message} (line {line}, column {column})')
    self.message, self.line, self.column = message, line, column


def document_variables() -> tuple[str, ...]:
  return tuple(dict.fromkeys((*schemas.served_document_fields(), 'traits')))


@dataclasses.dataclass(frozen=True)
class Compiled:
  """One compiled expression, its source and the variables it was compiled over."""
  source: str
  variables: tuple[str, ...]
  program: Any = dataclasses.field(repr=False, compare=False)

  def test(self, activation: Mapping[str, Any]) -> bool:
    """True only when the expression evaluates to the boolean true."""
    result = self.program.eval(data=activation)
    return result.type() == cel.Type.BOOL and result.value() is True

  def value(self, activation: Mapping[str, Any]) -> Any:
    """The expression's value as plain Python (None for null or an error: no value)."""
    result = self.program.eval(data=activation)
    if result.type() == cel.Type.ERROR:
      return None
    return result.plain_value()

  def __reduce__(self):  # compiled programs do not pickle: a worker compiles again
    return (compile_expression, (self.source, self.variables))


_ENVS: dict[tuple[str, ...], Any] = {}


def _env(variables: tuple[str, ...]):
  env = _ENVS.get(variables)
  if env is None:
    env = _ENVS[variables] = cel.NewEnv(variables={name: cel.Type.DYN for name in variables})
  return env


def compile_expression(source: Any, variables: Iterable[str]) -> Compiled:
  """Compiles `source` over `variables` (each `dyn`); ExpressionError says what is wrong."""
  if not isinstance(source, str) or not source.strip():
    raise ExpressionError('an expression must be non-empty text')
  if len(source) > MAX_EXPRESSION_CHARS:
    raise ExpressionError(f'an expression is at most {MAX_EXPRESSION_CHARS} characters')
  variables = tuple(variables)
  declared = tuple(TYPE_VARIABLE if v == 'type' else v for v in variables)
  text, inserted = _rename_type(source) if 'type' in variables else (source, [])
  try:
    program = _env(declared).compile(text)
  except RuntimeError as err:
    raise _compile_error(str(err), source, text, inserted) from None
  return Compiled(source, variables, program)


def compile_event(source: Any) -> Compiled:
  """A `where` or `value`: over EVENT_VARIABLES."""
  return compile_expression(source, EVENT_VARIABLES)


def compile_document(source: Any) -> Compiled:
  """An audience's `when`: over the document's served fields and `traits`."""
  return compile_expression(source, document_variables())


def _rename_type(source: str) -> tuple[str, list[int]]:
  """`source` with each bare identifier `type` (not a field `.type`, not the call `type(x)`)
  renamed TYPE_VARIABLE, and where each rename added its character (offsets in the result)."""
  out, inserted, last = [], [], 0
  for token in _TOKEN.finditer(source):
    if token.group('name') != 'type':
      continue
    before = source[:token.start()].rstrip()
    after = source[token.end():].lstrip()
    if before.endswith('.') or after.startswith('('):
      continue
    out.append(source[last:token.end()])
    inserted.append(sum(map(len, out)))
    out.append(TYPE_VARIABLE[len('type'):])
    last = token.end()
  out.append(source[last:])
  return ''.join(out), inserted


def _compile_error(error: str, source: str, text: str, inserted: list[int]) -> ExpressionError:
  """The runtime's error about `text` (`source` with `type` renamed, `inserted` where) as an
  ExpressionError positioned in `source`."""
  found = _POSITION.search(error)
  if found is None:
    return ExpressionError(error.strip().splitlines()[0] if error.strip() else 'does not compile')
  message = found.group(3).split('\n')[0].strip().replace(" (in container '')", '')
  message = re.sub(rf'\b{TYPE_VARIABLE}\b', 'type', message)
  line, column = int(found.group(1)), int(found.group(2))
  # The position in the source as written: less the characters renames added before it.
  lines = text.split('\n')
  offset = sum(len(l) + 1 for l in lines[:line - 1]) + column - 1
  offset -= sum(1 for at in inserted if at < offset)
  before = source[:offset]
  return ExpressionError(message, before.count('\n') + 1, offset - (before.rfind('\n') + 1) + 1)


def plain(value: Any) -> Any:
  """A record's value as CEL takes it: Decimal as a float, datetimes as timestamps, containers copied
  with the same conversion; other JSON values as they are."""
  if isinstance(value, decimal.Decimal):
    return float(value)
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  if isinstance(value, dt.datetime):
    return _timestamp(value)
  return value


def _timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
  """A time as CEL takes it in a `dyn` variable: the runtime turns a protobuf Timestamp into a
  CEL timestamp, but refuses a datetime unless the variable itself is declared a timestamp."""
  stamp = timestamp_pb2.Timestamp()
  stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc))
  return stamp


def event_activation(event: Mapping[str, Any], name: str,
                     catalog_product: Mapping[str, Any] | None = None) -> dict:
  """The variables a `where` or `value` sees for one event record (transforms.rules.events):
  `type`, `name` (what the event is counted under: transforms.rules.profile.event_name),
  `properties`, `traits`, `timestamp` (its event time), and `product`: the catalog's product the
  event names, else the event's own product fields."""
  properties = event.get('properties') if isinstance(event.get('properties'), dict) else {}
  traits = event.get('traits') if isinstance(event.get('traits'), dict) else {}
  if catalog_product is not None:
    product = {field: catalog_product.get(field) for field in PRODUCT_FIELDS}
  else:
    product = {field: properties.get(field) for field in PRODUCT_FIELDS}
    product['product_id'] = event.get('product_id')
    if event.get('price') is not None:
      product['price'] = event['price']
  return {TYPE_VARIABLE: event.get('type'), 'name': name, 'properties': plain(properties),
          'traits': plain(traits), 'product': plain(product),
          'timestamp': _micros_timestamp(event['event_time'])}


def _micros_timestamp(micros: int) -> timestamp_pb2.Timestamp:
  stamp = timestamp_pb2.Timestamp()
  stamp.FromMicroseconds(micros)
  return stamp


def document_activation(document: Mapping[str, Any], traits: Mapping[str, Any]) -> dict:
  """The variables a `when` sees: every served field of the document (null when absent) and
  `traits` (trait key -> value; an absent trait is simply not in the map)."""
  activation = {name: plain(document.get(name)) for name in document_variables()}
  activation['traits'] = plain(dict(traits))
  return activation
