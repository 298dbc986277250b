"""Audience and computed-trait definitions on the command line (docs/AUDIENCES.md).

`python -m pipeline.audiences check FILE` reads a definitions file and reports every problem, one
line each, `FILE:LINE: KEY: MESSAGE` (`-` when no definition's key applies) on stderr, exiting
2; a good file gets a one-line summary on stdout and exit 0. The pipeline reads the same file
with the same `transforms.rules.audiences.definitions.load`, so a file `check` accepts is one
the job accepts.

`python -m pipeline.audiences preview FILE --events ... --customers ... --catalog ...` runs the
file over sample files as the batch job would and prints each audience's size and each trait's
distribution (docs/AUDIENCES.md, "Preview"). The rules are the job's own
(transforms/rules/audiences/preview.py); this module only reads the files and prints.

Exit codes: 0 the file is good (and previewed), 2 it is not (or cannot be read), or bad
arguments or input files.
"""
from __future__ import annotations

import argparse
import collections
import decimal
import sys
from typing import Callable, Iterator, Sequence

from transforms.rules.audiences import definitions

_DESCRIPTION = 'Check (and preview) audience and computed-trait definitions (docs/AUDIENCES.md).'
_CHECK_HELP = """\
Reads a definitions file (YAML, format version 1) and checks all of it: its structure, every
key, kind, event and within_days, and every CEL expression (compiled as the pipeline compiles
it, so a syntax error, an unknown variable or a traits.<key> that the file does not define is
found here). Each problem is printed on stderr as FILE:LINE: KEY: MESSAGE (KEY is - when none
applies) and the exit status is 2. A good file prints a one-line summary (how many traits and
audiences, the kinds used) and exits 0."""


def summary(source_name: str, parsed: definitions.Definitions) -> str:
  """`FILE: ok: 8 traits (count 3, sum 1), 6 audiences`: kinds in definitions.KINDS order."""
  kinds = collections.Counter(trait.kind for trait in parsed.traits)
  used = ', '.join(f'{kind} {kinds[kind]}' for kind in definitions.KINDS if kinds[kind])
  traits = f'{len(parsed.traits)} trait{"" if len(parsed.traits) == 1 else "s"}'
  audiences = f'{len(parsed.audiences)} audience{"" if len(parsed.audiences) == 1 else "s"}'
  return f'{source_name}: ok: {traits}' + (f' ({used})' if used else '') + f', {audiences}'


def loaded(path: str) -> definitions.Definitions | None:
  """The checked file, or None after printing every problem on stderr (as `check` does)."""
  try:
    return definitions.load(path)
  except definitions.DefinitionsError as err:
    for line in err.lines():
      print(line, file=sys.stderr)
    return None


def check(args: argparse.Namespace) -> int:
  parsed = loaded(args.file)
  if parsed is None:
    return 2
  print(summary(args.file, parsed))
  return 0


def _add_check(commands) -> None:
  parser = commands.add_parser('check', help='report every problem of a definitions file',
                               description=_CHECK_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('file', metavar='FILE', help='the definitions file (YAML)')
  parser.set_defaults(command=check)


_PREVIEW_HELP = """\
Runs a definitions file over sample files the way the batch job (python -m pipeline.run) would:
every line parsed and validated (invalid lines counted and dropped), one event per messageId,
anonymous events stitched to customers over the whole input, each customer folded with the
computed traits and rendered with the CRM and catalog at the reference time (--as_of, else the
newest event time), suppressed customers (consent) in no audience. Prints each audience's size
(customers, and share of the documents) and each trait's distribution: for numeric kinds how
many documents have a value and its min, median, p90 and max, for the others the top 5 values;
and how many values each trait skipped. A definitions file with problems prints them as check
does and exits 2. Progress goes to stderr every 100,000 lines."""
PROGRESS_EVERY = 100_000


class InputError(Exception):
  """An input file that cannot be used: the message says which and why (exit 2)."""


def _matched(pattern: str, option: str) -> list[str]:
  """The files of a pattern (local or gs://, as the job matches them), sorted."""
  from apache_beam.io.filesystem import BeamIOError
  from apache_beam.io.filesystems import FileSystems
  try:
    found = FileSystems.match([pattern])[0].metadata_list
  except (BeamIOError, OSError) as err:
    raise InputError(f'{option}: cannot match {pattern!r}: {err}') from None
  if not found:
    raise InputError(f'{option}: no file matches {pattern!r}')
  return sorted(metadata.path for metadata in found)


def event_payloads(paths: Sequence[str]) -> Iterator[tuple[bytes, str]]:
  """(payload, source) for every non-blank line (NDJSON, compressed by extension) or Avro record
  (a path ending in .avro) of the files, as the job's readers give them to the parser."""
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems

  from transforms import sources
  from transforms.rules import events
  from transforms.rules.source_tags import file_source
  for path in paths:
    source = file_source(path)
    if sources.is_avro_pattern(path):
      import fastavro
      with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for record in fastavro.reader(handle):
          yield events.avro_record_to_json(record), source
      continue
    with FileSystems.open(path) as handle:
      # The job's own line splitter (ReadEventFiles reads compressed files with it).
      for line in sources._lines(handle):  # pylint: disable=protected-access
        if line.strip():
          yield line, source


def reference_records(pattern: str, option: str, parse: Callable) -> tuple[dict, int]:
  """A CRM export or catalog read as the job reads it: ({id: record}, rows rejected)."""
  from apache_beam.io.filesystems import FileSystems

  from transforms.rules import reference
  from transforms.rules.dead_letters import Rejection
  by_id, rejected = {}, 0
  key = 'customer_id' if parse is reference.parse_customer else 'product_id'
  for path in _matched(pattern, option):
    try:
      with FileSystems.open(path) as handle:
        data = handle.read()
    except OSError as err:
      raise InputError(f'{option}: cannot read {path}: {err}') from None
    for _, record in reference.parse_records(path, data, parse):
      if isinstance(record, Rejection):
        rejected += 1
      else:
        by_id[record[key]] = record
  return by_id, rejected


def preview(args: argparse.Namespace) -> int:
  from transforms.rules import events, holdout, profile, reference
  from transforms.rules.audiences import preview as estimate
  from transforms.rules.audiences.evaluate import Evaluator

  parsed = loaded(args.file)
  if parsed is None:
    return 2
  try:
    settings = profile.Settings(
        cart_abandon_minutes=args.cart_abandon_minutes,
        vip_lifetime_value=decimal.Decimal(str(args.vip_lifetime_value)),
        holdout=holdout.Holdout(args.holdout_percent, args.holdout_salt),
        audiences=Evaluator(parsed))
    if args.max_message_bytes < 1:
      raise ValueError(f'--max_message_bytes must be at least 1, got {args.max_message_bytes}')
    as_of = None
    if args.as_of is not None:
      at = events.parse_time(args.as_of)
      if at is None:
        raise ValueError(f'--as_of is not an ISO-8601 time: {args.as_of!r}')
      import schemas
      as_of = schemas.datetime_to_micros(at)
    patterns = [p.strip() for p in args.events.split(',') if p.strip()]
    if not patterns:
      raise ValueError('--events needs at least one file pattern')
    paths = [path for pattern in patterns for path in _matched(pattern, '--events')]
    customers, customers_rejected = reference_records(args.customers, '--customers',
                                                      reference.parse_customer)
    catalog, catalog_rejected = reference_records(args.catalog, '--catalog',
                                                  reference.parse_product)
  except (ValueError, InputError) as err:
    print(f'preview: {err}', file=sys.stderr)
    return 2

  sample = estimate.Sample(args.max_message_bytes)
  for payload, source in event_payloads(paths):
    sample.add(payload, source)
    if sample.lines % PROGRESS_EVERY == 0:
      print(f'preview: {sample.lines:,} lines read, {sample.unique:,} unique events',
            file=sys.stderr, flush=True)
  if sample.lines >= PROGRESS_EVERY:
    files = f'{len(paths)} file{"" if len(paths) == 1 else "s"}'
    print(f'preview: {sample.lines:,} lines read from {files}; folding',
          file=sys.stderr, flush=True)
  report = estimate.estimate(sample, settings, customers, catalog, as_of,
                             {'customers': customers_rejected, 'catalog': catalog_rejected})
  if args.format == 'json':
    print(estimate.to_json(report))
  else:
    print(estimate.format_table(report, f'{args.file}: preview over {", ".join(patterns)}'))
  return 0


def _add_preview(commands) -> None:
  from transforms.rules import holdout
  from transforms.rules.events import DEFAULT_MAX_MESSAGE_BYTES
  parser = commands.add_parser(
      'preview', help='audience sizes and trait distributions over sample files',
      description=_PREVIEW_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('file', metavar='FILE', help='the definitions file (YAML)')
  parser.add_argument('--events', required=True, metavar='PATTERN[,PATTERN]',
                      help='comma-separated file patterns of events, as pipeline.run takes '
                           'them: NDJSON (.gz decompressed), or Avro for patterns ending .avro')
  parser.add_argument('--customers', required=True, metavar='CSV',
                      help='the CRM export (CSV with a header, or NDJSON)')
  parser.add_argument('--catalog', required=True, metavar='CSV',
                      help='the product catalog (CSV with a header, or NDJSON)')
  parser.add_argument('--as_of', default=None, metavar='ISO',
                      help='the reference time (ISO-8601); default: the newest event time, as '
                           'the batch job')
  parser.add_argument('--format', choices=('table', 'json'), default='table',
                      help='table for people (default), json for scripts')
  job = parser.add_argument_group(
      "the job's settings", 'give the values the job runs with (the same options and defaults '
      'as python -m pipeline.run): cart.abandoned, segment and holdout depend on them')
  job.add_argument('--cart_abandon_minutes', type=float, default=60,
                   help='a cart unchanged this long is abandoned (default 60)')
  job.add_argument('--vip_lifetime_value', type=float, default=500,
                   help='lifetime order value that makes a vip (default 500)')
  job.add_argument('--holdout_percent', type=float, default=0,
                   help='share of customers in the global holdout group (default 0: off)')
  job.add_argument('--holdout_salt', default=holdout.DEFAULT_SALT,
                   help=f'salt of the holdout assignment (default {holdout.DEFAULT_SALT})')
  job.add_argument('--max_message_bytes', type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                   help=f'larger events are invalid (default {DEFAULT_MAX_MESSAGE_BYTES})')
  parser.set_defaults(command=preview)


def build_parser() -> argparse.ArgumentParser:
  """One subcommand per action, each setting `command` to the function that runs it."""
  parser = argparse.ArgumentParser(prog='python -m pipeline.audiences', description=_DESCRIPTION)
  commands = parser.add_subparsers(title='commands', metavar='COMMAND', required=True)
  _add_check(commands)
  _add_preview(commands)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return args.command(args)


if __name__ == '__main__':
  sys.exit(main())
