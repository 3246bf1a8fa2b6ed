// The job page, live: follows /api/v1/jobs/<id>/stream (Server-Sent Events) after the
// lines the server rendered, keeps the log scrolled to the bottom unless the reader scrolled
// up, updates progress and status, ticks the duration every second while the job runs, and
// refreshes the page's details when the job ends. Without JavaScript the page still shows
// the log so far.
"use strict";

(function () {
  const panel = document.getElementById("job-log-panel");
  if (!panel) return;
  const log = document.getElementById("job-log");
  const empty = document.getElementById("job-log-empty");
  const count = document.getElementById("job-log-count");
  const follow = document.getElementById("job-log-follow");
  const live = document.getElementById("job-live");
  const MAX_LINES = 20000; // beyond this the oldest lines leave the page (the download has them)
  const TERMINAL = ["succeeded", "warning", "failed", "cancelled", "lost"];

  let lastSeq = parseInt(panel.getAttribute("data-after"), 10) || 0;
  let pending = [];
  let flushScheduled = false;
  let following = true;

  // --- formatting (as app/formatting.py: human_bytes, human_duration, plural) ----------
  const bytes = window.humanBytes; // app.js
  const plural = window.plural; // app.js
  function duration(value) {
    if (typeof value !== "number") return "—";
    let seconds = Math.max(0, Math.round(value));
    if (seconds < 60) return seconds + " s";
    let minutes = Math.floor(seconds / 60);
    seconds %= 60;
    if (minutes < 60) return minutes + " min" + (seconds ? " " + seconds + " s" : "");
    let hours = Math.floor(minutes / 60);
    minutes %= 60;
    if (hours < 24) return hours + " h" + (minutes ? " " + minutes + " min" : "");
    const days = Math.floor(hours / 24);
    hours %= 24;
    return days + " d" + (hours ? " " + hours + " h" : "");
  }
  function number(value) { return value.toLocaleString("en-US"); }
  function isInt(value) { return typeof value === "number" && Number.isInteger(value); }

  // --- the log -------------------------------------------------------------------------------
  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  }

  function lineFor(record) {
    const line = document.createElement("div");
    line.className = "log__line log__line--" + record.stream;
    line.setAttribute("data-seq", record.seq);
    const time = document.createElement("span");
    time.className = "log__time";
    time.textContent = record.ts.slice(11, 19);
    const text = document.createElement("span");
    text.className = "log__text";
    text.textContent = record.text;
    line.appendChild(time);
    line.appendChild(text);
    return line;
  }

  function trim() {
    let excess = log.childElementCount - MAX_LINES;
    if (excess <= 0) return;
    while (excess-- > 0) log.removeChild(log.firstElementChild);
    const older = document.getElementById("job-log-older");
    const first = log.firstElementChild;
    if (older && first) {
      const hidden = parseInt(first.getAttribute("data-seq"), 10) - 1;
      document.getElementById("job-log-older-text").textContent = hidden === 1
        ? "The first line is not shown here."
        : "The first " + number(hidden) + " lines are not shown here.";
      older.hidden = false;
    }
  }

  function flush() {
    flushScheduled = false;
    if (!pending.length) return;
    const stick = following;
    const fragment = document.createDocumentFragment();
    pending.forEach(function (record) { fragment.appendChild(lineFor(record)); });
    pending = [];
    log.appendChild(fragment);
    trim();
    log.hidden = false;
    if (empty) empty.hidden = true;
    count.textContent = plural(lastSeq, "line");
    if (stick) log.scrollTop = log.scrollHeight;
    else follow.hidden = false;
  }

  function scheduleFlush() {
    if (flushScheduled) return;
    flushScheduled = true;
    // Hidden tabs get no animation frames; a timer still keeps the DOM from piling up work.
    if (document.hidden) setTimeout(flush, 500);
    else window.requestAnimationFrame(flush);
  }

  log.addEventListener("scroll", function () {
    following = atBottom();
    if (following) follow.hidden = true;
  });
  follow.addEventListener("click", function () {
    following = true;
    follow.hidden = true;
    log.scrollTop = log.scrollHeight;
  });
  log.scrollTop = log.scrollHeight; // start at the newest server-rendered line

  // --- progress and status ---------------------------------------------------------------------
  function setProgress(field, text) {
    const element = document.querySelector('[data-progress="' + field + '"]');
    if (element) element.textContent = text;
  }

  // restic 0.14 reads every file (percent_done 1) while it still uploads the last packs and
  // saves the snapshot, and reports nothing about the upload: that phase gets its own words
  // instead of a bar sitting at 100 % (the template words the server-rendered state alike).
  function showProgress(progress) {
    const bar = document.getElementById("job-progress-bar");
    if (!bar) return;
    const card = document.getElementById("job-progress");
    card.hidden = false;
    let percent = typeof progress.percent === "number" ? progress.percent : null;
    if (percent !== null) {
      percent = Math.min(100, Math.max(0, percent));
      bar.value = percent;
    }
    const uploading = panel.getAttribute("data-kind") === "backup" && percent !== null && percent >= 100;
    card.classList.toggle("progress--uploading", uploading);
    const percentText = uploading ? "uploading" : percent === null ? "" : percent.toFixed(1) + " %";
    bar.textContent = percentText;
    setProgress("percent_text", percentText);
    let files = "";
    if (uploading) {
      if (isInt(progress.total_files)) files = "all " + plural(progress.total_files, "file") + " read";
    } else if (isInt(progress.files_done) && isInt(progress.total_files)) {
      files = number(progress.files_done) + " of " + plural(progress.total_files, "file");
    } else if (isInt(progress.files_done)) {
      files = plural(progress.files_done, "file");
    }
    setProgress("files", files);
    let size = "";
    if (uploading) {
      if (typeof progress.total_bytes === "number") size = bytes(progress.total_bytes);
    } else if (typeof progress.bytes_done === "number" && typeof progress.total_bytes === "number") {
      size = bytes(progress.bytes_done) + " of " + bytes(progress.total_bytes);
    } else if (typeof progress.bytes_done === "number") {
      size = bytes(progress.bytes_done);
    }
    setProgress("bytes", size);
    const remaining = progress.seconds_remaining;
    setProgress("eta", !uploading && typeof remaining === "number" && remaining >= 0
      ? "about " + duration(remaining) + " left" : "");
    setProgress("errors", isInt(progress.error_count) && progress.error_count
      ? plural(progress.error_count, "file") + " could not be read"
      : "");
    const phase = document.querySelector('[data-progress="phase"]');
    if (phase) phase.hidden = !uploading;
    const current = Array.isArray(progress.current_files) ? progress.current_files.slice(0, 2) : [];
    setProgress("current", current.length && !uploading ? "Now: " + current.join(", ") : "");
  }

  // --- the duration ------------------------------------------------------------------------------
  // While the job runs the server renders the duration once, with data-started-at and its
  // own clock (data-now, so a browser clock that is off does not matter); a refresh of the
  // details may replace the element (queued → running) or end the ticking (finished: no
  // data-started-at any more).
  let durationElement = null;
  let clockOffset = 0;
  let ticker = null;
  function tickDuration() {
    const element = document.getElementById("job-duration");
    const started = element && Date.parse(element.getAttribute("data-started-at") || "");
    if (!element || isNaN(started)) return;
    if (element !== durationElement) {
      durationElement = element;
      const serverNow = Date.parse(element.getAttribute("data-now") || "");
      clockOffset = isNaN(serverNow) ? 0 : serverNow - Date.now();
    }
    element.textContent = duration((Date.now() + clockOffset - started) / 1000) + " so far";
  }
  function stopTicking() {
    if (ticker !== null) window.clearInterval(ticker);
    ticker = null;
  }
  if (panel.getAttribute("data-live") === "true") ticker = window.setInterval(tickDuration, 1000);

  function showStatus(status) {
    const pill = document.getElementById("job-status");
    if (pill && pill.textContent !== status.status) {
      pill.textContent = status.status;
      pill.className = "pill pill--" + status.status;
      // queued → running: the details (started at, duration, wording) change with it.
      if (TERMINAL.indexOf(status.status) === -1) refreshDetails();
    }
    if (TERMINAL.indexOf(status.status) !== -1) {
      stopTicking(); // the refreshed details show the final duration
      const cancel = document.getElementById("job-cancel");
      if (cancel) cancel.hidden = true;
      const progress = document.getElementById("job-progress");
      if (progress) progress.hidden = true;
    }
  }

  // Replace the regions marked data-job-region with a fresh copy of the page (the header,
  // details, results and notes) when the job starts and once it has ended. The log itself
  // stays as it is.
  function refreshDetails() {
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        const fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-job-region]").forEach(function (region) {
          const replacement = fresh.getElementById(region.id);
          if (replacement) region.replaceWith(document.importNode(replacement, true));
        });
      })
      .catch(function () { /* the details stay as they were; a reload shows them */ });
  }

  function setLive(state) {
    live.hidden = false;
    live.className = "live live--" + state;
    live.textContent = {
      open: "live",
      retry: "reconnecting…",
      ended: "finished",
      stopped: "live updates stopped — reload the page",
    }[state];
  }

  // --- the stream ------------------------------------------------------------------------------
  if (panel.getAttribute("data-live") !== "true" || !window.EventSource) return;

  const url = panel.getAttribute("data-stream") + "?after=" + lastSeq;
  const source = new EventSource(url, { withCredentials: true });

  source.addEventListener("open", function () { setLive("open"); });
  source.addEventListener("log", function (event) {
    const record = JSON.parse(event.data);
    if (record.seq <= lastSeq) return; // already shown (a reconnect may overlap)
    lastSeq = record.seq;
    pending.push(record);
    scheduleFlush();
  });
  source.addEventListener("progress", function (event) { showProgress(JSON.parse(event.data)); });
  source.addEventListener("status", function (event) { showStatus(JSON.parse(event.data)); });
  source.addEventListener("end", function (event) {
    source.close(); // otherwise EventSource reconnects when the server ends the response
    flush();
    showStatus(JSON.parse(event.data));
    setLive("ended");
    refreshDetails();
  });
  source.addEventListener("error", function () {
    // CONNECTING: the browser retries by itself (Last-Event-ID resumes after the last line).
    // CLOSED: the server refused (signed out, job deleted): it will not retry.
    setLive(source.readyState === EventSource.CLOSED ? "stopped" : "retry");
  });
})();
