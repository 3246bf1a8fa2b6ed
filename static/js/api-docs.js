// The API reference page: Swagger UI (static/vendor/swagger-ui) on the server's own
// OpenAPI document. A static file, so the page keeps the app's CSP (no inline script).
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || !window.SwaggerUIBundle) return;
  var csrfToken = root.dataset.csrf;
  var SAFE = ["GET", "HEAD", "OPTIONS"];

  window.SwaggerUIBundle({
    url: root.dataset.spec,
    domNode: root,
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    defaultModelsExpandDepth: 0,
    docExpansion: "list",
    // Offline: never ask the public validator service for a badge.
    validatorUrl: null,
    // A pasted token lives only in this page's memory.
    persistAuthorization: false,
    // "Try it out" runs with the browser session: writes need the page's CSRF token
    // (a call authorised with a bearer token does not, and ignores it).
    requestInterceptor: function (request) {
      var method = (request.method || "GET").toUpperCase();
      if (csrfToken && SAFE.indexOf(method) === -1) {
        request.headers["X-CSRFToken"] = csrfToken;
      }
      request.credentials = "same-origin";
      return request;
    },
  });
})();
