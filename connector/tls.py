"""TLS on the connector's and the collector's own listeners, for deployments without a
TLS-terminating proxy (docs/OPERATIONS.md, "Transport security and encryption keys").

A certificate chain and its private key, two PEM files given both or neither, are loaded once at
start-up into the server context the listener hands every connection: TLS 1.2 and 1.3 only, no
renegotiation, forward-secret AEAD suites only for TLS 1.2. Python's own
`ssl` module does the checking, not a second parser: what is checked is exactly what serves.
Every failure is a TlsError naming the setting at fault, so a service refuses to start with one
line instead of a traceback, or a listener that fails every handshake.

The collector imports this module as it imports connector.logs (both are plain Python, no Beam).
"""
from __future__ import annotations

import dataclasses
import re
import ssl

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites: forward-secret key exchange with an AEAD cipher only (Mozilla's "intermediate"
# list); Python's default would also take CBC suites. TLS 1.3's suites are all of that kind.
TLS12_CIPHERS = 'ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:@SECLEVEL=2'
# OpenSSL refuses the certificate itself under its security level (RSA under 2048 bits, SHA-1...).
_WEAK_CERTIFICATE = frozenset({'EE_KEY_TOO_SMALL', 'CA_KEY_TOO_SMALL', 'CA_MD_TOO_WEAK'})


class TlsError(ValueError):
  """A certificate or key setting is unusable; the message names the setting and the file."""


class _Passphrase(Exception):
  """Raised by the password callback: the key is encrypted. Without a callback OpenSSL would
  prompt on the terminal, and a service would hang at start-up."""


def _no_passphrase():
  raise _Passphrase()


@dataclasses.dataclass(frozen=True)
class Tls:
  """A listener's certificate chain and private key (PEM file paths), loaded and checked when
  built; `context` is the server context that serves them. `cert_setting` and `key_setting`
  name the settings the paths came from, for error messages."""
  cert_file: str
  key_file: str
  cert_setting: str = 'TLS_CERT_FILE'
  key_setting: str = 'TLS_KEY_FILE'
  context: ssl.SSLContext = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    object.__setattr__(self, 'context', server_context(
        self.cert_file, self.key_file, self.cert_setting, self.key_setting))


def from_settings(cert_file: str | None, key_file: str | None, cert_setting: str,
                  key_setting: str) -> Tls | None:
  """Both paths: a loaded Tls; neither: None (plain HTTP); one alone: TlsError."""
  if not cert_file and not key_file:
    return None
  if not cert_file or not key_file:
    given, missing = (cert_setting, key_setting) if cert_file else (key_setting, cert_setting)
    raise TlsError(f'{given} is set but {missing} is not: set both (the PEM certificate chain '
                   f'and its private key) to serve HTTPS, or neither for plain HTTP')
  return Tls(cert_file, key_file, cert_setting, key_setting)


def uvicorn_options(tls: Tls | None) -> dict:
  """Keyword arguments of uvicorn.Config (or uvicorn.run) that serve `tls`; none for plain
  HTTP. uvicorn's own ssl_certfile/ssl_keyfile would load the files a second time, without the
  minimum version and with a terminal prompt for an encrypted key."""
  if tls is None:
    return {}
  return {'ssl_context_factory': lambda config, default_factory: tls.context}


def server_context(cert_file: str, key_file: str, cert_setting: str = 'TLS_CERT_FILE',
                   key_setting: str = 'TLS_KEY_FILE') -> ssl.SSLContext:
  """The server context of a PEM certificate chain and its private key; TlsError naming the
  setting at fault when a file is unreadable, is not what it should be, or the key does not
  belong to the certificate."""
  _readable(cert_file, cert_setting)
  _readable(key_file, key_setting)
  try:
    # A throwaway context: does the file hold a certificate at all? (load_cert_chain's own error
    # for a bad file, "PEM lib", does not say which of the two files it was.)
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
  except ssl.SSLError as err:
    raise TlsError(f'{cert_setting} {cert_file} holds no PEM certificate ({_reason(err)})'
                   ) from None
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.minimum_version = MINIMUM_VERSION
  context.set_ciphers(TLS12_CIPHERS)
  context.options |= ssl.OP_NO_RENEGOTIATION
  try:
    context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
  except _Passphrase:
    raise TlsError(f'{key_setting} {key_file} is an encrypted private key: give it '
                   f'unencrypted (a mounted secret readable only by the service)') from None
  except ssl.SSLError as err:
    if err.reason == 'KEY_VALUES_MISMATCH':
      raise TlsError(f'{key_setting} {key_file} is not the private key of the certificate in '
                     f'{cert_setting} {cert_file}') from None
    if err.reason in _WEAK_CERTIFICATE:
      raise TlsError(f'{cert_setting} {cert_file} is refused as too weak ({_reason(err)}): use '
                     f'an RSA key of 2048+ bits or an EC key, signed with SHA-256 or better'
                     ) from None
    raise TlsError(f'{key_setting} {key_file} is not a PEM private key that can be loaded '
                   f'({_reason(err)})') from None
  return context


def _readable(path: str, setting: str) -> None:
  try:
    with open(path, 'rb') as file:
      empty = not file.read(1)
  except OSError as err:
    raise TlsError(f'{setting} {path} cannot be read: {err.strerror or err}') from None
  if empty:
    raise TlsError(f'{setting} {path} is empty')


def _reason(err: ssl.SSLError) -> str:
  """OpenSSL's reason for `err`, without the `(_ssl.c:NNNN)` of where Python raised it."""
  return err.reason or re.sub(r' \(_ssl\.c:\d+\)$', '', err.strerror or str(err))
