"""Optional Bearer API key (NEUTRENO_API_KEY) for the inference routes.

`ApiKeyMiddleware` (service.frontend.guards) checks the key before any body is read, on every
route but the open ones; `require_api_key` runs the same check as a route dependency, which
also puts the Bearer scheme into the OpenAPI document.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="NEUTRENO_API_KEY, when the server sets one")


def check_api_key(key: SecretStr | None, authorization: str | None) -> None:
    """Pass when no key is configured or `Authorization: Bearer <key>` matches it
    (constant-time compare); raise Unauthorized otherwise."""
    if key is None:
        return
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing 'Authorization: Bearer <key>' header")
    if not hmac.compare_digest(token.strip().encode(), key.get_secret_value().encode()):
        raise Unauthorized("invalid API key")


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """Route dependency: the same check as the middleware (documents the scheme in OpenAPI)."""
    check_api_key(request.app.state.service.settings.api_key, request.headers.get("authorization"))
