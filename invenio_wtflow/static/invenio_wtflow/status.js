// SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
// SPDX-License-Identifier: MIT
//
// Keeps a run's status page (templates/invenio_wtflow/detail.html) up to date.
//
// The page is rendered on the server; this script polls the REST API with
// If-None-Match (a 304 costs no body), patches what changed in place, loads
// the history, the child runs and the errors from their own endpoints, and
// sends the buttons' requests. When the graph itself changes (tasks added or
// rewired), it fetches the page again and swaps the graph and the task table.
// Polling stops when the run is finished and pauses while the page is hidden.

(function () {
  "use strict";

  const root = document.querySelector("[data-wtflow-run]");
  if (!root) {
    return;
  }

  const settings = JSON.parse(root.dataset.settings);
  const labels = JSON.parse(root.dataset.labels);
  const messages = JSON.parse(root.dataset.messages);

  const ACTIVE = new Set(["queued", "running", "waiting"]);
  const PROGRESSING = new Set(["running", "waiting"]);
  const TERMINAL = new Set(["success", "failure", "cancelled"]);
  const INTERVAL = Math.max(settings.pollInterval * 1000, 100);
  const MAX_BACKOFF = 60000;

  const state = {
    live: root.dataset.live === "true",
    etags: new Map(),
    timer: null,
    failures: 0,
    busy: false,
    again: false,
    skew: 0, // server clock minus ours, from the Date header
    childrenPage: 1,
  };

  //
  // Small helpers
  //
  function $(selector, scope) {
    return (scope || root).querySelector(selector);
  }

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, (match, key) =>
      key in values ? String(values[key]) : match
    );
  }

  function parseTime(iso) {
    // The API writes UTC; a value without an offset is UTC too.
    return Date.parse(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
  }

  function formatTime(iso) {
    return iso ? iso.slice(0, 19).replace("T", " ") : "";
  }

  // The same words as ui.format_duration on the server.
  function formatDuration(seconds) {
    if (seconds === null) {
      return "";
    }
    seconds = Math.max(seconds, 0);
    if (seconds < 10) {
      return seconds.toFixed(1) + " s";
    }
    seconds = Math.floor(seconds);
    const pad = (n) => String(n).padStart(2, "0");
    if (seconds < 60) {
      return seconds + " s";
    }
    if (seconds < 3600) {
      return Math.floor(seconds / 60) + " min " + pad(seconds % 60) + " s";
    }
    return Math.floor(seconds / 3600) + " h " + pad(Math.floor((seconds % 3600) / 60)) + " min";
  }

  function elapsed(started, finished) {
    if (!started) {
      return null;
    }
    const end = finished ? parseTime(finished) : Date.now() + state.skew;
    return (end - parseTime(started)) / 1000;
  }

  function percent(progress) {
    return Math.round(progress * 100) + "%";
  }

  function setText(element, text) {
    if (element && element.textContent !== text) {
      element.textContent = text;
    }
  }

  function setData(element, name, value) {
    if (value) {
      element.dataset[name] = value;
    } else {
      delete element.dataset[name];
    }
  }

  function setTime(element, iso) {
    if (!element) {
      return;
    }
    if (iso) {
      element.setAttribute("datetime", iso);
    } else {
      element.removeAttribute("datetime");
    }
    setText(element, formatTime(iso));
  }

  function setDuration(element, started, finished) {
    if (!element) {
      return;
    }
    setData(element, "started", started);
    setData(element, "finished", finished);
    setText(element, formatDuration(elapsed(started, finished)));
  }

  function setStatus(badge, status) {
    if (!badge || badge.dataset.status === status) {
      return;
    }
    badge.dataset.status = status;
    badge.querySelector("use").setAttribute("href", "#wtflow-icon-" + status);
    setText(badge.querySelector(".wtflow-status-label"), labels[status] || status);
  }

  function statusBadge(status) {
    const badge = $("[data-status-template]").content.firstElementChild.cloneNode(true);
    badge.dataset.status = "";
    setStatus(badge, status);
    return badge;
  }

  function cell(content, className) {
    const td = document.createElement("td");
    if (className) {
      td.className = className;
    }
    if (content instanceof Node) {
      td.append(content);
    } else {
      td.textContent = content === null || content === undefined ? "" : content;
    }
    return td;
  }

  function timeElement(iso) {
    const time = document.createElement("time");
    setTime(time, iso);
    return time;
  }

  function messageRow(text, columns) {
    const row = document.createElement("tr");
    const td = cell(text, "wtflow-muted");
    td.colSpan = columns;
    row.append(td);
    return row;
  }

  //
  // Talking to the REST API
  //
  class RequestError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function failure(response) {
    let message = response.statusText || String(response.status);
    try {
      message = (await response.json()).message || message;
    } catch (ignored) {
      // Not a JSON error body: keep the status text.
    }
    return new RequestError(message, response.status);
  }

  function noteClock(response) {
    const date = Date.parse(response.headers.get("Date"));
    if (!Number.isNaN(date)) {
      state.skew = date - Date.now();
    }
  }

  // GET a JSON resource; null when it has not changed since the last call
  // with the same key (the API answered 304 to If-None-Match).
  async function getJSON(url, key) {
    const headers = { Accept: "application/json" };
    if (key && state.etags.has(key)) {
      headers["If-None-Match"] = state.etags.get(key);
    }
    const response = await fetch(url, { headers, cache: "no-store" });
    noteClock(response);
    if (response.status === 304) {
      return null;
    }
    if (!response.ok) {
      throw await failure(response);
    }
    if (key && response.headers.has("ETag")) {
      state.etags.set(key, response.headers.get("ETag"));
    }
    return response.json();
  }

  function csrfToken() {
    const prefix = settings.csrf.cookie + "=";
    const found = document.cookie.split("; ").find((c) => c.startsWith(prefix));
    return found ? decodeURIComponent(found.slice(prefix.length)) : null;
  }

  async function send(method, url) {
    const headers = { Accept: "application/json", "Content-Type": "application/json" };
    const token = csrfToken();
    if (token) {
      headers[settings.csrf.header] = token;
    }
    const response = await fetch(url, { method, headers, body: "{}" });
    if (!response.ok) {
      throw await failure(response);
    }
    return response.json();
  }

  //
  // Applying a run's payload
  //
  function taskLabel(task) {
    let label = labels[task.status] || task.status;
    if (PROGRESSING.has(task.status) && task.progress !== null) {
      label += " · " + percent(task.progress);
    }
    if (task.attempt > 1) {
      label += " · " + format(messages.attempt, { attempt: task.attempt });
    }
    return label;
  }

  function isSettled(run) {
    return TERMINAL.has(run.status) && !run.tasks.some((t) => ACTIVE.has(t.status));
  }

  function graphChanged(tasks) {
    const nodes = root.querySelectorAll(".wtflow-node[data-task-id]");
    if (nodes.length !== tasks.length) {
      return true;
    }
    return tasks.some((task) => {
      const node = $(`.wtflow-node[data-task-id="${task.id}"]`);
      return !node || node.dataset.dependsOn !== task.depends_on.slice().sort().join(" ");
    });
  }

  // Fetch the page again and take its graph and task table.
  async function replaceGraph() {
    const response = await fetch(window.location.pathname, {
      headers: { Accept: "text/html" },
      cache: "no-store",
    });
    if (!response.ok) {
      throw await failure(response);
    }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const selector of ["[data-graph]", "[data-tasks]", "#wtflow-tasks-heading"]) {
      const fresh = page.querySelector(selector);
      if (fresh) {
        $(selector).replaceWith(document.importNode(fresh, true));
      }
    }
  }

  // Tasks a person can restart: finished, with no failed task upstream (that
  // one must be restarted instead). The same rule as ui.restartable.
  function restartable(tasks) {
    const byId = new Map(tasks.map((task) => [task.id, task]));
    const blocked = new Map();
    function isBlocked(task) {
      if (!blocked.has(task.id)) {
        blocked.set(task.id, false); // a graph has no cycle; this stops one anyway
        blocked.set(
          task.id,
          task.depends_on.some((id) => {
            const upstream = byId.get(id);
            return upstream && (upstream.status === "failure" || isBlocked(upstream));
          })
        );
      }
      return blocked.get(task.id);
    }
    return new Set(tasks.filter((t) => TERMINAL.has(t.status) && !isBlocked(t)).map((t) => t.id));
  }

  function applyTask(task, canRestart) {
    const row = $(`tr[data-task-id="${task.id}"]`);
    const node = $(`.wtflow-node[data-task-id="${task.id}"]`);
    const label = taskLabel(task);
    const progressing = PROGRESSING.has(task.status);
    const changed =
      row && (row.dataset.status !== task.status || row.dataset.attempt !== String(task.attempt));
    if (row) {
      row.dataset.status = task.status;
      row.dataset.attempt = task.attempt;
      setStatus($('[data-field="status"]', row), task.status);
      setText($('[data-field="message"]', row), task.message || "");
      const bar = $("progress", row);
      bar.hidden = !progressing;
      if (task.progress === null) {
        bar.removeAttribute("value"); // indeterminate
      } else {
        bar.value = task.progress;
      }
      setText(
        $('[data-field="progress"]', row),
        progressing && task.progress !== null ? percent(task.progress) : ""
      );
      setText($('[data-field="attempt"]', row), task.attempt ? String(task.attempt) : "");
      setTime($('[data-field="started"]', row), task.started);
      setDuration($('[data-field="duration"]', row), task.started, task.finished);
      const restart = $('[data-action="restart-task"]', row);
      if (restart) {
        restart.hidden = !canRestart.has(task.id);
      }
    }
    const errorRow = $(`tr[data-error-for="${task.id}"]`);
    if (errorRow) {
      errorRow.hidden = task.status !== "failure";
      if (changed && task.status === "failure") {
        loadError($("[data-error]", errorRow)); // the error's summary line
      }
    }
    if (node) {
      node.dataset.status = task.status;
      $("use", node).setAttribute("href", "#wtflow-icon-" + task.status);
      setText($('[data-field="label"]', node), label);
      node.setAttribute("aria-label", node.dataset.name + ": " + label);
      const track = $(".wtflow-node-track", node);
      if (track) {
        const width = Number(track.getAttribute("width"));
        const fill = progressing && task.progress !== null ? width * task.progress : 0;
        $(".wtflow-node-progress", node).setAttribute("width", String(fill));
      }
    }
  }

  async function applyRun(run) {
    if (graphChanged(run.tasks)) {
      await replaceGraph();
    }
    root.dataset.status = run.status;
    setStatus($('[data-field="run-status"]'), run.status);
    const message = $('[data-field="run-message"]');
    setText(message, run.message || "");
    message.hidden = !run.message;
    setTime($('[data-field="run-started"]'), run.started);
    setTime($('[data-field="run-finished"]'), run.finished);
    setDuration($('[data-field="run-duration"]'), run.started, run.finished);
    const canRestart = restartable(run.tasks);
    run.tasks.forEach((task) => applyTask(task, canRestart));

    const show = { start: run.status === "pending", restart: run.status !== "pending" };
    show.stop = !TERMINAL.has(run.status);
    for (const [action, visible] of Object.entries(show)) {
      const button = $(`[data-action="${action}"]`);
      if (button) {
        button.hidden = !visible;
      }
    }

    const section = $("[data-children]");
    setText($("[data-children-total]"), String(run.children.total));
    if (run.children.total && section.hidden) {
      section.hidden = false;
    }
    state.live = !isSettled(run);
  }

  //
  // History, child runs and errors, from their own endpoints
  //
  async function refreshHistory() {
    const payload = await getJSON(settings.history, "history");
    if (!payload) {
      return;
    }
    // A version that changed nothing shown here (the run's data, say) would
    // repeat the row before it: keep the first of such a streak.
    const same = (a, b) =>
      a.status === b.status && a.message === b.message && a.user_id === b.user_id;
    const rows = payload.hits
      .filter((entry, i, hits) => i === 0 || !same(entry, hits[i - 1]))
      .reverse()
      .map((entry) => {
        const row = document.createElement("tr");
        const by =
          entry.user_id === null ? messages.system : format(messages.user, { id: entry.user_id });
        row.append(
          cell(timeElement(entry.issued_at)),
          cell(statusBadge(entry.status)),
          cell(entry.message, "wtflow-message"),
          cell(by)
        );
        return row;
      });
    $("[data-history-body]").replaceChildren(...(rows.length ? rows : [messageRow(messages.noHistory, 4)]));
  }

  function taskName(taskId) {
    const node = $(`.wtflow-node[data-task-id="${taskId}"]`);
    return node ? node.dataset.name : "";
  }

  // A run's name, linking to its page, over the start of its id (as in the
  // list of runs).
  function runLink(run) {
    const fragment = document.createDocumentFragment();
    const link = document.createElement("a");
    link.href = settings.page.replace("__id__", run.id);
    link.textContent = run.name;
    const code = document.createElement("code");
    code.className = "wtflow-id";
    code.title = run.id;
    code.textContent = run.id.slice(0, 8);
    fragment.append(link, code);
    return fragment;
  }

  async function refreshChildren() {
    const size = settings.pageSize;
    const url = `${settings.children}?page=${state.childrenPage}&size=${size}`;
    const payload = await getJSON(url, url);
    if (!payload) {
      return;
    }
    const rows = payload.hits.map((child) => {
      const row = document.createElement("tr");
      row.dataset.runId = child.id;
      const duration = cell("", "wtflow-num");
      setDuration(duration, child.started, child.finished); // counts up while running
      row.append(
        cell(child.spawn_index === null ? "" : String(child.spawn_index + 1), "wtflow-num"),
        cell(statusBadge(child.status)),
        cell(runLink(child)),
        cell(taskName(child.parent_task_id)),
        cell(timeElement(child.started)),
        duration
      );
      return row;
    });
    $("[data-children-body]").replaceChildren(...rows);
    const first = (state.childrenPage - 1) * size + 1;
    setText(
      $("[data-children-range]"),
      payload.total
        ? format(messages.range, { first, last: first + rows.length - 1, total: payload.total })
        : ""
    );
    const prev = state.childrenPage <= 1;
    const next = !payload.links.next;
    $('[data-children-page="prev"]').disabled = prev;
    $('[data-children-page="next"]').disabled = next;
    $("[data-children-pager]").hidden = prev && next;
  }

  // Fill a failed task's error row from its REST resource: the error on the
  // summary line, the traceback inside. Once per attempt.
  async function loadError(details) {
    const taskId = details.closest("tr").dataset.errorFor;
    const attempt = $(`tr[data-task-id="${taskId}"]`).dataset.attempt;
    if (details.dataset.loaded === attempt) {
      return;
    }
    details.dataset.loaded = attempt;
    const summary = $("[data-error-summary]", details);
    const body = $("[data-error-body]", details);
    body.replaceChildren(messageParagraph(messages.loading));
    try {
      const task = await getJSON(settings.task + taskId, null);
      setText(summary, task.error || messages.noError);
      const pre = document.createElement("pre");
      pre.className = "wtflow-traceback";
      pre.textContent = task.traceback || messages.noError;
      body.replaceChildren(pre);
    } catch (error) {
      delete details.dataset.loaded;
      body.replaceChildren(messageParagraph(error.message, "wtflow-error-text"));
    }
  }

  function messageParagraph(text, className) {
    const p = document.createElement("p");
    p.className = className || "wtflow-muted";
    p.textContent = text;
    return p;
  }

  //
  // Polling
  //
  function indicate(text, kind) {
    const indicator = $("[data-live-indicator]");
    indicator.dataset.kind = kind;
    setText(indicator, text);
  }

  function showAlert(text) {
    const alert = $("[data-alert]");
    alert.textContent = text;
    alert.hidden = !text;
  }

  async function cycle() {
    const run = await getJSON(settings.run, "run");
    if (run) {
      await applyRun(run);
      await refreshHistory();
    }
    if (!$("[data-children]").hidden) {
      await refreshChildren();
    }
  }

  async function poll() {
    if (state.busy) {
      state.again = true;
      return;
    }
    clearTimeout(state.timer);
    state.busy = true;
    try {
      await cycle();
      state.failures = 0;
    } catch (error) {
      if ([401, 403, 404].includes(error.status)) {
        state.live = false;
        showAlert(error.message);
      } else {
        state.failures += 1;
      }
    } finally {
      state.busy = false;
    }
    if (state.again) {
      state.again = false;
      poll();
      return;
    }
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    if (document.hidden && state.live) {
      indicate(messages.paused, "paused");
      return; // "visibilitychange" polls again
    }
    if (!state.live) {
      indicate(messages.finished, "finished");
      return;
    }
    let delay = INTERVAL;
    if (state.failures) {
      delay = Math.min(INTERVAL * 2 ** state.failures, MAX_BACKOFF);
      indicate(format(messages.offline, { seconds: Math.round(delay / 1000) }), "offline");
    } else {
      indicate(messages.live, "live");
    }
    state.timer = setTimeout(poll, delay);
  }

  // Running durations count up between polls.
  function tick() {
    if (!state.live) {
      return;
    }
    root.querySelectorAll("[data-started]:not([data-finished])").forEach((element) => {
      setText(element, formatDuration(elapsed(element.dataset.started, null)));
    });
  }

  //
  // Events
  //
  const ACTIONS = {
    start: () => ["POST", settings.run],
    stop: () => ["DELETE", settings.run, messages.confirmStop],
    restart: () => ["PUT", settings.run, messages.confirmRestart],
    "restart-task": (button) => ["PUT", settings.task + button.dataset.taskId],
  };

  async function act(button) {
    const [method, url, question] = ACTIONS[button.dataset.action](button);
    if (question && !window.confirm(question)) {
      return;
    }
    showAlert("");
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await send(method, url);
      state.live = true;
      await poll();
    } catch (error) {
      const action = button.textContent.trim();
      showAlert(format(messages.failed, { action, message: error.message }));
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) {
      act(button);
      return;
    }
    const pager = event.target.closest("button[data-children-page]");
    if (pager) {
      state.childrenPage += pager.dataset.childrenPage === "next" ? 1 : -1;
      refreshChildren().catch((error) => showAlert(error.message));
    }
  });

  // "toggle" does not bubble: listen while it is captured.
  root.addEventListener(
    "toggle",
    (event) => {
      if (event.target.matches("[data-error]") && event.target.open) {
        loadError(event.target);
      }
    },
    true
  );

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      poll();
    }
  });

  setInterval(tick, 1000);
  refreshHistory().catch((error) => showAlert(error.message));
  if (!$("[data-children]").hidden) {
    refreshChildren().catch((error) => showAlert(error.message));
  }
  schedule();
})();
