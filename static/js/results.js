// The results page: draws the plotly figures the server built (JSON in #figures-data) into #figures.
(function () {
  "use strict";
  function draw() {
    const data = document.getElementById("figures-data");
    const box = document.getElementById("figures");
    if (!data || !box || typeof Plotly === "undefined") return;
    const figures = JSON.parse(data.textContent);
    for (const figure of figures) {
      const div = document.createElement("div");
      div.className = "figure";
      box.appendChild(div);
      Plotly.newPlot(div, figure.data, figure.layout, {displaylogo: false, responsive: true});
    }
    box.dataset.drawn = String(figures.length);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
