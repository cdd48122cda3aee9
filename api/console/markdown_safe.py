"""Runbooks (monitoring/runbooks/*.md) as HTML, with Python-Markdown. Raw HTML in the
source is shown as text, never passed through, and a link may only go to http(s),
mailto or a relative address: a runbook is read by a logged-in staff member, so it
must not be able to run script in the console's origin."""

import re
import xml.etree.ElementTree as ET

import markdown
from django.utils.safestring import SafeString, mark_safe
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

_SAFE_URL = re.compile(r"^(?:https?:|mailto:|[^:]*$)", re.IGNORECASE)  # no scheme = relative


class _SafeLinks(Treeprocessor):
    def run(self, root: ET.Element) -> None:
        for element in root.iter():
            for attribute in ("href", "src"):
                value = element.get(attribute)
                if value is not None and not _SAFE_URL.match(value.strip()):
                    element.set(attribute, "#")


class _EscapeHtml(Extension):
    """Python-Markdown's documented way to escape raw HTML: drop the block and inline
    HTML handlers, so `<script>` is text like any other."""

    def extendMarkdown(self, md):
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(_SafeLinks(md), "safe_links", 0)


def render(text: str) -> SafeString:
    html = markdown.markdown(
        text,
        extensions=["fenced_code", "tables", "sane_lists", _EscapeHtml()],
        output_format="html",
    )
    return mark_safe(html)  # raw HTML escaped and link schemes checked above
