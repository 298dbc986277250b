"""Audience and computed-trait definitions on the command line (docs/AUDIENCES.md).

`python -m pipeline.audiences check FILE` reads a definitions file and reports every problem, one
line each, `FILE:LINE: KEY: MESSAGE` (`-` when no definition's key applies) on stderr, exiting
2; a good file gets a one-line summary on stdout and exit 0. The pipeline reads the same file
with the same `transforms.rules.audiences.definitions.load`, so a file `check` accepts is one
the job accepts.

Exit codes: 0 the file is good, 2 it is not (or cannot be read), or bad arguments.
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import Sequence

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


def check(args: argparse.Namespace) -> int:
  try:
    parsed = definitions.load(args.file)
  except definitions.DefinitionsError as err:
    for line in err.lines():
      print(line, file=sys.stderr)
    return 2
  print(summary(args.file, parsed))
  return 0


def _add_check(commands) -> None:
  parser = commands.add_parser('check', help='report every problem of a definitions file',
                               description=_CHECK_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('file', metavar='FILE', help='the definitions file (YAML)')
  parser.set_defaults(command=check)


def build_parser() -> argparse.ArgumentParser:
  """One subcommand per action, each setting `command` to the function that runs it."""
  parser = argparse.ArgumentParser(prog='python -m pipeline.audiences', description=_DESCRIPTION)
  commands = parser.add_subparsers(title='commands', metavar='COMMAND', required=True)
  _add_check(commands)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return args.command(args)


if __name__ == '__main__':
  sys.exit(main())
