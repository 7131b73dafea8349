"""A corpus of hostile and odd inputs against a live server: documented statuses, JSON errors,
the server stays ready, and its resident memory does not grow when the corpus is replayed.

Broken inputs (truncated, empty, non-image, HTML named .jpg, decompression bombs, bad base64,
huge bodies, non-UTF-8, NaN / negative / oversized parameters, unknown models) must get the
documented 4xx with a JSON error body. Valid but unusual images (1x1, 1x4096, RGBA, CMYK,
16-bit, float, palette, animated) must simply work (200), at the input's own size for masks.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from support.service_helpers import png_bytes, start_server

from bench.live_server import LiveServer

CLASSIFY = "/v1/models/fashion-classifier/classify"
SEGMENT = "/v1/models/fashion-segmenter/segment"
COMPLETIONS = "/v1/completions"
INFER = "/v2/models/fashion-classifier/infer"
LM = "tiny-lm"
MAX_BODY = 8 * 1024 * 1024


@dataclass
class Case:
    """One request and the statuses (and v1 error type) it must get."""

    id: str
    path: str
    kwargs: dict[str, Any]
    status: tuple[int, ...]
    error_type: str | None = None
    check: Any = field(default=None, repr=False)  # extra assertion on a 200 body


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header that declares width x height pixels, with 64 bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose logical screen and image are width x height (LZW data for one pixel)."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + image + b"\x3b"


def encoded(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def file_part(data: bytes, name: str = "x.png", ctype: str = "image/png") -> dict[str, Any]:
    return {"files": {"file": (name, data, ctype)}}


def b64json(data: bytes, **extra: Any) -> dict[str, Any]:
    return {"json": {"image": base64.b64encode(data).decode(), **extra}}


def raw_json(text: str | bytes) -> dict[str, Any]:
    return {
        "content": text if isinstance(text, bytes) else text.encode(),
        "headers": {"content-type": "application/json"},
    }


def _mask_size(width: int, height: int):
    def check(body: dict) -> None:
        assert (body["width"], body["height"]) == (width, height)
        mask = Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))
        assert mask.size == (width, height) and mask.mode == "L"

    return check


def _top_k(k: int):
    def check(body: dict) -> None:
        assert len(body["predictions"]) == k
        assert all(np.isfinite(p["score"]) for p in body["predictions"])

    return check


def image_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    good_png = png_bytes(grey)
    good_jpeg = encoded(Image.fromarray(grey, "L"), "JPEG", quality=90)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    rgba = Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), "RGBA")
    cmyk = Image.fromarray(rgb, "RGB").convert("CMYK")
    deep = Image.fromarray(rng.integers(0, 65536, (28, 28), dtype=np.uint16).astype(np.uint16))
    floats = Image.fromarray(rng.random((28, 28), dtype=np.float32), "F")
    palette = Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    frames = [
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L") for _ in range(3)
    ]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    bits = Image.fromarray(grey > 128)
    html = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"

    bad = [
        Case("empty-file", CLASSIFY, file_part(b""), (400,), "invalid_image"),
        Case(
            "truncated-png",
            CLASSIFY,
            file_part(good_png[: len(good_png) // 2]),
            (400,),
            "invalid_image",
        ),
        Case(
            "truncated-jpeg",
            CLASSIFY,
            file_part(good_jpeg[:200], "x.jpg", "image/jpeg"),
            (400,),
            "invalid_image",
        ),
        Case("png-signature-only", CLASSIFY, file_part(good_png[:8]), (400,), "invalid_image"),
        Case(
            "text-file",
            CLASSIFY,
            file_part(b"hello, world\n" * 50, "x.png"),
            (400,),
            "invalid_image",
        ),
        Case(
            "html-named-jpg",
            CLASSIFY,
            file_part(html, "cat.jpg", "image/jpeg"),
            (400,),
            "invalid_image",
        ),
        Case(
            "svg",
            CLASSIFY,
            file_part(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", "image/svg+xml"),
            (400,),
            "invalid_image",
        ),
        Case(
            "pdf",
            CLASSIFY,
            file_part(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "x.png"),
            (400,),
            "invalid_image",
        ),
        Case(
            "png-30000x30000",
            CLASSIFY,
            file_part(png_declaring(30000, 30000)),
            (413,),
            "payload_too_large",
        ),
        Case(
            "png-30000x30000-b64",
            SEGMENT,
            b64json(png_declaring(30000, 30000)),
            (413,),
            "payload_too_large",
        ),
        Case("png-0x0", CLASSIFY, file_part(png_declaring(0, 0)), (400,), "invalid_image"),
        Case(
            "gif-65535x65535",
            CLASSIFY,
            file_part(gif_declaring(65535, 65535), "x.gif", "image/gif"),
            (413,),
            "payload_too_large",
        ),
        Case("random-bytes", SEGMENT, file_part(rng.bytes(5000)), (400,), "invalid_image"),
        Case(
            "huge-base64-not-image",
            CLASSIFY,
            b64json(rng.bytes(int(MAX_BODY * 0.7))),
            (400,),
            "invalid_image",
        ),
        Case(
            "base64-over-body-limit",
            CLASSIFY,
            b64json(rng.bytes(MAX_BODY)),
            (413,),
            "payload_too_large",
        ),
        Case(
            "raw-body-over-limit",
            CLASSIFY,
            {"content": b"\0" * (MAX_BODY + 1), "headers": {"content-type": "application/json"}},
            (413,),
            "payload_too_large",
        ),
        Case(
            "invalid-base64",
            CLASSIFY,
            {"json": {"image": "not base64 at all!!"}},
            (400,),
            "invalid_image",
        ),
        Case("base64-not-image", CLASSIFY, {"json": {"image": "AAAA"}}, (400,), "invalid_image"),
        Case("image-is-number", CLASSIFY, {"json": {"image": 12}}, (422,), "validation_error"),
        Case("image-missing", CLASSIFY, {"json": {"top_k": 3}}, (422,), "validation_error"),
        Case("json-array-body", CLASSIFY, raw_json("[1, 2, 3]"), (422,), "validation_error"),
        Case("malformed-json", CLASSIFY, raw_json('{"image": "AAAA"'), (422,), "validation_error"),
        Case("non-utf8-json", CLASSIFY, raw_json(b'{"image": "\xff\xfe\xfa"}'), (400, 422)),
        Case("top-k-zero", CLASSIFY, b64json(good_png, top_k=0), (422,), "validation_error"),
        Case("top-k-huge", CLASSIFY, b64json(good_png, top_k=10**12), (422,), "validation_error"),
        Case(
            "top-k-string",
            CLASSIFY,
            {**file_part(good_png), "data": {"top_k": "many"}},
            (422,),
            "validation_error",
        ),
        Case(
            "unknown-field", CLASSIFY, b64json(good_png, colour="red"), (422,), "validation_error"
        ),
        Case(
            "multipart-no-file",
            CLASSIFY,
            {"files": {"other": ("x.png", good_png, "image/png")}},
            (400,),
            "invalid_request",
        ),
        Case(
            "multipart-cross-site",
            CLASSIFY,
            {
                **file_part(good_png),
                "headers": {"sec-fetch-site": "cross-site", "origin": "https://evil.example"},
            },
            (403,),
            "forbidden",
        ),
        Case(
            "multipart-same-origin-page",
            CLASSIFY,
            {**file_part(good_png), "headers": {"sec-fetch-site": "same-origin"}},
            (200,),
            check=_top_k(5),
        ),
        Case(
            "multipart-text-part",
            CLASSIFY,
            file_part(good_png, "x.txt", "text/plain"),
            (415,),
            "unsupported_media_type",
        ),
        Case(
            "multipart-bad-boundary",
            CLASSIFY,
            {
                "content": b'--zzz\r\nContent-Disposition: form-data; name="file"\r\n\r\nxx',
                "headers": {"content-type": "multipart/form-data; boundary=yyy"},
            },
            (400,),
            "invalid_request",
        ),
        Case(
            "text-plain-body",
            CLASSIFY,
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            (415,),
            "unsupported_media_type",
        ),
        Case("no-content-type", CLASSIFY, {"content": good_png}, (415,), "unsupported_media_type"),
        Case(
            "unknown-model",
            "/v1/models/no-such-model/classify",
            file_part(good_png),
            (404,),
            "model_not_found",
        ),
        Case(
            "path-traversal-model",
            "/v1/models/..%2F..%2Fetc%2Fpasswd/classify",
            file_part(good_png),
            (404,),
        ),
        Case(
            "classify-on-segmenter",
            "/v1/models/fashion-segmenter/classify",
            file_part(good_png),
            (400,),
            "wrong_task",
        ),
        Case(
            "segment-on-lm", f"/v1/models/{LM}/segment", file_part(good_png), (400,), "wrong_task"
        ),
    ]
    odd = [
        Case(
            "1x1",
            CLASSIFY,
            file_part(png_bytes(np.full((1, 1), 200, np.uint8))),
            (200,),
            check=_top_k(5),
        ),
        Case(
            "1x4096",
            CLASSIFY,
            file_part(png_bytes(rng.integers(0, 256, (1, 4096), dtype=np.uint8))),
            (200,),
            check=_top_k(5),
        ),
        Case(
            "4096x1-segment",
            SEGMENT,
            file_part(png_bytes(rng.integers(0, 256, (4096, 1), dtype=np.uint8))),
            (200,),
            check=_mask_size(1, 4096),
        ),
        Case(
            "1x1-segment",
            SEGMENT,
            b64json(png_bytes(np.zeros((1, 1), np.uint8))),
            (200,),
            check=_mask_size(1, 1),
        ),
        Case(
            "3x2000-segment",
            SEGMENT,
            file_part(png_bytes(np.zeros((3, 2000), np.uint8))),
            (200,),
            check=_mask_size(2000, 3),
        ),
        Case("rgba", CLASSIFY, file_part(encoded(rgba, "PNG")), (200,), check=_top_k(5)),
        Case(
            "rgba-segment-overlay",
            SEGMENT,
            b64json(encoded(rgba, "PNG"), overlay=True),
            (200,),
            check=_mask_size(32, 32),
        ),
        Case("la", CLASSIFY, file_part(encoded(rgba.convert("LA"), "PNG")), (200,)),
        Case(
            "cmyk-jpeg",
            CLASSIFY,
            file_part(encoded(cmyk, "JPEG"), "x.jpg", "image/jpeg"),
            (200,),
            check=_top_k(5),
        ),
        Case(
            "cmyk-segment",
            SEGMENT,
            b64json(encoded(cmyk, "JPEG")),
            (200,),
            check=_mask_size(30, 40),
        ),
        Case("16-bit-png", CLASSIFY, file_part(encoded(deep, "PNG")), (200,), check=_top_k(5)),
        Case(
            "16-bit-segment",
            SEGMENT,
            file_part(encoded(deep, "PNG")),
            (200,),
            check=_mask_size(28, 28),
        ),
        Case(
            "float-tiff",
            CLASSIFY,
            file_part(encoded(floats, "TIFF"), "x.tif", "image/tiff"),
            (200,),
            check=_top_k(5),
        ),
        Case("palette-transparent", CLASSIFY, file_part(encoded(palette, "PNG")), (200,)),
        Case("1-bit", CLASSIFY, file_part(encoded(bits, "PNG")), (200,)),
        Case(
            "animated-gif", CLASSIFY, file_part(animated.getvalue(), "x.gif", "image/gif"), (200,)
        ),
        Case("webp", CLASSIFY, b64json(encoded(Image.fromarray(rgb, "RGB"), "WEBP")), (200,)),
        Case("bmp", CLASSIFY, b64json(encoded(Image.fromarray(grey, "L"), "BMP")), (200,)),
        Case(
            "data-url",
            CLASSIFY,
            {"json": {"image": "data:image/png;base64," + base64.b64encode(good_png).decode()}},
            (200,),
        ),
        Case(
            "octet-stream-part",
            CLASSIFY,
            file_part(good_png, "blob", "application/octet-stream"),
            (200,),
        ),
    ]
    return bad + odd


def _finite_completion(body: dict[str, Any]) -> None:
    """A completion with one choice of real text (no NaN-driven garbage ids)."""
    assert body["choices"] and isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] >= 1


def completion_cases() -> list[Case]:
    def body(**kw: Any) -> dict[str, Any]:
        return {"json": {"model": LM, "prompt": "In the beginning", "max_tokens": 4, **kw}}

    def raw(text: str) -> dict[str, Any]:
        return raw_json(text)

    return [
        Case(
            "temperature-nan",
            COMPLETIONS,
            raw(f'{{"model": "{LM}", "prompt": "x", "temperature": NaN}}'),
            (422,),
            "validation_error",
        ),
        Case(
            "temperature-inf",
            COMPLETIONS,
            raw(f'{{"model": "{LM}", "prompt": "x", "temperature": Infinity}}'),
            (422,),
            "validation_error",
        ),
        Case("temperature-1e308", COMPLETIONS, body(temperature=1e308), (422,), "validation_error"),
        Case("temperature-negative", COMPLETIONS, body(temperature=-1), (422,), "validation_error"),
        Case(
            "top-p-nan",
            COMPLETIONS,
            raw(f'{{"model": "{LM}", "prompt": "x", "top_p": NaN}}'),
            (422,),
            "validation_error",
        ),
        Case("top-p-zero", COMPLETIONS, body(top_p=0), (422,), "validation_error"),
        Case("top-k-negative", COMPLETIONS, body(top_k=-3), (422,), "validation_error"),
        Case("max-tokens-negative", COMPLETIONS, body(max_tokens=-5), (422,), "validation_error"),
        Case("max-tokens-huge", COMPLETIONS, body(max_tokens=10**9), (400,), "invalid_request"),
        Case("max-tokens-2^64", COMPLETIONS, body(max_tokens=2**64), (400, 422)),
        Case("max-tokens-float", COMPLETIONS, body(max_tokens=1.5), (422,), "validation_error"),
        Case("logprobs-100", COMPLETIONS, body(logprobs=100), (422,), "validation_error"),
        Case("seed-negative", COMPLETIONS, body(seed=-1), (422,), "validation_error"),
        Case("n-2", COMPLETIONS, body(n=2), (422,), "validation_error"),
        Case("stop-many", COMPLETIONS, body(stop=["a"] * 100), (422,), "validation_error"),
        Case("stop-empty-string", COMPLETIONS, body(stop=""), (422,), "validation_error"),
        Case("stop-257-chars", COMPLETIONS, body(stop=["x" * 257]), (422,), "validation_error"),
        Case(
            "stop-4x300k",
            COMPLETIONS,
            body(prompt=["a"] * 16, stop=["x" * 300_000] * 4, max_tokens=6),
            (422,),
            "validation_error",
        ),
        Case("stop-256-chars-ok", COMPLETIONS, body(stop=["a" * 255 + "b", "\n"]), (200,)),
        Case(
            "temperature-5e-324",
            COMPLETIONS,
            body(temperature=5e-324),
            (200,),
            check=_finite_completion,
        ),
        Case(
            "temperature-denormal-top-k",
            COMPLETIONS,
            body(temperature=1e-310, top_k=3, top_p=1e-300),
            (200,),
            check=_finite_completion,
        ),
        Case(
            "form-urlencoded",
            COMPLETIONS,
            {
                "content": b"model=tiny-lm&prompt=x",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            (415,),
            "unsupported_media_type",
        ),
        Case(
            "text-plain-json",
            COMPLETIONS,
            {
                "content": b'{"model": "tiny-lm", "prompt": "x"}',
                "headers": {"content-type": "text/plain"},
            },
            (415,),
            "unsupported_media_type",
        ),
        Case(
            "cross-site-origin",
            COMPLETIONS,
            {**body(), "headers": {"origin": "https://evil.example"}},
            (403,),
            "forbidden",
        ),
        Case("empty-prompt", COMPLETIONS, body(prompt=""), (400,), "invalid_request"),
        Case("empty-prompt-list", COMPLETIONS, body(prompt=[]), (422,), "validation_error"),
        Case(
            "prompt-list-1000", COMPLETIONS, body(prompt=["a"] * 1000), (422,), "validation_error"
        ),
        Case(
            "token-ids-out-of-vocab",
            COMPLETIONS,
            body(prompt=[1, 2, 10**9]),
            (400,),
            "invalid_request",
        ),
        Case("token-ids-negative", COMPLETIONS, body(prompt=[-1, 2]), (400,), "invalid_request"),
        Case(
            "huge-prompt", COMPLETIONS, body(prompt="and " * 500_000), (413,), "payload_too_large"
        ),
        Case(
            "long-prompt-over-context",
            COMPLETIONS,
            body(prompt="and the " * 600),
            (413,),
            "payload_too_large",
        ),
        Case(
            "non-utf8-prompt",
            COMPLETIONS,
            raw_json(b'{"model": "tiny-lm", "prompt": "caf\xe9 \xff\xfe"}'),
            (400, 422),
        ),
        Case(
            "lone-surrogate-prompt",
            COMPLETIONS,
            raw(f'{{"model": "{LM}", "prompt": "abc \\ud800 def", "max_tokens": 2}}'),
            (400,),
            "invalid_request",
        ),
        Case(
            "lone-surrogate-prompt-list",
            COMPLETIONS,
            raw(f'{{"model": "{LM}", "prompt": ["ok", "\\udfff"], "max_tokens": 2}}'),
            (400,),
            "invalid_request",
        ),
        Case(
            "nul-and-control-prompt", COMPLETIONS, body(prompt="a\u0000b\u001b[31mc\u202e"), (200,)
        ),
        Case("emoji-and-cjk-prompt", COMPLETIONS, body(prompt="🙂 天地 Ω"), (200,)),
        Case("unknown-model", COMPLETIONS, body(model="gpt-4"), (404,), "model_not_found"),
        Case(
            "classifier-as-lm", COMPLETIONS, body(model="fashion-classifier"), (400,), "wrong_task"
        ),
        Case(
            "unknown-field",
            COMPLETIONS,
            body(tools=[{"type": "function"}]),
            (422,),
            "validation_error",
        ),
        Case(
            "stream-with-nan",
            COMPLETIONS,
            raw(f'{{"model": "{LM}", "prompt": "x", "stream": true, "top_p": NaN}}'),
            (422,),
            "validation_error",
        ),
    ]


def control_and_tokenize_cases() -> list[Case]:
    """Hostile generation controls (issue 15) and the /tokenize, /detokenize routes."""

    def body(**kw: Any) -> dict[str, Any]:
        return {"json": {"model": LM, "prompt": "In the beginning", "max_tokens": 4, **kw}}

    def tok(path: str, **kw: Any) -> tuple[str, dict[str, Any]]:
        return path, {"json": {"model": LM, **kw}}

    return [
        Case(
            "presence-penalty-1e308",
            COMPLETIONS,
            body(presence_penalty=1e308),
            (422,),
            "validation_error",
        ),
        Case(
            "repetition-penalty-zero",
            COMPLETIONS,
            body(repetition_penalty=0),
            (422,),
            "validation_error",
        ),
        Case("repetition-penalty-tiny", COMPLETIONS, body(repetition_penalty=1e-300), (200,)),
        Case(
            "repetition-penalty-nan",
            COMPLETIONS,
            raw_json(f'{{"model": "{LM}", "prompt": "x", "repetition_penalty": NaN}}'),
            (422,),
            "validation_error",
        ),
        Case(
            "min-tokens-over-max", COMPLETIONS, body(min_tokens=10**9), (422,), "validation_error"
        ),
        Case(
            "logit-bias-301",
            COMPLETIONS,
            body(logit_bias={str(i): 1 for i in range(301)}),
            (422,),
            "validation_error",
        ),
        Case(
            "logit-bias-key-2^59",
            COMPLETIONS,
            body(logit_bias={str(2**59): 1}),
            (400,),
            "invalid_request",
        ),
        Case(
            "logit-bias-key-5000-digits",
            COMPLETIONS,
            body(logit_bias={"9" * 5000: 1}),
            (422,),
            "validation_error",
        ),
        Case(
            "logit-bias-key-unicode-digit",
            COMPLETIONS,
            body(logit_bias={"١": 1}),
            (422,),
            "validation_error",
        ),
        Case(
            "logit-bias-all-banned",
            COMPLETIONS,
            body(logit_bias={str(i): -100 for i in range(300)}),
            (200,),
        ),
        Case(
            "tokenize-huge-prompt",
            *tok("/tokenize", prompt="and " * 500_000),
            (413,),
            "payload_too_large",
        ),
        Case(
            "tokenize-lone-surrogate",
            "/tokenize",
            raw_json(f'{{"model": "{LM}", "prompt": "\\ud800"}}'),
            (400,),
            "invalid_request",
        ),
        Case(
            "tokenize-no-model", "/tokenize", {"json": {"prompt": "x"}}, (422,), "validation_error"
        ),
        Case("detokenize-2^64", *tok("/detokenize", tokens=[2**64]), (400,), "invalid_request"),
        Case("detokenize-nested", *tok("/detokenize", tokens=[[1]]), (422,), "validation_error"),
        Case(
            "detokenize-on-classifier",
            "/detokenize",
            {"json": {"model": "fashion-classifier", "tokens": [1]}},
            (400,),
            "wrong_task",
        ),
    ]


def _fp32(values: np.ndarray) -> dict[str, Any]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixel_values",
                    "shape": list(values.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ]
        }
    )
    return {
        "content": header.encode() + values.astype(np.float32).tobytes(),
        "headers": {
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    }


def v2_cases() -> list[Case]:
    nan = np.zeros((1, 1, 28, 28), np.float32)
    nan[0, 0, 3, 3] = np.nan

    def tensor(**kw: Any) -> dict[str, Any]:
        t = {
            "name": "pixel_values",
            "shape": [1, 1, 28, 28],
            "datatype": "FP32",
            "data": [0.0] * 784,
            **kw,
        }
        return {"json": {"inputs": [t]}}

    return [
        Case("v2-nan-binary", INFER, _fp32(nan), (400,)),
        Case("v2-wrong-shape", INFER, tensor(shape=[1, 1, 27, 28]), (400,)),
        Case("v2-negative-dim", INFER, tensor(shape=[-1, 1, 28, 28]), (400,)),
        Case("v2-huge-shape", INFER, tensor(shape=[10**9, 1, 28, 28]), (400,)),
        Case("v2-wrong-datatype", INFER, tensor(datatype="INT8"), (400,)),
        Case("v2-too-few-values", INFER, tensor(data=[0.0] * 10), (400,)),
        Case("v2-string-values", INFER, tensor(data=["a"] * 784), (400,)),
        Case("v2-unknown-input", INFER, tensor(name="image"), (400,)),
        Case(
            "v2-header-length-too-big",
            INFER,
            {"content": b'{"inputs": []}', "headers": {"Inference-Header-Content-Length": "999"}},
            (400,),
        ),
        Case(
            "v2-binary-size-mismatch",
            INFER,
            {
                **_fp32(np.zeros((1, 1, 28, 28))),
                "headers": {"Inference-Header-Content-Length": "5"},
            },
            (400,),
        ),
        Case("v2-not-json", INFER, {"content": b"\x00\x01garbage"}, (400,)),
        Case(
            "v2-header-length-superscript-two",
            INFER,
            {
                **_fp32(np.zeros((1, 1, 28, 28))),
                "headers": {
                    "Inference-Header-Content-Length": b"\xb2",
                    "content-type": "application/octet-stream",
                },
            },
            (400,),
        ),
        Case(
            "v2-header-length-5000-digits",
            INFER,
            {
                **_fp32(np.zeros((1, 1, 28, 28))),
                "headers": {
                    "Inference-Header-Content-Length": "1" * 5000,
                    "content-type": "application/octet-stream",
                },
            },
            (400,),
        ),
        Case(
            "v2-header-length-negative",
            INFER,
            {
                **_fp32(np.zeros((1, 1, 28, 28))),
                "headers": {"Inference-Header-Content-Length": "-1"},
            },
            (400,),
        ),
        Case("v2-dim-10^30", INFER, tensor(shape=[10**30, 1, 28, 28]), (400,)),
        Case("v2-dim-float", INFER, tensor(shape=[1.5, 1, 28, 28]), (400,)),
        Case(
            "v2-duplicate-outputs",
            INFER,
            {"json": {**tensor()["json"], "outputs": [{"name": "logits"}] * 16}},
            (400,),
        ),
        Case(
            "v2-text-plain",
            INFER,
            {
                "content": json.dumps(tensor()["json"]).encode(),
                "headers": {"content-type": "text/plain"},
            },
            (415,),
        ),
        Case(
            "v2-cross-site-no-content-type",
            INFER,
            {
                "content": json.dumps(tensor()["json"]).encode(),
                "headers": {"sec-fetch-site": "cross-site"},
            },
            (403,),
        ),
        Case(
            "v2-deep-parameters",
            INFER,
            {
                "content": (
                    b'{"parameters": {"a": ' + b"[" * 5000 + b"]" * 5000 + b'}, "inputs": []}'
                ),
                "headers": {"content-type": "application/json"},
            },
            (400,),
        ),
        Case("v2-unknown-model", "/v2/models/nope/infer", tensor(), (404,)),
    ]


ALL = image_cases() + completion_cases() + control_and_tokenize_cases() + v2_cases()


def _check(case: Case, r: httpx.Response) -> None:
    assert r.status_code in case.status, f"{case.id}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), case.id
    body = r.json()
    if r.status_code == 200:
        if case.check is not None:
            case.check(body)
        return
    if case.path.startswith("/v2"):
        assert isinstance(body["error"], str) and body["error"], case.id
        return
    error = body["error"]
    assert set(error) == {"type", "message"} and error["message"], case.id
    if case.error_type is not None:
        assert error["type"] == case.error_type, f"{case.id}: {error}"


def _replay(client: httpx.Client, cases: list[Case]) -> None:
    for case in cases:
        _check(case, client.post(case.path, **case.kwargs))


@pytest.fixture(scope="module")
def server(full_repository: Path):
    live = start_server(full_repository)
    try:
        live.wait_ready()
        yield live
    finally:
        assert live.stop() == 0


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input_gets_documented_status(server: LiveServer, case: Case) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _check(case, client.post(case.path, **case.kwargs))


# The memory check: after WARMUP_ROUNDS replays of the corpus (allocator pools, ORT arenas and
# caches reach their working size), WINDOWS windows of ROUNDS_PER_WINDOW replays, the server's RSS
# sampled after every replay. A replay can leave freed-but-unreturned buffers (the 8 MiB bodies)
# that the next one reuses, so a window's floor (its lowest sample) is its steady size. A leak
# lifts every window's floor by the same amount (leak per request x requests per window); a
# one-time step (a glibc arena or an ORT pool growing once: +33 MiB between two replays, then
# flat, seen on a loaded machine) lifts only one. The median of the WINDOWS - 1 rises between
# windows ignores a single step and measures the growth that recurs.
WARMUP_ROUNDS, WINDOWS, ROUNDS_PER_WINDOW = 2, 4, 3
# Allowed recurring growth, KiB per request. 135 requests a replay, 405 a window: the limit is
# +7.9 MiB a window, five times the rises measured here (24 replays on a loaded 2-core machine:
# floors within 1.5 MiB of each other, +0.8 KiB/request). A leak of twice the limit (40 KiB a
# request: say a kept 28x28 float32 batch with its response for every request, or one 8 MiB body
# in 200) lifts each floor by 16 MiB and fails (the measure is checked both ways below).
LEAK_KIB_PER_REQUEST = 20.0


def recurring_growth_kib(samples: list[float], window: int, requests_per_sample: int) -> float:
    """The median rise (KiB per request) of the floor of consecutive windows of `window` RSS
    samples (MiB), each sample taken after `requests_per_sample` more requests."""
    floors = [min(samples[i : i + window]) for i in range(0, len(samples), window)]
    rises = [b - a for a, b in zip(floors, floors[1:], strict=False)]
    return float(np.median(rises)) * 1024 / (window * requests_per_sample)


def test_recurring_growth_ignores_one_step_and_finds_a_leak() -> None:
    """The measure itself, on the test's own sample count: flat with noise, flat with one +33 MiB
    step (the fresh-clone failure), and a leak of twice the limit under the same noise and step."""
    rng = np.random.default_rng(0)
    n, per_sample = WINDOWS * ROUNDS_PER_WINDOW, len(ALL)
    noise = 590 + rng.uniform(0, 4, n)  # MiB of unreturned buffers after a replay
    step = noise + np.where(np.arange(n) >= 5, 33.0, 0.0)
    leak = step + np.arange(n) * 2 * LEAK_KIB_PER_REQUEST * per_sample / 1024
    assert recurring_growth_kib(list(noise), ROUNDS_PER_WINDOW, per_sample) < LEAK_KIB_PER_REQUEST
    assert recurring_growth_kib(list(step), ROUNDS_PER_WINDOW, per_sample) < LEAK_KIB_PER_REQUEST
    assert recurring_growth_kib(list(leak), ROUNDS_PER_WINDOW, per_sample) > LEAK_KIB_PER_REQUEST


@pytest.mark.slow
def test_corpus_replay_keeps_service_ready_and_memory_flat(server: LiveServer) -> None:
    """Replay the whole corpus many times: the server stays ready, answers no 5xx, and its RSS
    (supervisor, engine and front ends together) shows no growth that recurs window after
    window (recurring_growth_kib)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(WARMUP_ROUNDS):
            _replay(client, ALL)
        samples = []
        for _ in range(WINDOWS * ROUNDS_PER_WINDOW):
            _replay(client, ALL)
            samples.append(server.memory_mib()["VmRSS"])
        assert client.get("/readyz").status_code == 200
        assert (
            client.post(CLASSIFY, **file_part(png_bytes(np.zeros((28, 28), np.uint8)))).status_code
            == 200
        )
    assert server.count_5xx() == 0, server.output()[-3000:]
    growth = recurring_growth_kib(samples, ROUNDS_PER_WINDOW, len(ALL))
    print(
        f"recurring RSS growth {growth:+.2f} KiB/request (limit {LEAK_KIB_PER_REQUEST}) over "
        f"{len(samples) * len(ALL)} corpus requests, {ROUNDS_PER_WINDOW * len(ALL)} a window; "
        f"samples (MiB): {[round(s, 1) for s in samples]}"
    )
    assert growth < LEAK_KIB_PER_REQUEST, f"RSS grows {growth:.1f} KiB/request: {samples} MiB"
