"""Continuous (iteration-level) batching for one language model, stepped on the model's thread.

Each step: drop finished or cancelled rows from the running batch; admit waiting sequences while
the running-sequence and cached-token limits allow and prefill them together in one run
(left-padded, empty past); merge their caches into the running batch; then run one batched
decode step (one token for every running sequence). Waiting sequences beyond the queue limit are
refused with 429. `stop` drains: nothing new is accepted, everything accepted finishes. A
sequence's cache reservation is prompt + max_new_tokens, so admitted sequences never need to be
preempted.

The steps run on the model's own thread (`RunThread.drive`, service.engine.runtime), back to
back while there is work, between the other calls queued to that thread (raw runs of the
model): no event-loop round trip per step (vLLM's engine-core busy loop). The event loop and the
thread meet in one place only: `submit` and `cancel` put commands in an inbox that the thread
applies at the start of a step (so every sequence's state is changed on the thread alone).
Outputs never visit the loop: as soon as a run's rows are sampled (a prefill's first tokens
before the decode run of the same step), every front end's `Sink` gets one call, on this
thread, with its sequences' outputs (token ids: text never appears here, the front ends
detokenize and match stop strings); the engine server's sink sends them on its socket there and
then, a sink of this process wraps a `LoopMailbox`.
Host work is per step, not per token: the logits are sampled for the whole batch at once
(`sample_batch`) and metrics are updated once per step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TypeAlias

import numpy as np
from onnxruntime import OrtValue

from export.bundle import GREEDY_IDS, LOGITS, PAST, PRESENT
from export.telemetry import is_gated, skip_similarity
from service import tracing
from service.engine.kv import KVBatch, LMGraph, Resident, after_run, prefill_feeds
from service.engine.runtime import ModelRuntime, call_in_loop, settle
from service.engine.sampling import sample_batch
from service.engine.sequence import EngineSequence, Sink
from service.errors import BadRequest, InferenceFailed, ModelNotReady, QueueFull
from service.messages import Feeds, GenerateRequest, SeqOutput
from service.metrics import Metrics
from service.settings import Settings
from service.wire import error_to_wire

log = logging.getLogger("neutreno.service")

ADMIT_AFTER_STEPS = 8  # a waiting sequence joins within this many steps whatever the policy
COMPACT_FRACTION = 4  # finished rows are dropped once more than 1/4 of the batch

Submit: TypeAlias = list[EngineSequence]  # inbox: sequences to queue
Cancel: TypeAlias = tuple[Sink, int | None, int | None]  # inbox: (sink, rid, index) to cancel


class GenerationScheduler:
    """The generation worker of one LM (see the module docstring)."""

    def __init__(
        self,
        model: ModelRuntime,
        metrics: Metrics,
        *,
        max_running: int,
        max_cached_tokens: int,
        max_queue_size: int,
        on_prefill: Callable[[Feeds], None] | None = None,
    ) -> None:
        gen = model.manifest["generation"]
        past = next(s for s in model.inputs if s.name.startswith(f"{PAST}."))
        self.model = model
        self.eos_id: int | None = gen.get("eos_token_id")
        self.vocab_size: int = gen["vocab_size"]
        self.max_cached_tokens = max_cached_tokens
        self.graph = LMGraph(gen["num_layers"], gen["num_heads"], gen["head_dim"], past.numpy_dtype)
        self.max_running = max_running
        self.max_queue_size = max_queue_size
        self._metrics = metrics
        self._series = metrics.generation_series(model.name)
        self._on_prefill = on_prefill
        # prefill brings back logits and the telemetry output (if the graph has it), not the cache
        self._prefill_outputs = [n for n in model.output_names if not n.startswith(f"{PRESENT}.")]
        # decode steps fetch logits only: a gated graph skips its similarity subgraph too (the
        # flag is an overridable initializer, which IO binding takes only as an OrtValue)
        self._decode_flags: Resident = {
            name: OrtValue.ortvalue_from_numpy(flag)
            for name, flag in (skip_similarity({}) if is_gated(model.session) else {}).items()
        }
        # the event loop's side
        self._inbox: deque[Submit | Cancel] = deque()  # applied by the thread, in order
        self._stopped: asyncio.Future[None] | None = None  # resolved when a stop has drained
        self._closing = False
        # the thread's side
        self._waiting: deque[EngineSequence] = deque()
        self._running: list[EngineSequence] = []
        self._admitted: list[EngineSequence] = []
        self._batch = KVBatch.empty(self.graph)
        self._kv_ops = model.kv_ops(self.graph.empty_past(0))
        self._steps = 0  # decode steps so far (admission waits are counted in steps)
        self._cached = 0
        self._sequence_seconds = 1.0  # running estimate for Retry-After
        self._ended = False
        self._published = (0, 0)  # (running, waiting) last set on the gauges

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def depth(self) -> int:
        """Sequences waiting for admission (neutreno_queue_depth), those still in the inbox
        included."""
        inbox = sum(len(item) for item in list(self._inbox) if isinstance(item, list))
        return len(self._waiting) + inbox

    @property
    def running(self) -> int:
        return self._live

    def start(self) -> None:
        """Have the model's thread step this scheduler; `stop` waits on this loop."""
        self._stopped = asyncio.get_running_loop().create_future()
        self.model.drive(self)

    def flush(self) -> None:
        """Nothing to flush: every step runs as soon as there is work (no batch wait)."""

    async def stop(self) -> None:
        """Refuse new requests, finish every accepted sequence, then return."""
        self._closing = True
        self.model.wake()
        if self._stopped is not None:
            await self._stopped

    def submit(self, rid: int, requests: list[GenerateRequest], sink: Sink) -> None:
        """Queue one request's prompts together (stream `rid`, outputs to `sink`); 429 when
        the queue has no room."""
        if self._closing:
            raise ModelNotReady(f"model {self.name!r} is shutting down")
        if any(r.reserved_tokens > self.max_cached_tokens for r in requests):
            raise BadRequest(  # it could never be admitted (front ends refuse it first)
                f"a prompt and its max_tokens exceed the {self.max_cached_tokens} tokens "
                "the cache holds (NEUTRENO_MAX_CACHED_TOKENS)"
            )
        waiting = self.depth
        if waiting + len(requests) > self.max_queue_size:
            raise QueueFull(
                f"model {self.name!r} has {waiting} waiting sequences "
                f"(limit {self.max_queue_size}); retry later",
                self._retry_after(waiting),
            )
        self._inbox.append(
            [EngineSequence(rid, r, sink, self.eos_id, self.vocab_size) for r in requests]
        )
        self.model.wake()

    def cancel(self, sink: Sink, rid: int | None = None, index: int | None = None) -> None:
        """Cancel prompt `index` of stream `rid` of front end `sink` (every prompt of the
        stream when index is None, every stream when rid is None too), at the start of the
        next step: waiting sequences leave the queue, running ones the batch."""
        self._inbox.append((sink, rid, index))
        self.model.wake()

    def _retry_after(self, waiting: int) -> int:
        rounds = math.ceil((waiting + 1) / self.max_running)
        return math.ceil(rounds * self._sequence_seconds)

    # The model's thread from here on.

    def pending(self) -> bool:
        """Whether the thread has a step to run: commands, waiting or running sequences, rows
        to drop, or a stop to confirm."""
        return bool(self._inbox or self._waiting or self._running) or (
            self._closing and not self._ended
        )

    def wait_s(self) -> None:
        """Nothing becomes pending without a wake (a submit, a cancel, a stop)."""

    def step(self) -> None:
        """Apply the inbox, then one step (see the module docstring); its outputs are posted
        as they are sampled."""
        try:
            self._apply_inbox()
            self._release_finished()
            live = self._live
            if live or self._waiting:
                self._step(live)
            else:
                self._running, self._batch = [], KVBatch.empty(self.graph)
        except Exception as exc:  # a bug must fail the requests, not kill the worker
            log.exception("generation step on %s failed", self.name)
            self._abort(exc)
        live = self._live
        self._publish_gauges(live)
        if self._closing and not (live or self._waiting or self._inbox) and not self._ended:
            self._ended = True
            assert self._stopped is not None  # after the last outputs went to their sinks
            call_in_loop(self._stopped.get_loop(), settle, self._stopped, None, None)

    def _apply_inbox(self) -> None:
        """Queue submitted sequences and apply cancels, in the order the loop sent them."""
        cancelled = False
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, list):
                for seq in item:
                    seq.queued_step = self._steps
                self._waiting.extend(item)
                continue
            sink, rid, index = item
            for seq in [*self._waiting, *self._running]:
                if (
                    seq.sink is sink
                    and rid in (None, seq.rid)
                    and index in (None, seq.request.index)
                ):
                    seq.cancel()
                    cancelled = True
        if cancelled:
            self._waiting = deque(s for s in self._waiting if not s.cancelled)

    @property
    def _live(self) -> int:
        """Running rows still generating (finished ones stay in the batch until compaction)."""
        return sum(not seq.done for seq in self._running)

    def _step(self, live: int) -> None:
        """Admit and prefill what the admission policy lets in, re-lay the batch when rows
        joined or too many have finished, then decode one token for every running row
        (`live` of them still generating)."""
        self._steps += 1
        self._admitted = self._admit(live) if self._admitting(live) else []
        joining = self._prefill(self._admitted) if self._admitted else None
        dead = len(self._running) - live
        if joining is not None or dead > max(1, len(self._running) // COMPACT_FRACTION):
            self._relay(joining)
        self._admitted = []
        if self._live:
            self._decode()

    def _admitting(self, live: int) -> bool:
        """Whether to admit this step. Every join costs a prefill run and a re-lay of the
        cache, so while others run, wait until 1/8 of the running limit can join together
        (waiting, with free slots) or the oldest has waited ADMIT_AFTER_STEPS steps."""
        if not self._waiting:
            return False
        if live == 0:
            return True
        free = self.max_running - live
        ready = min(free, len(self._waiting))  # sequences that could join now
        waited = self._steps - self._waiting[0].queued_step
        return ready > 0 and (ready >= max(1, self.max_running // 8) or waited >= ADMIT_AFTER_STEPS)

    def _release_finished(self) -> None:
        """Free the cache reservation of rows that finished or were cancelled (once each)."""
        now = time.perf_counter()
        for seq in self._running:
            if seq.done and not seq.released:
                seq.released = True
                self._cached -= seq.request.reserved_tokens
                self._sequence_seconds = 0.8 * self._sequence_seconds + 0.2 * (now - seq.enqueued)

    def _relay(self, joining: tuple[list[EngineSequence], KVBatch] | None) -> None:
        """One re-lay of the cache on the device: finished rows leave, admitted ones join."""
        self._release_finished()
        keep = [i for i, seq in enumerate(self._running) if not seq.done]
        new_rows, new_batch = joining if joining is not None else ([], None)
        if not keep and new_batch is not None:
            self._running, self._batch = list(new_rows), new_batch
            return
        self._running = [self._running[i] for i in keep] + new_rows
        if not self._running:
            self._batch = KVBatch.empty(self.graph)
            return
        self._batch = self._batch.merged(keep, new_batch, self._kv_ops)

    def _admit(self, live: int) -> list[EngineSequence]:
        """Pop waiting sequences (FIFO) while the running and cached-token limits allow."""
        admitted: list[EngineSequence] = []
        while self._waiting and live + len(admitted) < self.max_running:
            reserve = self._waiting[0].request.reserved_tokens
            if self._cached + reserve > self.max_cached_tokens:
                break
            seq = self._waiting.popleft()
            self._cached += reserve
            admitted.append(seq)
        now = time.perf_counter()
        for seq in admitted:
            self._series.queue_wait.observe(now - seq.enqueued)
        return admitted

    def _prefill(
        self, sequences: list[EngineSequence]
    ) -> tuple[list[EngineSequence], KVBatch] | None:
        """One run over the new prompts; sample their first tokens; their cache (to join the
        batch), or None when the run failed (they have failed)."""
        feeds = prefill_feeds(self.graph, [s.request.prompt_ids for s in sequences])
        result = self._run(feeds, {}, sequences, self._prefill_outputs)
        if result is None:
            for seq in sequences:
                seq.released = True
            self._cached -= sum(s.request.reserved_tokens for s in sequences)
            return None
        outputs, presents = result
        logits = outputs[LOGITS]  # (B, L, vocab)
        scored = []
        for row, seq in enumerate(sequences):
            if seq.request.echo:
                prompt = logits[row, logits.shape[1] - len(seq.request.prompt_ids) :]
                scored.append((seq, seq.scored_prompt(prompt)))
        live = [row for row, seq in enumerate(sequences) if not seq.done]
        self._deliver(scored + self._sample([sequences[r] for r in live], logits[live, -1]))
        if self._on_prefill is not None:
            self._on_prefill(outputs)
        return sequences, after_run(self.graph, feeds, presents)

    def _decode(self) -> None:
        """One token for every running row in one batched run. When every live row decodes
        greedily with nothing read from its logits, the run brings back only the ids (the
        graph's GREEDY_IDS, computed on the device), not the (B, vocab) logits."""
        # finished rows still in the batch decode a filler id; their outputs are ignored
        tokens = np.array([s.generated[-1] if s.generated else 0 for s in self._running], np.int64)
        feeds, resident = self._batch.decode_inputs(self.graph, tokens)
        resident.update(self._decode_flags)
        rows = [row for row, seq in enumerate(self._running) if not seq.done]
        everyone = len(rows) == len(self._running)  # no finished row awaiting compaction
        live = self._running if everyone else [self._running[r] for r in rows]
        greedy = self.model.greedy_ids and all(seq.greedy for seq in live)
        result = self._run(feeds, resident, self._running, [GREEDY_IDS if greedy else LOGITS])
        if result is None:
            self._running, self._batch, self._cached = [], KVBatch.empty(self.graph), 0
            return
        outputs, presents = result
        self._batch = after_run(self.graph, feeds, presents)
        if greedy:
            ids = outputs[GREEDY_IDS]  # (B,)
            self._deliver(self._accept(live, ids if everyone else ids[rows], None))
            return
        logits = outputs[LOGITS][:, -1]  # (B, vocab), a view
        self._deliver(self._sample(live, logits if everyone else logits[rows]))

    def _sample(
        self, sequences: list[EngineSequence], logits: np.ndarray
    ) -> list[tuple[EngineSequence, SeqOutput]]:
        """Pick the next id of every row at once (logits (B, vocab)); one output per row."""
        if not sequences:
            return []
        scores = logits
        if any(s.processor is not None for s in sequences):
            scores = logits.astype(np.float64)
            for row, seq in enumerate(sequences):
                if seq.processor is not None:
                    scores[row] = seq.processor(logits[row])
        ids = sample_batch(
            scores, [s.request.sampling for s in sequences], [s.rng for s in sequences]
        )
        return self._accept(sequences, ids, logits)

    def _accept(
        self, sequences: list[EngineSequence], ids: np.ndarray, logits: np.ndarray | None
    ) -> list[tuple[EngineSequence, SeqOutput]]:
        """Every row takes its id (ids (B,); logits (B, vocab) for the rows that want
        logprobs, None when no row does); one output per row."""
        now = time.perf_counter()
        self._observe(sequences, now)
        return [
            (
                seq,
                seq.accept(
                    int(ids[row]),
                    None if logits is None or seq.request.logprobs is None else logits[row],
                    now,
                ),
            )
            for row, seq in enumerate(sequences)
        ]

    def _observe(self, sequences: list[EngineSequence], now: float) -> None:
        """TTFT / inter-token latency per row, the token counter once per step."""
        ttft, itl = self._series.ttft, self._series.itl
        for seq in sequences:
            if seq.last_token_at is None:
                ttft.observe(now - seq.enqueued)
            else:
                itl.observe(now - seq.last_token_at)
        self._series.tokens.inc(len(sequences))

    @staticmethod
    def _deliver(outputs: list[tuple[EngineSequence, SeqOutput]]) -> None:
        """One sink call per front end with its sequences' outputs of this run, now, not at
        the end of the step: a prefill's first tokens must not wait for the decode run that
        follows it in the same step."""
        grouped: dict[int, tuple[Sink, list[SeqOutput]]] = {}
        for seq, out in outputs:
            grouped.setdefault(id(seq.sink), (seq.sink, []))[1].append(out)
        for sink, outs in grouped.values():
            sink(outs)

    def _run(
        self,
        feeds: Feeds,
        resident: Resident,
        sequences: list[EngineSequence],
        to_host: list[str],
    ) -> tuple[Feeds, Resident] | None:
        """One ORT run with its metrics: outputs `to_host` as numpy, the presents left on the
        device; on failure every sequence in it fails (503)."""
        started = time.perf_counter()
        try:
            outputs = self.model.run_bound(feeds, resident, to_host, self.graph.present_names)
        except Exception as exc:
            log.error("generation run of %d rows on %s failed: %s", len(sequences), self.name, exc)
            self._fail(sequences, exc)
            return None
        self._series.inference.observe(time.perf_counter() - started)
        self._series.batch_size.observe(len(sequences))
        tracing.record_runs(self.name, (s.trace for s in sequences), started)
        return outputs

    def _abort(self, exc: Exception) -> None:
        """Fail every admitted and running sequence and start from an empty batch."""
        self._fail(self._running + self._admitted, exc)
        self._running, self._admitted, self._batch = [], [], KVBatch.empty(self.graph)
        self._cached = 0

    def _fail(self, sequences: list[EngineSequence], exc: Exception) -> None:
        error = error_to_wire(InferenceFailed(f"generation failed on {self.name!r}: {exc}"))
        self._deliver([(seq, seq.fail(error)) for seq in sequences if not seq.done])

    def _publish_gauges(self, live: int) -> None:
        """On the thread, after each step: the gauges, when they changed."""
        counts = (live, len(self._waiting))
        if counts != self._published:
            self._published = counts
            self._series.running.set(live)
            self._series.waiting.set(counts[1])
            self._series.queue_depth.set(counts[1])


def make_scheduler(
    model: ModelRuntime,
    settings: Settings,
    metrics: Metrics,
    on_prefill: Callable[[Feeds], None] | None = None,
) -> GenerationScheduler:
    """The generation worker of a text-generation bundle, configured from settings."""
    return GenerationScheduler(
        model,
        metrics,
        max_running=settings.max_running_sequences,
        max_cached_tokens=settings.max_cached_tokens,
        max_queue_size=settings.max_queue_size,
        on_prefill=on_prefill,
    )
