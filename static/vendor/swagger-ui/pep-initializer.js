// Our own starter for Swagger UI (not part of swagger-ui-dist): an external file, so /api/docs needs no
// inline script under the platform's Content-Security-Policy (script-src 'self').
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // the default sends the document to validator.swagger.io: stay offline
  });
});
