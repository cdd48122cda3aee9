"""The lead throttle's budget subject (stockflow/leads/throttle.py): one budget per IPv4
address, one per IPv6 /64 (a single subscriber usually holds a whole /64)."""

import pytest

from stockflow.leads.throttle import budget_subject, window_keys

NOW = 7_200


def keys(ip: str) -> list:
    return window_keys(budget_subject(ip), NOW)


def test_ipv6_addresses_of_one_64_share_a_budget():
    assert budget_subject("2001:db8:1:2::a") == "2001:db8:1:2::/64"
    assert keys("2001:db8:1:2::a") == keys("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert keys("2001:db8:1:2::a") == keys("2001:DB8:1:2:0:0:0:B")  # any spelling


def test_another_64_has_its_own_budget():
    assert keys("2001:db8:1:2::a") != keys("2001:db8:1:3::a")


@pytest.mark.parametrize(
    ("ip", "subject"),
    [
        ("203.0.113.7", "203.0.113.7"),  # IPv4 stays per address
        ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4-mapped IPv6 is that IPv4 address
        ("fe80::1%eth0", "fe80::/64"),  # a zone id does not make a new budget
        ("", ""),  # not an address (e.g. a unix socket peer): as it is
        ("garbage", "garbage"),
    ],
)
def test_budget_subject(ip, subject):
    assert budget_subject(ip) == subject


def test_ipv4_neighbours_keep_their_own_budgets():
    assert keys("203.0.113.7") != keys("203.0.113.8")
