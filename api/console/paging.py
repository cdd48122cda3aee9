"""Page links for the console's lists: Django's Paginator, one query parameter per list
(a page may hold several lists), every other parameter kept."""

from dataclasses import dataclass

from django.core.paginator import Page, Paginator


@dataclass
class Pager:
    page: Page
    param: str
    anchor: str
    _query: dict

    def url(self, number: int) -> str:
        query = self._query.copy()
        query[self.param] = number
        return "?" + query.urlencode() + (f"#{self.anchor}" if self.anchor else "")

    @property
    def previous_url(self) -> str | None:
        return self.url(self.page.previous_page_number()) if self.page.has_previous() else None

    @property
    def next_url(self) -> str | None:
        return self.url(self.page.next_page_number()) if self.page.has_next() else None

    @property
    def rows(self):
        return self.page.object_list


def paginate(request, items, *, param: str, per_page: int, anchor: str = "") -> Pager:
    """The requested page of `items` (an ordered queryset or a list); a page number out of
    range or not a number shows the nearest page instead of an error."""
    page = Paginator(items, per_page).get_page(request.GET.get(param))
    query = request.GET.copy()
    query.pop(param, None)
    return Pager(page=page, param=param, anchor=anchor, _query=query)
