"""Flex-template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): launches the streaming job and returns.

The Dataflow launcher runs this file as a script with the template's parameters as `--name=value`
plus its own options (`--project`, `--region`, `--staging_location`, `--template_location`, ...).
It differs from `python -m pipeline.run` in three ways, all specific to the template:

- It does not wait. The launcher needs the program to exit once the graph is handed over (Dataflow's
  docs: do not call `wait_until_finish`); `pipeline.run` waits to print the run summary, and under
  `--template_location` the runner writes a job description instead of starting a job, so there
  is no job to wait for or to read counters from.
- The template is the streaming job (`"streaming": true` in metadata.json), so `--streaming` is
  added, and the runner defaults to DataflowRunner.
- A template parameter always has a value, while the job's on/off options are argparse flags
  (`--skip_table_setup`): `--flag=true` becomes `--flag`, `--flag=false` is dropped.

Everything else (option checks, table set-up, the graph) is `pipeline.run.launch`, unchanged.
"""
from __future__ import annotations

import argparse
import logging
import sys

from apache_beam.options.pipeline_options import StandardOptions

from pipeline import run
from pipeline.options import PersonalizationOptions

_log = logging.getLogger('templates.main')
TRUE_VALUES = ('true', 'yes', '1')
FALSE_VALUES = ('false', 'no', '0', '')


def flag_options() -> set[str]:
  """Names of the on/off options (argparse store_true) of the job and of `--streaming`."""
  parser = argparse.ArgumentParser(add_help=False)
  PersonalizationOptions._add_argparse_args(parser)
  StandardOptions._add_argparse_args(parser)
  return {action.dest for action in parser._actions if action.nargs == 0 and action.const is True}


def _has(args: list[str], name: str) -> bool:
  return any(a == f'--{name}' or a.startswith(f'--{name}=') for a in args)


def flex_template_args(argv: list[str]) -> list[str]:
  """The launcher's arguments as `pipeline.run` takes them (see the module docstring)."""
  flags = flag_options()
  args = []
  for arg in argv:
    name, sep, value = arg[2:].partition('=') if arg.startswith('--') else ('', '', '')
    if sep and name in flags:
      if value.lower() in TRUE_VALUES:
        args.append(f'--{name}')
        continue
      if value.lower() in FALSE_VALUES:
        continue
    args.append(arg)
  if not _has(args, 'streaming'):
    args.append('--streaming')
  if not _has(args, 'runner'):
    args.append('--runner=DataflowRunner')
  return args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '-h' in argv or '--help' in argv:
    print(run.help_text())
    return 0
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  try:
    run.launch(flex_template_args(argv))
  except run.UsageError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  _log.info('the job graph is handed to the runner; the launcher does not wait for the job')
  return 0


if __name__ == '__main__':
  sys.exit(main())
