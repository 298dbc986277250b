"""TLS on the connector's and the collector's listeners (connector/tls.py): the server context
a certificate and key make, the versions it speaks (in-memory handshakes with Python's own client,
no sockets), and the start-up errors of each service's settings, each naming the variable.

`certificate()` makes self-signed certificates for the tests here and in
tests/integration/test_tls.py (the `cryptography` package, already a dependency of google-auth).
"""
import dataclasses
import datetime as dt
import ipaddress
import os
import pathlib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector import __main__ as collector_main
from collector.config import ConfigError as CollectorConfigError
from collector.config import Settings as CollectorSettings
from connector import __main__ as connector_main
from connector import tls
from connector.config import ConfigError as ConnectorConfigError
from connector.config import Settings as ConnectorSettings


@dataclasses.dataclass(frozen=True)
class Certificate:
  cert_file: str
  key_file: str


def certificate(directory: pathlib.Path, name: str = 'server', passphrase: bytes | None = None
                ) -> Certificate:
  """A self-signed EC certificate for localhost and 127.0.0.1, valid for a day, and its key (PEM
  files in `directory`; the key encrypted with `passphrase` if given)."""
  key = ec.generate_private_key(ec.SECP256R1())
  subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')])
  now = dt.datetime.now(dt.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.SubjectAlternativeName([
              x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
              critical=False)
          .sign(key, hashes.SHA256()))
  encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                else serialization.NoEncryption())
  cert_file, key_file = directory / f'{name}.crt', directory / f'{name}.key'
  cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
  key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8, encryption))
  return Certificate(str(cert_file), str(key_file))


def client_context(cert: Certificate, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
  """A client that trusts only `cert` (hostname checked), at most TLS `maximum`."""
  context = ssl.create_default_context(cafile=cert.cert_file)
  if maximum is not None:
    context.maximum_version = maximum
  return context


def legacy_client(cert: Certificate) -> ssl.SSLContext:
  """A client that offers TLS 1.0 and 1.1 only (OpenSSL allows them at security level 0)."""
  context = client_context(cert, ssl.TLSVersion.TLSv1_1)
  context.minimum_version = ssl.TLSVersion.TLSv1
  context.set_ciphers('DEFAULT:@SECLEVEL=0')
  return context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
  """A TLS handshake between the two contexts through memory buffers; the version agreed.
  Raises ssl.SSLError when either side refuses."""
  server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
  server_side = server.wrap_bio(server_in, server_out, server_side=True)
  client_side = client.wrap_bio(client_in, client_out, server_hostname='localhost')
  done = set()
  for _ in range(20):
    for side in (client_side, server_side):
      if side not in done:
        try:
          side.do_handshake()
          done.add(side)
        except ssl.SSLWantReadError:
          pass
    server_in.write(client_out.read())
    client_in.write(server_out.read())
    if len(done) == 2:
      return client_side.version()
  raise AssertionError('the handshake made no progress')


def legacy_tls_possible(cert: Certificate) -> bool:
  """Whether this machine's OpenSSL can speak TLS 1.1 at all: a server that allows it accepts
  the legacy client. Without that, refusing the legacy client would prove nothing."""
  permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  permissive.load_cert_chain(cert.cert_file, cert.key_file)
  permissive.minimum_version = ssl.TLSVersion.TLSv1
  permissive.set_ciphers('DEFAULT:@SECLEVEL=0')
  try:
    return handshake(permissive, legacy_client(cert)) == 'TLSv1.1'
  except ssl.SSLError:
    return False


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
  directory = tmp_path_factory.mktemp('certs')
  return {'good': certificate(directory, 'good'), 'other': certificate(directory, 'other'),
          'encrypted': certificate(directory, 'encrypted', passphrase=b'secret-passphrase'),
          'dir': directory}


# --- the server context ---------------------------------------------------------------------------

def test_a_certificate_and_its_key_serve_tls_1_3_and_1_2(certs):
  good = certs['good']
  context = tls.Tls(good.cert_file, good.key_file).context
  assert context.minimum_version == ssl.TLSVersion.TLSv1_2
  assert handshake(context, client_context(good)) == 'TLSv1.3'
  assert handshake(context, client_context(good, ssl.TLSVersion.TLSv1_2)) == 'TLSv1.2'


def test_tls_1_1_and_older_are_refused(certs):
  good = certs['good']
  if not legacy_tls_possible(good):
    pytest.skip("this machine's OpenSSL cannot speak TLS 1.1 at all: nothing to refuse")
  with pytest.raises(ssl.SSLError, match='UNSUPPORTED_PROTOCOL|unsupported protocol'):
    handshake(tls.Tls(good.cert_file, good.key_file).context, legacy_client(good))


def test_tls_1_2_takes_forward_secret_aead_suites_only(certs):
  good = certs['good']
  context = tls.Tls(good.cert_file, good.key_file).context
  cbc = client_context(good, ssl.TLSVersion.TLSv1_2)
  cbc.set_ciphers('ECDHE-ECDSA-AES128-SHA256')
  default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the control: Python's defaults take it
  default.load_cert_chain(good.cert_file, good.key_file)
  assert handshake(default, cbc) == 'TLSv1.2'
  with pytest.raises(ssl.SSLError, match='NO_SHARED_CIPHER|no shared cipher'):
    handshake(context, cbc)
  names = {c['name'] for c in context.get_ciphers() if c['protocol'] == 'TLSv1.2'}
  assert names and all(('GCM' in n or 'CHACHA20' in n) and n.startswith(('ECDHE-', 'DHE-'))
                       for n in names), names


def test_a_client_that_does_not_trust_the_certificate_fails_the_handshake(certs):
  # The same code path a real client takes; the integration tests rely on it failing.
  context = tls.Tls(certs['good'].cert_file, certs['good'].key_file).context
  with pytest.raises(ssl.SSLCertVerificationError):
    handshake(context, client_context(certs['other']))


def test_uvicorn_gets_the_loaded_context_and_plain_http_gets_nothing(certs):
  loaded = tls.Tls(certs['good'].cert_file, certs['good'].key_file)
  factory = tls.uvicorn_options(loaded)['ssl_context_factory']
  assert factory(None, None) is loaded.context
  assert tls.uvicorn_options(None) == {}


# --- start-up errors ------------------------------------------------------------------------------

def test_both_or_neither(certs):
  good = certs['good']
  assert tls.from_settings(None, None, 'C', 'K') is None
  assert tls.from_settings(good.cert_file, good.key_file, 'C', 'K').cert_file == good.cert_file
  with pytest.raises(tls.TlsError, match=r'^C is set but K is not: set both'):
    tls.from_settings(good.cert_file, None, 'C', 'K')
  with pytest.raises(tls.TlsError, match=r'^K is set but C is not: set both'):
    tls.from_settings(None, good.key_file, 'C', 'K')


def bad_pairs(certs) -> dict:
  """What goes wrong -> ((cert file, key file), the setting the message must start with, words
  it must hold)."""
  good, other, directory = certs['good'], certs['other'], certs['dir']
  garbage = directory / 'garbage.pem'
  garbage.write_text('not a certificate\n')
  empty = directory / 'empty.pem'
  empty.write_text('')
  missing = str(directory / 'missing.pem')
  return {
      'missing certificate': ((missing, good.key_file), 'CERT', 'cannot be read'),
      'missing key': ((good.cert_file, missing), 'KEY', 'cannot be read'),
      'certificate is a directory': ((str(directory), good.key_file), 'CERT', 'cannot be read'),
      'empty key': ((good.cert_file, str(empty)), 'KEY', 'is empty'),
      'garbage certificate': ((str(garbage), good.key_file), 'CERT', 'holds no PEM certificate'),
      'key given as certificate': ((good.key_file, good.key_file), 'CERT',
                                   'holds no PEM certificate'),
      'garbage key': ((good.cert_file, str(garbage)), 'KEY', 'is not a PEM private key'),
      'certificate given as key': ((good.cert_file, good.cert_file), 'KEY',
                                   'is not a PEM private key'),
      'key of another certificate': ((good.cert_file, other.key_file), 'KEY',
                                     'is not the private key of the certificate in CERT'),
      'encrypted key': ((certs['encrypted'].cert_file, certs['encrypted'].key_file), 'KEY',
                        'is an encrypted private key'),
  }


@pytest.mark.parametrize('what', ['missing certificate', 'missing key',
                                  'certificate is a directory', 'empty key',
                                  'garbage certificate', 'key given as certificate', 'garbage key',
                                  'certificate given as key', 'key of another certificate',
                                  'encrypted key'])
def test_each_bad_file_is_an_error_naming_its_setting(certs, what):
  (cert_file, key_file), setting, words = bad_pairs(certs)[what]
  with pytest.raises(tls.TlsError) as raised:
    tls.from_settings(cert_file, key_file, 'CERT', 'KEY')
  message = str(raised.value)
  assert message.startswith(f'{setting} ') and words in message, message
  assert '_ssl.c' not in message


def test_a_weak_certificate_names_the_certificate(tmp_path):
  from cryptography.hazmat.primitives.asymmetric import rsa
  key = rsa.generate_private_key(65537, 1024)
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')])
  now = dt.datetime.now(dt.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
  (tmp_path / 'weak.crt').write_bytes(cert.public_bytes(serialization.Encoding.PEM))
  (tmp_path / 'weak.key').write_bytes(key.private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
      serialization.NoEncryption()))
  with pytest.raises(tls.TlsError, match=r'^CERT .*weak\.crt is refused as too weak'):
    tls.from_settings(str(tmp_path / 'weak.crt'), str(tmp_path / 'weak.key'), 'CERT', 'KEY')


# --- the services' settings -----------------------------------------------------------------------

CONNECTOR_ENV = {'CONNECTOR_PROJECT': 'demo-local', 'CONNECTOR_API_KEYS': 'k' * 20}
COLLECTOR_ENV = {'COLLECTOR_PROJECT': 'demo-local', 'COLLECTOR_TOPIC': 'events',
                 'COLLECTOR_WRITE_KEYS': 'wk_test_1:web'}


def test_the_connector_serves_tls_with_both_files_and_plain_http_with_neither(certs):
  good = certs['good']
  settings = ConnectorSettings.from_env({**CONNECTOR_ENV, 'CONNECTOR_TLS_CERT_FILE': good.cert_file,
                                         'CONNECTOR_TLS_KEY_FILE': good.key_file})
  assert settings.tls.cert_file == good.cert_file and settings.tls.key_file == good.key_file
  assert ConnectorSettings.from_env(CONNECTOR_ENV).tls is None


def test_the_collector_takes_the_files_from_the_environment_or_its_flags(certs):
  good, other = certs['good'], certs['other']
  env = {**COLLECTOR_ENV, 'COLLECTOR_TLS_CERT_FILE': other.cert_file,
         'COLLECTOR_TLS_KEY_FILE': other.key_file}
  assert CollectorSettings.from_sources([], env).tls.cert_file == other.cert_file
  flags = ['--tls-cert-file', good.cert_file, '--tls-key-file', good.key_file]
  assert CollectorSettings.from_sources(flags, env).tls.key_file == good.key_file
  assert CollectorSettings.from_sources([], COLLECTOR_ENV).tls is None


@pytest.mark.parametrize('what', ['missing key', 'garbage certificate',
                                  'key of another certificate', 'encrypted key'])
def test_bad_tls_settings_are_config_errors_naming_the_variables(certs, what):
  (cert_file, key_file), setting, words = bad_pairs(certs)[what]
  for prefix, build, error in (
      ('CONNECTOR', lambda env: ConnectorSettings.from_env({**CONNECTOR_ENV, **env}),
       ConnectorConfigError),
      ('COLLECTOR', lambda env: CollectorSettings.from_sources([], {**COLLECTOR_ENV, **env}),
       CollectorConfigError)):
    with pytest.raises(error) as raised:
      build({f'{prefix}_TLS_CERT_FILE': cert_file, f'{prefix}_TLS_KEY_FILE': key_file})
    message = str(raised.value)
    assert message.startswith(f'{prefix}_TLS_{setting}_FILE '), message
    assert words.replace('CERT', f'{prefix}_TLS_CERT_FILE') in message, message
  with pytest.raises(ConnectorConfigError, match='CONNECTOR_TLS_KEY_FILE is set but '
                                                 'CONNECTOR_TLS_CERT_FILE is not'):
    ConnectorSettings.from_env({**CONNECTOR_ENV, 'CONNECTOR_TLS_KEY_FILE': key_file})


def test_each_service_exits_2_with_one_line_naming_the_variable(certs, monkeypatch, capsys):
  # main() as `python -m` runs it: the error is printed before any server starts.
  good, other = certs['good'], certs['other']
  for name in [n for n in os.environ if n.startswith(('CONNECTOR_', 'COLLECTOR_'))]:
    monkeypatch.delenv(name)
  for name, value in {**CONNECTOR_ENV, 'CONNECTOR_TLS_CERT_FILE': good.cert_file,
                      'CONNECTOR_TLS_KEY_FILE': other.key_file}.items():
    monkeypatch.setenv(name, value)
  assert connector_main.main() == 2
  err = capsys.readouterr().err
  assert err.startswith('error: CONNECTOR_TLS_KEY_FILE ') and err.count('\n') == 1, err
  assert collector_main.main(['--project', 'demo-local', '--topic', 'events', '--write-keys',
                              'wk_test_1:web', '--tls-cert-file', good.cert_file]) == 2
  err = capsys.readouterr().err
  assert err == ('error: COLLECTOR_TLS_CERT_FILE is set but COLLECTOR_TLS_KEY_FILE is not: set '
                 'both (the PEM certificate chain and its private key) to serve HTTPS, or '
                 'neither for plain HTTP\n')
