"""Abuse guards in front of every route: API key before the body, cross-site refusal, the
in-flight request cap, CORS and the browser security headers.

All are plain ASGI middleware (streamed responses pass through untouched). Each refusal is a
JSON error in the route's protocol shape, logged in one line, and costs no body parsing:

- `ApiKeyMiddleware`: with NEUTRENO_API_KEY set, every route except `OPEN_PATHS` (the page,
  health probes, metrics, docs) needs the Bearer key, checked before a byte of body is read.
- `CrossSiteMiddleware`: browsers send some POSTs to any site without asking first (a CORS
  "simple" request: text/plain, urlencoded or multipart forms, or no content type at all).
  text/plain and urlencoded bodies are refused everywhere (415); any state-changing request a
  browser marks as coming from another site (`Sec-Fetch-Site`, else `Origin`) is refused (403)
  unless its origin is in NEUTRENO_CORS_ORIGINS. The page's own multipart uploads and
  non-browser clients (curl -F, SDKs) are unaffected.
- `InflightLimitMiddleware`: beyond NEUTRENO_MAX_INFLIGHT_REQUESTS requests at once, 503 with
  Retry-After instead of a growing pile of waiting requests (health probes are exempt).
- `SecurityHeadersMiddleware`: nosniff everywhere; a strict Content-Security-Policy, no framing
  and no referrer on everything but the interactive API docs (which load Swagger from a CDN).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    Forbidden,
    Overloaded,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    error_response,
)
from service.frontend.security import check_api_key
from service.settings import Settings

OPEN_PATHS = frozenset(
    {
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    }
)
OPEN_PREFIXES = ("/static/",)
PROBES = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
DOCS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded"})
SAME_SITE = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values of our own page / typed
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
CORS_HEADERS = [
    "authorization",
    "content-type",
    "inference-header-content-length",
    "x-request-id",
    "traceparent",
]
_DECIMAL = re.compile(r"[0-9]{1,18}")


def parse_length(value: str) -> int | None:
    """A byte count from a header: 1 to 18 ASCII digits, else None (never raises: '²', 5,000
    digits and the like are just invalid)."""
    return int(value) if _DECIMAL.fullmatch(value) else None


async def reject(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """Send `error` as the response, closing the connection (the body is left unread)."""
    response = error_response(
        Request(scope, receive),
        error.status,
        error.type,
        error.message,
        {**error.headers, "Connection": "close"},
    )
    await response(scope, receive, send)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeyMiddleware:
    """401 before the body is read when NEUTRENO_API_KEY is set and the key is missing/wrong."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.key = settings.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.key is not None
            and scope["type"] == "http"
            and scope["method"] != "OPTIONS"
            and not is_open(scope["path"])
        ):
            try:
                check_api_key(self.key, Headers(scope=scope).get("authorization"))
            except Unauthorized as exc:
                await reject(scope, receive, send, exc)
                return
        await self.app(scope, receive, send)


def cross_site(headers: Headers, allowed: frozenset[str]) -> str | None:
    """Why a request comes from another site that is not allowed, or None when it does not.

    `Sec-Fetch-Site` (every current browser) decides when present; else an `Origin` naming
    another host. Clients that send neither (curl, SDKs) are not browsers and pass.
    """
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/") in allowed:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site.lower() in SAME_SITE else f"Sec-Fetch-Site {site!r}"
    if origin is None:
        return None
    try:
        host = urlsplit(origin).netloc
    except ValueError:
        host = ""
    return None if host and host == headers.get("host") else f"Origin {origin!r}"


class CrossSiteMiddleware:
    """415 for form-like bodies, 403 for cross-site browser requests on state-changing routes."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed = frozenset(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in FORM_TYPES:
            await reject(
                scope,
                receive,
                send,
                UnsupportedMediaType(
                    f"content type {content_type!r} is not accepted; send application/json "
                    "(or the route's documented type)"
                ),
            )
            return
        if (why := cross_site(headers, self.allowed)) is not None:
            await reject(
                scope,
                receive,
                send,
                Forbidden(
                    f"cross-site request refused ({why}); allow the origin with "
                    "NEUTRENO_CORS_ORIGINS"
                ),
            )
            return
        await self.app(scope, receive, send)


class InflightLimitMiddleware:
    """503 + Retry-After when `limit` requests (health probes aside) are already in flight."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            await reject(
                scope,
                receive,
                send,
                Overloaded(
                    f"{self.inflight} requests in flight, the limit "
                    "(NEUTRENO_MAX_INFLIGHT_REQUESTS); retry shortly"
                ),
            )
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


class SecurityHeadersMiddleware:
    """X-Content-Type-Options on every response; CSP, X-Frame-Options and Referrer-Policy on
    every response but the Swagger/ReDoc pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        strict = scope["path"] not in DOCS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-content-type-options", "nosniff")
                if strict:
                    for name, value in PAGE_HEADERS.items():
                        headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_guards(app: FastAPI, settings: Settings) -> None:
    """Add the guards, outermost last: security headers, CORS, in-flight cap, API key,
    cross-site check (the body limit and metrics are added around them by the app)."""
    app.add_middleware(CrossSiteMiddleware, settings=settings)
    app.add_middleware(ApiKeyMiddleware, settings=settings)
    app.add_middleware(InflightLimitMiddleware, limit=settings.max_inflight_requests)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=CORS_HEADERS,
            expose_headers=["inference-header-content-length", "retry-after", "x-request-id"],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)
