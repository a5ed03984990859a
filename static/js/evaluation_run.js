// The evaluation run page: in the side-by-side form, model B offers only the cells comparable with the
// cell chosen as A (each option names its A in data-a). Text is never parsed as HTML here.
(function () {
  "use strict";
  function setup() {
    const a = document.getElementById("sbs-a");
    const b = document.getElementById("sbs-b");
    if (!a || !b) return;
    function filter() {
      let first = null;
      Array.from(b.options).forEach(function (option) {
        const fits = option.dataset.a === a.value;
        option.hidden = !fits;
        option.disabled = !fits;
        if (fits && first === null) first = option;
      });
      if (b.selectedOptions.length === 0 || b.selectedOptions[0].disabled) {
        if (first) first.selected = true;
      }
    }
    a.addEventListener("change", filter);
    filter();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
