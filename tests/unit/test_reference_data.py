import time

from transforms import reference_data

CRM_HEADER = 'customer_id,email,first_name,last_name,country,language,email_opt_in,created_at,loyalty_tier\n'
CATALOG_HEADER = 'product_id,sku,name,category,brand,price,currency,in_stock,url,image_url\n'


def write(tmp_path, crm_rows, catalog_rows):
  (tmp_path / 'customers.csv').write_text(CRM_HEADER + ''.join(crm_rows))
  (tmp_path / 'catalog.csv').write_text(CATALOG_HEADER + ''.join(catalog_rows))
  return str(tmp_path / 'customers.csv'), str(tmp_path / 'catalog.csv')


def test_reference_data_is_cached_and_re_read_after_the_refresh_interval(tmp_path):
  crm, catalog = write(tmp_path, ['c1,a@b.com,Ann,L,SE,sv,true,,gold\n', 'bad row\n'],
                       ['p1,S,Boot,Shoes,B,10.00,USD,true,u,i\n'])
  first = reference_data.current(crm, catalog, refresh_minutes=60)
  assert first.customers['c1']['first_name'] == 'Ann' and len(first.customers) == 1
  assert first.catalog['p1']['price'] == 10.0
  write(tmp_path, ['c1,a@b.com,Annie,L,SE,sv,true,,gold\n'],
        ['p1,S,Boot,Shoes,B,12.50,USD,false,u,i\n'])
  assert reference_data.current(crm, catalog, refresh_minutes=60) is first  # within the interval
  time.sleep(0.05)
  again = reference_data.current(crm, catalog, refresh_minutes=0.0005)  # 30 ms
  assert again.customers['c1']['first_name'] == 'Annie'
  assert again.catalog['p1']['price'] == 12.5 and again.catalog['p1']['in_stock'] is False


def test_missing_patterns_give_empty_reference_data():
  data = reference_data.load(None, None)
  assert data.customers == {} and data.catalog == {}
  assert data.recommender.recommend(['Shoes'], set()) == []
