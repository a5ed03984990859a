/* One stress-test job, live: progress, charts (plotly.js) and the parts of the page the server renders.
 *
 * An unfinished job follows GET /api/v1/stress-tests/<id>/events with EventSource. The stream starts from
 * the beginning on every (re)connection, so samples are kept by id and levels by position: a reconnect
 * redraws the same points, never doubles them. On a status change or a finished level, the summary and
 * the per-level table are fetched again as one HTML fragment (htmx.ajax, out-of-band for the table).
 * Every text from the server reaches the page through textContent or the server's escaped HTML.
 *
 * What the page says while a job runs: the phase the worker reports (evalscope starting, a level's
 * warm-up, its first requests, the pause between levels, the final reports), the duration counted here
 * every second from the server's figure (no client clock involved), and per level how many requests
 * succeeded and failed, in words and colour. When the job ends, the log is read once more and stops
 * refreshing.
 */
(() => {
  "use strict";

  const root = document.getElementById("job-page");
  if (!root) return;
  const initial = JSON.parse(document.getElementById("job-data").textContent);
  const job = initial.job;
  const els = {
    progress: document.getElementById("job-progress"), level: document.getElementById("job-progress-level"),
    counts: document.getElementById("job-progress-counts"), bar: document.getElementById("job-progress-bar"),
    steps: document.getElementById("job-level-steps"), note: document.getElementById("job-live-note"),
  };
  const counts = (job.params.requests || []).slice();
  const concurrency = (job.params.concurrency || []).slice();
  const samples = new Map(); // id -> sample
  const levels = new Map(); // concurrency -> level result
  const liveCounts = new Map(); // concurrency -> latest sample's {ok, errors} while the level runs
  const pauseS = Number(root.dataset.levelPauseS || 0);
  let progress = job.progress || {};
  let status = job.status;
  let shownStatus = job.status; // what the server-rendered summary says
  let source = null;
  let redrawTimer = null;
  let refreshing = false;
  let refreshAgain = false;

  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f", "#be185d", "#475569", "#7c2d12"];
  const colour = (level) => PALETTE[Math.max(concurrency.indexOf(level), 0) % PALETTE.length];
  const fmt = (n) => Number(n || 0).toLocaleString("en");

  // --- progress ----------------------------------------------------------------------------------

  function renderProgress() {
    const percent = Number(progress.percent || 0);
    const total = progress.total ?? counts.reduce((a, b) => a + b, 0);
    const processed = progress.processed || 0;
    els.progress.dataset.processed = String(processed);
    els.progress.dataset.percent = String(percent);
    els.progress.dataset.level = String(progress.level || 0);
    els.progress.dataset.status = status;
    els.bar.style.width = `${Math.min(percent, 100).toFixed(1)}%`;
    els.bar.parentElement.setAttribute("aria-valuenow", percent.toFixed(0));
    els.bar.parentElement.className = `progress big status-${status}`;
    els.counts.textContent = `${fmt(processed)} / ${fmt(total)} requests · ${percent.toFixed(0)} %`;
    renderPhase();
    renderSteps(processed);
  }

  /* What evalscope is doing now, from the phase the worker records with the progress. */
  function phaseText() {
    const count = progress.levels || concurrency.length;
    if (status === "queued") return "Waiting for a worker";
    if (isFinished(status)) return `${concurrency.length} level${concurrency.length === 1 ? "" : "s"}`;
    const level = progress.level || 0;
    const head = level ? `Level ${level} of ${count} · concurrency ${progress.concurrency ?? concurrency[level - 1]}` : "";
    const cancelling = status === "cancelling" ? " · cancelling" : "";
    switch (level ? progress.phase : "starting") {
      case "warmup": {
        const n = progress.warmup || 0;
        return `${head} · warm-up: ${fmt(n)} request${n === 1 ? "" : "s"}, not counted${cancelling}`;
      }
      case "first":
        return `${head} · waiting for its first request to end${cancelling}`;
      case "pause":
        return `Level ${level} of ${count} done · pause of ${pauseS} s before level ${level + 1}${cancelling}`;
      case "finishing":
        return `Level ${level} of ${count} done · EvalScope is writing its reports${cancelling}`;
      case "starting": {
        const elapsed = durationSoFar();
        return `Starting EvalScope${elapsed != null ? ` (${formatDuration(elapsed)})` : ""}: connection test, loading, `
          + `then the first level${cancelling}`;
      }
      default:
        return head + cancelling;
    }
  }

  function renderPhase() {
    const text = phaseText();
    if (els.level.textContent !== text) els.level.textContent = text;
    els.progress.dataset.phase = isFinished(status) ? "" : (progress.level ? progress.phase || "" : (status === "queued" ? "queued" : "starting"));
  }

  // --- duration, counted here --------------------------------------------------------------------

  function formatDuration(seconds) { // as the server's duration macro (templates/stress/_macros.html)
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
    return `${Math.floor(seconds / 3600)} h ${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")} min`;
  }

  const seenAt = new WeakMap(); // the summary's duration element -> when this page received it

  /* Seconds since the job started: the server's figure when it rendered the summary, plus the time since. */
  function durationSoFar() {
    const el = document.getElementById("job-duration");
    if (!el || !el.dataset.ticking) return null;
    if (!seenAt.has(el)) seenAt.set(el, performance.now());
    return Number(el.dataset.elapsedS) + (performance.now() - seenAt.get(el)) / 1000;
  }

  function tick() {
    const el = document.getElementById("job-duration");
    const seconds = durationSoFar();
    if (seconds != null && !isFinished(status)) el.textContent = formatDuration(seconds);
    renderPhase();
  }

  function renderSteps(processed) {
    const current = (progress.level || 0) - 1;
    let before = 0;
    const items = concurrency.map((level, index) => {
      const count = counts[index] || 0;
      const doneHere = Math.max(0, Math.min(count, processed - before));
      before += count;
      const result = levels.get(level);
      const finished = Boolean(result) || (index < current) || (job.is_finished && doneHere >= count);
      const state = finished ? "done" : index === current && !isFinished(status) ? "running" : "pending";
      // Succeeded and failed: the level's results once stored, the latest live sample before that.
      const seen = liveCounts.get(level);
      const live = seen && seen.ok + seen.errors > 0 ? seen : null; // a sample taken as the level began says nothing
      const ok = result ? result.succeeded : live ? live.ok : null;
      const failed = result ? result.failed : live ? live.errors : null;
      const outcome = ok == null ? "unknown" : !failed ? "ok" : ok ? "mixed" : "bad";
      const li = document.createElement("li");
      li.className = `level-step ${state} outcome-${outcome}`;
      li.dataset.concurrency = String(level);
      li.dataset.outcome = outcome;
      const head = document.createElement("div");
      head.className = "level-step-head";
      const name = document.createElement("strong");
      name.textContent = `× ${level}`;
      const text = document.createElement("span");
      text.className = "small level-step-counts";
      if (ok == null) {
        text.textContent = `${fmt(finished ? Math.max(doneHere, result?.requests || 0) : doneHere)} / ${fmt(count)}`;
      } else {
        const okText = document.createElement("span");
        okText.className = ok ? "ok-text" : "muted";
        okText.textContent = `${fmt(ok)} ok`;
        text.append(okText);
        if (failed) {
          const failedText = document.createElement("span");
          failedText.className = "bad-text";
          failedText.textContent = ` · ${fmt(failed)} failed`;
          text.append(failedText);
        }
        text.append(document.createTextNode(` of ${fmt(count)}`));
      }
      text.title = ok == null ? "requests done" : `${ok} succeeded, ${failed} failed, of ${count}`;
      head.append(name, text);
      const bar = document.createElement("div");
      bar.className = "progress";
      const fill = document.createElement("span");
      const done = ok == null ? doneHere : ok + failed;
      fill.style.width = `${count ? (100 * (finished ? 1 : Math.min(done / count, 1))).toFixed(1) : 0}%`;
      bar.append(fill);
      li.append(head, bar);
      return li;
    });
    els.steps.replaceChildren(...items);
  }

  const isFinished = (value) => ["completed", "failed", "cancelled", "interrupted"].includes(value);

  // --- charts ------------------------------------------------------------------------------------

  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };

  function baseLayout(title, yTitle, xSuffix) {
    return {
      title: { text: title, font: { size: 13 }, x: 0.02, xanchor: "left" },
      height: 280, margin: { l: 56, r: 14, t: 34, b: 30 }, font: { size: 11 },
      xaxis: { zeroline: false, ticksuffix: xSuffix || "", automargin: true }, yaxis: { title: { text: yTitle }, rangemode: "tozero" },
      legend: { orientation: "h", x: 0, y: -0.14, yanchor: "top", font: { size: 10 } }, showlegend: true,
      paper_bgcolor: "#fff", plot_bgcolor: "#fff", hovermode: "closest",
    };
  }

  function emptyNote(layout, text) {
    return {
      ...layout, xaxis: { visible: false }, yaxis: { visible: false }, yaxis2: { visible: false, overlaying: "y" },
      annotations: [{ text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#5d6b7c" } }],
    };
  }

  function seriesFor(field) {
    const byLevel = new Map();
    const ordered = Array.from(samples.values()).sort((a, b) => a.t - b.t || a.id - b.id);
    for (const sample of ordered) {
      if (sample[field] == null) continue;
      if (!byLevel.has(sample.level)) byLevel.set(sample.level, { x: [], y: [] });
      const series = byLevel.get(sample.level);
      series.x.push(sample.t);
      series.y.push(sample[field]);
    }
    return Array.from(byLevel.entries()).sort((a, b) => a[0] - b[0]).map(([level, series]) => ({
      type: "scatter", mode: "lines+markers", name: `concurrency ${level}`, x: series.x, y: series.y,
      line: { color: colour(level), width: 1.5 }, marker: { size: 4 },
      hovertemplate: `%{y:.2f} at %{x:.1f} s<extra>× ${level}</extra>`,
    }));
  }

  function drawTimeChart(id, field, title, unit) {
    const traces = seriesFor(field);
    let layout = baseLayout(title, unit, " s");
    if (!traces.length) layout = emptyNote(layout, isFinished(status) ? "no samples were recorded" : "waiting for the first requests to end…");
    window.Plotly.react(id, traces, layout, CONFIG);
  }

  function drawLevelCharts() {
    const rows = Array.from(levels.values()).sort((a, b) => a.concurrency - b.concurrency);
    const x = rows.map((row) => `× ${row.concurrency}`);
    const pick = (metric, key) => rows.map((row) => (row[metric] ? row[metric][key] : null));
    let throughputLayout = baseLayout("Throughput by concurrency", "output tokens/s");
    throughputLayout.xaxis.type = "category";
    const right = (text) => ({ title: { text }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false,
      tickmode: "auto" });
    throughputLayout.yaxis2 = right("requests/s");
    throughputLayout.margin.r = 56;
    let latencyLayout = baseLayout("Latency by concurrency", "seconds");
    latencyLayout.xaxis.type = "category";
    latencyLayout.yaxis2 = right("TTFT ms");
    latencyLayout.margin.r = 56;
    if (!rows.length) {
      const text = isFinished(status) ? "no level finished" : "appears when the first level finishes";
      throughputLayout = emptyNote(throughputLayout, text);
      latencyLayout = emptyNote(latencyLayout, text);
    }
    window.Plotly.react("chart-level-throughput", rows.length ? [
      { type: "bar", name: "output tok/s", x, y: rows.map((row) => row.output_tokens_per_s), marker: { color: "#2563eb" } },
      { type: "scatter", mode: "lines+markers", name: "req/s", x, y: rows.map((row) => row.req_per_s), yaxis: "y2", line: { color: "#d97706" } },
    ] : [], throughputLayout, CONFIG);
    window.Plotly.react("chart-level-latency", rows.length ? [
      { type: "scatter", mode: "lines+markers", name: "latency p50", x, y: pick("latency_s", "p50"), line: { color: "#2563eb" } },
      { type: "scatter", mode: "lines+markers", name: "latency p99", x, y: pick("latency_s", "p99"), line: { color: "#2563eb", dash: "dot" } },
      { type: "scatter", mode: "lines+markers", name: "TTFT p50 (ms)", x, y: pick("ttft_ms", "p50"), yaxis: "y2", line: { color: "#16a34a" } },
      { type: "scatter", mode: "lines+markers", name: "TTFT p99 (ms)", x, y: pick("ttft_ms", "p99"), yaxis: "y2", line: { color: "#16a34a", dash: "dot" } },
    ] : [], latencyLayout, CONFIG);
  }

  function drawAll() {
    redrawTimer = null;
    if (!window.Plotly) return;
    drawTimeChart("chart-ttft", "ttft_ms", "Time to first token", "ms");
    drawTimeChart("chart-latency", "latency_s", "Request latency", "seconds");
    drawTimeChart("chart-throughput", "output_tokens_per_s", "Output throughput", "tokens/s");
    drawLevelCharts();
  }

  function scheduleDraw() {
    if (redrawTimer === null) redrawTimer = setTimeout(drawAll, 300);
  }

  // --- server-rendered parts ---------------------------------------------------------------------

  /* The summary (and, out of band, the per-level table) again; one request at a time. */
  function refreshState() {
    if (!window.htmx) return;
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    window.htmx.ajax("GET", root.dataset.stateUrl, { target: "#job-summary", swap: "outerHTML" }).finally(() => {
      refreshing = false;
      const summary = document.getElementById("job-summary");
      if (summary) shownStatus = summary.dataset.status;
      if (refreshAgain || shownStatus !== status) {
        refreshAgain = false;
        if (shownStatus !== status) refreshState();
      }
    });
  }

  /* The log once more when the job has ended: the finished log neither polls nor says it refreshes. */
  function refreshLog() {
    if (!window.htmx || !document.getElementById("job-log")) return;
    window.htmx.ajax("GET", root.dataset.logUrl, { target: "#job-log", swap: "outerHTML" });
  }

  function noteLiveCounts(sample) {
    const known = liveCounts.get(sample.level);
    if (!known || known.id < sample.id) liveCounts.set(sample.level, { id: sample.id, ok: sample.ok, errors: sample.errors });
  }

  // --- the event stream --------------------------------------------------------------------------

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch {
      return null;
    }
  }

  function addLevel(level) {
    if (!level || levels.has(level.concurrency)) return false;
    levels.set(level.concurrency, level);
    return true;
  }

  function connect() {
    source = new EventSource(root.dataset.eventsUrl);
    source.addEventListener("open", () => { els.note.textContent = ""; });
    source.addEventListener("progress", (event) => {
      const data = parse(event);
      if (!data) return;
      progress = data;
      if (data.status) status = data.status;
      renderProgress();
    });
    source.addEventListener("sample", (event) => {
      const data = parse(event);
      if (!data || samples.has(data.id)) return;
      samples.set(data.id, data);
      noteLiveCounts(data);
      renderSteps(progress.processed || 0);
      scheduleDraw();
    });
    source.addEventListener("level", (event) => {
      if (addLevel(parse(event))) {
        renderProgress();
        scheduleDraw();
        refreshState();
      }
    });
    source.addEventListener("status", (event) => {
      const data = parse(event);
      if (!data) return;
      status = data.status;
      renderProgress();
      if (status !== shownStatus) refreshState();
    });
    source.addEventListener("end", (event) => {
      source.close();
      source = null;
      const data = parse(event);
      if (data && data.status && data.status !== "deleted") {
        status = data.status;
        job.is_finished = true;
        if (data.progress) progress = { ...data.progress, status };
        for (const level of data.levels || []) addLevel(level);
      }
      els.note.textContent = "";
      renderProgress();
      drawAll();
      refreshState();
      refreshLog();
    });
    source.addEventListener("error", () => {
      // EventSource reconnects on its own (the stream replays from the start; duplicates are dropped).
      if (source && source.readyState === EventSource.CLOSED) {
        els.note.textContent = "live updates stopped: reload the page";
      } else {
        els.note.textContent = "reconnecting…";
      }
    });
  }

  // --- start -------------------------------------------------------------------------------------

  for (const sample of initial.samples || []) {
    samples.set(sample.id, sample);
    noteLiveCounts(sample);
  }
  for (const level of job.levels || []) addLevel(level);
  renderProgress();
  drawAll();
  if (!job.is_finished) {
    connect();
    const ticker = setInterval(() => {
      tick();
      if (isFinished(status)) clearInterval(ticker);
    }, 1000);
  }
  window.addEventListener("pagehide", () => { if (source) source.close(); });
  /* The log tail shows its end, unless the reader scrolled up in it. */
  let logPinned = true;
  function pinLog() {
    const pre = document.querySelector("#job-log pre");
    if (!pre) return;
    if (logPinned) pre.scrollTop = pre.scrollHeight;
    pre.addEventListener("scroll", () => { logPinned = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8; });
  }
  pinLog();
  document.body.addEventListener("htmx:afterSettle", () => {
    const summary = document.getElementById("job-summary"); // after Cancel, too
    if (summary) shownStatus = summary.dataset.status;
    pinLog();
  });
})();
