import hashlib

from transforms.rules import reference
from transforms.rules.dead_letters import Rejection

HEADER = b'customer_id,email,first_name,last_name,country,language,email_opt_in,created_at,loyalty_tier\n'


def split(path, data):
  return list(reference.split_records(path, data))


def test_csv_rows_keep_quoted_commas_and_newlines_and_their_raw_text():
  data = HEADER + (b'c1,Ann@Example.com,Ann,Lee,us,EN,true,2024-01-02T03:04:05Z,gold\r\n'
                   b'c2,"b,c@example.com",Bo,"Two\nLines",DE,de,false,,\n')
  records = split('crm.csv', data)
  assert [raw for raw, _ in records] == [
      'c1,Ann@Example.com,Ann,Lee,us,EN,true,2024-01-02T03:04:05Z,gold',
      'c2,"b,c@example.com",Bo,"Two\nLines",DE,de,false,,']
  assert records[1][1]['last_name'] == 'Two\nLines'


def test_csv_rows_with_the_wrong_field_count_or_bad_bytes_are_rejected():
  data = HEADER + b'c1,a@b.com,Ann\nc2,a@b.com,A,B,US,en,true,,gold,extra\nc3,\xff,A,B,US,en,true,,\n'
  records = split('crm.csv', data)
  assert [r.message for _, r in records] == [
      'row has 3 fields, the header has 9', 'row has 10 fields, the header has 9',
      'row is not valid UTF-8']
  assert records[2][0] == b'c3,\xff,A,B,US,en,true,,'


def test_ndjson_reference_files_by_extension():
  records = split('catalog.ndjson.gz', b'{"product_id": "p1"}\n\n[1]\n{bad\n')
  assert records[0] == (b'{"product_id": "p1"}', {'product_id': 'p1'})
  assert [type(r) for _, r in records[1:]] == [Rejection, Rejection]
  assert all(r.failure_type == 'invalid_json' for _, r in records[1:])


def test_customer_is_cleaned_and_its_email_hashed_and_dropped():
  row = {'customer_id': ' c1 ', 'email': ' Ann@Example.COM', 'first_name': 'Zoë',
         'last_name': 'Lee', 'country': 'us', 'language': 'EN', 'email_opt_in': 'TRUE',
         'created_at': '2024-01-02T03:04:05Z', 'loyalty_tier': 'gold'}
  customer = reference.parse_customer(row)
  assert customer == {
      'customer_id': 'c1',
      'email_sha256': hashlib.sha256(b'ann@example.com').hexdigest(),
      'first_name': 'Zoë', 'country': 'US', 'language': 'en', 'email_opt_in': True,
      'created_at': 1704164645000000, 'loyalty_tier': 'gold'}
  assert 'Lee' not in str(customer)  # only what the serving layer needs is kept


def test_customer_rejections_name_the_field():
  assert reference.parse_customer({'customer_id': ''}).message == 'customer_id is missing or empty'
  assert 'email_opt_in' in reference.parse_customer(
      {'customer_id': 'c', 'email_opt_in': 'maybe'}).message
  assert 'created_at' in reference.parse_customer(
      {'customer_id': 'c', 'created_at': 'last year'}).message
  assert reference.parse_customer({'customer_id': 'c'})['email_opt_in'] is False


def test_product_is_cleaned():
  product = reference.parse_product({'product_id': 'p1', 'price': '19.999', 'in_stock': 'false',
                                     'currency': 'eur', 'name': ' Boot '})
  assert product['price'] == 20.0 and product['in_stock'] is False
  assert product['currency'] == 'EUR' and product['name'] == 'Boot'
  assert reference.parse_product({'product_id': 'p2'})['in_stock'] is True


def test_product_rejections_name_the_field():
  for fields, words in [({'price': '1'}, 'product_id'), ({'product_id': 'p', 'price': 'abc'}, 'price'),
                        ({'product_id': 'p', 'price': '-1'}, 'price'),
                        ({'product_id': 'p', 'price': 'NaN'}, 'price'),
                        ({'product_id': 'p', 'in_stock': 'perhaps'}, 'in_stock')]:
    result = reference.parse_product(fields)
    assert isinstance(result, Rejection) and words in result.message
