"""The definitions file of computed traits and audiences (docs/AUDIENCES.md, "The definitions
file"): YAML, format version 1, read and checked as a whole. Pure, no Beam.

`load(path)` or `parse(text, source_name)` gives `Definitions`, or raises `DefinitionsError` with
every problem of the file (its line, the definition's key, what is wrong), so one run of `python
-m pipeline.audiences check` shows them all. Lines come from PyYAML's node marks: the file is
composed (SafeLoader only) into nodes and walked, each value constructed on its own, so a
problem names the line of the value that has it. Expressions are compiled here, once
(transforms.rules.audiences.expressions); a compile error's line is the YAML line of the
expression plus the line within it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import pathlib
import re
from typing import Any, Iterator

import yaml

from transforms.rules.audiences import expressions
from transforms.rules.audiences.expressions import Compiled, ExpressionError
# The kinds of computed trait, from the module that computes them (docs/AUDIENCES.md,
# "Semantics").
from transforms.rules.audiences.traits import KINDS

VERSION = 1
KEY_PATTERN = re.compile(r'[a-z][a-z0-9_]{0,62}')
MAX_TRAITS = 100
MAX_AUDIENCES = 100
# Refused before parsing: a definitions file is a few kilobytes, and a cap bounds what YAML's
# aliases can expand into.
MAX_FILE_BYTES = 1_000_000

TOP_LEVEL_KEYS = ('version', 'traits', 'audiences')
TRAIT_KEYS = ('key', 'kind', 'event', 'where', 'value', 'within_days')
AUDIENCE_KEYS = ('key', 'when', 'description')


@dataclasses.dataclass(frozen=True)
class TraitDefinition:
  """A computed trait: `kind` over the `value` of the customer's events named `event` that pass
  `where`, only those newer than the reference time less `within_days` when given. `line` is the
  entry's line in the file."""
  key: str
  kind: str
  event: str
  where: Compiled | None
  value: Compiled | None
  within_days: float | None
  line: int


@dataclasses.dataclass(frozen=True)
class AudienceDefinition:
  """An audience: the customers whose document (and traits) make `when` true."""
  key: str
  when: Compiled
  description: str | None
  line: int


@dataclasses.dataclass(frozen=True)
class Definitions:
  """A checked file's traits and audiences, each in file order. Pickles (expressions compile
  again on unpickling), so it can travel to workers as a transform's argument."""
  traits: tuple[TraitDefinition, ...]
  audiences: tuple[AudienceDefinition, ...]


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong with a file: `line` 1-based (None: the file as a whole), `key` the
  definition's key (None when it has none or the problem is not a definition's)."""
  line: int | None
  key: str | None
  message: str

  def format(self, source_name: str) -> str:
    """`FILE:LINE: KEY: MESSAGE` (`-` for no key), or `FILE: MESSAGE` for the whole file."""
    if self.line is None:
      return f'{source_name}: {self.message}'
    return f'{source_name}:{self.line}: {self.key or "-"}: {self.message}'


class DefinitionsError(ValueError):
  """A file that cannot be used: `problems` lists all of them, in line order."""

  def __init__(self, source_name: str, problems: list[Problem]):
    self.source_name = source_name
    self.problems = tuple(problems)
    super().__init__('\n'.join(self.lines()))

  def lines(self) -> list[str]:
    return [problem.format(self.source_name) for problem in self.problems]


def load(path: str | pathlib.Path) -> Definitions:
  """Reads and checks the definitions file at `path`; DefinitionsError also when it cannot be
  read, is over MAX_FILE_BYTES or is not UTF-8."""
  name = str(path)
  try:
    with open(path, 'rb') as f:
      data = f.read(MAX_FILE_BYTES + 1)
  except OSError as err:
    problem = Problem(None, None, f'cannot read the file: {err.strerror or err}')
    raise DefinitionsError(name, [problem]) from None
  return from_bytes(data, name)


def from_bytes(data: bytes, name: str) -> Definitions:
  """Checks a definitions file's bytes (read by the caller: the pipeline reads local and gs://
  paths through Beam's FileSystems); DefinitionsError when over MAX_FILE_BYTES, not UTF-8 or
  bad."""
  if len(data) > MAX_FILE_BYTES:
    raise DefinitionsError(name, [_too_large()])
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as err:
    line = data[:err.start].count(b'\n') + 1
    raise DefinitionsError(name, [Problem(line, None, 'the file is not UTF-8 text')]) from None
  return parse(text, name)


def parse(text: str, source_name: str = '<definitions>') -> Definitions:
  """Checks `text` as a definitions file; DefinitionsError with every problem."""
  if len(text.encode('utf-8', 'surrogatepass')) > MAX_FILE_BYTES:
    raise DefinitionsError(source_name, [_too_large()])
  checker = _Checker(text)
  definitions = checker.run()
  if checker.problems:
    problems = sorted(checker.problems, key=lambda p: -1 if p.line is None else p.line)
    raise DefinitionsError(source_name, problems)
  return definitions


def _too_large() -> Problem:
  return Problem(None, None, f'the file is over {MAX_FILE_BYTES:,} bytes (a definitions file is '
                 'a few kilobytes; refused before parsing)')


def _valid_key(key: Any) -> bool:
  return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


def _line(node: yaml.Node) -> int:
  return node.start_mark.line + 1


def _kind_of(value: Any) -> str:
  if value is None:
    return 'nothing (null)'
  if isinstance(value, bool):
    return f'a boolean ({str(value).lower()})'
  if isinstance(value, (int, float)):
    return f'a number ({value})'
  if isinstance(value, str):
    return f'the text {value!r}'
  if isinstance(value, list):
    return 'a list'
  if isinstance(value, dict):
    return 'a mapping'
  return f'a {type(value).__name__}'


def _quote(keys: tuple[str, ...]) -> str:
  return ', '.join(keys)


class _Checker:
  """Walks the composed nodes once, collecting problems and building the definitions."""

  def __init__(self, text: str):
    self.text = text
    self.loader: yaml.SafeLoader | None = None
    self.problems: list[Problem] = []
    self.seen_entries = 0
    self.defined_trait_keys: set[str] = set()  # also of traits with other problems

  def problem(self, line: int | None, key: str | None, message: str) -> None:
    self.problems.append(Problem(line, key, message))

  def run(self) -> Definitions | None:
    try:
      self.loader = yaml.SafeLoader(self.text)
      root = self.loader.get_single_node()
    except yaml.reader.ReaderError as err:
      line = self.text[:err.position].count('\n') + 1
      code = err.character if isinstance(err.character, int) else ord(err.character)
      self.problem(line, None, f'not valid YAML: the character U+{code:04X} is not allowed '
                   'in YAML')
      return None
    except yaml.MarkedYAMLError as err:
      mark = err.problem_mark or err.context_mark
      context = err.context or ''
      if context and err.context_mark is not None and err.problem_mark is not None and (
          err.context_mark.line != err.problem_mark.line):
        context += f' (line {err.context_mark.line + 1})'
      message = ' '.join(part for part in (context, err.problem) if part)
      self.problem(mark.line + 1 if mark else 1, None, f'not valid YAML: {message}')
      return None
    except yaml.YAMLError as err:
      self.problem(1, None, f'not valid YAML: {err}')
      return None
    except RecursionError:
      self.problem(1, None, 'not valid YAML here: it nests too deeply to read')
      return None
    finally:
      if self.loader is not None:
        self.loader.dispose()
    if root is None:
      self.problem(1, None, 'the file is empty: it needs `version: 1` and traits or audiences')
      return None
    if not isinstance(root, yaml.MappingNode):
      self.problem(_line(root), None, 'the file must be a mapping with `version: 1`, '
                   '`traits:` and `audiences:`')
      return None
    entries = self.mapping(root, None, TOP_LEVEL_KEYS, 'at the top level')
    if 'version' not in entries:
      self.problem(_line(root), None, f'`version: {VERSION}` is missing (the format version)')
    else:
      node = entries['version']
      version = self.value(node, None)
      if version is not _INVALID and (type(version) is not int or version != VERSION):
        self.problem(_line(node), None, f'version must be {VERSION} (the only format version), '
                     f'not {_kind_of(version)}')
    traits = tuple(self.entries(entries.get('traits'), 'traits', MAX_TRAITS, self.trait))
    audiences = tuple(self.entries(entries.get('audiences'), 'audiences', MAX_AUDIENCES,
                                   self.audience))
    sections = [entries.get(name) for name in ('traits', 'audiences')]
    if not self.seen_entries and all(node is None or isinstance(node, yaml.SequenceNode)
                                     for node in sections):
      self.problem(_line(root), None, 'no definitions: give at least one trait or audience')
    return Definitions(tuple(t for t in traits if t is not None),
                       tuple(a for a in audiences if a is not None))

  # -- nodes

  def value(self, node: yaml.Node, key: str | None) -> Any:
    """The node's constructed value, or _INVALID (with a problem) when YAML cannot build it."""
    try:
      return self.loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as err:
      hint = ''
      if node.tag.startswith('!') and not node.tag.startswith('!!'):
        hint = ': a value starting with ! is a YAML tag, so quote it (\'!...\')'
      self.problem(_line(node), key, f'{err.problem}{hint}')
    except RecursionError:
      self.problem(_line(node), key, 'the value nests too deeply')
    return _INVALID

  def describe(self, node: yaml.Node) -> str:
    """What a node holds, for a message; a list or mapping is not built (it may be an alias's
    expansion)."""
    if isinstance(node, yaml.SequenceNode):
      return 'a list'
    if isinstance(node, yaml.MappingNode):
      return 'a mapping'
    value = self.value(node, None)
    return 'an unreadable value' if value is _INVALID else _kind_of(value)

  def mapping(self, node: yaml.MappingNode, key: str | None, allowed: tuple[str, ...],
              where: str) -> dict[str, yaml.Node]:
    """The mapping's entries by key; a problem for each unknown or repeated key."""
    entries: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
      name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
      if name not in allowed:
        shown = repr(name) if name is not None else 'a non-text key'
        self.problem(_line(key_node), key,
                     f'unknown key {shown} {where} (known: {_quote(allowed)})')
      elif name in entries:
        self.problem(_line(key_node), key, f'{name!r} is given twice (first on line '
                     f'{_line(entries[name])})')
      else:
        entries[name] = value_node
    return entries

  def entries(self, node: yaml.Node | None, section: str, limit: int, build) -> Iterator:
    if node is None:
      return
    if not isinstance(node, yaml.SequenceNode):
      self.problem(_line(node), None, f'{section} must be a list of definitions (each '
                   f'starting with "- key: ..."), not {self.describe(node)}')
      return
    if len(node.value) > limit:
      self.problem(_line(node.value[limit]), None, f'more than {limit} {section} '
                   f'({len(node.value)}): a file holds at most {limit}')
    first_line: dict[str, int] = {}
    for entry in node.value:
      self.seen_entries += 1
      if not isinstance(entry, yaml.MappingNode):
        self.problem(_line(entry), None, f'an entry of {section} must be a mapping (key: ..., '
                     f'...), not {self.describe(entry)}')
        continue
      key = self.key(entry, section)
      label = key if isinstance(key, str) else None
      if _valid_key(key):
        if key in first_line:
          self.problem(_line(entry), key, f'duplicate key {key!r} among {section}: first '
                       f'defined on line {first_line[key]}')
          key = None
        else:
          first_line[key] = _line(entry)
      yield build(entry, key, label)

  def key(self, entry: yaml.MappingNode, section: str) -> Any:
    """The entry's key as written (a problem when it is missing or malformed); None then,
    except for text, which still labels the entry's other problems."""
    for key_node, value_node in entry.value:
      if isinstance(key_node, yaml.ScalarNode) and key_node.value == 'key':
        key = self.value(value_node, None)
        label = key if isinstance(key, str) else None
        if key is _INVALID:
          return None
        if not _valid_key(key):
          self.problem(_line(value_node), label, 'key must match [a-z][a-z0-9_]{0,62} (lower '
                       'case letters, digits and _, starting with a letter, at most 63), not '
                       f'{_kind_of(key)}')
        return key
    self.problem(_line(entry), None, f'key is missing (every entry of {section} needs one)')
    return None

  # -- definitions

  def trait(self, entry: yaml.MappingNode, key: Any, label: str | None
            ) -> TraitDefinition | None:
    count = len(self.problems)
    fields = self.mapping(entry, label, TRAIT_KEYS, 'in a trait')
    if _valid_key(key):
      self.defined_trait_keys.add(key)
    kind = None
    if 'kind' not in fields:
      self.problem(_line(entry), label, f'kind is missing (one of {_quote(KINDS)})')
    else:
      kind = self.value(fields['kind'], label)
      if kind is not _INVALID and kind not in KINDS:
        self.problem(_line(fields['kind']), label,
                     f'unknown kind {_kind_of(kind)}: one of {_quote(KINDS)}')
        kind = None
    event = None
    if 'event' not in fields:
      self.problem(_line(entry), label, 'event is missing (a track event name such as '
                   '"Product Viewed", or identify, page, screen)')
    else:
      event = self.value(fields['event'], label)
      if event is not _INVALID and (not isinstance(event, str) or not event.strip()):
        self.problem(_line(fields['event']), label, 'event must be a non-empty event name (a '
                     f'track event name, or identify, page, screen), not {_kind_of(event)}')
    where = self.expression(fields.get('where'), 'where', label, expressions.compile_event,
                            expressions.EVENT_VARIABLES)
    value = None
    if kind == 'count':
      if 'value' in fields:
        self.problem(_line(fields['value']), label, 'value is not allowed for kind count (it '
                     'counts matching events): remove it, or pick another kind')
    elif 'value' not in fields:
      if kind is not None and kind is not _INVALID:
        self.problem(_line(entry), label, f'value is missing: kind {kind} needs a value (CEL '
                     'over the event, e.g. properties.total)')
    else:
      value = self.expression(fields['value'], 'value', label, expressions.compile_event,
                              expressions.EVENT_VARIABLES)
    within_days = None
    if 'within_days' in fields:
      node = fields['within_days']
      days = self.value(node, label)
      if days is not _INVALID:
        if (isinstance(days, bool) or not isinstance(days, (int, float)) or
            not math.isfinite(days) or days <= 0):
          self.problem(_line(node), label,
                       f'within_days must be a positive number of days, not {_kind_of(days)}')
        else:
          within_days = float(days)
    if len(self.problems) > count or not _valid_key(key):
      return None
    return TraitDefinition(key, kind, event, where, value, within_days, _line(entry))

  def audience(self, entry: yaml.MappingNode, key: Any, label: str | None
               ) -> AudienceDefinition | None:
    # Every trait key the file defines, also of traits with other problems: an audience naming
    # one of those is not wrong for that.
    trait_keys = self.defined_trait_keys
    count = len(self.problems)
    fields = self.mapping(entry, label, AUDIENCE_KEYS, 'in an audience')
    when = None
    if 'when' not in fields:
      self.problem(_line(entry), label, 'when is missing (CEL over the document, e.g. '
                   'cart.abandoned && cart.value > 100)')
    else:
      when = self.expression(fields['when'], 'when', label, expressions.compile_document,
                             expressions.document_variables())
      if when is not None:
        for name, line, column in trait_references(when.source):
          if name not in trait_keys:
            at = _position(fields['when'], line)
            close = difflib.get_close_matches(name, sorted(trait_keys), n=1)
            hint = f': did you mean traits.{close[0]}?' if close else (
                '' if trait_keys else ': it defines no traits')
            self.problem(at, label, f'when: column {column}: traits.{name} is not a trait of '
                         f'this file{hint}')
    description = None
    if 'description' in fields:
      description = self.value(fields['description'], label)
      if description is not _INVALID and not isinstance(description, str):
        self.problem(_line(fields['description']), label,
                     f'description must be text, not {_kind_of(description)}')
    if len(self.problems) > count or not _valid_key(key):
      return None
    return AudienceDefinition(key, when, description, _line(entry))

  def expression(self, node: yaml.Node | None, field: str, label: str | None, compile_,
                 variables: tuple[str, ...]) -> Compiled | None:
    if node is None:
      return None
    source = self.value(node, label)
    if source is _INVALID:
      return None
    if not isinstance(source, str):
      self.problem(_line(node), label, f'{field} must be a CEL expression in text, not '
                   f'{_kind_of(source)} (quote it: {field}: \'...\')')
      return None
    try:
      # Without the newline a block scalar (|) ends with, an error at the end of the
      # expression is on its last line, not on the line after it.
      return compile_(source.rstrip())
    except ExpressionError as err:
      message, column = err.message, err.column
      if message.startswith('undeclared reference'):
        column = _name_start(source, message, err.line, column)
        message += f' (variables: {_quote(variables)})'
      if err.line is None:
        self.problem(_line(node), label, f'{field}: {message}')
      else:
        self.problem(_position(node, err.line), label, f'{field}: column {column}: {message}')
      return None


_UNDECLARED = re.compile(r"undeclared reference to '([A-Za-z0-9_.]+)'")


def _name_start(source: str, message: str, line: int | None, column: int | None) -> int | None:
  """Where an undeclared dotted name starts. CEL points at its last `.` (`trait.games_views`:
  column 6); the name's first character (column 1) is where a reader looks."""
  found = _UNDECLARED.match(message)
  if found is None or line is None or column is None or '.' not in found.group(1):
    return column
  name = found.group(1)
  start = column - 1 - len(name.rsplit('.', 1)[0])
  lines = source.split('\n')
  text = lines[line - 1] if line <= len(lines) else ''
  return start + 1 if start >= 0 and text[start:start + len(name)] == name else column


def _position(node: yaml.ScalarNode, line: int) -> int:
  """The file line of line `line` (1-based) of the expression in `node`. A block scalar (| or >)
  starts on the line after its indicator; a quoted or plain one where it stands (YAML folds a
  multi-line plain or quoted scalar into one line, so its later lines count from the first)."""
  start = _line(node)
  return start + line if node.style in ('|', '>') else start + line - 1


# CEL's string literals (skipped: `"traits.x"` is no reference) and the tokens around a name.
_TOKEN = re.compile(
    r"(?P<string>[rRbB]{0,2}(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"
    r"\"(?:\\.|[^\"\\\n])*\"))|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[.\[\]])|\s+|.",
    re.DOTALL)


def trait_references(source: str) -> list[tuple[str, int, int]]:
  """The trait keys `source` reads as `traits.<key>` or `traits["<key>"]`, with the line and
  column (1-based, within the source) of each. Not a field `x.traits`, nor text in a string
  literal. A computed index (`traits[name]`) is not followed."""
  tokens = [t for t in _TOKEN.finditer(source) if not t.group().isspace()]
  found = []
  for i, token in enumerate(tokens):
    if token.group('name') != 'traits' or (i and tokens[i - 1].group() == '.'):
      continue
    following = tokens[i + 1:i + 4]
    if len(following) >= 2 and following[0].group() == '.' and following[1].group('name'):
      name = following[1].group()
    elif (len(following) == 3 and following[0].group() == '[' and following[2].group() == ']'
          and _plain_string(following[1].group('string'))):
      name = following[1].group()[1:-1]
    else:
      continue
    before = source[:token.start()]
    found.append((name, before.count('\n') + 1, token.start() - (before.rfind('\n') + 1) + 1))
  return found


def _plain_string(literal: str | None) -> bool:
  """A one-quoted literal without escapes or prefix, whose text is its value."""
  return (literal is not None and len(literal) >= 2 and literal[0] in '\'"' and
          literal[-1] == literal[0] and '\\' not in literal and not literal.startswith(('"""',
                                                                                        "'''")))


class _Invalid:
  def __repr__(self):
    return '<invalid>'


_INVALID = _Invalid()
