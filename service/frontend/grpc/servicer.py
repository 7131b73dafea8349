"""The RPCs of `inference.GRPCInferenceService`, on the front end's `ServiceState`.

Each RPC does what its HTTP route does (service/frontend/routes/v2.py and repository.py), with
the same state calls, so both protocols share the engine, batching, queue limits, model control
and readiness. Errors are raised as `ServiceError`s; service/frontend/grpc/server.py turns them
into gRPC statuses and records the call's metrics, log line and trace span.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from service.errors import BadRequest, DeadlineExceeded, ModelNotReady
from service.frontend import oip
from service.frontend.grpc import inference_pb2 as pb
from service.frontend.grpc import tensors
from service.frontend.infer import run_infer
from service.frontend.routes import v2
from service.frontend.state import ServiceState
from service.logs import note_model

SERVICE = "inference.GRPCInferenceService"


@dataclass
class Call:
    """What one call's handler learns that the wrapper records: the model it is for and the
    seconds left before the client's deadline (None: no deadline)."""

    time_remaining: float | None
    model: str = ""

    def for_model(self, name: str) -> None:
        self.model = name
        note_model(name)


Handler = Callable[[Any, Call], Awaitable[Message]]


@dataclass(frozen=True)
class Rpc:
    """One method: its request type, handler, metrics endpoint label and whether it needs the
    API key (the health and server-wide RPCs are open, as their HTTP routes are)."""

    request: type[Message]
    handler: Handler
    endpoint: str
    needs_key: bool = True


class Servicer:
    """The RPC handlers, by method name (`rpcs`)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.rpcs: dict[str, Rpc] = {
            "ServerLive": Rpc(pb.ServerLiveRequest, self.server_live, "grpc_server_live", False),
            "ServerReady": Rpc(
                pb.ServerReadyRequest, self.server_ready, "grpc_server_ready", False
            ),
            "ServerMetadata": Rpc(
                pb.ServerMetadataRequest, self.server_metadata, "grpc_server_metadata", False
            ),
            "ModelReady": Rpc(pb.ModelReadyRequest, self.model_ready, "grpc_model_ready"),
            "ModelMetadata": Rpc(
                pb.ModelMetadataRequest, self.model_metadata, "grpc_model_metadata"
            ),
            "ModelInfer": Rpc(pb.ModelInferRequest, self.model_infer, "grpc_infer"),
            "RepositoryIndex": Rpc(
                pb.RepositoryIndexRequest, self.repository_index, "grpc_repository_index"
            ),
            "RepositoryModelLoad": Rpc(
                pb.RepositoryModelLoadRequest, self.repository_load, "grpc_repository_load"
            ),
            "RepositoryModelUnload": Rpc(
                pb.RepositoryModelUnloadRequest, self.repository_unload, "grpc_repository_unload"
            ),
        }

    async def server_live(self, request: pb.ServerLiveRequest, call: Call) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, call: Call) -> Message:
        return pb.ServerReadyResponse(ready=not self.state.readiness())

    async def server_metadata(self, request: pb.ServerMetadataRequest, call: Call) -> Message:
        meta: dict[str, Any] = await v2.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def model_ready(self, request: pb.ModelReadyRequest, call: Call) -> Message:
        call.for_model(request.name)
        try:
            self.state.model(request.name, version=request.version or None)
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: pb.ModelMetadataRequest, call: Call) -> Message:
        call.for_model(request.name)
        meta = oip.metadata(self.state.model(request.name, version=request.version or None))
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[t.model_dump() for t in meta.inputs],
            outputs=[t.model_dump() for t in meta.outputs],
        )

    async def model_infer(self, request: pb.ModelInferRequest, call: Call) -> Message:
        state = self.state
        call.for_model(request.model_name)
        model = state.model(request.model_name, version=request.model_version or None)
        v2_request, binary = tensors.as_v2(request)
        tensors.check_outputs(model.name, [s.name for s in model.outputs], v2_request)
        timeout = state.settings.request_timeout_s
        if call.time_remaining is not None:
            timeout = min(timeout, call.time_remaining)
        with state.admitted(model):
            try:
                async with asyncio.timeout(timeout):
                    outputs, _ = await run_infer(state, model, v2_request, binary)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no result within {timeout:.3g} s (the call's deadline or "
                    "NEUTRENO_REQUEST_TIMEOUT_S)"
                ) from None
        return tensors.response(model.name, model.version, v2_request, outputs)

    async def repository_index(self, request: pb.RepositoryIndexRequest, call: Call) -> Message:
        entries: list[dict[str, str]] = await self.state.engine.control("index")
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e["name"],
                    version=e.get("version") or "",
                    state=e.get("state") or "",
                    reason=e.get("reason") or "",
                )
                for e in entries
                if not request.ready or e.get("state") == "READY"
            ]
        )

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, call: Call) -> Message:
        self._plain_control(request.model_name, request.parameters)
        call.for_model(request.model_name)
        await self.state.engine.control("load", request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, call: Call
    ) -> Message:
        self._plain_control(request.model_name, request.parameters)
        call.for_model(request.model_name)
        await self.state.engine.control("unload", request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @staticmethod
    def _plain_control(name: str, parameters: Any) -> None:
        """Load and unload take a model name: Triton's config and file overrides have no
        meaning for bundles read from their folder (`unload_dependents`, which tritonclient
        always sends, is moot: no model depends on another)."""
        if not name:
            raise BadRequest("model_name is required")
        if unknown := sorted(set(parameters) - {"unload_dependents"}):
            raise BadRequest(
                f"load/unload parameters {unknown[:8]} are not supported: bundles "
                "are read from the repository folder as they are"
            )
