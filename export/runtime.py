"""Run exported graphs with onnxruntime and numpy only (no torch): sessions, LM steps, greedy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.bundle import ATTENTION_MASK, INPUT_IDS, LOGITS, PAST, PRESENT, SIMILARITY, kv_names
from export.fusion import session_model


def session(
    model: onnx.ModelProto | str | Path,
    providers: list[str] | None = None,
    threads: int = 0,
    fused: bool = True,
) -> ort.InferenceSession:
    """An ORT session (CPU unless `providers` says otherwise); threads 0 = ORT's default.

    The model goes through `export.fusion.session_model` as in the service: fused attention and
    gated telemetry by default, the graph as shipped (portable function bodies) with fused=False.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the service
    return ort.InferenceSession(
        session_model(model, fused), opts, providers=providers or ["CPUExecutionProvider"]
    )


@dataclass
class LMStep:
    """One LM graph call: logits (B, T, V), presents[i] = (k, v) (B, H, P + T, D), similarity."""

    logits: np.ndarray
    presents: list[tuple[np.ndarray, np.ndarray]]
    token_similarity: np.ndarray


def lm_layout(sess: ort.InferenceSession) -> tuple[int, int, int, type[np.floating]]:
    """(layers, heads, head_dim, float scalar type) read from the graph's past_key_values inputs."""
    past = [i for i in sess.get_inputs() if i.name.startswith(f"{PAST}.")]
    _, heads, _, head_dim = past[0].shape
    dtype = np.float16 if past[0].type == "tensor(float16)" else np.float32
    return len(past) // 2, int(heads), int(head_dim), dtype


def empty_past(sess: ort.InferenceSession, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A zero-length KV cache for prefill: per layer two (batch, H, 0, D) arrays."""
    layers, heads, head_dim, dtype = lm_layout(sess)
    z = np.zeros((batch, heads, 0, head_dim), dtype)
    return [(z, z) for _ in range(layers)]


def lm_step(
    sess: ort.InferenceSession,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    past: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> LMStep:
    """input_ids (B, T) int64, attention_mask (B, P + T) int64, past per layer (B, H, P, D)."""
    past = empty_past(sess, input_ids.shape[0]) if past is None else past
    feed = {
        INPUT_IDS: input_ids.astype(np.int64),
        ATTENTION_MASK: attention_mask.astype(np.int64),
    }
    feed.update(zip(kv_names(len(past), PAST), (t for pair in past for t in pair), strict=True))
    logits, *presents, similarity = sess.run(
        [LOGITS, *kv_names(len(past), PRESENT), SIMILARITY], feed
    )
    return LMStep(logits, list(zip(presents[0::2], presents[1::2], strict=True)), similarity)


def greedy(
    sess: ort.InferenceSession,
    input_ids: np.ndarray,
    max_new_tokens: int,
    attention_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy decoding with the KV cache: (B, T) (left padding allowed) -> (B, max_new_tokens)."""
    mask = np.ones_like(input_ids) if attention_mask is None else attention_mask.astype(np.int64)
    step = lm_step(sess, input_ids, mask)
    new = []
    for _ in range(max_new_tokens):
        nxt = step.logits[:, -1].argmax(-1)[:, None].astype(np.int64)  # (B, 1)
        new.append(nxt)
        mask = np.concatenate([mask, np.ones_like(nxt)], axis=1)
        step = lm_step(sess, nxt, mask, step.presents)
    return np.concatenate(new, axis=1)
