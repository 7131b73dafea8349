"""Classification and segmentation: request body -> image -> tensor -> batch -> JSON result.

Routes stay thin by calling `read_image_request`, then `classify` or `segment`. Decoding and
preprocessing run in a worker thread (a large JPEG must not stall the event loop); the model run
goes through the model's dynamic batcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from export.bundle import LOGITS
from service.errors import BadRequest, UnsupportedMediaType
from service.frontend import imaging
from service.frontend.schemas import (
    ClassFraction,
    ClassifyResponse,
    ImageField,
    Prediction,
    SegmentResponse,
)
from service.frontend.state import ServiceState
from service.messages import ModelInfo

P = TypeVar("P", bound=BaseModel)
FILE_TYPES = ("image/", "application/octet-stream")
INLINE_PIXELS = 256 * 256  # decoding this much costs less than a thread hop


async def read_image_request(
    request: Request, json_model: type[BaseModel], form_model: type[P]
) -> tuple[bytes, P]:
    """Image bytes and parameters from JSON `{"image": base64, ...}` or multipart `file`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = _validated(json_model, await request.body(), json=True)
        assert isinstance(body, ImageField)
        params = form_model.model_validate(body.model_dump(exclude={"image"}))
        return imaging.decode_base64(body.image), params
    if content_type == "multipart/form-data":
        return await _read_multipart(request, form_model)
    raise UnsupportedMediaType(
        f"content type {content_type or '(none)'!r} is not accepted; "
        "send application/json or multipart/form-data"
    )


async def _read_multipart(request: Request, form_model: type[P]) -> tuple[bytes, P]:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except ClientDisconnect:  # also what the body limit leaves after answering 413 / 408
        raise
    except Exception as exc:  # starlette's multipart parser errors, whatever their class
        raise BadRequest(f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest("multipart field 'file' (the image) is required")
    part_type = (upload.content_type or "application/octet-stream").lower()
    if not part_type.startswith(FILE_TYPES):
        raise UnsupportedMediaType(f"file content type {part_type!r} is not an image type")
    fields = {k: v for k, v in form.multi_items() if k != "file"}
    return await upload.read(), _validated(form_model, fields, json=False)


def _validated(model: type[P], data: object, *, json: bool) -> P:
    """Validate with pydantic, turning errors into the 422 the framework would give."""
    try:
        if json:
            return model.model_validate_json(data)  # type: ignore[arg-type]
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


@dataclass
class Decoded:
    """What a request keeps of its image once decoded (the full-size pixels are dropped).

    pixels (1, C, H, W) float32 in the model's layout; size the input's (width, height);
    overlay_base the input in RGB at most NEUTRENO_MAX_OVERLAY_PIXELS large, when asked.
    """

    pixels: np.ndarray
    size: tuple[int, int]
    overlay_base: Image.Image | None


def _decode(img: Image.Image, model: ModelInfo, overlay_pixels: int | None) -> Decoded:
    with img:
        loaded = imaging.load_pixels(img)
        base = None if overlay_pixels is None else imaging.bounded_rgb(loaded, overlay_pixels)
        return Decoded(
            imaging.preprocess(loaded, model.preprocessing, model.inputs[0].numpy_dtype),
            img.size,
            base,
        )


async def _infer(
    state: ServiceState, model: ModelInfo, data: bytes, overlay_pixels: int | None = None
) -> tuple[Decoded, dict[str, np.ndarray]]:
    """Admit (a full queue refuses before any decoding), decode (small images inline, large
    ones in a thread, at most NEUTRENO_MAX_CONCURRENT_IMAGES at once), then run through the
    batcher."""
    with state.admitted(model):
        img = imaging.open_image(data, state.settings.max_image_pixels)
        if img.width * img.height <= INLINE_PIXELS:
            decoded = _decode(img, model, overlay_pixels)
        else:
            async with state.image_slots:
                decoded = await run_in_threadpool(_decode, img, model, overlay_pixels)
        return decoded, await state.run(model, {model.inputs[0].name: decoded.pixels})


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _label(model: ModelInfo, index: int) -> str:
    return model.labels[index] if index < len(model.labels) else str(index)


async def classify(
    state: ServiceState, model: ModelInfo, data: bytes, top_k: int
) -> ClassifyResponse:
    """Top-k classes with softmax scores, best first."""
    _, outputs = await _infer(state, model, data)
    probs = _softmax(outputs[LOGITS][0].astype(np.float64))
    order = np.argsort(-probs, kind="stable")[:top_k]
    return ClassifyResponse(
        model=model.name,
        predictions=[
            Prediction(index=int(i), label=_label(model, int(i)), score=float(probs[i]))
            for i in order
        ],
    )


async def segment(
    state: ServiceState, model: ModelInfo, data: bytes, with_overlay: bool
) -> SegmentResponse:
    """Class-index mask PNG at the input's size, class pixel fractions, optional overlay
    (rendered at most NEUTRENO_MAX_OVERLAY_PIXELS large)."""
    overlay_pixels = state.settings.max_overlay_pixels if with_overlay else None
    decoded, outputs = await _infer(state, model, data, overlay_pixels)
    async with state.image_slots:
        return await run_in_threadpool(_segment_response, model, decoded, outputs[LOGITS][0])


def _segment_response(model: ModelInfo, decoded: Decoded, logits: np.ndarray) -> SegmentResponse:
    num_classes = logits.shape[0]
    class_map = logits.argmax(axis=0)
    mask = imaging.mask_at_size(class_map, decoded.size)
    counts = np.asarray(mask.histogram()[:num_classes])  # no per-pixel copy of a large mask
    width, height = decoded.size
    fractions = counts / (width * height)
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    base = decoded.overlay_base
    overlay = (
        None
        if base is None
        else imaging.png_base64(
            imaging.overlay(
                base, np.asarray(imaging.mask_at_size(class_map, base.size)), num_classes
            )
        )
    )
    return SegmentResponse(
        model=model.name,
        width=width,
        height=height,
        mask_png=imaging.png_base64(mask),
        classes=[
            ClassFraction(index=i, label=_label(model, i), pixel_fraction=float(fractions[i]))
            for i in present
        ],
        overlay_png=overlay,
    )
