"""`python -m collector`: serve the tracking API (settings: `python -m collector --help`)."""
from __future__ import annotations

import gc
import logging
import signal
import sys

import uvicorn

from collector.app import Collector
from collector.config import ConfigError, KeyRing, Settings
from collector.server import with_header_deadline
from connector import logs, tls


def main(argv=None) -> int:
  logs.configure()
  try:
    settings = Settings.from_sources(argv)
    keys = KeyRing.from_settings(settings)
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  app = Collector(settings, keys)
  server = uvicorn.Server(uvicorn.Config(
      app, host=settings.host, port=settings.port, lifespan='on', access_log=False,
      log_config=None, loop='uvloop', server_header=False,
      # httptools, with each request's headers due within the body timeout (collector/server.py).
      http=with_header_deadline(settings.body_timeout_seconds),
      # X-Forwarded-For is believed only as COLLECTOR_TRUSTED_PROXIES says (events.client_ip);
      # uvicorn's own proxy handling would rewrite the peer first, trusting 127.0.0.1 (or
      # FORWARDED_ALLOW_IPS) behind the collector's back.
      proxy_headers=False,
      # No WebSocket: with a WebSocket library installed, uvicorn would hand an Upgrade request
      # to the app as a `websocket` scope, which it does not serve, and answer 500.
      ws='none',
      limit_concurrency=settings.max_concurrency,
      # SIGTERM: uvicorn stops accepting and waits for requests in flight (each waits at most
      # for its body and its publish), then the lifespan shutdown flushes the Pub/Sub client.
      timeout_graceful_shutdown=int(settings.body_timeout_seconds
                                    + settings.publish_timeout_seconds) + 5,
      # With COLLECTOR_TLS_CERT_FILE and _KEY_FILE: HTTPS (TLS 1.2+) on the listener itself.
      **tls.uvicorn_options(settings.tls)))
  # uvicorn re-raises the signal it shut down for once it is done; a SIGTERM that ended in a
  # clean shutdown then exits 0 instead of dying by the signal.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  signal.signal(signal.SIGHUP, lambda *_: keys.reload())
  logging.getLogger('collector').info('collector starting', extra={
      'host': settings.host, 'port': settings.port, 'topic': settings.topic_path,
      'tls': settings.tls is not None})
  # What is loaded by now lives as long as the process. Frozen, it is left out of the garbage
  # collector's full passes, which otherwise walk it all and stalled the event loop for up to
  # 56 ms at a time under load (docs/PERFORMANCE.md, "Collector").
  gc.collect()
  gc.freeze()
  server.run()
  return 0


if __name__ == '__main__':
  sys.exit(main())
