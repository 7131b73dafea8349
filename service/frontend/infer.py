"""The Open Inference Protocol's infer, shared by both transports (HTTP: routes/v2.py, gRPC:
grpc/servicer.py): the same checks, in the same order, whichever way the tensors arrive."""

from __future__ import annotations

import numpy as np

from export.bundle import TEXT_GENERATION
from service.frontend import oip
from service.frontend.generation.raw import check_raw_feeds
from service.frontend.schemas import V2InferRequest
from service.frontend.state import ServiceState
from service.messages import ModelInfo


async def run_infer(
    state: ServiceState, model: ModelInfo, request: V2InferRequest, binary: bytes
) -> tuple[dict[str, np.ndarray], int]:
    """Decode and check the inputs, refuse before the run a response that cannot fit
    NEUTRENO_MAX_RESPONSE_BYTES, run them (more rows than NEUTRENO_MAX_BATCH_SIZE as several
    batches, in turn) and check the outputs' size: (outputs, the response's size bound)."""
    feeds = oip.decode_inputs(model, request, binary)
    oip.batch_rows(feeds)
    settings = state.settings
    if model.task == TEXT_GENERATION:
        front = state.generation_front(model)
        check_raw_feeds(
            feeds, front.limits, front.tokenizer.vocab_size, settings.max_running_sequences
        )
    oip.response_bound_before(model, request, feeds, settings.max_response_bytes)
    batches = oip.split_rows(feeds, settings.max_batch_size)
    outputs = oip.join_rows([await state.run(model, batch) for batch in batches])
    return outputs, oip.response_bound(model, request, outputs, settings.max_response_bytes)
