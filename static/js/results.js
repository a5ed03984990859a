// The results page: draws the plotly figures the server built (JSON in #figures-data) into #figures.
(function () {
  "use strict";
  function draw() {
    const data = document.getElementById("figures-data");
    const box = document.getElementById("figures");
    if (!data || !box || typeof Plotly === "undefined") return;
    const figures = JSON.parse(data.textContent);
    // Every box first, then the charts: each is sized to its box once the page's layout has settled.
    const divs = figures.map(() => {
      const div = document.createElement("div");
      div.className = "figure";
      box.appendChild(div);
      return div;
    });
    figures.forEach((figure, i) => {
      Plotly.newPlot(divs[i], figure.data, figure.layout, {displaylogo: false, responsive: true});
    });
    box.dataset.drawn = String(figures.length);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
