"""Request parsing: JSON as usual, but NUL characters are refused up front
(PostgreSQL cannot store them in text; they would otherwise surface as a 500)."""

import json

from ninja.errors import ValidationError
from ninja.parser import Parser


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class StrictParser(Parser):
    def parse_body(self, request):
        data = json.loads(request.body)
        if _has_nul(data):
            raise ValueError("NUL characters are not allowed")  # answered as 400 malformed
        return data

    def parse_querydict(self, data, list_fields, request):
        parsed = super().parse_querydict(data, list_fields, request)
        bad = [k for k, v in parsed.items() if _has_nul(k) or _has_nul(v)]
        if bad:
            raise ValidationError(
                [{"loc": ("query", k), "msg": "NUL characters are not allowed"} for k in bad]
            )
        return parsed
