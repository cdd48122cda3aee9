"""/api/docs in headless Chromium with every request off this server blocked, as on a
machine without internet: Swagger UI's assets come from our own static files (`ninja` in
INSTALLED_APPS), so the operations are listed. Screenshot: test-output/api-docs-offline.png."""

from urllib.parse import urlparse

from tests.browser import OUTPUT


def test_api_docs_render_with_the_network_blocked(live_server, launch_chromium):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    here = urlparse(live_server.url).netloc
    browser = launch_chromium()
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    blocked, served = [], []

    def only_this_server(route):
        url = route.request.url
        if urlparse(url).netloc == here:
            served.append(url)
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(f"{live_server.url}/api/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=15_000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    page.screenshot(path=str(OUTPUT / "api-docs-offline.png"), full_page=True)

    assert {"/api/jobs", "/api/sales/{sale_id}/transition", "/api/receipts"} <= {
        p.replace("\u200b", "") for p in paths
    }, paths
    assert not blocked, f"the docs page asked another host: {blocked}"
    assert any("/static/ninja/swagger-ui-bundle" in u for u in served), served
