"""`{% at some_datetime zone "m-d H:i:s" %}`: a time on the console's chosen clock, with
its UTC value on hover (the `title` attribute) and in `datetime`."""

import datetime

from django import template
from django.utils import dateformat
from django.utils.html import format_html

register = template.Library()


@register.simple_tag
def at(value, zone, fmt="Y-m-d H:i:s"):
    if not value:
        return "—"
    utc = value.astimezone(datetime.UTC)
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>',
        utc.isoformat(),
        dateformat.format(utc, "Y-m-d H:i:s"),
        dateformat.format(value.astimezone(zone.tz), fmt),
    )
