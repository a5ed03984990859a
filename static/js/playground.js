/* The playground: one prompt streamed to several models, one column per model.
 *
 * A run is POST /api/v1/multi-inference with a JSON body, answered with Server-Sent Events. EventSource
 * can only GET, so the stream is read with fetch() and parsed here, frame by frame. That also means a
 * browser reconnect can never re-send a run: fetch() does not retry on its own (EventSource would), and
 * the Run button is disabled while a run is active, so a double click does not start two runs either.
 * Closing the connection (Stop, or leaving the page) makes the server cancel every upstream call.
 *
 * Model text reaches the page only through textContent or window.renderMarkdown (static/js/markdown.js,
 * marked with raw HTML escaped, then DOMPurify).
 *
 * The settings of the last visit (models, system prompt, max tokens, temperature, manual endpoint; never
 * the prompt, the media or an API key) come back from localStorage, and the page says which did: a
 * forgotten manual endpoint would otherwise run with every prompt. "Clear" empties the manual endpoint,
 * "Reset form" everything.
 */
(() => {
  "use strict";

  const form = document.getElementById("pg-form");
  if (!form) return;

  const STORAGE_KEY = "pep.playground.v1";
  const RENDER_INTERVAL_MS = 100; // Markdown re-rendering and live metrics, at most this often
  const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

  const $ = (selector, root = document) => root.querySelector(selector);
  const els = {
    prompt: $("#pg-prompt"), system: $("#pg-system"), maxTokens: $("#pg-max-tokens"),
    temperature: $("#pg-temperature"), run: $("#pg-run"), stop: $("#pg-stop"), runStatus: $("#pg-run-status"),
    error: $("#pg-error"), notice: $("#pg-notice"), compat: $("#pg-compat"), columns: $("#pg-columns"),
    template: $("#pg-column-template"), modelCount: $("#pg-model-count"), images: $("#pg-images"),
    video: $("#pg-video"), drop: $("#pg-drop"), previews: $("#pg-previews"), mediaError: $("#pg-media-error"),
    manual: $("#pg-manual"), manualUrl: $("#pg-manual-url"), manualModel: $("#pg-manual-model"),
    manualKey: $("#pg-manual-key"), manualState: $("#pg-manual-state"), manualClear: $("#pg-manual-clear"),
    reset: $("#pg-reset"), restored: $("#pg-restored"), restoredList: $("#pg-restored-list"),
    summary: $("#pg-summary"), summaryBody: $("#pg-summary tbody"),
    modelList: $("#pg-model-list"), search: $("#pg-model-search"), availableOnly: $("#pg-available-only"), noMatch: $("#pg-model-nomatch"),
    selectedList: $("#pg-selected-list"), selectedNone: $("#pg-selected-none"),
  };
  const urls = {
    run: form.dataset.runUrl, storedRun: form.dataset.storedRunUrl, history: form.dataset.historyUrl,
    stress: form.dataset.stressUrl,
  };
  const MAX_LINK_LENGTH = 3000; // gunicorn refuses request lines over 4094 bytes: longer prompts go by run id
  const limits = {
    imageBytes: Number(form.dataset.maxImageBytes), videoBytes: Number(form.dataset.maxVideoBytes),
    images: Number(form.dataset.maxImages),
  };
  const modelItems = Array.from(form.querySelectorAll(".pg-model"));
  const modelGroups = Array.from(form.querySelectorAll(".pg-model-group, .pg-reason-group"));
  const checkboxes = Array.from(form.querySelectorAll('input[name="models"]'));
  const catalogKeys = new Set(checkboxes.map((box) => box.value));

  const media = { images: [], video: null, reading: 0 }; // items: {name, size, type, dataUrl, previewUrl}
  let active = null; // the run in progress: {controller, columns, started, stopped, ...}
  let restored = []; // what the last visit left in the form: [{field, text}], shown in #pg-restored

  // --- small helpers ---------------------------------------------------------------------------

  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  }

  function formatMs(ms) {
    if (ms == null) return "—";
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  function show(element, text) {
    element.textContent = text;
    element.hidden = !text;
  }

  const showError = (text) => show(els.error, text);
  const showNotice = (text) => show(els.notice, text);

  function modelLabel(item) {
    return `${$(".pg-model-name", item).textContent} (${item.dataset.key})`;
  }

  const modelName = (item) => $(".pg-model-name", item).textContent;
  const itemFor = (key) => modelItems.find((item) => item.dataset.key === key);

  // --- Server-Sent Events ----------------------------------------------------------------------

  /* An incremental parser: a frame may be split across chunks, a chunk may hold several frames, data may
   * span several "data:" lines, and comments (": ping") are skipped. */
  function createSseParser(onEvent) {
    const decoder = new TextDecoder();
    let buffer = "";
    let eventName = "";
    let dataLines = [];

    function takeLine(line) {
      if (line === "") {
        if (dataLines.length) onEvent(eventName || "message", dataLines.join("\n"));
        eventName = "";
        dataLines = [];
        return;
      }
      if (line.startsWith(":")) return;
      const colon = line.indexOf(":");
      const fieldName = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (fieldName === "event") eventName = value;
      else if (fieldName === "data") dataLines.push(value);
    }

    function drain() {
      const newline = /\r\n|\r|\n/g;
      let start = 0;
      let match;
      while ((match = newline.exec(buffer)) !== null) {
        // A "\r" that ends the buffer may be the first half of "\r\n": wait for the next chunk.
        if (match[0] === "\r" && match.index === buffer.length - 1) break;
        takeLine(buffer.slice(start, match.index));
        start = newline.lastIndex;
      }
      buffer = buffer.slice(start);
    }

    return {
      push(bytes) {
        buffer += decoder.decode(bytes, { stream: true });
        drain();
      },
      end() {
        buffer += decoder.decode();
        drain(); // an event without its closing blank line is incomplete and is dropped, as EventSource does
      },
    };
  }

  // --- answer columns --------------------------------------------------------------------------

  const STATUS_BADGE = { waiting: "", streaming: "run", done: "ok", error: "bad", stopped: "warn" };
  // The words History and the run page use for the stored results (templates/inference/_status.html).
  const STATUS_WORD = { waiting: "waiting", streaming: "streaming", done: "completed", error: "failed", stopped: "stopped" };

  function createColumn(target, run) {
    const node = els.template.content.firstElementChild.cloneNode(true);
    node.dataset.model = target.model;
    const column = {
      key: target.model, node, started: run.started, text: "", reasoning: "", chunks: 0, firstTokenMs: null,
      final: null, error: null, errorMetrics: null, status: "waiting", dirty: false, reasoningDirty: false,
      badge: $(".pg-status", node), metrics: $(".pg-metrics", node), answer: $(".pg-answer", node),
      reasoningBox: $(".pg-reasoning", node), reasoningText: $(".pg-reasoning-text", node),
      reasoningSize: $(".pg-reasoning-size", node), errorBox: $(".pg-error-box", node),
      copy: $(".pg-copy", node), copyNote: $(".pg-copy-note", node),
    };
    $(".pg-column-name", node).textContent = target.name || target.model;
    $(".pg-column-key", node).textContent = target.model;
    column.copy.addEventListener("click", () => copyAnswer(column));
    setStressLink($(".pg-stress", node), target.model, run);
    els.columns.append(node);
    return column;
  }

  /* "Stress-test this prompt": the stress form prefilled with what this run was sent, as the stress pages
   * read it: from=playground, model=<key> (a manual endpoint: manual_url and manual_model, never its key),
   * prompt, and system, max_tokens and temperature when the run had them. Texts too long for a URL go as
   * the run's id instead (run=<id>), from which the stress form reads them. */
  function setStressLink(link, key, run) {
    if (!urls.stress || !run.prompt) return;
    const target = new URLSearchParams({ from: "playground" });
    if (key.startsWith("manual:")) {
      if (!run.manual) return;
      target.set("manual_url", run.manual.api_url || run.manual.base_url || "");
      target.set("manual_model", run.manual.model_name);
    } else {
      target.set("model", key);
    }
    const texts = new URLSearchParams({ prompt: run.prompt });
    if (run.system != null) texts.set("system", run.system);
    const settings = new URLSearchParams();
    if (run.maxTokens != null) settings.set("max_tokens", String(run.maxTokens));
    if (run.temperature != null) settings.set("temperature", String(run.temperature));
    const join = (...parts) => `${urls.stress}?${parts.map(String).filter(Boolean).join("&")}`;
    let href = join(target, texts, settings);
    if (href.length > MAX_LINK_LENGTH) {
      if (!run.runId) return;
      href = join(target, new URLSearchParams({ run: run.runId }), settings);
    }
    link.href = href;
    link.hidden = false;
  }

  function setStatus(column, status) {
    column.status = status;
    column.node.dataset.status = status;
    column.badge.textContent = STATUS_WORD[status];
    column.badge.className = `badge pg-status ${STATUS_BADGE[status]}`.trim();
  }

  const isFinished = (column) => ["done", "error", "stopped"].includes(column.status);

  function metric(name, label, value, title) {
    const span = document.createElement("span");
    span.className = "pg-metric";
    span.dataset.metric = name;
    if (title) span.title = title;
    span.append(`${label} `);
    const strong = document.createElement("b");
    strong.textContent = value;
    span.append(strong);
    return span;
  }

  function renderMetrics(column, now) {
    const parts = [];
    const final = column.final;
    if (final) {
      const approximate = final.token_source === "chunks";
      const tilde = approximate ? "≈" : "";
      parts.push(metric("ttft", "TTFT", formatMs(final.ttft_ms), "time to first token, measured by the server"));
      if (final.tokens_per_s != null) parts.push(metric("tps", "", `${final.tokens_per_s.toFixed(1)} tok/s`));
      const tokens = `${final.input_tokens ?? "?"} in · ${tilde}${final.output_tokens ?? "?"} out`;
      parts.push(metric("tokens", "tokens", tokens));
      parts.push(metric("latency", "total", formatMs(final.latency_ms)));
      if (approximate) {
        parts.push(metric("approx", "", "counts approximate (stream chunks; the server reported no usage)"));
      }
      if (final.finish_reason === "length") parts.push(metric("finish", "", "cut at max tokens"));
    } else {
      if (column.firstTokenMs != null) {
        parts.push(metric("ttft", "TTFT", formatMs(column.firstTokenMs),
                          "measured in the browser until the server's figure arrives"));
        parts.push(metric("tokens", "", `≈${column.chunks} chunk${column.chunks === 1 ? "" : "s"}`));
      } else if (column.status === "waiting") {
        parts.push(metric("ttft", "TTFT", `… ${formatMs(now - column.started)}`, "waiting for the first token"));
      }
      if (column.status === "streaming") parts.push(metric("elapsed", "", formatMs(now - column.started)));
      const failedAfter = column.errorMetrics && column.errorMetrics.latency_ms;
      if (column.status === "error" && failedAfter != null) parts.push(metric("latency", "failed after", formatMs(failedAfter)));
    }
    column.metrics.replaceChildren(...parts.flatMap((part, i) => (i ? [" · ", part] : [part])));
  }

  function renderColumn(column, now) {
    if (column.dirty) {
      column.dirty = false;
      if (typeof window.renderMarkdown === "function") window.renderMarkdown(column.answer, column.text);
      else column.answer.textContent = column.text;
    }
    if (column.reasoningDirty) {
      column.reasoningDirty = false;
      column.reasoningBox.hidden = false;
      column.reasoningText.textContent = column.reasoning;
      column.reasoningSize.textContent = `${column.reasoning.length} characters`;
    }
    column.copy.disabled = !column.text;
    renderMetrics(column, now);
  }

  function renderAll() {
    if (!active) return;
    const now = performance.now();
    for (const column of active.columns.values()) renderColumn(column, now);
  }

  function copyWithSelection(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    if (!copied) throw new Error("copy refused");
  }

  async function copyAnswer(column) {
    try {
      // The clipboard API exists only in secure contexts (https or localhost); plain http falls back.
      if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(column.text);
      else copyWithSelection(column.text);
      column.copyNote.textContent = "copied";
    } catch {
      try {
        copyWithSelection(column.text);
        column.copyNote.textContent = "copied";
      } catch {
        column.copyNote.textContent = "the browser refused to copy";
      }
    }
    setTimeout(() => { column.copyNote.textContent = ""; }, 2000);
  }

  // --- the run ---------------------------------------------------------------------------------

  function handleEvent(run, name, raw) {
    let data;
    try {
      data = JSON.parse(raw);
    } catch {
      return; // not ours; the contract sends JSON only
    }
    const now = performance.now();
    const column = data && data.model != null ? run.columns.get(data.model) : null;
    switch (name) {
      case "run":
        run.runId = data.run_id;
        for (const target of data.targets || []) run.columns.set(target.model, createColumn(target, run));
        els.runStatus.textContent = `Running ${run.columns.size} model${run.columns.size === 1 ? "" : "s"}…`;
        renderAll();
        break;
      case "delta":
      case "reasoning":
        if (!column || isFinished(column)) return;
        if (column.firstTokenMs == null) column.firstTokenMs = now - run.started;
        if (column.status === "waiting") setStatus(column, "streaming");
        if (name === "delta") {
          column.text += data.text;
          column.chunks += 1;
          column.dirty = true;
        } else {
          column.reasoning += data.text;
          column.reasoningDirty = true;
        }
        break;
      case "model_done":
        if (!column) return;
        column.final = data;
        column.dirty = true;
        setStatus(column, "done");
        renderColumn(column, now);
        break;
      case "model_error":
        if (!column) return;
        column.error = data.error || { code: "error", message: "unknown error" };
        column.errorMetrics = data.metrics || null;
        column.dirty = true;
        setStatus(column, "error");
        show(column.errorBox, `${column.error.code}: ${column.error.message}`);
        renderColumn(column, now);
        break;
      case "done":
        run.done = data;
        break;
      default:
        break;
    }
  }

  async function apiError(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) {
        return { message: body.error.message, field: (body.error.details && body.error.details.field) || null };
      }
    } catch {
      // not JSON: fall through to the status line
    }
    return { message: `The server answered ${response.status} ${response.statusText}.`, field: null };
  }

  async function apiErrorMessage(response) {
    return (await apiError(response)).message;
  }

  /* The server names an attached file by its place in the request ("images[1] is not a readable image");
   * the operator knows it by its name. */
  function nameTheFile(error, run) {
    const image = /^images\[(\d+)\]/.exec(error.field || "");
    const name = image ? run.imageNames[Number(image[1])] : error.field === "video" ? run.videoName : null;
    if (!name) return error.message;
    const place = image ? `images[${image[1]}]` : "video";
    const label = image ? `${name} (image ${Number(image[1]) + 1})` : name;
    return error.message.startsWith(place) ? label + error.message.slice(place.length) : `${label}: ${error.message}`;
  }

  function setRunning(running) {
    els.stop.disabled = !running;
    form.classList.toggle("running", running);
    updateRunButton();
  }

  async function startRun() {
    if (active) return; // a second click, or Ctrl+Enter, while a run is active does nothing
    showError("");
    const problem = validate();
    if (problem) {
      showError(problem);
      return;
    }
    const body = requestBody();
    saveSelections();
    const manual = body.manual_config
      ? { api_url: body.manual_config.api_url, base_url: body.manual_config.base_url, model_name: body.manual_config.model_name }
      : null;

    const run = {
      controller: new AbortController(), columns: new Map(), started: performance.now(), stopped: false,
      runId: null, done: null, failure: null, ticker: null, prompt: body.text, manual,
      // what was sent, for the stress-test links (not what the form says by the time one is clicked)
      system: body.system ?? null, maxTokens: body.max_tokens ?? null, temperature: body.temperature ?? null,
      imageNames: media.images.map((image) => image.name), videoName: media.video ? media.video.name : null,
    };
    active = run;
    setRunning(true);
    els.runStatus.textContent = "Starting…";
    run.ticker = setInterval(renderAll, RENDER_INTERVAL_MS);

    try {
      const response = await fetch(urls.run, {
        method: "POST", cache: "no-store", signal: run.controller.signal, body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      });
      if (!response.ok) {
        run.failure = nameTheFile(await apiError(response), run);
      } else {
        els.columns.replaceChildren(); // the last run's answers stay until this one is accepted
        els.summary.hidden = true;
        const parser = createSseParser((name, data) => handleEvent(run, name, data));
        const reader = response.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(value);
        }
        parser.end();
      }
    } catch (error) {
      if (error.name !== "AbortError") run.failure = `The connection failed: ${error.message}`;
    }
    finishRun(run);
  }

  function finishRun(run) {
    clearInterval(run.ticker);
    for (const column of run.columns.values()) {
      if (isFinished(column)) continue;
      if (run.stopped) {
        setStatus(column, "stopped");
      } else {
        setStatus(column, "error");
        show(column.errorBox, "The stream ended before this model finished.");
      }
      column.dirty = true;
    }
    const now = performance.now();
    for (const column of run.columns.values()) renderColumn(column, now);
    renderSummary(run);
    if (run.failure) showError(run.failure);
    els.runStatus.replaceChildren();
    if (run.runId) {
      let summary = "";
      if (run.stopped) {
        const columns = Array.from(run.columns.values());
        const count = (status) => columns.filter((column) => column.status === status).length;
        const failed = count("error");
        summary = `Stopped: ${count("done")} finished, ${count("stopped")} stopped${failed ? `, ${failed} failed` : ""}.`;
      } else if (run.done) {
        summary = `${run.done.succeeded} succeeded, ${run.done.failed} failed.`;
      }
      const link = document.createElement("a");
      link.href = urls.history.replace("RUN_ID", encodeURIComponent(run.runId));
      link.textContent = "open in History";
      els.runStatus.append(`${summary} `, link);
    } else if (run.stopped) {
      els.runStatus.textContent = "Stopped.";
    }
    active = null;
    setRunning(false);
  }

  // --- the summary under the columns --------------------------------------------------------------

  /* One row per model once the run ends. A figure that could not be measured is "—", never 0; the best
   * of TTFT, tokens/s and total time is marked when at least two models have that figure. */
  const SUMMARY_FIGURES = [
    { name: "ttft", value: (final) => final.ttft_ms, format: formatMs, best: "lowest" },
    { name: "tps", value: (final) => final.tokens_per_s, format: (v) => v.toFixed(1), best: "highest" },
    { name: "output", value: (final) => final.output_tokens, best: null,
      format: (v, final) => `${final.token_source === "chunks" ? "≈" : ""}${v.toLocaleString("en")}` },
    { name: "total", value: (final) => final.latency_ms, format: formatMs, best: "lowest" },
  ];

  function renderSummary(run) {
    const columns = Array.from(run.columns.values());
    if (!columns.length) return; // refused before it started: the last run's answers and summary stay
    const best = {};
    for (const figure of SUMMARY_FIGURES) {
      if (!figure.best) continue;
      const values = columns.filter((c) => c.status === "done" && c.final && figure.value(c.final) != null)
        .map((c) => figure.value(c.final));
      if (values.length >= 2) best[figure.name] = figure.best === "lowest" ? Math.min(...values) : Math.max(...values);
    }
    els.summaryBody.replaceChildren(...columns.map((column) => {
      const row = document.createElement("tr");
      row.dataset.model = column.key;
      row.dataset.status = column.status;
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = $(".pg-column-name", column.node).textContent;
      const key = document.createElement("code");
      key.className = "muted small";
      key.textContent = column.key;
      name.append(" ", key);
      row.append(name);
      if (column.status !== "done" || !column.final) {
        const note = document.createElement("td");
        note.colSpan = SUMMARY_FIGURES.length;
        note.className = "pg-summary-note";
        note.textContent = column.status === "stopped"
          ? "stopped before it finished: no figures"
          : `failed${column.error ? ` (${column.error.code})` : ""}: no figures`;
        row.append(note);
        return row;
      }
      for (const figure of SUMMARY_FIGURES) {
        const cell = document.createElement("td");
        cell.className = "num";
        cell.dataset.metric = figure.name;
        const value = figure.value(column.final);
        cell.textContent = value == null ? "—" : figure.format(value, column.final);
        if (value != null && best[figure.name] === value) {
          cell.classList.add("best");
          cell.dataset.best = "true";
          cell.title = `the ${figure.best} of this run`;
          const star = document.createElement("span");
          star.className = "pg-best";
          star.setAttribute("aria-label", "best");
          star.textContent = "★";
          cell.append(" ", star);
        }
        row.append(cell);
      }
      return row;
    }));
    els.summary.hidden = false;
  }

  els.stop.addEventListener("click", () => {
    if (!active) return;
    active.stopped = true;
    active.controller.abort();
  });

  // --- the form --------------------------------------------------------------------------------

  const selectedModels = () => checkboxes.filter((box) => box.checked).map((box) => box.value);
  const manualWanted = () => Boolean(els.manualUrl.value.trim() || els.manualModel.value.trim());

  function manualConfig() {
    if (!manualWanted()) return null;
    const url = els.manualUrl.value.trim();
    const config = { model_name: els.manualModel.value.trim() };
    // A full ".../chat/completions" URL is used as it is; anything else is a base URL.
    if (/\/chat\/completions\/?$/.test(url)) config.api_url = url;
    else config.base_url = url;
    const key = els.manualKey.value;
    if (key) config.api_key = key; // sent with this request only; never stored
    return config;
  }

  function requestBody() {
    const body = { models: selectedModels(), text: els.prompt.value };
    if (els.system.value.trim()) body.system = els.system.value;
    if (els.maxTokens.value !== "") body.max_tokens = Number(els.maxTokens.value);
    if (els.temperature.value !== "") body.temperature = Number(els.temperature.value);
    if (media.images.length) body.images = media.images.map((image) => image.dataUrl);
    if (media.video) body.video = media.video.dataUrl;
    const manual = manualConfig();
    if (manual) body.manual_config = manual;
    return body;
  }

  function validate() {
    if (!selectedModels().length && !manualWanted()) return "Choose at least one model, or fill in a manual endpoint.";
    if (manualWanted()) {
      if (!els.manualUrl.value.trim()) return "Manual endpoint: give its base URL, or clear the model name.";
      if (!els.manualModel.value.trim()) return "Manual endpoint: give the model name the server expects.";
    }
    if (!els.prompt.value.trim()) return "Write a prompt first.";
    const maxTokens = els.maxTokens.value;
    if (maxTokens !== "" && !(Number.isInteger(Number(maxTokens)) && Number(maxTokens) >= 1)) {
      return "Max tokens must be a whole number of at least 1.";
    }
    const temperature = els.temperature.value;
    if (temperature !== "" && !(Number(temperature) >= 0 && Number(temperature) <= 2)) {
      return "Temperature must be between 0 and 2.";
    }
    if (media.reading) return "Still reading the attached files; try again in a moment.";
    return compatibilityProblem();
  }

  /* With media attached, text-only models are flagged; ticked ones block the run, with their names. */
  function compatibilityProblem() {
    const hasImages = media.images.length > 0;
    const hasVideo = media.video !== null;
    const blocked = [];
    for (const item of modelItems) {
      const reasons = [];
      if (hasImages && item.dataset.images !== "1") reasons.push("cannot read images");
      if (hasVideo && item.dataset.video !== "1") reasons.push("cannot read video");
      const flag = $(".pg-model-flag", item);
      show(flag, reasons.join("; "));
      item.classList.toggle("incompatible", reasons.length > 0);
      if (reasons.length && $("input", item).checked) blocked.push(`${modelLabel(item)} ${reasons.join(" or ")}`);
    }
    if (!blocked.length) return "";
    const what = hasImages && hasVideo ? "the images and the video" : hasImages ? "the images" : "the video";
    return `${blocked.join("; ")}: untick ${blocked.length === 1 ? "it" : "them"}, or remove ${what}.`;
  }

  function updateCompatibility() {
    show(els.compat, compatibilityProblem());
    updateRunButton();
  }

  function updateRunButton() {
    els.run.disabled = Boolean(active) || !els.compat.hidden;
    els.reset.disabled = Boolean(active);
    const count = selectedModels().length;
    els.modelCount.textContent = count ? `${count} selected` : "";
    renderSelected();
    renderManualState();
  }

  // --- the model picker: what is selected, search, "available only" -----------------------------

  /* The selection stays in view above the list, whatever the search or the list's scroll hides. */
  function renderSelected() {
    if (!els.selectedList) return;
    const chips = modelItems.filter((item) => $("input", item).checked).map((item) => {
      const chip = document.createElement("li");
      chip.className = `pg-chip${item.dataset.available === "1" ? "" : " unavailable"}`;
      chip.dataset.key = item.dataset.key;
      chip.title = item.dataset.key;
      const label = document.createElement("span");
      label.textContent = modelName(item);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link pg-chip-remove";
      remove.textContent = "✕";
      remove.setAttribute("aria-label", `Untick ${modelName(item)}`);
      remove.addEventListener("click", () => {
        const box = $("input", item);
        box.checked = false;
        box.dispatchEvent(new Event("change", { bubbles: true }));
      });
      chip.append(label, remove);
      return chip;
    });
    if (manualWanted()) {
      const chip = document.createElement("li");
      chip.className = "pg-chip manual";
      chip.dataset.key = "manual";
      chip.title = "the manual endpoint (below the prompt)";
      chip.textContent = `manual: ${els.manualModel.value.trim() || "?"}`;
      chips.push(chip);
    }
    els.selectedList.replaceChildren(...chips);
    els.selectedNone.hidden = chips.length > 0;
  }

  function filterModels() {
    if (!els.search) return;
    const words = els.search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const availableOnly = els.availableOnly.checked;
    let shown = 0;
    for (const item of modelItems) {
      const visible = (!availableOnly || item.dataset.available === "1")
        && words.every((word) => item.dataset.search.includes(word));
      item.hidden = !visible;
      if (visible) shown += 1;
    }
    for (const group of modelGroups) group.hidden = !group.querySelector(".pg-model:not([hidden])");
    els.modelList.scrollTop = 0;
    const hidden = modelItems.length - shown;
    const by = [words.length ? "the search" : "", availableOnly ? "“available only”" : ""].filter(Boolean).join(" and ");
    let text = "";
    if (!shown && words.length) {
      text = `No model matches “${els.search.value.trim()}”${availableOnly ? " among the available ones" : ""}.`;
    } else if (!shown) {
      text = "No model is available; untick “available only” to see the others.";
    } else if (hidden) {
      text = `${hidden} more hidden by ${by}.`;
    }
    show(els.noMatch, text);
  }

  if (els.search) {
    els.search.addEventListener("input", filterModels);
    els.availableOnly.addEventListener("change", filterModels);
    // Enter in the search box must not run the prompt (the form's submit).
    els.search.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.ctrlKey && !event.metaKey) event.preventDefault();
    });
  }

  // --- the manual endpoint ---------------------------------------------------------------------

  function manualDescription() {
    const model = els.manualModel.value.trim() || "(no model name)";
    const url = els.manualUrl.value.trim() || "(no URL)";
    return `${model} at ${url}`;
  }

  function renderManualState() {
    if (manualWanted()) {
      els.manualState.textContent = `· ${manualDescription()} · runs with every prompt`;
      els.manualState.classList.add("pg-manual-on");
    } else {
      els.manualState.textContent = "(any OpenAI-compatible server)";
      els.manualState.classList.remove("pg-manual-on");
    }
    els.manualClear.disabled = !(manualWanted() || els.manualKey.value);
  }

  function clearManual() {
    els.manualUrl.value = "";
    els.manualModel.value = "";
    els.manualKey.value = "";
    forgetRestored("manual");
    saveSelections();
    updateCompatibility();
  }

  els.manualClear.addEventListener("click", clearManual);

  // --- reset -----------------------------------------------------------------------------------

  function resetForm() {
    if (active) return;
    selectModels([]);
    els.prompt.value = "";
    els.system.value = "";
    els.maxTokens.value = els.maxTokens.defaultValue;
    els.temperature.value = "";
    els.manualUrl.value = "";
    els.manualModel.value = "";
    els.manualKey.value = "";
    els.manual.open = false;
    for (const item of [...media.images, ...(media.video ? [media.video] : [])]) URL.revokeObjectURL(item.previewUrl);
    media.images = [];
    media.video = null;
    renderPreviews();
    show(els.mediaError, "");
    if (els.search) {
      els.search.value = "";
      els.availableOnly.checked = false;
      filterModels();
    }
    restored = [];
    renderRestored();
    showNotice("");
    showError("");
    try {
      localStorage.removeItem(STORAGE_KEY);
    } catch {
      // storage disabled: nothing was remembered
    }
    updateCompatibility();
    els.prompt.focus();
  }

  els.reset.addEventListener("click", resetForm);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    startRun();
  });

  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!els.run.disabled) startRun();
    }
  });

  // --- media -----------------------------------------------------------------------------------

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  /* The server reads an image's type from its bytes and refuses what is not a PNG, JPEG, GIF or WebP
   * picture; the browser checks the same before accepting a file, so that a renamed or broken file is
   * refused here, by name, rather than shown as a broken thumbnail and refused by the server later. */
  async function imageProblem(file) {
    const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
    const ascii = (start, end) => String.fromCharCode(...head.slice(start, end));
    const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a].every((byte, i) => head[i] === byte);
    const jpeg = head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
    const gif = ["GIF87a", "GIF89a"].includes(ascii(0, 6));
    const webp = ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP";
    if (!(png || jpeg || gif || webp)) {
      return `${file.name}: not a PNG, JPEG, GIF or WebP image inside, whatever its name says.`;
    }
    try {
      const bitmap = await createImageBitmap(file);
      bitmap.close();
    } catch {
      return `${file.name}: not a readable image; the browser could not decode it (a damaged or cut-off file?).`;
    }
    return "";
  }

  async function addFiles(files) {
    const problems = [];
    const accepted = [];
    let videoSeen = false;
    for (const file of files) {
      if (file.type.startsWith("video/")) {
        if (videoSeen) problems.push(`${file.name}: one video at a time.`);
        else if (file.size > limits.videoBytes) {
          problems.push(`${file.name} is ${formatBytes(file.size)}; a video may be at most ${formatBytes(limits.videoBytes)}.`);
        } else {
          videoSeen = true;
          accepted.push({ file, kind: "video" });
        }
      } else if (IMAGE_TYPES.has(file.type)) {
        if (file.size > limits.imageBytes) {
          problems.push(`${file.name} is ${formatBytes(file.size)}; an image may be at most ${formatBytes(limits.imageBytes)}.`);
        } else if (media.images.length + accepted.filter((a) => a.kind === "image").length >= limits.images) {
          problems.push(`${file.name}: at most ${limits.images} images per run.`);
        } else {
          accepted.push({ file, kind: "image" });
        }
      } else {
        problems.push(`${file.name}: not a PNG, JPEG, GIF or WebP image, nor a video.`);
      }
    }
    show(els.mediaError, problems.join(" "));
    media.reading += accepted.length;
    // Read side by side, kept in the order they were picked (the server's images[i] is that order).
    const items = await Promise.all(accepted.map(async ({ file, kind }) => {
      try {
        const problem = kind === "image" ? await imageProblem(file) : "";
        if (problem) {
          problems.push(problem);
          return null;
        }
        return { kind, name: file.name, size: file.size, type: file.type, dataUrl: await readAsDataUrl(file),
                 previewUrl: URL.createObjectURL(file) };
      } catch (error) {
        problems.push(`${file.name}: could not be read (${error && error.message}).`);
        return null;
      } finally {
        media.reading -= 1;
      }
    }));
    for (const item of items.filter(Boolean)) {
      if (item.kind === "video") {
        if (media.video) URL.revokeObjectURL(media.video.previewUrl);
        media.video = item;
      } else {
        media.images.push(item);
      }
    }
    show(els.mediaError, problems.join(" "));
    renderPreviews();
    updateCompatibility();
  }

  function removeMedia(item) {
    URL.revokeObjectURL(item.previewUrl);
    if (media.video === item) media.video = null;
    else media.images = media.images.filter((image) => image !== item);
    renderPreviews();
    updateCompatibility();
  }

  function renderPreviews() {
    const items = [...media.images, ...(media.video ? [media.video] : [])];
    els.previews.replaceChildren(...items.map((item) => {
      const li = document.createElement("li");
      li.className = "pg-preview";
      const isVideo = item === media.video;
      const visual = document.createElement(isVideo ? "video" : "img");
      visual.src = item.previewUrl;
      if (isVideo) {
        visual.muted = true;
        visual.controls = true;
        visual.preload = "metadata";
      } else {
        visual.alt = item.name;
      }
      const caption = document.createElement("div");
      caption.className = "pg-preview-caption small";
      const name = document.createElement("span");
      name.className = "pg-preview-name";
      name.textContent = item.name;
      name.title = item.name;
      const size = document.createElement("span");
      size.className = "muted";
      size.textContent = `${isVideo ? "video · " : ""}${formatBytes(item.size)}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link pg-remove";
      remove.textContent = "✕";
      remove.title = `Remove ${item.name}`;
      remove.setAttribute("aria-label", `Remove ${item.name}`);
      remove.addEventListener("click", () => removeMedia(item));
      caption.append(name, size, remove);
      li.append(visual, caption);
      return li;
    }));
  }

  // One batch after another (picked, then dropped...): previews and the server's images[i] keep the order the
  // files were added in, even when a later, smaller batch is read first.
  let adding = Promise.resolve();
  function addInOrder(files) {
    adding = adding.then(() => addFiles(files))
      .catch((error) => show(els.mediaError, `The files could not be added: ${error && error.message}`));
  }

  for (const input of [els.images, els.video]) {
    input.addEventListener("change", () => {
      const files = Array.from(input.files);
      input.value = ""; // the same file may be picked again after removing it
      addInOrder(files);
    });
  }

  const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  els.drop.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    els.drop.classList.add("dragging");
  });
  els.drop.addEventListener("dragleave", (event) => {
    if (!els.drop.contains(event.relatedTarget)) els.drop.classList.remove("dragging");
  });
  els.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    els.drop.classList.remove("dragging");
    addInOrder(Array.from(event.dataTransfer.files));
  });
  // A file dropped beside the drop zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
  window.addEventListener("drop", (event) => { if (hasFiles(event)) event.preventDefault(); });

  // --- remembered selections and prefills ------------------------------------------------------

  function saveSelections() {
    const saved = {
      models: selectedModels(), system: els.system.value, max_tokens: els.maxTokens.value,
      temperature: els.temperature.value, manual_url: els.manualUrl.value, manual_model: els.manualModel.value,
    }; // never the API key, the prompt or the media
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
    } catch {
      // storage full or disabled: the page works without it
    }
  }

  function loadSelections() {
    try {
      return JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    } catch {
      return null;
    }
  }

  function selectModels(keys) {
    const wanted = new Set(keys);
    for (const box of checkboxes) box.checked = wanted.has(box.value);
  }

  /* Puts the last visit's settings back and returns what that changed from the page's defaults, one
   * {field, text} each, for #pg-restored. */
  function applySelections(saved) {
    if (!saved || typeof saved !== "object") return [];
    if (Array.isArray(saved.models)) selectModels(saved.models);
    if (typeof saved.system === "string") els.system.value = saved.system;
    if (saved.max_tokens != null) els.maxTokens.value = saved.max_tokens;
    if (saved.temperature != null) els.temperature.value = saved.temperature;
    if (typeof saved.manual_url === "string") els.manualUrl.value = saved.manual_url;
    if (typeof saved.manual_model === "string") els.manualModel.value = saved.manual_model;
    if (els.manualUrl.value || els.manualModel.value) els.manual.open = true;

    const changes = [];
    const names = modelItems.filter((item) => $("input", item).checked).map(modelName);
    if (names.length) changes.push({ field: "models", text: `models: ${names.join(", ")}` });
    if (els.system.value.trim()) changes.push({ field: "system", text: `system prompt: “${cut(els.system.value, 80)}”` });
    if (els.maxTokens.value !== els.maxTokens.defaultValue) {
      changes.push({ field: "max_tokens", text: `max tokens: ${els.maxTokens.value || "(empty: each model's default)"}` });
    }
    if (els.temperature.value !== "") changes.push({ field: "temperature", text: `temperature: ${els.temperature.value}` });
    if (manualWanted()) {
      changes.push({ field: "manual", text: `manual endpoint: ${manualDescription()}; it runs with every prompt until cleared` });
    }
    return changes;
  }

  function cut(text, length) {
    const flat = text.replace(/\s+/g, " ").trim();
    return flat.length > length ? `${flat.slice(0, length - 1)}…` : flat;
  }

  function renderRestored() {
    els.restoredList.replaceChildren(...restored.map((item) => {
      const li = document.createElement("li");
      li.dataset.field = item.field;
      li.textContent = item.text;
      return li;
    }));
    els.restored.hidden = restored.length === 0;
  }

  /* A restored setting that no longer holds (replaced by a link or a run, cleared) leaves the notice. */
  function forgetRestored(...fields) {
    const before = restored.length;
    restored = restored.filter((item) => !fields.includes(item.field));
    if (restored.length !== before) renderRestored();
  }

  async function prefillFromRun(runId) {
    let response;
    try {
      response = await fetch(urls.storedRun.replace("RUN_ID", encodeURIComponent(runId)), { cache: "no-store" });
    } catch (error) {
      showError(`Could not load run ${runId}: ${error.message}`);
      return;
    }
    if (!response.ok) {
      showError(`Could not load run ${runId}: ${await apiErrorMessage(response)}`);
      return;
    }
    const run = await response.json();
    const params = run.params || {};
    const notes = [];
    forgetRestored("models", "system", "max_tokens", "temperature", "manual");
    els.prompt.value = run.prompt || "";
    els.system.value = run.system || "";
    els.maxTokens.value = params.max_tokens ?? "";
    els.temperature.value = params.temperature ?? "";
    const models = run.models || [];
    selectModels(models.filter((key) => catalogKeys.has(key)));
    const gone = models.filter((key) => !catalogKeys.has(key) && !key.startsWith("manual:"));
    if (gone.length) notes.push(`No longer in the catalogue: ${gone.join(", ")}.`);
    const manual = params.manual_config;
    els.manualKey.value = "";
    if (manual) {
      els.manualUrl.value = manual.base_url || manual.api_url || "";
      els.manualModel.value = manual.model_name || "";
      els.manual.open = true;
      if (manual.api_key_given) notes.push("The manual endpoint had an API key; keys are never stored, so enter it again.");
    } else {
      // The run had none: a manual endpoint left from an earlier visit must not join it.
      els.manualUrl.value = "";
      els.manualModel.value = "";
    }
    const images = (params.images || []).length;
    if (images) notes.push(`The original run had ${images} image${images === 1 ? "" : "s"}; attach ${images === 1 ? "it" : "them"} again.`);
    if (params.video) notes.push("The original run had a video; attach it again.");
    showNotice([`Prefilled from run ${run.id}.`, ...notes].join(" "));
    updateCompatibility();
  }

  function prefillFromQuery(query) {
    const models = query.getAll("model").flatMap((value) => value.split(",")).filter(Boolean);
    if (models.length) {
      selectModels(models.filter((key) => catalogKeys.has(key)));
      forgetRestored("models");
      const unknown = models.filter((key) => !catalogKeys.has(key));
      if (unknown.length) showNotice(`Not in the catalogue: ${unknown.join(", ")}.`);
    }
    if (query.has("prompt")) els.prompt.value = query.get("prompt");
    if (query.has("system")) {
      els.system.value = query.get("system");
      forgetRestored("system");
    }
  }

  form.addEventListener("change", (event) => {
    if (event.target.name === "models") updateCompatibility();
    if (event.target !== els.manualKey && event.target !== els.prompt) saveSelections();
  });
  form.addEventListener("input", (event) => {
    if ([els.system, els.maxTokens, els.temperature, els.manualUrl, els.manualModel].includes(event.target)) {
      saveSelections();
    }
    if ([els.manualUrl, els.manualModel, els.manualKey].includes(event.target)) {
      if (!manualWanted()) forgetRestored("manual");
      renderSelected();
      renderManualState();
    }
  });

  restored = applySelections(loadSelections());
  renderRestored();
  const query = new URLSearchParams(window.location.search);
  prefillFromQuery(query);
  filterModels();
  updateCompatibility();
  if (query.get("run")) prefillFromRun(query.get("run"));
})();
