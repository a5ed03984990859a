/* The new-stress-test form: presets, the fields each dataset needs, dataset upload, and a live estimate.
 *
 * The form itself is posted by htmx (hx-post); a refused submission answers with messages that htmx
 * places next to their fields, so nothing typed is lost. Nothing here stores anything in the browser:
 * the API key field is a password input that only goes out with the POST.
 */
(() => {
  "use strict";

  const form = document.getElementById("stress-form");
  if (!form) return;
  const $ = (selector) => form.querySelector(selector);
  const data = JSON.parse(document.getElementById("sf-data").textContent);
  const els = {
    target: $("#sf-target"), targetNote: $("#sf-target-note"), manual: $("#sf-manual"),
    concurrency: $("#sf-concurrency"), requests: $("#sf-requests"), inputTokens: $("#sf-input-tokens"),
    outputTokens: $("#sf-output-tokens"), temperature: $("#sf-temperature"), stream: $("#sf-stream"),
    dataset: $("#sf-dataset"), datasetNote: $("#sf-dataset-note"), prompt: $("#sf-prompt"),
    datasetFile: $("#sf-dataset-file"), uploadFile: $("#sf-upload-file"), upload: $("#sf-upload"),
    uploadStatus: $("#sf-upload-status"), uploadError: $("#error-upload"), presetNote: $("#sf-preset-note"),
    estRequests: $("#sf-estimate-requests"), estLevels: $("#sf-estimate-levels"),
    estDuration: $("#sf-estimate-duration"), summary: $("#sf-summary"),
  };
  const levelPauseS = Number(form.dataset.levelPauseS || 0);
  const maxDatasetBytes = Number(form.dataset.maxDatasetBytes || 0);
  const FILE_DATASETS = new Set(["line_by_line", "openqa", "custom"]);

  // --- numbers -----------------------------------------------------------------------------------

  function parseList(text) {
    const parts = text.split(/[\s,;]+/).filter(Boolean);
    if (!parts.length) return null;
    const numbers = parts.map(Number);
    return numbers.every((n) => Number.isInteger(n) && n > 0) ? numbers : null;
  }

  function formatDuration(seconds) {
    if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
    return `${Math.floor(seconds / 3600)} h ${String(Math.round((seconds % 3600) / 60)).padStart(2, "0")} min`;
  }

  /* A lower bound on the duration from the latest completed job of the same model: the mean latency of a
   * request at its lowest concurrency (rescaled to this output length through TPOT when known), times the
   * number of request "waves" per level, plus evalscope's pause between levels. Latency only grows with
   * load, so the real run takes at least about this long; with no earlier job there is no estimate. */
  function estimateDuration(levels, counts) {
    const timing = data.timings[els.target.value];
    if (!timing) return null;
    const output = Number(els.outputTokens.value);
    let perRequest = timing.latency_s;
    if (timing.tpot_ms != null && timing.ttft_ms != null && output > 0) {
      perRequest = (timing.ttft_ms + timing.tpot_ms * Math.max(output - 1, 0)) / 1000;
    }
    let seconds = levelPauseS * Math.max(levels.length - 1, 0);
    levels.forEach((level, i) => { seconds += Math.ceil(counts[i] / level) * perRequest; });
    return { seconds, timing };
  }

  function updateEstimate() {
    const levels = parseList(els.concurrency.value);
    let counts = parseList(els.requests.value);
    els.estDuration.textContent = "";
    if (!levels || !counts) {
      els.estRequests.textContent = "–";
      els.estLevels.textContent = !levels ? "Concurrency: whole numbers above 0, separated by commas."
        : "Requests: whole numbers above 0, separated by commas.";
      els.summary.textContent = "";
      return;
    }
    if (counts.length === 1) counts = levels.map(() => counts[0]);
    if (counts.length !== levels.length) {
      els.estRequests.textContent = "–";
      els.estLevels.textContent = `Give one request count, or one per level (${levels.length}).`;
      els.summary.textContent = "";
      return;
    }
    const total = counts.reduce((a, b) => a + b, 0);
    els.estRequests.textContent = total.toLocaleString("en");
    els.estLevels.textContent = levels.map((level, i) => `${counts[i]} at concurrency ${level}`).join(" · ");
    const estimate = estimateDuration(levels, counts);
    if (estimate) {
      els.estDuration.textContent = `At least ≈ ${formatDuration(estimate.seconds)}, from job ${estimate.timing.job} `
        + `(${estimate.timing.latency_s.toFixed(2)} s a request at concurrency ${estimate.timing.concurrency}); `
        + "latency grows under load, so expect longer.";
    } else if (els.target.value) {
      els.estDuration.textContent = "No duration estimate: this target has no completed stress test yet.";
    }
    els.summary.textContent = `${total.toLocaleString("en")} requests over ${levels.length} level${levels.length === 1 ? "" : "s"}`;
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
    const shown = {
      prompt: dataset === "prompt",
      file: FILE_DATASETS.has(dataset),
      tokenizer: dataset === "random" || dataset === "random_vl",
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
    els.datasetNote.textContent = els.dataset.selectedOptions[0]?.title || "";
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
      const response = await fetch(form.dataset.uploadUrl, { method: "POST", body, headers: { "X-Requested-With": "fetch" } });
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

  // --- wiring ------------------------------------------------------------------------------------

  form.addEventListener("click", (event) => {
    const button = event.target.closest(".sf-preset");
    if (button) applyPreset(button.dataset.preset);
  });
  form.addEventListener("input", (event) => {
    if ([els.concurrency, els.requests, els.outputTokens].includes(event.target)) {
      for (const button of form.querySelectorAll(".sf-preset")) button.classList.remove("active");
      els.presetNote.textContent = "";
      updateEstimate();
    }
  });
  els.target.addEventListener("change", () => { updateTarget(); updateEstimate(); });
  els.dataset.addEventListener("change", updateDataset);
  els.upload.addEventListener("click", upload);

  // After a refused submission, mark the fields whose message slot is not empty.
  document.body.addEventListener("htmx:afterSettle", () => {
    for (const slot of form.querySelectorAll(".field-error[id^='error-']")) {
      const name = slot.id.slice("error-".length);
      const field = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (!field) continue;
      if (slot.textContent.trim()) field.setAttribute("aria-invalid", "true");
      else field.removeAttribute("aria-invalid");
    }
    const first = form.querySelector(".field-error:not(:empty)");
    if (first) first.scrollIntoView({ block: "nearest" });
  });

  updateTarget();
  updateDataset();
  updateEstimate();
})();
