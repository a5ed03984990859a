/* One stress-test job, live: progress, charts (plotly.js) and the parts of the page the server renders.
 *
 * An unfinished job follows GET /api/v1/stress-tests/<id>/events with EventSource. The stream starts from
 * the beginning on every (re)connection, so samples are kept by id and levels by position: a reconnect
 * redraws the same points, never doubles them. On a status change or a finished level, the summary and
 * the per-level table are fetched again as one HTML fragment (htmx.ajax, out-of-band for the table).
 * Every text from the server reaches the page through textContent or the server's escaped HTML.
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
    if (progress.level) {
      els.level.textContent = `Level ${progress.level} of ${progress.levels || concurrency.length} · concurrency ${progress.concurrency ?? concurrency[progress.level - 1]}`;
    } else if (status === "queued") {
      els.level.textContent = "Waiting for a worker";
    } else {
      els.level.textContent = `${concurrency.length} level${concurrency.length === 1 ? "" : "s"}`;
    }
    renderSteps(processed);
  }

  function renderSteps(processed) {
    const current = (progress.level || 0) - 1;
    let before = 0;
    const items = concurrency.map((level, index) => {
      const count = counts[index] || 0;
      const doneHere = Math.max(0, Math.min(count, processed - before));
      before += count;
      const finished = levels.has(level) || (index < current) || (job.is_finished && doneHere >= count);
      const state = finished ? "done" : index === current && !isFinished(status) ? "running" : "pending";
      const li = document.createElement("li");
      li.className = `level-step ${state}`;
      li.dataset.concurrency = String(level);
      const head = document.createElement("div");
      head.className = "level-step-head";
      const name = document.createElement("strong");
      name.textContent = `× ${level}`;
      const text = document.createElement("span");
      text.className = "small muted";
      text.textContent = `${fmt(finished ? Math.max(doneHere, levels.get(level)?.requests || 0) : doneHere)} / ${fmt(count)}`;
      head.append(name, text);
      const bar = document.createElement("div");
      bar.className = "progress";
      const fill = document.createElement("span");
      fill.style.width = `${count ? (100 * (finished ? 1 : doneHere / count)).toFixed(1) : 0}%`;
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

  for (const sample of initial.samples || []) samples.set(sample.id, sample);
  for (const level of job.levels || []) addLevel(level);
  renderProgress();
  drawAll();
  if (!job.is_finished) connect();
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
