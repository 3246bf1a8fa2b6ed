// Repository forms: show the fields of the backend the URL names (templates/hosts/_backend_fields.html).
// Without this script every backend's fieldset shows, each headed with the URLs it is for.
"use strict";

(function () {
  const PREFIX = /^(rest|s3|b2|azure|gs|sftp|rclone|local):/;

  // The backend a restic URL names, as app/services/backends.py backend_of reads it
  // (null while nothing is typed: the selector keeps its choice).
  const backendOf = function (url) {
    const text = url.trim();
    if (!text) return null;
    const match = PREFIX.exec(text);
    return match ? match[1] : "local";
  };

  document.querySelectorAll("[data-backends]").forEach(function (box) {
    const form = box.closest("form");
    const url = form && form.querySelector("[name=repo_url]");
    const picker = box.querySelector("[data-backend-picker]");
    const select = box.querySelector("[data-backend-select]");
    const mismatch = box.querySelector("[data-backend-mismatch]");
    const fieldsets = Array.from(box.querySelectorAll("fieldset[data-backend]"));
    if (!url || !select || !fieldsets.length) return;
    const labels = {};
    Array.from(select.options).forEach(function (option) { labels[option.value] = option.textContent; });

    // Only the chosen backend's fields are shown and sent (a hidden username would be refused
    // for any backend but REST); a fieldset holding an error stays visible.
    const show = function (key) {
      fieldsets.forEach(function (fieldset) {
        const own = fieldset.getAttribute("data-backend") === key;
        const hasError = !!fieldset.querySelector(".field--error");
        fieldset.hidden = !own && !hasError;
        fieldset.disabled = !own && !hasError;
        fieldset.classList.toggle("backend--chosen", own);
      });
    };

    const explainMismatch = function () {
      const typed = backendOf(url.value);
      const chosen = select.value;
      if (typed && typed !== chosen) {
        mismatch.textContent = "The URL is a " + labels[typed] + " URL: the server goes by the URL. " +
          "Write it like " + select.selectedOptions[0].getAttribute("data-example") + " for " + labels[chosen] + ".";
        mismatch.hidden = false;
      } else {
        mismatch.hidden = true;
      }
    };

    const fromUrl = function () {
      const key = backendOf(url.value);
      if (key) select.value = key;
      show(select.value);
      explainMismatch();
    };

    select.addEventListener("change", function () {
      url.setAttribute("placeholder", select.selectedOptions[0].getAttribute("data-example"));
      show(select.value);
      explainMismatch();
    });
    url.addEventListener("input", fromUrl);

    // Starts from the URL; an empty form with the saved backend (or a local directory).
    if (!backendOf(url.value)) {
      select.value = box.getAttribute("data-default") || "local";
      url.setAttribute("placeholder", select.selectedOptions[0].getAttribute("data-example"));
    }
    picker.hidden = false;
    box.classList.add("backends--js");
    fromUrl();

    const insecure = box.querySelector("[name=insecure_tls]");
    const warning = box.querySelector("[data-insecure-warning]");
    if (insecure && warning) {
      insecure.addEventListener("change", function () { warning.hidden = !insecure.checked; });
    }
  });
})();
