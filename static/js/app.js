// Small enhancements only: every page works without JavaScript.
"use strict";

// Sizes as app/formatting.py human_bytes writes them; the page scripts share it.
window.humanBytes = function (value) {
  if (typeof value !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let size = value;
  let unit = 0;
  while (Math.abs(size) >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
  if (unit === 0) return Math.trunc(size) + " B";
  return (size < 100 ? size.toFixed(1) : size.toFixed(0)) + " " + units[unit];
};

// "1 line", "2 lines": formatting.py's plural filter for the page scripts.
window.plural = function (count, word, pluralWord) {
  const n = typeof count === "number" ? count : 0;
  if (n === 1) return "1 " + word;
  return n.toLocaleString("en-US") + " " + (pluralWord || word + "s");
};

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
// One fetch per address (data-refresh-url, else this page's own, query string included)
// updates every region by id. Nothing is fetched while the tab is hidden, and a region is
// left alone while someone is typing in it.
(function () {
  const regions = Array.from(document.querySelectorAll("[data-refresh][id]"));
  if (!regions.length) return;
  const seconds = Math.max(2, Math.min.apply(null, regions.map(function (region) {
    return parseInt(region.getAttribute("data-refresh"), 10) || 5;
  })));
  const groups = new Map();
  regions.forEach(function (region) {
    const url = region.getAttribute("data-refresh-url") || window.location.href;
    if (!groups.has(url)) groups.set(url, []);
    groups.get(url).push(region);
  });
  const editing = function (region) {
    const active = document.activeElement;
    if (region.querySelector("input[data-selection]:checked")) return true; // rows selected
    return active && region.contains(active) && active.matches("input, select, textarea");
  };
  // A page that answers with an ETag is asked "If-None-Match": 304 means nothing shown
  // changed, and nothing is downloaded or parsed (the dashboard's 5 s refresh).
  const etags = new Map();
  const load = function (url, members) {
    const ids = members.map(function (region) { return region.id; }).join(",");
    const headers = { "Accept": "text/html", "X-Refresh-Regions": ids };
    if (etags.has(url)) headers["If-None-Match"] = etags.get(url);
    return fetch(url, { credentials: "same-origin", cache: "no-store", headers: headers })
      .then(function (response) {
        if (!response.ok || response.redirected) return null; // 304 included: keep the region
        etags.delete(url);
        return response.text().then(function (html) {
          return { html: html, etag: response.headers.get("ETag") };
        });
      })
      .then(function (answer) {
        if (!answer || !answer.html) return;
        const page = new DOMParser().parseFromString(answer.html, "text/html");
        let skipped = false;
        members.forEach(function (region) {
          const fresh = page.getElementById(region.id);
          if (fresh && editing(region)) skipped = true;
          else if (fresh && fresh.innerHTML !== region.innerHTML) region.innerHTML = fresh.innerHTML;
        });
        // A region left alone (rows ticked) must not be answered 304 next time.
        if (answer.etag && !skipped) etags.set(url, answer.etag);
      })
      .catch(function () { /* offline for a moment: try again next tick */ });
  };
  let busy = false;
  const refresh = function () {
    if (document.hidden || busy) return;
    busy = true;
    const pending = [];
    groups.forEach(function (members, url) { pending.push(load(url, members)); });
    Promise.all(pending).then(function () { busy = false; });
  };
  setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
})();

// A form refused after a POST to another address is shown again with its errors; put the
// page's own address back in the address bar, so a reload or a bookmark shows the page
// instead of posting the form again.
(function () {
  const marker = document.querySelector("[data-page-address]");
  if (!marker || !window.history.replaceState) return;
  // Also when the address is the same: the entry then no longer carries the POST.
  window.history.replaceState(null, "", marker.getAttribute("data-page-address"));
})();

// Buttons with data-fill="#input" data-value="…" (e.g. cron presets) fill that input in.
document.addEventListener("click", function (event) {
  const button = event.target.closest("button[data-fill]");
  if (!button) return;
  const input = document.querySelector(button.getAttribute("data-fill"));
  if (!input) return;
  input.value = button.getAttribute("data-value");
  input.focus();
});
