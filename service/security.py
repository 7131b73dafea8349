"""Optional Bearer API key (NEUTRENO_API_KEY) for the inference routes."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="NEUTRENO_API_KEY, when the server sets one")


async def require_api_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                          ) -> None:
    """Pass when no key is configured or the Bearer token matches it (constant-time compare)."""
    key = request.app.state.service.settings.api_key
    if key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing 'Authorization: Bearer <key>' header")
    if not hmac.compare_digest(credentials.credentials.encode(), key.get_secret_value().encode()):
        raise Unauthorized("invalid API key")
