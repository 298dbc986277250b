"""The HTTP protocol the collector serves with: uvicorn's httptools protocol plus a deadline on
request headers.

uvicorn bounds the idle time between keep-alive requests but not the time a client takes to send
a request's headers: a connection that opens and never finishes its headers stays open forever,
and a few hundred of them hold every slot of `COLLECTOR_MAX_CONCURRENCY` (everyone else gets 503).
Here the headers of each request must arrive within the deadline from its first byte (or from
the connection's opening, for the first request); past it the connection is closed.
"""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def with_header_deadline(seconds: float) -> type[HttpToolsProtocol]:
  """An HttpToolsProtocol class whose connections close when a request's headers take longer
  than `seconds`."""

  class HeaderDeadlineProtocol(HttpToolsProtocol):
    _header_timer = None

    def _arm(self):
      self._disarm()
      self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

    def _disarm(self):
      if self._header_timer is not None:
        self._header_timer.cancel()
        self._header_timer = None

    def _headers_too_slow(self):
      self._header_timer = None
      if not self.transport.is_closing():
        self.transport.close()

    def connection_made(self, transport):
      super().connection_made(transport)
      self._arm()

    def connection_lost(self, exc):
      self._disarm()
      super().connection_lost(exc)

    def on_message_begin(self):
      super().on_message_begin()
      self._arm()

    def on_headers_complete(self):
      self._disarm()
      super().on_headers_complete()

  return HeaderDeadlineProtocol
