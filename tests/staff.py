"""Staff users for the console and admin tests (integration and browser)."""

from django.contrib.auth import get_user_model

STAFF_PASSWORD = "console-test-pass-1"


def make_staff(username="ops", superuser=True):
    User = get_user_model()
    if superuser:
        return User.objects.create_superuser(
            username, f"{username}@example.invalid", STAFF_PASSWORD
        )
    return User.objects.create_user(
        username, f"{username}@example.invalid", STAFF_PASSWORD, is_staff=True
    )
