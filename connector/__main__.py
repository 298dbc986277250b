"""`python -m connector`: serve the send-time API (settings from the environment)."""
import sys

import uvicorn

from connector import logs
from connector.app import create_app
from connector.config import ConfigError, Settings


def main() -> int:
  logs.configure()
  try:
    settings = Settings.from_env()
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False,
              log_config=None)
  return 0


if __name__ == '__main__':
  sys.exit(main())
