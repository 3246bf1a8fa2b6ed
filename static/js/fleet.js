// Dashboard filters: a changed select applies at once; empty fields stay out of the URL.
"use strict";

document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
  form.addEventListener("change", function (event) {
    if (!event.target.matches("select")) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  });
  form.addEventListener("submit", function () {
    form.querySelectorAll("input[name], select[name]").forEach(function (input) {
      if (!input.value) input.disabled = true;
    });
  });
});

// Coming back with the browser's Back button restores the page as it was left: re-enable.
window.addEventListener("pageshow", function () {
  document.querySelectorAll("form[data-autosubmit] [disabled]").forEach(function (input) {
    input.disabled = false;
  });
});
