"""`python -m connector`: serve the send-time API (settings from the environment)."""
import sys

import uvicorn

from connector import logs, tls
from connector.app import create_app
from connector.config import ConfigError, Settings


def main() -> int:
  logs.configure()
  try:
    settings = Settings.from_env()
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  # With CONNECTOR_TLS_CERT_FILE and _KEY_FILE the listener serves HTTPS (TLS 1.2+) itself.
  uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False,
              log_config=None, **tls.uvicorn_options(settings.tls))
  return 0


if __name__ == '__main__':
  sys.exit(main())
