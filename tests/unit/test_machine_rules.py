"""Each machine rule of transforms/rules/machine.py, and the human hits none of them catches."""
import pytest

from transforms.rules import machine
from transforms.rules.machine import Hit

CHROME = ('Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) '
          'Chrome/124.0.0.0 Safari/537.36')
IPHONE_MAIL = ('Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 '
               '(KHTML, like Gecko) Mobile/15E148')
SENT = 1_000_000.0


def hit(kind='open', method='GET', agent=CHROME, ip='198.51.100.7', after=3600.0,
        first_open=None, **headers):
  all_headers = {'user-agent': agent, **{k.replace('_', '-'): v for k, v in headers.items()}}
  if agent is None:
    del all_headers['user-agent']
  return Hit(kind, method, all_headers, ip, SENT + after, SENT, first_open)


def reason(h, fast=10):
  return machine.machine_reason(h, fast)


@pytest.mark.parametrize('agent', [CHROME, IPHONE_MAIL,
                                   'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) '
                                   'Gecko/20100101 Firefox/125.0',
                                   'Microsoft Outlook 16.0.17328; Pro'])
def test_people_reading_and_clicking_are_human(agent):
  assert reason(hit('open', agent=agent)) is None
  assert reason(hit('click', agent=agent)) is None


def test_head_requests():
  assert reason(hit('open', method='HEAD')) == machine.HEAD
  assert reason(hit('click', method='HEAD')) == machine.HEAD


@pytest.mark.parametrize('header, value', [('purpose', 'prefetch'), ('sec_purpose', 'prefetch'),
                                           ('sec_purpose', 'prefetch;prerender'),
                                           ('x_moz', 'prefetch'), ('x_purpose', 'preview')])
def test_prefetch_and_preview_requests(header, value):
  assert reason(hit('click', **{header: value})) == machine.PREFETCH


def test_apple_mail_privacy_protection():
  """Apple's proxy sends a bare `Mozilla/5.0`, from Apple's 17.0.0.0/8."""
  assert reason(hit('open', agent='Mozilla/5.0', ip='17.58.101.4')) == machine.APPLE_PRIVACY
  assert reason(hit('open', agent='Mozilla/5.0', ip='198.51.100.7')) == machine.APPLE_PRIVACY
  assert reason(hit('open', agent=None, ip='17.1.2.3')) == machine.APPLE_PRIVACY
  # A real Apple device browsing from Apple's network is a person.
  assert reason(hit('open', agent=IPHONE_MAIL, ip='17.1.2.3')) is None


@pytest.mark.parametrize('agent', [
    'Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)',
    'YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html',
    'Mozilla/5.0 (compatible; OutlookImageProxy)'])
def test_image_proxies(agent):
  assert reason(hit('open', agent=agent)) == machine.IMAGE_PROXY


@pytest.mark.parametrize('agent', [
    'Mozilla/5.0 (compatible; Barracuda Sentinel)', 'Mimecast URL protect', 'python-requests/2.32',
    'curl/8.5.0', 'Go-http-client/1.1', 'Mozilla/5.0 (compatible; bingbot/2.0)',
    'Mozilla/5.0 HeadlessChrome/120.0', 'Slackbot-LinkExpanding 1.0', ''])
def test_link_scanners_and_libraries(agent):
  assert reason(hit('click', agent=agent)) == machine.SCANNER


def test_a_click_within_the_window_of_the_send_is_a_scanners():
  assert reason(hit('click', after=3.0)) == machine.FAST_CLICK
  assert reason(hit('click', after=9.999)) == machine.FAST_CLICK
  assert reason(hit('click', after=10.0)) is None   # the window is [0, fast) seconds
  assert reason(hit('click', after=3.0), fast=0) is None  # 0 turns the rule off


def test_a_click_within_the_window_of_the_first_open_is_a_scanners():
  opened = SENT + 7200
  assert reason(hit('click', after=7202, first_open=opened)) == machine.FAST_CLICK
  assert reason(hit('click', after=7300, first_open=opened)) is None


def test_opens_are_never_fast_clicks():
  assert reason(hit('open', after=0.5)) is None
