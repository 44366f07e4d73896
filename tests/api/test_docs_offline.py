"""/docs and /redoc render without internet: every script, stylesheet and icon they reference is
served by the service itself."""
from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest

REF = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_and_every_asset_come_from_the_service(client, page):
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    refs = {a or b for a, b in REF.findall(r.text)}
    assert refs, "the page references no assets"
    assert "/openapi.json" in refs
    scripts = [u for u in refs if u.endswith(".js")]
    assert scripts, refs
    for ref in refs:
        assert not re.match(r"^(https?:)?//", ref), f"{page} loads {ref} from another host"
        asset = client.get(urljoin(page, ref))
        assert asset.status_code == 200, ref
        assert len(asset.content) > 100, ref
    assert len(client.get(urljoin(page, scripts[0])).content) > 100_000  # the real bundle, not a stub


def test_docs_oauth2_redirect_and_no_docs_routes_in_the_schema(client):
    assert client.get("/docs/oauth2-redirect").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
