import datetime

from django.utils import timezone
from ninja.security import HttpBearer

from stockflow.accounts.models import ApiToken

# last_used_at is for humans auditing tokens: minute precision avoids a write per request.
_TOUCH_EVERY = datetime.timedelta(minutes=1)


class BearerToken(HttpBearer):
    def authenticate(self, request, token: str):
        api_token = ApiToken.authenticate(token)
        if api_token is None:
            return None
        now = timezone.now()
        if api_token.last_used_at is None or now - api_token.last_used_at > _TOUCH_EVERY:
            ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=now)
            api_token.last_used_at = now  # the instance may be the cached one: touch once a minute
        request.api_token = api_token
        return api_token
