"""The lead form's fixed-window arithmetic: stockflow/leads/throttle.py."""

from stockflow.leads.throttle import WINDOWS, Verdict, judge, window_keys

LIMITS = [2, 10]  # per minute, per hour (the defaults)


def test_windows_are_a_minute_and_an_hour():
    assert [(scope, seconds) for scope, seconds, _ in WINDOWS] == [("minute", 60), ("hour", 3600)]


def test_keys_name_the_client_and_change_with_the_window():
    now = 7_200  # 02:00:00 on day 0: the start of a minute and of an hour
    keys = window_keys("abc", now)
    assert keys == [
        ("minute", 60, "stockflow:throttle:leads:minute:abc:120"),
        ("hour", 3600, "stockflow:throttle:leads:hour:abc:2"),
    ]
    assert window_keys("abc", now + 59) == keys  # the same windows until they end
    assert window_keys("abc", now + 60)[0][2].endswith(":121")  # next minute, same hour
    assert window_keys("abc", now + 60)[1] == keys[1]
    assert window_keys("xyz", now)[0][2] != keys[0][2]  # one budget per client


def test_within_every_budget_is_allowed():
    assert judge([2, 10], LIMITS, now=1000) == Verdict(True)


def test_over_the_minute_budget_waits_for_the_minute_to_end():
    assert judge([3, 3], LIMITS, now=7_200 + 45) == Verdict(False, "minute", 15)


def test_over_the_hour_budget_waits_for_the_hour_to_end():
    assert judge([1, 11], LIMITS, now=7_200 + 600) == Verdict(False, "hour", 3000)


def test_the_first_window_over_budget_decides():
    assert judge([5, 50], LIMITS, now=7_200 + 1).scope == "minute"


def test_retry_after_is_never_zero_at_a_window_start():
    assert judge([3, 0], LIMITS, now=7_200).retry_after == 60
