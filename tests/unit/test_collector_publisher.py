"""The collector's publisher without Pub/Sub: requests' messages share Publish calls of at most
1,000, a request returns only once every call carrying its messages succeeded, and a failure, the
cap, a timeout or a stop answer Unavailable. The calls are recorded by a subclass's `_send`."""
import asyncio
import threading

import pytest

from collector import publisher as publisher_module
from collector.publisher import Publisher, Unavailable

TOPIC = 'projects/demo-local/topics/events'


class Recording(Publisher):
  """Publish calls recorded as lists of messageId attributes; `fail` names calls (by their
  number) that raise, `gate` holds every call until it is set."""

  def __init__(self, max_bytes=64 << 20, fail=(), gate=None):
    super().__init__(TOPIC, max_bytes, client=object())
    self.calls, self.fail, self.gate = [], set(fail), gate
    self.lock = threading.Lock()

  def _send(self, request):
    with self.lock:
      number = len(self.calls)
      self.calls.append([m.attributes['message_id'] for m in request.messages])
    assert request.topic == TOPIC
    if self.gate is not None:
      assert self.gate.wait(10)
    if number in self.fail:
      raise RuntimeError('UNAVAILABLE from the fake')
    return len(request.messages)


def messages(prefix, count):
  return [(f'{{"messageId":"{prefix}{i}"}}'.encode(), {'message_id': f'{prefix}{i}'})
          for i in range(count)]


def run(coroutine):
  return asyncio.run(coroutine)


def test_requests_within_the_latency_share_one_call():
  publisher = Recording()

  async def scenario():
    await asyncio.gather(*(publisher.publish(messages(f'r{n}-', 2), 5) for n in range(3)))

  run(scenario())
  assert publisher.calls == [['r0-0', 'r0-1', 'r1-0', 'r1-1', 'r2-0', 'r2-1']]


def test_a_large_request_is_split_into_calls_of_at_most_1000_and_returns_after_all():
  publisher = Recording()
  run(publisher.publish(messages('b', 2500), 5))
  assert [len(call) for call in publisher.calls] == [1000, 1000, 500]
  assert sum(publisher.calls, []) == [f'b{i}' for i in range(2500)]


def test_a_failed_call_fails_every_request_in_it_and_only_those():
  publisher = Recording(fail={0})

  async def scenario():
    first = await asyncio.gather(publisher.publish(messages('a', 1), 5),
                                 publisher.publish(messages('b', 1), 5), return_exceptions=True)
    second = await publisher.publish(messages('c', 1), 5)
    return first, second

  first, second = run(scenario())
  assert [type(outcome) for outcome in first] == [Unavailable, Unavailable]
  assert 'RuntimeError: UNAVAILABLE from the fake' in str(first[0])
  assert second is None
  assert publisher.calls == [['a0', 'b0'], ['c0']]


def test_a_request_split_over_calls_fails_when_one_of_them_fails():
  publisher = Recording(fail={1})
  with pytest.raises(Unavailable):
    run(publisher.publish(messages('b', 1500), 5))
  assert [len(call) for call in publisher.calls] == [1000, 500]


def test_over_the_cap_a_request_is_refused_at_once_and_nothing_of_it_is_sent():
  publisher = Recording(max_bytes=1000)
  with pytest.raises(Unavailable, match='over the outstanding cap'):
    run(publisher.publish(messages('big', 40), 5))
  run(publisher.publish(messages('small', 2), 5))
  assert publisher.calls == [['small0', 'small1']]


def test_a_call_that_does_not_return_in_time_answers_unavailable():
  gate = threading.Event()
  publisher = Recording(gate=gate)

  async def scenario():
    with pytest.raises(Unavailable, match='did not confirm within 0.2 s'):
      await publisher.publish(messages('slow', 1), 0.2)
    gate.set()

  run(scenario())
  assert publisher.calls == [['slow0']]


def test_at_most_max_in_flight_calls_and_a_due_batch_goes_when_one_returns():
  gate = threading.Event()
  publisher = Recording(gate=gate)
  full = publisher_module.MAX_BATCH_MESSAGES

  async def scenario():
    sends = [asyncio.ensure_future(publisher.publish(messages(f'r{n}-', full), 5))
             for n in range(publisher_module.MAX_IN_FLIGHT + 1)]
    await asyncio.sleep(0.2)
    in_flight = len(publisher.calls)
    gate.set()
    await asyncio.gather(*sends)
    return in_flight

  assert run(scenario()) == publisher_module.MAX_IN_FLIGHT
  assert len(publisher.calls) == publisher_module.MAX_IN_FLIGHT + 1


def test_stop_sends_what_is_pending_and_later_publishes_fail():
  publisher = Recording()

  async def scenario():
    sent = asyncio.ensure_future(publisher.publish(messages('last', 3), 5))
    await asyncio.sleep(0)  # handed over, its batch not due yet
    await asyncio.to_thread(publisher.stop)
    await sent
    with pytest.raises(Unavailable, match='stopped'):
      await publisher.publish(messages('late', 1), 5)

  run(scenario())
  assert publisher.calls == [['last0', 'last1', 'last2']]
