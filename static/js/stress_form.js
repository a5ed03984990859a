/* The new-stress-test form: presets, the fields each dataset needs, dataset upload, checks and a live estimate.
 *
 * The form itself is posted by htmx (hx-post); a refused submission answers with messages that htmx
 * places next to their fields, so nothing typed is lost. Before that, this script refuses what the
 * server would refuse and it can tell (a number field holding text, a value out of its bounds), with
 * the same kind of message next to the field ("Output tokens: enter a whole number"), and the estimate
 * shows no figures while the form holds such a value. Nothing here stores anything in the browser:
 * the API key field is a password input that only goes out with the POST.
 */
(() => {
  "use strict";

  const form = document.getElementById("stress-form");
  if (!form) return;
  const $ = (selector) => form.querySelector(selector);
  const data = JSON.parse(document.getElementById("sf-data").textContent);
  const labels = data.labels || {};
  const els = {
    target: $("#sf-target"), targetNote: $("#sf-target-note"), manual: $("#sf-manual"),
    concurrency: $("#sf-concurrency"), requests: $("#sf-requests"), inputTokens: $("#sf-input-tokens"),
    outputTokens: $("#sf-output-tokens"), temperature: $("#sf-temperature"), stream: $("#sf-stream"), exact: $("#sf-exact"),
    warmup: $("#sf-warmup"), warmupCount: $("#sf-warmup-count"), warmupNote: $("#sf-warmup-note"),
    dataset: $("#sf-dataset"), datasetNote: $("#sf-dataset-note"), prompt: $("#sf-prompt"),
    datasetFile: $("#sf-dataset-file"), uploadFile: $("#sf-upload-file"), upload: $("#sf-upload"),
    uploadStatus: $("#sf-upload-status"), uploadError: $("#error-upload"), presetNote: $("#sf-preset-note"),
    estRequests: $("#sf-estimate-requests"), estLevels: $("#sf-estimate-levels"),
    estDuration: $("#sf-estimate-duration"), summary: $("#sf-summary"), formErrors: document.getElementById("form-errors"),
  };
  // form.dataset would be the form's field named "dataset" (a form's named fields override its properties).
  const attr = (name) => HTMLElement.prototype.getAttribute.call(form, `data-${name}`);
  const limit = (name) => Number(attr(name) || 0);
  const levelPauseS = limit("level-pause-s");
  const maxDatasetBytes = limit("max-dataset-bytes");
  const FILE_DATASETS = new Set(["line_by_line", "openqa", "custom"]);
  const fmt = (n) => n.toLocaleString("en");

  // --- checks ------------------------------------------------------------------------------------

  const slotName = (input) => (input.name === "warmup_count" ? "warmup" : input.name);
  const labelOf = (input) => labels[slotName(input)] || input.name;

  /* What the server would say of a number field, or null. An <input type=number> holding text has the
   * empty string as its value, so validity.badInput is the only way to tell "abc" from an empty field. */
  function numberProblem(input) {
    if (input.disabled || input.type !== "number") return null;
    if (input.dataset.optional && !input.validity.badInput && input.value.trim() === "") return null;  // no limit
    const whole = input.name !== "temperature" && input.step !== "any";
    const what = whole ? "a whole number" : "a number";
    const label = labelOf(input);
    if (input.validity.badInput || input.value.trim() === "") return `${label}: enter ${what}`;
    const value = Number(input.value);
    if (!Number.isFinite(value)) return `${label}: must be a finite number`;
    if (whole && !Number.isInteger(value)) return `${label}: must be a whole number`;
    if (input.min !== "" && value < Number(input.min)) return `${label}: must be at least ${input.min}`;
    if (input.max !== "" && value > Number(input.max)) return `${label}: must be at most ${input.max}`;
    if (input === els.outputTokens) {
      const option = els.target.selectedOptions[0];
      const modelMax = option && option.value !== "__manual__" ? Number(option.dataset.maxTokens || 0) : 0;
      if (modelMax && value > modelMax) return `${label}: ${option.value} answers at most ${modelMax} tokens`;
    }
    return null;
  }

  function parseList(text) {
    const parts = text.split(/[\s,;]+/).filter(Boolean);
    if (!parts.length) return { problem: "required" };
    const numbers = parts.map(Number);
    if (!numbers.every((n) => Number.isInteger(n))) return { problem: "whole numbers separated by commas, for example 1, 4, 8" };
    return { numbers };
  }

  /* The load: levels and per-level counts, or the first problem with them (as the server words it). */
  function readLoad() {
    const concurrency = parseList(els.concurrency.value);
    const label = labels.concurrency;
    if (concurrency.problem) return { field: els.concurrency, problem: `${label}: ${concurrency.problem}` };
    const levels = concurrency.numbers;
    const low = levels.findIndex((n) => n < 1);
    if (low >= 0) return { field: els.concurrency, problem: `${label}: level ${low + 1} must be at least 1` };
    if (levels.length > limit("max-levels")) return { field: els.concurrency, problem: `${label}: at most ${limit("max-levels")} levels` };
    const high = levels.findIndex((n) => n > limit("max-parallel"));
    if (high >= 0) return { field: els.concurrency, problem: `${label} (level ${high + 1}): at most ${limit("max-parallel")} (stress.max_parallel)` };
    if (new Set(levels).size !== levels.length) return { field: els.concurrency, problem: `${label}: a level is repeated` };
    const requests = parseList(els.requests.value);
    const rLabel = labels.requests;
    if (requests.problem) return { field: els.requests, problem: `${rLabel}: ${requests.problem}` };
    let counts = requests.numbers;
    if (counts.length === 1) counts = levels.map(() => counts[0]);
    if (counts.length !== levels.length) {
      return { field: els.requests, problem: `${rLabel}: give one number, or one per concurrency level (${levels.length})` };
    }
    const few = counts.findIndex((n) => n < 1);
    if (few >= 0) return { field: els.requests, problem: `${rLabel}${requests.numbers.length > 1 ? ` (level ${few + 1})` : ""}: must be at least 1` };
    const many = counts.findIndex((n) => n > limit("max-requests"));
    if (many >= 0) return { field: els.requests, problem: `${rLabel}${requests.numbers.length > 1 ? ` (level ${many + 1})` : ""}: at most ${limit("max-requests")} (stress.max_requests)` };
    return { levels, counts };
  }

  function warmupFor(level) {
    if (els.warmup.value === "concurrency") return level;
    if (els.warmup.value === "fixed") return Number(els.warmupCount.value);
    return 0;
  }

  function numberInputs() {
    return Array.from(form.querySelectorAll("input[type=number]")).filter((input) => !input.disabled);
  }

  /* "sweep" (fixed concurrency levels) or "capacity" (a capacity search, which chooses its own levels). */
  const modeOf = () => (form.querySelector("input[name=mode]:checked") || { value: "sweep" }).value;

  /* Only the chosen mode's fields show, are checked and are sent (disabled fields are not submitted). */
  function updateMode() {
    const mode = modeOf();
    for (const block of form.querySelectorAll(".sf-mode-block")) {
      const on = block.dataset.mode === mode;
      block.hidden = !on;
      for (const field of block.querySelectorAll("input, select, textarea")) field.disabled = !on;
    }
    $("#sf-submit").textContent = mode === "capacity" ? "Start capacity search" : "Start stress test";
  }

  /* Every problem the page can see, field by field: [[input, message], ...]. */
  function problems() {
    const found = [];
    if (!els.target.value) found.push([els.target, `${labels.target}: choose a model or a manual endpoint`]);
    if (modeOf() === "sweep") {
      const load = readLoad();
      if (load.problem) found.push([load.field, load.problem]);
    }
    for (const input of numberInputs()) {
      const problem = numberProblem(input);
      if (problem) found.push([input, problem]);
    }
    return found;
  }

  function slotFor(input) {
    return document.getElementById(`error-${slotName(input)}`);
  }

  /* A message of ours in a field's slot (the server's answers replace the slots out of band). */
  function showProblem(input, message) {
    const slot = slotFor(input);
    if (!slot) return;
    if (message) {
      slot.textContent = message;
      slot.dataset.client = "1";
      input.setAttribute("aria-invalid", "true");
    } else if (slot.dataset.client) {
      slot.textContent = "";
      delete slot.dataset.client;
      input.removeAttribute("aria-invalid");
    }
  }

  function checkField(input) {
    if (input.type === "number") showProblem(input, numberProblem(input));
    if (input === els.concurrency || input === els.requests) {
      const load = readLoad();
      for (const field of [els.concurrency, els.requests]) showProblem(field, load.field === field ? load.problem : null);
    }
    if (input === els.target && els.target.value) showProblem(els.target, null);
  }

  function refuse(event) {
    const found = problems();
    if (!found.length) return false;
    event.preventDefault();
    const seen = new Set();
    for (const [input, message] of found) {
      if (seen.has(slotName(input))) continue;
      seen.add(slotName(input));
      showProblem(input, message);
    }
    const box = document.createElement("div");
    box.className = "flash flash-error";
    box.setAttribute("role", "alert");
    box.textContent = "The form has problems: see the fields marked below.";
    els.formErrors.replaceChildren(box);
    openDetailsWithErrors();
    found[0][0].focus();
    return true;
  }

  // --- the estimate ------------------------------------------------------------------------------

  function formatDuration(seconds) {
    if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
    return `${Math.floor(seconds / 3600)} h ${String(Math.round((seconds % 3600) / 60)).padStart(2, "0")} min`;
  }

  /* An estimate of the duration, as backend/stress/service.py estimate_seconds computes it for the job
   * page: one request's latency at the lowest concurrency of the latest completed job of the same model
   * (rescaled to this output length through TTFT and TPOT when known), times the request "waves" of each
   * level (its measured and warm-up requests over its concurrency), plus evalscope's pause between levels
   * and the start-up overhead measured on the latest completed job. Latency only grows with load, so the
   * real run takes about this long or longer; with no earlier job of this model there is no estimate. */
  function timingKey() {
    // Jobs of a manual endpoint are stored under "manual:<model name>".
    return els.target.value === "__manual__" ? `manual:${$("#sf-manual-model").value.trim()}` : els.target.value;
  }

  function estimateDuration(levels, counts) {
    const timing = data.timings[timingKey()];
    if (!timing) return null;
    // The output length is a limit: when the earlier job's answers stopped short of its own, they say how long
    // the model's answers are (service.expected_output_tokens).
    let output = Number(els.outputTokens.value);
    const natural = timing.avg_output_tokens;
    if (!els.exact.checked && natural != null && timing.output_tokens && natural < 0.95 * timing.output_tokens) {
      output = Math.min(output, natural);
    }
    let perRequest = timing.latency_s;
    if (timing.tpot_ms != null && timing.ttft_ms != null && output > 0) {
      perRequest = (timing.ttft_ms + timing.tpot_ms * Math.max(output - 1, 0)) / 1000;
    }
    const pauses = levelPauseS * Math.max(levels.length - 1, 0);
    const startup = data.overhead ? data.overhead.seconds : 0;
    let requests = 0;
    levels.forEach((level, i) => { requests += Math.ceil((counts[i] + warmupFor(level)) / level) * perRequest; });
    return { seconds: startup + pauses + requests, requests, pauses, startup, perRequest, timing, output };
  }

  function noFigures(message) {
    els.estRequests.textContent = "–";
    els.estLevels.textContent = message;
    els.estDuration.textContent = "";
    els.summary.textContent = "";
  }

  function updateWarmupNote(load) {
    const mode = els.warmup.value;
    els.warmupCount.hidden = mode !== "fixed";
    els.warmupCount.disabled = mode !== "fixed";
    if (mode === "none") {
      els.warmupNote.textContent = "No warm-up: the first requests meet an idle server, and above concurrency 1 they all start "
        + "at once; EvalScope warns that their TTFT can dominate the percentiles.";
    } else if (mode === "concurrency") {
      els.warmupNote.textContent = load.levels
        ? `${load.levels.map((level) => `${level} at concurrency ${level}`).join(" · ")}, before the measured requests.`
        : "One per concurrency slot, before the measured requests.";
    } else {
      els.warmupNote.textContent = "";
    }
  }

  function updateEstimate() {
    if (modeOf() === "capacity") {  // the search picks its levels as it goes: no duration to foresee
      updateWarmupNote({});
      els.summary.textContent = "";
      return;
    }
    const load = readLoad();
    updateWarmupNote(load);
    const found = problems().filter(([input]) => input !== els.target);
    if (found.length) {
      noFigures(`No estimate while the form holds a value that would be refused: ${found[0][1]}.`);
      return;
    }
    const { levels, counts } = load;
    const total = counts.reduce((a, b) => a + b, 0);
    const warm = levels.reduce((sum, level) => sum + warmupFor(level), 0);
    els.estRequests.textContent = fmt(total);
    els.estLevels.textContent = levels.map((level, i) => `${counts[i]} at concurrency ${level}`).join(" · ")
      + (warm ? ` · plus ${fmt(warm)} warm-up request${warm === 1 ? "" : "s"}, not counted` : "");
    const estimate = estimateDuration(levels, counts);
    if (estimate) {
      const parts = [`${formatDuration(estimate.requests)} of requests (${estimate.perRequest.toFixed(2)} s each at low load, from job ${estimate.timing.job})`];
      if (estimate.output < Number(els.outputTokens.value)) {
        parts[0] += ` for answers of about ${Math.round(estimate.output)} tokens, as that job's stopped by themselves`;
      }
      if (estimate.pauses) parts.push(`${formatDuration(estimate.pauses)} of pauses between levels`);
      if (data.overhead) parts.push(`${formatDuration(estimate.startup)} of start-up and reports (measured on job ${data.overhead.job})`);
      els.estDuration.textContent = `≈ ${formatDuration(estimate.seconds)} or more: ${parts.join(", ")}. `
        + "Latency grows under load, so expect longer at high concurrency.";
    } else if (els.target.value) {
      els.estDuration.textContent = "No duration estimate: this target has no completed stress test yet.";
    }
    els.summary.textContent = `${fmt(total)} requests over ${levels.length} level${levels.length === 1 ? "" : "s"}`;
  }

  // --- target and dataset ------------------------------------------------------------------------

  function updateTarget() {
    const option = els.target.selectedOptions[0];
    const manual = els.target.value === "__manual__";
    els.manual.hidden = !manual;
    let note = "";
    if (option && option.dataset.available === "0") {
      note = `Unavailable now: ${option.dataset.reason || "unknown reason"}. The job will fail unless that changes.`;
    } else if (option && option.dataset.maxTokens) {
      note = `Answers at most ${option.dataset.maxTokens} tokens.`;
    }
    els.targetNote.textContent = note;
  }

  function updateDataset() {
    const dataset = els.dataset.value;
    const random = dataset === "random" || dataset === "random_vl";
    const shown = {
      prompt: dataset === "prompt",
      file: FILE_DATASETS.has(dataset),
      tokenizer: random,
      input_length: random,
      random_vl: dataset === "random_vl",
    };
    for (const box of form.querySelectorAll("[data-for]")) {
      box.hidden = !shown[box.dataset.for];
      // Hidden fields are not sent: the server refuses a prompt or a file the dataset does not use.
      for (const input of box.querySelectorAll("input, select, textarea")) input.disabled = box.hidden;
    }
    for (const option of els.datasetFile.options) {
      if (option.value) option.hidden = option.dataset.format !== dataset;
    }
    if (els.datasetFile.selectedOptions[0]?.hidden) els.datasetFile.value = "";
    let note = els.dataset.selectedOptions[0]?.title || "";
    const system = $("#sf-system");
    if (dataset !== "prompt" && system.value.trim()) note += ". The system prompt is sent only with a fixed prompt: this dataset's requests go without it.";
    els.datasetNote.textContent = note;
  }

  // --- presets -----------------------------------------------------------------------------------

  function applyPreset(key) {
    const preset = data.presets.find((p) => p.key === key);
    if (!preset) return;
    const p = preset.params;
    els.concurrency.value = p.concurrency.join(", ");
    els.requests.value = p.requests.join(", ");
    els.inputTokens.value = p.input_tokens;
    els.outputTokens.value = p.output_tokens;
    els.temperature.value = p.temperature;
    els.stream.checked = Boolean(p.stream);
    if (els.dataset.value !== "prompt" || !els.prompt.value.trim()) {
      els.dataset.value = p.dataset;
      if (p.prompt && !els.prompt.value.trim()) els.prompt.value = p.prompt;
    }
    for (const button of form.querySelectorAll(".sf-preset")) button.classList.toggle("active", button.dataset.preset === key);
    els.presetNote.textContent = preset.description;
    updateDataset();
    for (const input of [els.concurrency, els.requests, els.inputTokens, els.outputTokens, els.temperature]) checkField(input);
    updateEstimate();
  }

  // --- upload ------------------------------------------------------------------------------------

  async function upload() {
    const file = els.uploadFile.files[0];
    els.uploadError.textContent = "";
    if (!file) {
      els.uploadError.textContent = "Choose a file first.";
      return;
    }
    if (maxDatasetBytes && file.size > maxDatasetBytes) {
      els.uploadError.textContent = `The file is larger than ${maxDatasetBytes.toLocaleString("en")} bytes.`;
      return;
    }
    const body = new FormData();
    body.append("file", file);
    body.append("format", els.dataset.value);
    els.upload.disabled = true;
    els.uploadStatus.textContent = "uploading…";
    try {
      const response = await fetch(attr("upload-url"), { method: "POST", body, headers: { "X-Requested-With": "fetch" } });
      const answer = await response.json().catch(() => null);
      if (!response.ok) {
        els.uploadError.textContent = answer?.error?.message || `The server answered ${response.status}.`;
        els.uploadStatus.textContent = "";
        return;
      }
      const option = document.createElement("option");
      option.value = answer.id;
      option.dataset.format = answer.format;
      option.textContent = `${answer.filename} · ${answer.records} prompts · just uploaded`;
      els.datasetFile.append(option);
      els.datasetFile.value = answer.id;
      els.uploadFile.value = "";
      els.uploadStatus.textContent = `uploaded: ${answer.records} prompts`;
      updateDataset();
    } catch (error) {
      els.uploadError.textContent = `The upload failed: ${error.message}`;
      els.uploadStatus.textContent = "";
    } finally {
      els.upload.disabled = false;
    }
  }

  function openDetailsWithErrors() {
    for (const details of form.querySelectorAll("details")) {
      if (details.querySelector(".field-error:not(:empty)")) details.open = true;
    }
  }

  // --- wiring ------------------------------------------------------------------------------------

  form.addEventListener("click", (event) => {
    const button = event.target.closest(".sf-preset");
    if (button) applyPreset(button.dataset.preset);
  });
  form.addEventListener("input", (event) => {
    if ([els.concurrency, els.requests, els.inputTokens, els.outputTokens, els.temperature].includes(event.target)) {
      for (const button of form.querySelectorAll(".sf-preset")) button.classList.remove("active");
      els.presetNote.textContent = "";
    }
    if (event.target.matches("input[type=number], #sf-concurrency, #sf-requests")) {
      checkField(event.target);
      updateEstimate();
    }
  });
  // "abc" typed into a number field fires no input event with a new value in every browser: check on leaving it.
  form.addEventListener("focusout", (event) => {
    if (event.target.matches("input[type=number], #sf-concurrency, #sf-requests")) {
      checkField(event.target);
      updateEstimate();
    }
  });
  els.target.addEventListener("change", () => { updateTarget(); checkField(els.target); checkField(els.outputTokens); updateEstimate(); });
  $("#sf-manual-model").addEventListener("input", updateEstimate);
  els.dataset.addEventListener("change", () => { updateDataset(); updateEstimate(); });
  els.warmup.addEventListener("change", () => { updateEstimate(); checkField(els.warmupCount); });
  els.exact.addEventListener("change", updateEstimate);
  els.upload.addEventListener("click", upload);
  for (const radio of form.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => { updateMode(); updateEstimate(); });
  }
  // Refuse before sending what the server would refuse (capture: before htmx's own submit handler).
  form.addEventListener("submit", (event) => { if (refuse(event)) event.stopImmediatePropagation(); }, true);
  form.addEventListener("htmx:beforeRequest", (event) => { refuse(event); });

  // After a refused submission, mark the fields whose message slot is not empty.
  document.body.addEventListener("htmx:afterSettle", () => {
    for (const slot of form.querySelectorAll(".field-error[id^='error-']")) {
      const name = slot.id.slice("error-".length);
      const field = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (!field) continue;
      if (slot.textContent.trim()) field.setAttribute("aria-invalid", "true");
      else field.removeAttribute("aria-invalid");
    }
    openDetailsWithErrors();
    const first = form.querySelector(".field-error:not(:empty)");
    if (first) first.scrollIntoView({ block: "nearest" });
  });

  updateMode();
  updateTarget();
  updateDataset();
  updateEstimate();
})();
