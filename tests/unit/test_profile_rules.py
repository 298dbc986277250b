import datetime as dt
import random

from transforms.rules import profile


def event(message_id, time, name='Product Viewed', type_='track'):
  return {'message_id': message_id, 'type': type_, 'event': name if type_ == 'track' else None,
          'event_time': time, 'user_id': 'c1'}


def test_counts_by_event_name_and_call_type():
  events = [event('a', 3), event('b', 1), event('c', 2, 'Product Added'),
            event('d', 5, type_='identify'), event('e', 4, 'Home', 'page')]
  state = profile.fold('c1', events)
  assert state['event_counts'] == {'Product Viewed': 2, 'Product Added': 1, 'identify': 1,
                                   'page': 1}
  assert state['last_event_at'] == 5


def test_fold_does_not_depend_on_input_order():
  events = [event(str(i), random.Random(i).randint(0, 100)) for i in range(50)]
  shuffled = list(events)
  random.Random(7).shuffle(shuffled)
  assert profile.fold('c1', events) == profile.fold('c1', shuffled)


def test_render_gives_the_serving_document():
  document = profile.render(profile.fold('c1', [event('a', 1_700_000_000_000_000)]))
  assert document == {
      'customer_id': 'c1', 'schema_version': 1,
      'last_event_at': dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc),
      'event_counts': {'Product Viewed': 1}}


def test_empty_profile_renders_without_times():
  assert profile.render(profile.new_state('c9'))['last_event_at'] is None
