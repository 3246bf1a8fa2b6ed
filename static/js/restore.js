// The restore wizard: enables the steps once a snapshot is picked, browses the snapshot as
// a lazy tree (GET /api/v1/hosts/<id>/snapshots/<sid>/tree?path=…, answered by the host's
// agent), keeps the ticked paths, and writes the summary. Without JavaScript the page is a
// plain form: the snapshot radios, a textarea of paths, the target and the Run button.
"use strict";

(function () {
  const form = document.getElementById("restore-form");
  if (!form) return;
  const api = form.getAttribute("data-api");
  const hostname = form.getAttribute("data-hostname");
  const tree = document.getElementById("tree");
  if (!tree) return; // no snapshots: nothing to enhance
  const selectionBox = document.getElementById("selection-box");
  const selectionList = document.getElementById("selection");
  const tally = document.getElementById("tally");
  const typed = document.getElementById("restore-paths");
  const typedBox = document.getElementById("typed");
  const target = document.getElementById("restore-target");
  const confirmInput = document.getElementById("confirm-hostname");
  const verify = document.getElementById("restore-verify");
  const runButton = document.getElementById("run-restore");
  const runHint = document.getElementById("run-hint");
  const download = document.getElementById("restore-download");

  const selected = new Set(); // ticked paths, in the order they were ticked
  let snapshot = null; // {id, short, time, paths}
  let generation = 0; // a new snapshot makes answers for the old one stale

  // --- formatting (as app/formatting.py human_bytes) ------------------------------------
  const bytes = window.humanBytes; // app.js
  function stamp(iso) {
    return typeof iso === "string" && iso.length >= 16 ? iso.slice(0, 10) + " " + iso.slice(11, 16) : "";
  }
  const plural = window.plural; // app.js: "1 item", "2 items"
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- steps -----------------------------------------------------------------------------------
  function lockSteps(locked) {
    form.querySelectorAll("[data-step]").forEach(function (step) {
      step.disabled = locked;
      step.classList.toggle("step--locked", locked);
      step.querySelector(".step__locked").hidden = !locked;
    });
  }

  function readSnapshot(radio) {
    let paths = [];
    try { paths = JSON.parse(radio.getAttribute("data-paths")) || []; } catch (ignored) { /* none */ }
    return {
      id: radio.value,
      short: radio.getAttribute("data-short"),
      time: radio.getAttribute("data-time"),
      paths: paths,
    };
  }

  function chooseSnapshot(radio, fromUser) {
    const changed = !snapshot || snapshot.id !== radio.value;
    snapshot = readSnapshot(radio);
    form.querySelectorAll(".snappick__row").forEach(function (row) {
      row.classList.toggle("snappick__row--chosen", row.contains(radio));
    });
    lockSteps(false);
    document.getElementById("tree-snapshot").innerHTML = "";
    const label = document.getElementById("tree-snapshot");
    label.appendChild(document.createTextNode("Snapshot "));
    label.appendChild(element("code", "", snapshot.short));
    label.appendChild(document.createTextNode(" · " + snapshot.time));
    if (changed) {
      if (fromUser) { selected.clear(); renderSelection(); }
      generation += 1;
      tree.replaceChildren();
      const root = element("ul", "tree__list");
      tree.appendChild(root);
      loadInto(root, "/", 0);
    }
    if (fromUser) document.getElementById("step-files").scrollIntoView({ behavior: "smooth", block: "start" });
    update();
  }

  form.querySelectorAll('input[name="snapshot_id"]').forEach(function (radio) {
    radio.addEventListener("change", function () { if (radio.checked) chooseSnapshot(radio, true); });
  });
  // A click anywhere on a snapshot's row picks it.
  form.querySelectorAll(".snappick__row").forEach(function (row) {
    row.addEventListener("click", function (event) {
      if (event.target.closest("a, input, label")) return;
      const radio = row.querySelector('input[type="radio"]');
      if (!radio.checked) { radio.checked = true; chooseSnapshot(radio, true); }
    });
  });

  // --- the tree ----------------------------------------------------------------------------------
  function treeUrl(path) {
    return api + encodeURIComponent(snapshot.id) + "/tree?path=" + encodeURIComponent(path);
  }
  function downloadUrl(path) {
    return api + encodeURIComponent(snapshot.id) + "/download?path=" + encodeURIComponent(path);
  }

  function statusLine(kind, text, retry) {
    const line = element("li", "tree__status tree__status--" + kind);
    if (kind === "loading") line.appendChild(element("span", "spinner"));
    line.appendChild(element("span", "", text));
    if (retry) {
      const button = element("button", "button button--secondary button--small", "Try again");
      button.type = "button";
      button.addEventListener("click", retry);
      line.appendChild(button);
    }
    return line;
  }

  // What went wrong, in words a person can act on.
  function problem(response, body) {
    const code = body && body.error;
    if (response.status === 409 && code === "host_offline") {
      return hostname + " is offline: browsing needs its agent. Try again once it is back.";
    }
    if (response.status === 504 || code === "agent_timeout") {
      return "Timed out — the agent did not answer in time.";
    }
    if (!body || response.redirected) {
      return "Could not load this folder (HTTP " + response.status + "). If you were signed out, reload the page.";
    }
    return body.message || "Could not load this folder (" + (code || response.status) + ").";
  }

  // `prefix`: folders skipped on the way because they only lead to what was backed up
  // (/ → tmp → srv …): the first real level shows them in its names, "/tmp/srv/data/".
  function loadInto(list, path, depth, prefix) {
    const mine = generation;
    prefix = prefix || "";
    if (!prefix) list.replaceChildren(statusLine("loading", "Loading…"));
    fetch(treeUrl(path), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        return response.json().then(
          function (body) { return { response: response, body: body }; },
          function () { return { response: response, body: null }; }
        );
      })
      .then(function (answer) {
        if (mine !== generation) return;
        if (!answer.response.ok || !answer.body || !Array.isArray(answer.body.items)) {
          const kind = answer.response.status === 504 ? "timeout" : "error";
          list.replaceChildren(statusLine(kind, problem(answer.response, answer.body), function () {
            loadInto(list, path, depth, prefix);
          }));
          return;
        }
        const items = answer.body.items;
        if (items.length === 1 && items[0].type === "dir" && leadsToBackup(items[0].path)) {
          loadInto(list, items[0].path, depth, (prefix || (depth ? "" : "/")) + items[0].name + "/");
          return;
        }
        render(list, answer.body, depth, prefix);
      })
      .catch(function () {
        if (mine !== generation) return;
        list.replaceChildren(statusLine("error", "The server could not be reached.", function () {
          loadInto(list, path, depth, prefix);
        }));
      });
  }

  function render(list, body, depth, prefix) {
    list.replaceChildren();
    if (!body.items.length) {
      list.appendChild(statusLine("empty", depth === 0 ? "This snapshot is empty." : "Empty folder."));
      return;
    }
    if (!prefix && depth === 0) prefix = "/";
    body.items.forEach(function (item) { list.appendChild(node(item, depth, prefix)); });
    if (body.truncated) {
      list.appendChild(statusLine("note", "Only the first " + plural(body.items.length, "entry", "entries") +
        " are shown. Type a path below to restore one that is not listed."));
    }
    syncChecks();
  }

  // Folders on the way to what the snapshot backed up open by themselves: /srv → /srv/data.
  function leadsToBackup(path) {
    return snapshot.paths.some(function (backedUp) { return backedUp.indexOf(path + "/") === 0; });
  }
  function opensByItself(path) {
    return leadsToBackup(path) || (snapshot.paths.length === 1 && snapshot.paths[0] === path);
  }

  function node(item, depth, prefix) {
    const isDir = item.type === "dir";
    const li = element("li", "tree__node tree__node--" + (isDir ? "dir" : "file"));
    const row = element("div", "tree__row");
    li.appendChild(row);

    const check = element("input", "tree__check");
    check.type = "checkbox";
    check.value = item.path;
    check.id = "t" + Math.random().toString(36).slice(2);
    check.setAttribute("aria-label", "Restore " + item.path);
    check.addEventListener("change", function () { tick(item.path, check.checked); });

    let children = null;
    if (isDir) {
      const toggle = element("button", "tree__toggle");
      toggle.type = "button";
      toggle.setAttribute("aria-expanded", "false");
      toggle.setAttribute("aria-label", "Open " + item.path);
      children = element("ul", "tree__list");
      children.hidden = true;
      const open = function () {
        const opening = toggle.getAttribute("aria-expanded") !== "true";
        toggle.setAttribute("aria-expanded", opening ? "true" : "false");
        toggle.setAttribute("aria-label", (opening ? "Close " : "Open ") + item.path);
        children.hidden = !opening;
        li.classList.toggle("tree__node--open", opening);
        if (opening && !li.hasAttribute("data-loaded")) {
          li.setAttribute("data-loaded", "");
          loadInto(children, item.path, depth + 1);
        }
      };
      toggle.addEventListener("click", open);
      row.appendChild(toggle);
      row.appendChild(check);
      const name = element("button", "tree__name tree__name--dir", (prefix || "") + item.name + "/");
      name.type = "button";
      name.title = "Open " + item.path;
      name.addEventListener("click", open);
      row.appendChild(name);
      if (opensByItself(item.path)) setTimeout(open, 0);
    } else {
      row.appendChild(element("span", "tree__spacer"));
      row.appendChild(check);
      const name = element("label", "tree__name", (prefix || "") + item.name);
      name.htmlFor = check.id;
      row.appendChild(name);
      if (item.type !== "file") row.appendChild(element("span", "chip tree__type", item.type));
    }
    const meta = element("span", "tree__meta");
    if (!isDir && typeof item.size === "number") meta.appendChild(element("span", "tree__size", bytes(item.size)));
    if (item.mtime) {
      const time = element("time", "tree__time", stamp(item.mtime));
      time.dateTime = item.mtime;
      meta.appendChild(time);
    }
    row.appendChild(meta);
    if (item.type === "file") {
      const link = element("a", "tree__download", "Download");
      link.href = downloadUrl(item.path);
      link.target = "restore-download";
      link.title = "Download " + item.name + " from this snapshot";
      link.addEventListener("click", function () { downloading(link); });
      row.appendChild(link);
    }
    if (children) li.appendChild(children);
    return li;
  }

  // --- downloads -------------------------------------------------------------------------------
  // The file comes into a hidden frame: a download leaves the page alone; an error answer
  // (JSON) loads into the frame and is shown next to the link.
  let lastDownload = null;
  function downloading(link) {
    lastDownload = link;
    link.classList.add("tree__download--busy");
    link.textContent = "Starting…";
    const old = link.closest("li").querySelector(":scope > .tree__error");
    if (old) old.remove();
    setTimeout(function () {
      link.classList.remove("tree__download--busy");
      link.textContent = "Download";
    }, 4000);
  }
  download.addEventListener("load", function () {
    if (!lastDownload) return;
    let body = null;
    try {
      body = JSON.parse(download.contentDocument.body.textContent);
    } catch (ignored) { /* not JSON: nothing to say */ }
    if (!body || !body.error) return;
    const link = lastDownload;
    link.classList.remove("tree__download--busy");
    link.textContent = "Download";
    const message = body.error === "host_offline" ? hostname + " is offline."
      : body.error === "agent_timeout" ? "Timed out — try again." : (body.message || body.error);
    link.closest("li").appendChild(element("span", "tree__error", message));
  });

  // --- selection ---------------------------------------------------------------------------------
  function coveredBy(path) {
    let found = null;
    selected.forEach(function (chosen) {
      if (!found && chosen !== path && path.indexOf(chosen === "/" ? "/" : chosen + "/") === 0) found = chosen;
    });
    return found;
  }

  function tick(path, on) {
    if (on) {
      // A folder brings back all of it: drop what was ticked inside it.
      selected.forEach(function (chosen) { if (chosen.indexOf(path + "/") === 0) selected.delete(chosen); });
      selected.add(path);
    } else {
      selected.delete(path);
    }
    renderSelection();
    syncChecks();
    update();
  }

  function syncChecks() {
    tree.querySelectorAll(".tree__check").forEach(function (check) {
      const parent = coveredBy(check.value);
      check.checked = selected.has(check.value) || parent !== null;
      check.disabled = parent !== null;
      check.title = parent !== null ? "Restored with " + parent : "";
    });
  }

  function renderSelection() {
    selectionList.replaceChildren();
    selected.forEach(function (path) {
      const li = element("li");
      const label = element("label");
      const box = element("input");
      box.type = "checkbox";
      box.name = "include";
      box.value = encodeURIComponent(path); // a form would turn a newline in a name into CRLF
      box.checked = true;
      box.addEventListener("change", function () { if (!box.checked) tick(path, false); });
      label.appendChild(box);
      label.appendChild(document.createTextNode(" "));
      label.appendChild(element("code", "wrap", path));
      li.appendChild(label);
      selectionList.appendChild(li);
    });
    selectionBox.hidden = selected.size === 0;
  }

  function typedPaths() {
    return typed.value.split("\n").map(function (line) { return line.trim(); }).filter(Boolean);
  }

  function chosenPaths() {
    const all = Array.from(selected);
    typedPaths().forEach(function (path) { if (all.indexOf(path) === -1) all.push(path); });
    return all;
  }

  // --- tally and summary ---------------------------------------------------------------------------
  function mode() {
    const checked = form.querySelector('input[name="mode"]:checked');
    return checked ? checked.value : "new";
  }

  function update() {
    const paths = chosenPaths();
    tally.textContent = paths.length ? plural(paths.length, "item") + " selected" : "Nothing selected: the whole snapshot";
    tally.classList.toggle("tally--some", paths.length > 0);

    const inPlace = mode() === "in_place";
    document.getElementById("target-box").hidden = inPlace;
    document.getElementById("confirm-box").hidden = !inPlace;
    form.querySelectorAll(".choice").forEach(function (choice) {
      choice.classList.toggle("choice--on", choice.querySelector('input[name="mode"]').checked);
    });

    const summary = document.getElementById("summary");
    const warning = document.getElementById("summary-warning");
    if (!snapshot) { summary.hidden = true; warning.hidden = true; runButton.disabled = true; runHint.textContent = "Pick a snapshot first."; return; }
    summary.hidden = false;
    document.getElementById("summary-snapshot").textContent = snapshot.short + " · " + snapshot.time;

    const what = document.getElementById("summary-what");
    what.replaceChildren();
    if (paths.length) {
      what.appendChild(document.createTextNode(plural(paths.length, "item") + ": "));
      const list = element("ul", "summary__paths");
      paths.slice(0, 8).forEach(function (path) {
        const li = element("li");
        li.appendChild(element("code", "wrap", path));
        list.appendChild(li);
      });
      if (paths.length > 8) list.appendChild(element("li", "muted", "and " + (paths.length - 8) + " more"));
      what.appendChild(list);
    } else {
      what.appendChild(element("strong", "", "The whole snapshot"));
      what.appendChild(document.createTextNode(" (" + (snapshot.paths.join(", ") || "all its paths") + ")"));
    }

    const where = document.getElementById("summary-where");
    const confirmed = confirmInput.value.trim() === hostname;
    if (inPlace) {
      where.textContent = "In place on " + hostname + ": files are written back where they were, overwriting what is there now.";
      warning.textContent = paths.length
        ? "This overwrites " + plural(paths.length, "path") + " on " + hostname + "."
        : "This overwrites everything the snapshot holds on " + hostname + ".";
      warning.hidden = false;
    } else {
      const dir = target.value.trim() || "$HOME/rm-restore/<job id>";
      where.textContent = dir + " on " + hostname + " (a new directory; files keep their full path below it)";
      warning.hidden = true;
    }
    document.getElementById("summary-verify").textContent = verify.checked ? "yes: read the files back after restoring" : "no";

    runButton.textContent = inPlace ? "Restore in place, overwriting" : paths.length ? "Run restore" : "Restore the whole snapshot";
    runButton.classList.toggle("button--danger-solid", inPlace);
    runButton.disabled = inPlace && !confirmed;
    runHint.textContent = inPlace && !confirmed ? "Type " + hostname + " in step 3 to confirm." : "";
  }

  form.addEventListener("input", update);
  form.addEventListener("change", function (event) {
    if (event.target.name === "mode") update();
  });
  form.addEventListener("submit", function (event) {
    if (runButton.disabled) event.preventDefault();
    else runButton.textContent = "Starting…";
  });

  // --- start ---------------------------------------------------------------------------------------
  selectionList.querySelectorAll('input[name="include"]').forEach(function (box) {
    selected.add(decodeURIComponent(box.value));
  });
  renderSelection();
  if (!typed.value.trim() && typedBox) typedBox.open = false;
  const preselected = form.querySelector('input[name="snapshot_id"]:checked');
  if (preselected) {
    chooseSnapshot(preselected, false);
    const refused = document.querySelector(".field__errors, .restore__problem");
    if (refused) refused.scrollIntoView({ block: "center" });
    else if (!window.location.hash) document.getElementById("step-files").scrollIntoView({ block: "start" });
  } else {
    lockSteps(true);
    update();
  }
})();
