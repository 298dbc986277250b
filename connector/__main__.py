"""`python -m connector`: serve the send-time API (settings from the environment)."""
import gc
import sys

import uvicorn

from connector import logs, tls
from connector.app import create_app
from connector.config import ConfigError, Settings


def freeze_startup_objects() -> None:
  """Keep what start-up made out of every later garbage collection (gc.freeze).

  uvicorn and FastAPI leave a few reference cycles per request (uvicorn's RequestResponseCycle,
  FastAPI's AsyncExitStacks), so under load the collector's oldest generation runs every few
  seconds, and each run walked every object start-up made (the modules, the app, the client
  libraries) with the whole server stopped: the p99 tail docs/PERFORMANCE.md traces. The client
  libraries the app imports on first use are imported here first, so they are frozen too; then
  one collection, so start-up's own garbage is not kept.
  """
  import google.cloud.firestore  # noqa: F401  (DocumentStore imports it on its first lookup)
  import redis.asyncio  # noqa: F401  (RedisEntries imports it on its first lookup)
  gc.collect()
  gc.freeze()


def main() -> int:
  logs.configure()
  try:
    settings = Settings.from_env()
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  app = create_app(settings)
  freeze_startup_objects()
  # With CONNECTOR_TLS_CERT_FILE and _KEY_FILE the listener serves HTTPS (TLS 1.2+) itself.
  uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_config=None,
              **tls.uvicorn_options(settings.tls))
  return 0


if __name__ == '__main__':
  sys.exit(main())
