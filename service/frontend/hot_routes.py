"""The inference routes dispatched without FastAPI's per-request routing and dependency solving.

FastAPI (0.165 here) matches every request through each included router and then solves the
route's dependencies (the API key check, `get_state`): measured on this 2-core machine, a
trivial route costs ~340 us of front-end CPU through the whole app and ~150-190 us of it in
FastAPI's router alone. The routes that carry inference traffic (classify, segment, /v2 infer)
are matched here instead, one compiled pattern each, and their own endpoint functions are
called directly, so what they validate, raise and answer is unchanged, and /openapi.json still
documents them from their FastAPI declarations. Their API key is checked by ApiKeyMiddleware
(service.frontend.guards) before any body is read, as for every route; the dependency FastAPI
would also run repeats that check. Everything else goes on to FastAPI's router.

Sits inside FastAPI's ExceptionMiddleware (it wraps the router's own `middleware_stack`), so a
ServiceError raised by an endpoint gets the same JSON error as through FastAPI, and it sets
`scope["route"]` and `scope["path_params"]` as FastAPI does, so metrics, the access log and
tracing label the request by the same route template.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.frontend.state import ServiceState


@dataclass(frozen=True)
class HotRoute:
    """One FastAPI route served from here: its declaration, and which of its path
    parameters the endpoint takes as arguments (the others stay in `path_params`)."""

    route: APIRoute
    arguments: frozenset[str]

    @classmethod
    def of(cls, route: APIRoute) -> HotRoute:
        signature = inspect.signature(route.endpoint)
        if not {"request", "state"} <= signature.parameters.keys():
            raise TypeError(f"{route.path}: a hot route's endpoint takes request and state")
        return cls(route, frozenset(route.param_convertors) & signature.parameters.keys())

    def params(self, path: str) -> dict[str, Any] | None:
        """The path parameters when `path` is this route's, else None."""
        match = self.route.path_regex.match(path)
        if match is None:
            return None
        convertors = self.route.param_convertors
        return {k: convertors[k].convert(v) for k, v in match.groupdict().items()}

    def response(self, result: Any) -> Response:
        """What FastAPI answers for this result: a Response as is, a model through the
        route's response model as JSON (its fast path: pydantic's dump to bytes)."""
        if isinstance(result, Response):
            return result
        assert isinstance(result, BaseModel), self.route.path
        body = result.model_dump_json(
            by_alias=True, exclude_none=self.route.response_model_exclude_none
        )
        return Response(body, self.route.status_code or 200, media_type="application/json")


class HotRoutes:
    """ASGI app in front of FastAPI's router: POSTs to a hot route are served here."""

    def __init__(self, app: ASGIApp, state: ServiceState, routes: Iterable[HotRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            for hot in self.routes:
                params = hot.params(path)
                if params is not None:
                    route = hot.route
                    scope["route"], scope["endpoint"] = route, route.endpoint
                    scope["path_params"] = params
                    arguments = {k: v for k, v in params.items() if k in hot.arguments}
                    result = await route.endpoint(
                        request=Request(scope, receive), state=self.state, **arguments
                    )
                    await hot.response(result)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def hot_routes(
    routers: Iterable[APIRouter], endpoints: Iterable[Callable[..., Any]]
) -> list[HotRoute]:
    """The POST routes of `routers` whose endpoint is one of `endpoints`."""
    wanted = set(endpoints)
    found = [
        HotRoute.of(route)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        and route.endpoint in wanted
        and "POST" in (route.methods or ())
    ]
    if {h.route.endpoint for h in found} != wanted:
        raise LookupError("a hot endpoint is not a POST route of these routers")
    return found
