"""service.frontend.guards: strict header numbers, the cross-site rule, CORS, the page's headers."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import Headers
from support.service_helpers import make_settings, png_bytes

from service import create_app
from service.frontend.guards import CSP, cross_site, parse_length

ALLOWED = "https://app.example"
CLASSIFY = "/v1/models/fashion-classifier/classify"


@pytest.mark.parametrize(
    "raw, value",
    [
        ("0", 0),
        ("123", 123),
        ("9" * 18, 10**18 - 1),
        ("9" * 19, None),
        ("²", None),
        ("１", None),
        ("", None),
        ("-1", None),
        ("+1", None),
        ("1_0", None),
        (" 1", None),
        ("1e3", None),
        ("9" * 5000, None),
    ],
)
def test_parse_length_never_raises(raw: str, value: int | None) -> None:
    assert parse_length(raw) == value


@pytest.mark.parametrize(
    "headers, refused",
    [
        ({}, False),  # curl, SDKs
        ({"sec-fetch-site": "same-origin", "origin": "http://h"}, False),
        ({"sec-fetch-site": "none"}, False),
        ({"sec-fetch-site": "cross-site"}, True),
        ({"sec-fetch-site": "same-site", "origin": "https://sub.h"}, True),
        ({"origin": "http://h", "host": "h"}, False),
        ({"origin": "https://evil.example", "host": "h"}, True),
        ({"origin": "null", "host": "h"}, True),
        ({"origin": "http://[", "host": "h"}, True),
        ({"origin": ALLOWED, "sec-fetch-site": "cross-site"}, False),
    ],
)
def test_cross_site_rule(headers: dict[str, str], refused: bool) -> None:
    assert (cross_site(Headers(headers), frozenset({ALLOWED})) is not None) is refused


def test_cors_off_by_default_and_on_for_listed_origins(repository) -> None:
    preflight = {
        "origin": ALLOWED,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    image = {"file": ("x.png", png_bytes(np.zeros((28, 28), np.uint8)), "image/png")}
    with TestClient(create_app(make_settings(repository))) as c:
        assert "access-control-allow-origin" not in c.options(CLASSIFY, headers=preflight).headers
        assert c.post(CLASSIFY, files=image, headers={"origin": ALLOWED}).status_code == 403
    with TestClient(create_app(make_settings(repository, cors_origins=[ALLOWED]))) as c:
        answer = c.options(CLASSIFY, headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        other = c.options(CLASSIFY, headers={**preflight, "origin": "https://evil.example"})
        assert other.status_code == 400
        r = c.post(CLASSIFY, files=image, headers={"origin": ALLOWED})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED


def test_page_and_api_headers(repository) -> None:
    with TestClient(create_app(make_settings(repository))) as c:
        page = c.get("/")
        assert page.headers["content-security-policy"] == CSP
        assert page.headers["x-frame-options"] == "DENY"
        assert c.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
        assert c.get("/healthz").headers["x-content-type-options"] == "nosniff"
        docs = c.get("/docs")
        assert docs.status_code == 200 and "content-security-policy" not in docs.headers
