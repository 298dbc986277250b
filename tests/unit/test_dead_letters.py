import hashlib

from transforms.rules import dead_letters


def test_text_payload_is_kept_readable():
  record = dead_letters.dead_letter('invalid_json', 'bad', 'ParseEvents', b'{oops', 'file:x', 7,
                                    {'origin': 'web'})
  assert record == {'failure_type': 'invalid_json', 'error_message': 'bad', 'step': 'ParseEvents',
                    'payload': '{oops', 'payload_encoding': 'utf-8', 'attributes': {'origin': 'web'},
                    'source': 'file:x', 'failed_at': 7}


def test_invalid_utf8_is_kept_losslessly_as_base64():
  payload = b'\xff\xfe{"type":"track"}\x00'
  record = dead_letters.dead_letter('invalid_json', 'bad', 's', payload, 'file:x', 0)
  assert record['payload_encoding'] == 'base64'
  assert dead_letters.original_payload(record) == payload


def test_emails_are_redacted_from_payload_and_message():
  payload = '{"traits": {"email": "Ann.Lee+x@Example.co.uk"}, "name": "Zoë"}'
  record = dead_letters.dead_letter('schema_violation', 'bad value ann.lee+x@example.co.uk', 's',
                                    payload, 'file:x', 0)
  digest = hashlib.sha256(b'ann.lee+x@example.co.uk').hexdigest()
  assert '@' not in record['payload'] and '@' not in record['error_message']
  assert f'[email-sha256:{digest}]' in record['payload']
  assert f'[email-sha256:{digest}]' in record['error_message']
  assert 'Zoë' in record['payload']
