// Add host: notice the enrollment without a reload. Asks GET /api/v1/enrollment-tokens/{id}
// every 2.5 s (not while the tab is hidden) until the token enrolled a host, was revoked or
// expired; the "Check now" link stays as the way without JavaScript.
"use strict";

(function () {
  const state = document.querySelector(".enrollstate[data-enrollment-url]");
  if (!state || !state.querySelector(".awaiting")) return;
  const url = state.getAttribute("data-enrollment-url");
  const hostUrl = function (id) {
    return state.getAttribute("data-host-url").replace(/0$/, String(id));
  };
  const show = function (className, build) {
    const line = document.createElement("p");
    line.className = className;
    build(line);
    state.replaceChildren(line);
  };
  const text = function (parent, tag, words) {
    const node = document.createElement(tag);
    node.textContent = words;
    parent.append(node);
    return node;
  };
  let timer = null;
  const stop = function () { if (timer) { clearInterval(timer); timer = null; } };
  const check = function () {
    if (document.hidden) return;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (token) {
        if (!token) return;
        if (token.host) {
          stop();
          show("enrolled", function (line) {
            const mark = text(line, "span", "✓");
            mark.className = "enrolled__mark";
            mark.setAttribute("aria-hidden", "true");
            line.append(" ");
            text(line, "strong", token.host.hostname);
            line.append(" enrolled — ");
            const link = text(line, "a", "open its page");
            link.href = hostUrl(token.host.id);
          });
        } else if (token.revoked_at) {
          stop();
          show("muted", function (line) {
            line.textContent = "This token was revoked: its install command no longer works.";
          });
        } else if (token.expired) {
          stop();
          show("notice notice--warning", function (line) {
            line.textContent = "This token expired before an agent used it. Regenerate it " +
              "below for a fresh install command.";
          });
        }
      })
      .catch(function () { /* the server is away for a moment: ask again next tick */ });
  };
  timer = setInterval(check, 2500);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) check(); });
})();
