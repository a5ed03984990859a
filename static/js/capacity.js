// The capacity search page: draws the search's figures (plotly JSON built by the server) and, until the
// search ends, reads /api/v1/capacity-searches/<id> every two seconds to show each probe as it lands.
// Text goes in through textContent only: nothing from the server is parsed as HTML.
(function () {
  "use strict";
  const POLL_MS = 2000;
  const RESULTS = "/results/";
  // The classes templates/_format.html's status_badge gives each status.
  const STATUS_CLASS = {running: "run", cancelling: "warn", completed: "ok", failed: "bad", cancelled: "warn",
    interrupted: "bad"};

  function fixed(value, digits) {
    return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (text !== undefined) td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function badge(parent, text, kind) {
    const span = document.createElement("span");
    span.className = "badge " + (kind || "");
    span.textContent = text;
    parent.appendChild(span);
  }

  function probeRow(probe) {
    const row = document.createElement("tr");
    cell(row, String(probe.concurrency));
    cell(row, String(probe.repeats.length));
    [["ttft_ms", 1], ["tpot_ms", 2], ["latency_s", 3]].forEach(function (pair) {
      const s = probe.spread[pair[0]];
      const td = cell(row, fixed(s.mean, pair[1]));
      if (s.mean !== null) {
        const range = document.createElement("span");
        range.className = "muted small";
        range.textContent = " (" + fixed(s.min, pair[1]) + "–" + fixed(s.max, pair[1]) + ")";
        td.appendChild(range);
      }
    });
    const rate = probe.mean.error_rate;
    cell(row, rate === null ? "—" : (rate * 100).toFixed(1) + " %");
    cell(row, fixed(probe.output_tokens_per_s, 1));
    const verdict = cell(row);
    if (probe.verdict.meets === true) badge(verdict, "meets", "ok");
    else if (probe.verdict.meets === false) badge(verdict, "breaks " + probe.verdict.broken.join(", "), "bad");
    else badge(verdict, "not judged");
    const jobs = cell(row);
    probe.jobs.forEach(function (id) {
      const link = document.createElement("a");
      link.href = RESULTS + encodeURIComponent(id);
      link.textContent = id;
      jobs.appendChild(link);
      jobs.appendChild(document.createTextNode(" "));
    });
    return row;
  }

  function setText(id, text) {
    const node = document.getElementById(id);
    if (node) node.textContent = text;
  }

  // The same words as templates/results/capacity.html writes on first render.
  function pendingText(search) {
    const p = search.pending;
    if (!p) return "";
    if (p.estimate) return "Estimating where to start: " + p.concurrency + " requests at once.";
    return "Probing concurrency " + p.concurrency + ": repeat " + p.jobs.length + " of " + search.repeats + ".";
  }

  function estimateText(search) {
    if (!search.start_auto) return "";
    return search.estimate ? "Start from Little's law: " + search.estimate.reason + "."
      : "Start from Little's law: measuring.";
  }

  function show(search) {
    const body = document.getElementById("probes-body");
    if (body) body.replaceChildren.apply(body, search.probes.map(probeRow));
    const status = document.getElementById("search-status");
    if (status) {
      const span = status.querySelector(".job-status");
      if (span) {
        span.textContent = search.status;
        span.dataset.status = search.status;
        span.className = "badge job-status " + (STATUS_CLASS[search.status] || "");
      }
    }
    setText("search-capacity", search.capacity !== null ? "concurrency " + search.capacity
      : (search.is_finished ? "none" : "searching"));
    setText("search-reason", search.reason || "");
    setText("search-bracket", (search.bracket.last_good ?? "—") + " – " + (search.bracket.first_bad ?? "—"));
    setText("search-next", search.next_probe !== null ? "next probe: concurrency " + search.next_probe : "");
    const cost = search.cost_at_capacity.usd_per_m_output_tokens;
    setText("search-cost", cost === null ? "unknown" : "$" + cost.toFixed(3));
    setText("search-cost-reason", search.cost_at_capacity.reason);
    setText("search-pending", pendingText(search));
    setText("search-estimate", estimateText(search));
    setText("search-start", String(search.start));
    draw(search.figures);
  }

  function draw(figures) {
    const box = document.getElementById("figures");
    if (!box || typeof Plotly === "undefined") return;
    while (box.children.length < figures.length) {
      const div = document.createElement("div");
      div.className = "figure";
      box.appendChild(div);
    }
    figures.forEach(function (figure, i) {
      Plotly.react(box.children[i], figure.data, figure.layout, {displaylogo: false, responsive: true});
    });
    box.dataset.drawn = String(figures.length);
  }

  function start() {
    const panel = document.getElementById("capacity-search");
    const data = document.getElementById("search-data");
    if (!panel || !data) return;
    const first = JSON.parse(data.textContent);
    draw(first.figures);
    let seen = JSON.stringify([first.status, first.probes.length, first.pending]);
    if (first.is_finished) return;
    const timer = setInterval(function () {
      fetch(panel.dataset.url, {headers: {Accept: "application/json"}})
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (search) {
          if (!search) return;
          const now = JSON.stringify([search.status, search.probes.length, search.pending]);
          if (now !== seen) { seen = now; show(search); }
          if (search.is_finished) { clearInterval(timer); panel.dataset.finished = "true"; }
        })
        .catch(function () { /* a missed poll: the next one tries again */ });
    }, POLL_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
