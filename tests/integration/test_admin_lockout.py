"""P8 #14: the admin login (also the console's: /console/ sends staff to it) locks a
username out from one client address after 5 wrong passwords (django-axes, counted in
PostgreSQL); other users, and the same user from elsewhere, are unaffected; an operator
unlocks with `manage.py axes_reset_username`."""

from django.core.management import call_command
from django.test import Client

from tests.staff import STAFF_PASSWORD, make_staff

LOGIN = "/admin/login/?next=/console/"  # where /console/ sends an anonymous visitor


def attempt(client: Client, username: str, password: str):
    return client.post(LOGIN, {"username": username, "password": password})


def test_five_wrong_passwords_lock_the_user_out_of_the_admin_and_console(transactional_db):
    make_staff("ops")
    make_staff("other")
    attacker = Client(REMOTE_ADDR="198.51.100.7")

    answers = [attempt(attacker, "ops", f"guess-{i}").status_code for i in range(5)]
    assert answers[:4] == [200] * 4  # the form again, "please enter a correct username..."
    assert answers[4] == 429, answers  # the 5th failure reaches the limit

    # Locked: even the right password is refused now, and no session is opened.
    locked = attempt(attacker, "ops", STAFF_PASSWORD)
    assert locked.status_code == 429
    assert "too many login attempts" in locked.content.decode().lower()
    assert attacker.get("/console/").status_code == 302  # still sent to the login

    # Another user from the same address, and the same user from another address, log in.
    assert attempt(Client(REMOTE_ADDR="198.51.100.7"), "other", STAFF_PASSWORD).status_code == 302
    elsewhere = Client(REMOTE_ADDR="203.0.113.9")
    r = attempt(elsewhere, "ops", STAFF_PASSWORD)
    assert r.status_code == 302 and r["Location"] == "/console/"
    assert elsewhere.get("/console/").status_code == 200

    # The operator's unlock: the next right password gets in from the locked address too.
    call_command("axes_reset_username", "ops")
    r = attempt(attacker, "ops", STAFF_PASSWORD)
    assert r.status_code == 302 and r["Location"] == "/console/"


def test_a_success_before_the_limit_clears_the_count(transactional_db):
    make_staff("typo")
    c = Client(REMOTE_ADDR="198.51.100.8")
    assert [attempt(c, "typo", "wrong").status_code for _ in range(4)] == [200] * 4
    assert attempt(c, "typo", STAFF_PASSWORD).status_code == 302
    c.logout()
    assert [attempt(c, "typo", "wrong").status_code for _ in range(4)] == [200] * 4
