// NeuTRENO Serve page: vanilla JS, no build step, talks only to this service's own HTTP API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const DEFAULTS = { classification: "fashion-classifier", segmentation: "fashion-segmenter",
                     "text-generation": "kjv-lm" };
  const METRICS_EVERY_MS = 2000;
  let apiKey = sessionStorage.getItem("neutreno-api-key") || "";

  // ---- HTTP -------------------------------------------------------------------------------
  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (apiKey) h.Authorization = "Bearer " + apiKey;
    return h;
  }

  async function errorText(response) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      const e = body && body.error;
      detail = typeof e === "string" ? e : (e && (e.message || e.type)) || JSON.stringify(body);
    } catch (_) { /* not JSON */ }
    if (response.status === 401) detail += " (set the API key at the top)";
    return `HTTP ${response.status}: ${detail}`;
  }

  async function postImage(path, blob, fields) {
    const form = new FormData();
    form.append("file", blob, blob.name || "image.png");
    for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
    const r = await fetch(path, { method: "POST", body: form, headers: headers() });
    if (!r.ok) throw new Error(await errorText(r));
    return r.json();
  }

  function setStatus(el, text, isError) {
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  // ---- models -----------------------------------------------------------------------------
  const selects = { classification: $("classifier-model"), segmentation: $("segmenter-model"),
                    "text-generation": $("lm-model") };

  function fillSelect(select, names, fallback) {
    const keep = select.value;
    select.replaceChildren();
    const list = names.length ? names : [fallback];
    for (const name of list) {
      const opt = document.createElement("option");
      opt.value = name;
      opt.textContent = names.length ? name : `${name} (not listed)`;
      select.append(opt);
    }
    if (list.includes(keep)) select.value = keep;
    else if (list.includes(fallback)) select.value = fallback;
  }

  async function loadModels() {
    const status = $("service-status");
    let cards = [];
    try {
      const r = await fetch("/v1/models", { headers: headers() });
      if (!r.ok) throw new Error(await errorText(r));
      cards = (await r.json()).data || [];
      const ready = cards.filter((c) => c.ready).length;
      setStatus(status, cards.length
        ? `${cards.length} model${cards.length === 1 ? "" : "s"} served (${ready} ready): ` +
          cards.map((c) => `${c.id} (${c.task}${c.attention ? ", " + c.attention : ""}` +
                           `${c.lam != null ? ", \u03bb=" + c.lam : ""})`).join(", ")
        : "The service has no models loaded.", false);
    } catch (err) {
      setStatus(status, "Could not list models: " + err.message, true);
    }
    for (const [task, select] of Object.entries(selects)) {
      fillSelect(select, cards.filter((c) => c.task === task).map((c) => c.id), DEFAULTS[task]);
    }
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = $("api-key").value.trim();
    if (apiKey) sessionStorage.setItem("neutreno-api-key", apiKey);
    else sessionStorage.removeItem("neutreno-api-key");
    loadModels();
  });

  // ---- images -----------------------------------------------------------------------------
  // The segmenter's overlay colours: service/imaging.py `palette` (golden-ratio hues, s=0.75,
  // v=0.95, class 0 = black, untinted).
  function paletteColour(index) {
    if (index === 0) return "rgb(0, 0, 0)";
    const h = (index * 0.618033988749895) % 1.0, s = 0.75, v = 0.95;
    const channel = (n) => {
      const k = (n + h * 6.0) % 6.0;
      const c = Math.min(Math.max(Math.min(k, 4.0 - k), 0.0), 1.0);
      return Math.trunc(255.0 * (v - v * s * c));
    };
    return `rgb(${channel(5)}, ${channel(3)}, ${channel(1)})`;
  }

  let originalUrl = null;
  let visionRun = 0;

  async function analyse(blob) {
    const run = ++visionRun;
    const status = $("vision-status");
    if (originalUrl) URL.revokeObjectURL(originalUrl);
    originalUrl = URL.createObjectURL(blob);
    $("original-img").src = originalUrl;
    $("original-img").alt = `The image sent: ${blob.name || "image"}`;
    $("vision-results").hidden = false;
    $("vision-results").setAttribute("aria-busy", "true");
    setStatus(status, `Classifying and segmenting ${blob.name || "the image"}\u2026`, false);
    const classifier = selects.classification.value, segmenter = selects.segmentation.value;
    const [cls, seg] = await Promise.allSettled([
      postImage(`/v1/models/${encodeURIComponent(classifier)}/classify`, blob, { top_k: 5 }),
      postImage(`/v1/models/${encodeURIComponent(segmenter)}/segment`, blob, { overlay: true }),
    ]);
    if (run !== visionRun) return; // a newer image superseded this one
    $("vision-results").removeAttribute("aria-busy");
    const problems = [];
    if (cls.status === "fulfilled") showPredictions(cls.value);
    else { showPredictions({ predictions: [] }); problems.push(`classify: ${cls.reason.message}`); }
    if (seg.status === "fulfilled") showSegmentation(seg.value);
    else { showSegmentation(null); problems.push(`segment: ${seg.reason.message}`); }
    if (problems.length) setStatus(status, problems.join("; "), true);
    else {
      const top = cls.value.predictions[0];
      setStatus(status, `${blob.name || "Image"}: ${top ? top.label : "no prediction"}` +
        `${top ? ` (${(100 * top.score).toFixed(1)}%)` : ""}; ` +
        `${seg.value.classes.length} segment class${seg.value.classes.length === 1 ? "" : "es"}.`,
        false);
    }
  }

  function showPredictions(body) {
    const list = $("predictions");
    list.replaceChildren();
    const preds = body.predictions || [];
    $("top-label").textContent = preds.length ? preds[0].label : "\u2013";
    for (const p of preds) {
      const pct = 100 * p.score;
      const li = document.createElement("li");
      li.dataset.label = p.label;
      li.dataset.score = String(p.score);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = p.label;
      name.title = p.label;
      const track = document.createElement("span");
      track.className = "track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = `${Math.max(0, Math.min(100, pct)).toFixed(2)}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "pct";
      value.textContent = `${pct.toFixed(1)}%`;
      li.append(name, track, value);
      list.append(li);
    }
  }

  function showSegmentation(body) {
    const img = $("overlay-img"), legend = $("legend");
    legend.replaceChildren();
    if (!body) { img.removeAttribute("src"); return; }
    img.src = "data:image/png;base64," + (body.overlay_png || body.mask_png);
    img.dataset.width = String(body.width);
    img.dataset.height = String(body.height);
    for (const c of body.classes) {
      const li = document.createElement("li");
      li.dataset.index = String(c.index);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = paletteColour(c.index);
      sw.setAttribute("aria-hidden", "true");
      const name = document.createElement("span");
      name.textContent = c.index === 0 ? `${c.label} (untinted)` : c.label;
      const frac = document.createElement("span");
      frac.className = "frac";
      frac.textContent = `${(100 * c.pixel_fraction).toFixed(1)}%`;
      li.append(sw, name, frac);
      legend.append(li);
    }
  }

  const drop = $("drop"), fileInput = $("file");
  drop.addEventListener("click", () => fileInput.click());
  drop.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); fileInput.click(); }
  });
  fileInput.addEventListener("change", () => {
    if (fileInput.files && fileInput.files[0]) analyse(fileInput.files[0]);
    fileInput.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "dragend"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const file = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
    if (file) analyse(file);
    else setStatus($("vision-status"), "Drop an image file.", true);
  });
  // Pasting an image also works.
  document.addEventListener("paste", (ev) => {
    const item = [...(ev.clipboardData ? ev.clipboardData.items : [])]
      .find((i) => i.type.startsWith("image/"));
    if (item) analyse(item.getAsFile());
  });

  async function loadSamples() {
    let samples = [];
    try {
      const r = await fetch("/static/samples/index.json");
      if (r.ok) samples = await r.json();
    } catch (_) { /* no samples */ }
    const list = $("samples");
    for (const s of samples) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "sample";
      b.dataset.file = s.file;
      b.title = s.title;
      b.setAttribute("aria-label", `Try sample: ${s.title}`);
      const thumb = document.createElement("img");
      thumb.src = `/static/samples/${s.file}`;
      thumb.alt = "";
      const text = document.createElement("span");
      text.textContent = s.label || "Scene";
      b.append(thumb, text);
      b.addEventListener("click", async () => {
        try {
          const r = await fetch(`/static/samples/${s.file}`);
          if (!r.ok) throw new Error(`HTTP ${r.status}`);
          const blob = await r.blob();
          analyse(new File([blob], s.file, { type: blob.type || "image/png" }));
        } catch (err) {
          setStatus($("vision-status"), `Could not load sample ${s.file}: ${err.message}`, true);
        }
      });
      li.append(b);
      list.append(li);
    }
  }

  // ---- streamed completion ----------------------------------------------------------------
  const temperature = $("temperature");
  const showTemperature = () => { $("temperature-out").value = Number(temperature.value).toFixed(2); };
  temperature.addEventListener("input", showTemperature);

  let controller = null;

  // Server-sent events from a fetch body: yields each event's joined `data:` lines.
  async function* sseData(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
        const raw = buffer.slice(0, cut);
        buffer = buffer.slice(cut + (buffer.startsWith("\r\n\r\n", cut) ? 4 : 2));
        const data = eventData(raw);
        if (data !== null) yield data;
      }
    }
    const tail = eventData(buffer);
    if (tail !== null) yield tail;
  }

  function eventData(raw) {
    const lines = raw.split(/\r\n|\n|\r/).filter((l) => l.startsWith("data:"));
    if (!lines.length) return null;
    return lines.map((l) => l.slice(5).replace(/^ /, "")).join("\n");
  }

  async function generate() {
    if (controller) return;
    const prompt = $("prompt").value;
    const maxTokens = Math.max(1, Math.min(1024, parseInt($("max-tokens").value, 10) || 64));
    const penalty = Math.max(0.5, Math.min(2, Number($("repetition-penalty").value) || 1));
    const model = selects["text-generation"].value;
    const out = $("completion"), text = $("completion-text"), status = $("gen-status");
    $("completion-prompt").textContent = prompt;
    text.textContent = "";
    controller = new AbortController();
    $("generate").disabled = true;
    $("stop").disabled = false;
    out.classList.add("streaming");
    setStatus(status, `Generating with ${model}\u2026`, false);
    const started = performance.now();
    let tokens = 0, firstAt = null, finish = null;
    try {
      const r = await fetch("/v1/completions", {
        method: "POST", signal: controller.signal,
        headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ model, prompt, max_tokens: maxTokens,
                               temperature: Number(temperature.value),
                               repetition_penalty: penalty, stream: true }),
      });
      if (!r.ok) throw new Error(await errorText(r));
      if (!r.body) throw new Error("the browser gave no response stream");
      const events = (r.headers.get("content-type") || "").includes("text/event-stream")
        ? sseData(r.body) : (async function* () { yield await r.text(); })(); // not streamed
      for await (const data of events) {
        if (data === "[DONE]") break;
        let chunk;
        try { chunk = JSON.parse(data); } catch (_) { continue; }
        if (chunk.error) {
          const e = chunk.error;
          throw new Error(typeof e === "string" ? e : e.message || JSON.stringify(e));
        }
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        if (choice.text) {
          if (firstAt === null) firstAt = performance.now();
          text.append(document.createTextNode(choice.text));
          tokens += 1;
          setStatus(status, `Generating with ${model}\u2026 ${tokens} chunk${tokens === 1 ? "" : "s"}`, false);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      const secs = (performance.now() - started) / 1000;
      setStatus(status, `Done: ${tokens} chunk${tokens === 1 ? "" : "s"} in ${secs.toFixed(2)} s` +
        (firstAt !== null ? `, first after ${((firstAt - started) / 1000).toFixed(2)} s` : "") +
        (finish ? `, finish reason: ${finish}` : "") + ".", false);
    } catch (err) {
      if (err.name === "AbortError") setStatus(status, `Stopped after ${tokens} chunks.`, false);
      else setStatus(status, "Generation failed: " + err.message, true);
    } finally {
      controller = null;
      out.classList.remove("streaming");
      $("generate").disabled = false;
      $("stop").disabled = true;
    }
  }

  $("gen-form").addEventListener("submit", (ev) => { ev.preventDefault(); generate(); });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); generate(); }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });

  // ---- metrics ----------------------------------------------------------------------------
  // Prometheus text exposition format -> [{name, labels, value}].
  function parsePrometheus(text) {
    const samples = [];
    const line_re = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$/;
    const label_re = /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = line_re.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        for (const l of m[2].matchAll(label_re)) {
          labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
        }
      }
      samples.push({ name: m[1], labels, value: parseValue(m[3]) });
    }
    return samples;
  }

  function parseValue(s) {
    if (s === "+Inf" || s === "Inf") return Infinity;
    if (s === "-Inf") return -Infinity;
    if (s === "NaN") return NaN;
    return Number(s);
  }

  // histogram_quantile over cumulative buckets {le -> count} (linear within the bucket).
  function histogramQuantile(q, buckets) {
    const les = [...buckets.keys()].sort((a, b) => a - b);
    if (!les.length) return NaN;
    const total = buckets.get(les[les.length - 1]);
    if (!(total > 0)) return NaN;
    const rank = q * total;
    let prevLe = 0, prevCount = 0;
    for (const le of les) {
      const count = buckets.get(le);
      if (count >= rank) {
        if (le === Infinity) return prevLe; // beyond the last finite bucket: its bound
        if (count === prevCount) return le;
        return prevLe + (le - prevLe) * (rank - prevCount) / (count - prevCount);
      }
      prevLe = le; prevCount = count;
    }
    return prevLe;
  }

  const isApi = (s) => /^\/v[12]\//.test(s.labels.endpoint || "");

  function summarise(samples) {
    const sum = (name, pred) => samples.filter((s) => s.name === name && (!pred || pred(s)))
      .reduce((a, s) => a + (Number.isFinite(s.value) ? s.value : 0), 0);
    const has = (name) => samples.some((s) => s.name === name);
    const latency = new Map();
    for (const s of samples) {
      if (s.name !== "neutreno_request_duration_seconds_bucket" || !isApi(s)) continue;
      const le = parseValue(s.labels.le);
      latency.set(le, (latency.get(le) || 0) + s.value);
    }
    const batches = sum("neutreno_batch_size_count");
    const similarity = new Map();
    for (const s of samples) {
      if (s.name !== "neutreno_token_similarity" || !Number.isFinite(s.value)) continue;
      const model = s.labels.model || "?";
      if (!similarity.has(model)) similarity.set(model, []);
      similarity.get(model).push({ layer: Number(s.labels.layer), value: s.value });
    }
    for (const points of similarity.values()) points.sort((a, b) => a.layer - b.layer);
    const info = new Map();
    for (const s of samples) {
      if (s.name === "neutreno_model_info" && s.value > 0) info.set(s.labels.model, s.labels);
    }
    return {
      requests: sum("neutreno_requests_total", isApi),
      errors: sum("neutreno_requests_total", (s) => isApi(s) && Number(s.labels.status) >= 400),
      meanBatch: batches > 0 ? sum("neutreno_batch_size_sum") / batches : NaN,
      queue: has("neutreno_queue_depth") || has("neutreno_waiting_sequences")
        ? sum("neutreno_queue_depth") + sum("neutreno_waiting_sequences") : NaN,
      running: sum("neutreno_running_sequences"),
      p99: histogramQuantile(0.99, latency),
      similarity, info,
    };
  }

  function formatSeconds(s) {
    if (!Number.isFinite(s)) return "\u2013";
    if (s >= 1) return `${s.toFixed(2)} s`;
    const ms = s * 1000;
    return `${ms.toFixed(ms < 10 ? 2 : ms < 100 ? 1 : 0)} ms`;
  }

  function showMetrics(m) {
    $("m-requests").textContent = String(Math.round(m.requests)) +
      (m.errors ? ` (${Math.round(m.errors)} err)` : "");
    $("m-batch").textContent = Number.isFinite(m.meanBatch) ? m.meanBatch.toFixed(2) : "\u2013";
    $("m-queue").textContent = Number.isFinite(m.queue) ? String(Math.round(m.queue)) : "\u2013";
    $("m-p99").textContent = formatSeconds(m.p99);
    drawSimilarity(m.similarity, m.info);
  }

  const SERIES_COLOURS = ["#0b72d9", "#d9480f", "#2b8a3e", "#9c36b5", "#c2255c", "#5c940d"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function drawSimilarity(similarity, info) {
    const box = $("sim-chart");
    const models = [...similarity.keys()].sort();
    const tbody = $("sim-table").querySelector("tbody");
    tbody.replaceChildren();
    if (!models.length) {
      box.replaceChildren();
      $("sim-summary").textContent = "No similarity sampled yet: send a few images or prompts.";
      return;
    }
    const all = models.flatMap((m) => similarity.get(m));
    const maxLayer = Math.max(1, ...all.map((p) => p.layer));
    // cosine similarity lies in [-1, 1]; show [0, 1] unless a value is negative
    const yMin = Math.min(0, Math.floor(Math.min(...all.map((p) => p.value)) * 4) / 4);
    const W = 360, L = 34, R = 10, T = 10, plotH = 150, B = 36 + 16 * models.length;
    const H = T + plotH + B;
    const x = (layer) => L + (W - L - R) * (layer / maxLayer);
    const y = (v) => T + plotH * (1 - (Math.max(yMin, Math.min(1, v)) - yMin) / (1 - yMin));
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, "aria-hidden": "true", focusable: "false" });
    const ticks = [];
    const tick = yMin < -0.5 ? 0.5 : 0.25;
    for (let k = 0; yMin + k * tick <= 1.0001; k++) ticks.push(yMin + k * tick);
    for (const v of ticks) {
      root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      root.append(svg("text", { x: L - 5, y: y(v) + 3.5, "text-anchor": "end" }, v.toFixed(2)));
    }
    const base = y(yMin);
    root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: base }));
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: base, y2: base }));
    const step = Math.max(1, Math.ceil(maxLayer / 12));
    for (let layer = 0; layer <= maxLayer; layer += step) {
      root.append(svg("text", { x: x(layer), y: base + 13, "text-anchor": "middle" }, layer));
    }
    root.append(svg("text", { x: (L + W - R) / 2, y: base + 25, "text-anchor": "middle" }, "layer"));
    const summary = [];
    models.forEach((model, i) => {
      const colour = SERIES_COLOURS[i % SERIES_COLOURS.length];
      const points = similarity.get(model);
      if (points.length > 1) {
        root.append(svg("polyline", { class: "series", stroke: colour,
          points: points.map((p) => `${x(p.layer)},${y(p.value)}`).join(" ") }));
      }
      for (const p of points) {
        const dot = svg("circle", { cx: x(p.layer), cy: y(p.value), r: 3.5, fill: colour });
        dot.append(svg("title", {}, `${model} layer ${p.layer}: ${p.value.toFixed(3)}`));
        root.append(dot);
        const tr = document.createElement("tr");
        for (const cell of [model, String(p.layer), p.value.toFixed(3)]) {
          const td = document.createElement("td");
          td.textContent = cell;
          tr.append(td);
        }
        tbody.append(tr);
      }
      const meta = info.get(model);
      const name = meta ? `${model} (${meta.attention}, \u03bb=${meta.lam})` : model;
      const ly = base + 42 + 16 * i;
      root.append(svg("rect", { x: L, y: ly - 9, width: 11, height: 11, fill: colour, rx: 2 }));
      root.append(svg("text", { class: "legend-text", x: L + 16, y: ly }, name));
      const last = points[points.length - 1];
      summary.push(`${name}: ${points.length} layer${points.length === 1 ? "" : "s"}, ` +
                   `last layer ${last.value.toFixed(3)}`);
    });
    box.replaceChildren(root);
    $("sim-summary").textContent = summary.join("; ") + ".";
  }

  let metricsTimer = null;
  async function pollMetrics() {
    clearTimeout(metricsTimer);
    try {
      const r = await fetch("/metrics", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      showMetrics(summarise(parsePrometheus(await r.text())));
      $("metrics-status").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
      $("metrics-status").classList.remove("error");
    } catch (err) {
      $("metrics-status").textContent = "Metrics unavailable: " + err.message;
      $("metrics-status").classList.add("error");
    }
    if (!document.hidden) metricsTimer = setTimeout(pollMetrics, METRICS_EVERY_MS);
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollMetrics(); });

  // Exposed for the end-to-end tests and the console.
  window.neutreno = { parsePrometheus, histogramQuantile, summarise, paletteColour, sseData };

  showTemperature();
  if (apiKey) $("api-key").value = apiKey;
  loadModels();
  loadSamples();
  pollMetrics();
})();
