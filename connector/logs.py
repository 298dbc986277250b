"""Structured JSON logs (one object per line) for the connector."""
from __future__ import annotations

import logging
import time

import orjson

_STANDARD = set(vars(logging.LogRecord('', 0, '', 0, '', (), None))) | {'message', 'asctime'}


class JsonFormatter(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    entry = {'ts': time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))
                   + f'.{int(record.msecs):03d}Z',
             'level': record.levelname, 'logger': record.name, 'message': record.getMessage()}
    entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
    if record.exc_info:
      entry['exception'] = self.formatException(record.exc_info)
    return orjson.dumps(entry, default=str).decode()


def configure(level: int = logging.INFO) -> None:
  handler = logging.StreamHandler()
  handler.setFormatter(JsonFormatter())
  root = logging.getLogger()
  root.handlers[:] = [handler]
  root.setLevel(level)
