"""Request parsing: JSON bodies only, of a sane shape, refused up front otherwise.

- Another content type (or none) is 415: a `text/plain` body is not read as JSON.
- NUL characters are refused (PostgreSQL cannot store them in text; they would
  otherwise surface as a 500).
- Nesting deeper than MAX_JSON_DEPTH is refused: no body here nests beyond a few levels,
  and a deep one would exhaust the recursion limit of whatever walks it next (a 500).
Refusals other than 415 are ValueError (BodyRefused), answered as 400 malformed."""

import json

from ninja.errors import ValidationError
from ninja.parser import Parser

from stockflow.platform.errors import DomainError, ErrorCode

MAX_JSON_DEPTH = 32


class BodyRefused(ValueError):
    """Well-formed JSON of a shape stockflow refuses; the message says why."""


def is_json(content_type: str) -> bool:
    """application/json or an application/*+json type (parameters such as charset aside)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def shape_problem(value, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why this parsed JSON is refused (too deep, NUL characters), or None. Iterative:
    it must not itself run out of stack on the input it is there to refuse."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "NUL characters are not allowed"
        elif isinstance(item, dict | list):
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


class StrictParser(Parser):
    def parse_body(self, request):
        if not is_json(request.content_type or ""):
            # django-ninja wraps what this raises in a 400; api.py answers it with this code.
            raise DomainError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON, sent with Content-Type: application/json",
            )
        try:
            data = json.loads(request.body)
        except RecursionError:  # the decoder itself gives up on extreme nesting
            raise BodyRefused(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        problem = shape_problem(data)
        if problem:
            raise BodyRefused(problem)  # answered as 400 malformed
        return data

    def parse_querydict(self, data, list_fields, request):
        parsed = super().parse_querydict(data, list_fields, request)
        bad = [k for k, v in parsed.items() if shape_problem(k) or shape_problem(v)]
        if bad:
            raise ValidationError(
                [{"loc": ("query", k), "msg": "NUL characters are not allowed"} for k in bad]
            )
        return parsed
