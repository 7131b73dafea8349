"""The web page at `/`, driven in headless Chromium against the real service.

Image upload -> the shown top label is the API's and the overlay image decoded; a prompt streams
text that grows chunk by chunk; the live panel shows numbers parsed from /metrics (checked against
a Python reading of the same text); keyboard-only use; phone width. Screenshots go to
test-output/e2e/.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.service_helpers import ROOT, png_bytes

from bench.live_server import LiveServer

SAMPLES = ROOT / "service" / "static" / "samples"
# generous: a cold run exports the tiny test LM first (cached after, shared with tests/service)
pytestmark = pytest.mark.timeout(600)


def api_top_label(server: LiveServer, image: bytes) -> str:
    r = httpx.post(
        f"{server.url}/v1/models/fashion-classifier/classify",
        timeout=10,
        files={"file": ("x.png", image, "image/png")},
        data={"top_k": "5"},
    )
    r.raise_for_status()
    return r.json()["predictions"][0]["label"]


def api_segment(server: LiveServer, image: bytes) -> dict:
    r = httpx.post(
        f"{server.url}/v1/models/fashion-segmenter/segment",
        timeout=10,
        files={"file": ("x.png", image, "image/png")},
        data={"overlay": "true"},
    )
    r.raise_for_status()
    return r.json()


def wait_results(page, name: str) -> None:
    """Until the vision status names this image and the results are no longer busy."""
    page.wait_for_function(
        """name => { const s = document.getElementById('vision-status').textContent;
                     const r = document.getElementById('vision-results');
                     return s.startsWith(name) && !r.hasAttribute('aria-busy'); }""",
        arg=name,
    )


def overlay_natural_size(page) -> tuple[int, int]:
    page.wait_for_function("""() => { const i = document.getElementById('overlay-img');
                                      return i.complete && i.naturalWidth > 0; }""")
    return tuple(page.eval_on_selector("#overlay-img", "i => [i.naturalWidth, i.naturalHeight]"))


def test_page_is_served_outside_the_api_schema(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert '<script src="/static/app.js"' in r.text
        for path, kind in [
            ("/static/app.js", "javascript"),
            ("/static/style.css", "text/css"),
            ("/static/samples/scene.png", "image/png"),
            ("/static/samples/index.json", "json"),
        ]:
            asset = c.get(path)
            assert asset.status_code == 200 and kind in asset.headers["content-type"], path
        # everything the page loads is served here: no external URLs in the page's sources
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", c.get(path).text), path
        paths = c.get("/openapi.json").json()["paths"]
        assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_upload_image_shows_api_top_label_and_overlay(
    page, server: LiveServer, tmp_path: Path, shots: Path
) -> None:
    images = np.load(ROOT / "tests/fixtures/fashion-mnist-test-200.npz")["images"]
    image = png_bytes(images[7])
    path = tmp_path / "upload-7.png"
    path.write_bytes(image)
    page.set_input_files("#file", str(path))
    wait_results(page, "upload-7.png")

    expected = api_top_label(server, image)
    assert page.inner_text("#top-label") == expected
    bars = page.locator("#predictions li")
    assert bars.count() == 5
    assert bars.first.get_attribute("data-label") == expected
    widths = page.eval_on_selector_all("#predictions .fill", "els => els.map(e => e.offsetWidth)")
    assert widths == sorted(widths, reverse=True) and widths[0] > 0

    seg = api_segment(server, image)
    assert overlay_natural_size(page) == (seg["width"], seg["height"]) == (28, 28)
    assert page.eval_on_selector("#original-img", "i => i.naturalWidth") == 28
    legend = page.eval_on_selector_all("#legend li", "els => els.map(e => +e.dataset.index)")
    assert legend == [c["index"] for c in seg["classes"]]
    page.screenshot(path=str(shots / "upload.png"), full_page=True)


def test_prompt_streams_text_that_grows(page, server: LiveServer, lm: str, shots: Path) -> None:
    page.evaluate("""() => {
        const el = document.getElementById('completion-text');
        window.__growth = [];
        new MutationObserver(() => window.__growth.push([performance.now(), el.textContent.length]))
            .observe(el, {childList: true, characterData: true, subtree: true});
    }""")
    page.wait_for_function("lm => document.getElementById('lm-model').value === lm", arg=lm)
    page.fill("#prompt", "And God said")
    page.fill("#temperature", "0")  # greedy: the random-weight test LM never stops early
    page.fill("#max-tokens", "24")
    page.fill("#repetition-penalty", "1.3")
    with page.expect_request("**/v1/completions") as sent:
        page.click("#generate")
    body = sent.value.post_data_json
    assert body["repetition_penalty"] == 1.3 and body["temperature"] == 0, body
    # mid-stream: some text is there while the stream is still going
    page.wait_for_function(
        """() => document.getElementById('completion-text').textContent.length > 0"""
    )
    page.wait_for_function(
        """() => /^Done/.test(document.getElementById('gen-status').textContent)""", timeout=60_000
    )
    growth = page.evaluate("window.__growth")
    lengths = [n for _, n in growth]
    assert lengths[-1] > 0 and lengths == sorted(lengths), growth
    # one DOM append per SSE event: the text grows step by step, not in one piece at the end
    # (the wall-clock spread is not asserted: on a starved CPU the browser may receive the
    # server's paced events in one burst)
    distinct = sorted(set(lengths) - {0})
    assert len(distinct) >= 3, f"text arrived in {len(distinct)} steps, not streamed: {growth}"
    assert page.get_attribute("#completion", "aria-live") == "polite"
    assert page.inner_text("#completion-prompt") == "And God said"
    assert not page.is_disabled("#generate") and page.is_disabled("#stop")
    page.screenshot(path=str(shots / "completion.png"), full_page=True)


def python_summary(text: str) -> dict[str, float]:
    """What the panel should show, computed independently from the same exposition text."""
    requests, buckets = 0.0, {}
    for line in text.splitlines():
        m = re.match(r"(\w+)\{(.*)\} (\S+)$", line)
        if not m:
            continue
        name, labels, value = m[1], dict(re.findall(r'(\w+)="([^"]*)"', m[2])), float(m[3])
        if not re.match(r"/v[12]/", labels.get("endpoint", "")):
            continue
        if name == "neutreno_requests_total":
            requests += value
        elif name == "neutreno_request_duration_seconds_bucket":
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    les = sorted(buckets)
    rank, prev_le, prev_n, p99 = 0.99 * buckets[les[-1]], 0.0, 0.0, math.nan
    for le in les:
        if buckets[le] >= rank:
            p99 = (
                prev_le
                if math.isinf(le)
                else prev_le + (le - prev_le) * ((rank - prev_n) / (buckets[le] - prev_n))
            )
            break
        prev_le, prev_n = le, buckets[le]
    return {"requests": requests, "p99": p99}


def test_metrics_panel_shows_numbers_and_similarity(page, server: LiveServer, shots: Path) -> None:
    scene = (SAMPLES / "scene.png").read_bytes()
    for _ in range(3):  # some traffic, so every number and the similarity chart exist
        api_top_label(server, scene)
        api_segment(server, scene)
    # the panel polls /metrics every 2 s
    page.wait_for_function("""() => parseInt(document.getElementById('m-requests').textContent) >= 6
        && /ms|s$/.test(document.getElementById('m-p99').textContent)
        && document.querySelectorAll('#sim-chart circle').length > 0""")
    assert int(page.inner_text("#m-requests").split()[0]) >= 6
    assert float(page.inner_text("#m-batch")) >= 1.0
    assert re.fullmatch(r"\d+", page.inner_text("#m-queue"))
    assert re.fullmatch(r"[\d.]+ (ms|s)", page.inner_text("#m-p99"))
    models = set(
        page.eval_on_selector_all(
            "#sim-table tbody tr td:first-child", "tds => tds.map(td => td.textContent)"
        )
    )
    assert {"fashion-classifier", "fashion-segmenter"} <= models

    text = httpx.get(server.url + "/metrics", timeout=10).text
    js = page.evaluate(
        """t => { const s = neutreno.summarise(neutreno.parsePrometheus(t));
                                 return {requests: s.requests, p99: s.p99}; }""",
        text,
    )
    py = python_summary(text)
    assert js["requests"] == py["requests"]
    assert js["p99"] == pytest.approx(py["p99"], rel=1e-9)
    page.locator("#live-h").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "metrics.png"), full_page=True)


def test_keyboard_reaches_and_drives_the_main_controls(
    fresh_page, server: LiveServer, lm: str, tmp_path: Path, shots: Path
) -> None:
    page = fresh_page
    choosers: list = []
    page.on(
        "filechooser", lambda fc: choosers.append(fc)
    )  # early: turns on the browser's chooser interception
    page.wait_for_selector("#samples button")
    page.evaluate("""() => { window.__focus = [];
        document.addEventListener('focusin', e => window.__focus.push(
            e.target.id || e.target.className || e.target.tagName)); }""")
    for _ in range(20):
        page.keyboard.press("Tab")
    reached = page.evaluate("window.__focus")
    for control in (
        "drop",
        "sample",
        "classifier-model",
        "segmenter-model",
        "prompt",
        "lm-model",
        "temperature",
        "max-tokens",
        "repetition-penalty",
        "generate",
    ):
        assert control in reached, (control, reached)

    # a sample button from the keyboard: Enter on the focused button
    page.focus("#samples li:nth-child(3) button")
    name = page.get_attribute("#samples li:nth-child(3) button", "data-file")
    page.keyboard.press("Enter")
    wait_results(page, name)
    assert page.inner_text("#top-label") == api_top_label(server, (SAMPLES / name).read_bytes())

    # the drop zone opens the file chooser from the keyboard
    path = tmp_path / "chosen.png"
    path.write_bytes((SAMPLES / "scene.png").read_bytes())
    page.focus("#drop")
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 30
    while not choosers and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert choosers, "Enter on the drop zone opened no file chooser"
    choosers[0].set_files(str(path))
    wait_results(page, "chosen.png")
    assert overlay_natural_size(page) == (64, 64)

    # temperature by arrow keys and Home (greedy), then Ctrl+Enter in the prompt generates
    page.focus("#temperature")
    before = float(page.input_value("#temperature"))
    page.keyboard.press("ArrowRight")
    assert float(page.input_value("#temperature")) == pytest.approx(before + 0.05)
    assert page.inner_text("#temperature-out") == f"{before + 0.05:.2f}"
    page.keyboard.press("Home")
    assert page.inner_text("#temperature-out") == "0.00"
    page.fill("#max-tokens", "6")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        """() => /^Done/.test(document.getElementById('gen-status').textContent)""", timeout=60_000
    )
    assert page.inner_text("#completion-text").strip()
    page.screenshot(path=str(shots / "keyboard.png"), full_page=True)


def test_phone_width_has_no_horizontal_scroll(phone_page, shots: Path) -> None:
    page = phone_page
    page.click("#samples li:last-child button")
    wait_results(page, "scene.png")
    overlay_natural_size(page)
    page.wait_for_selector("#sim-chart svg, #sim-summary:not(:empty)")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a 375px phone"
    page.screenshot(path=str(shots / "phone.png"), full_page=True)


def test_sse_reader_handles_split_and_crlf_events(page) -> None:
    """The page's SSE reader joins events split across reads, CRLF endings and multi-line data."""
    events = page.evaluate("""async () => {
        const parts = ['data: {"a":', '1}\\n\\nda', 'ta: x\\r\\n\\r\\n: comment\\n\\ndata: l1\\ndata: l2\\n',
                       '\\ndata: [DONE]\\n\\n'];
        const enc = new TextEncoder();
        const body = new ReadableStream({ start(c) { for (const p of parts) c.enqueue(enc.encode(p)); c.close(); } });
        const out = [];
        for await (const d of neutreno.sseData(body)) out.push(d);
        return out;
    }""")
    assert events == ['{"a":1}', "x", "l1\nl2", "[DONE]"]
