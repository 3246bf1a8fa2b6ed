// Small enhancements only: every page works without JavaScript.
"use strict";

document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.getAttribute("data-copy"));
  if (!source) return;
  const text = source.textContent.trim();
  const done = function () {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done);
  } else {
    // Plain-HTTP fallback: select the text so Ctrl+C copies it.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try { document.execCommand("copy"); done(); } catch (ignored) { /* text stays selected */ }
  }
});

document.addEventListener("submit", function (event) {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

// Regions marked data-refresh="N" reload themselves every N seconds without a full page load.
document.querySelectorAll("[data-refresh]").forEach(function (region) {
  const seconds = Math.max(2, parseInt(region.getAttribute("data-refresh"), 10) || 5);
  const refresh = function () {
    if (document.hidden) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(region.id);
        if (fresh) region.innerHTML = fresh.innerHTML;
      })
      .catch(function () { /* offline for a moment: try again next tick */ });
  };
  setInterval(refresh, seconds * 1000);
});
