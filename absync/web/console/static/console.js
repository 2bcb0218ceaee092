// absync console: loads data from /console/api (the /api/v1 routes with the session's token) and
// keeps the pages live. No framework: one small helper to build elements (text is always set as
// text, never parsed as HTML, so nothing a destination answers can run in the page).
"use strict";

const STATUS_LABELS = { PENDING: "Pending", SUCCESSFUL: "Successful", ERROR: "Error", SUPERSEDED: "Superseded" };
const COMMAND_POLL_MS = 1000;
const COMMAND_POLL_TRIES = 90;
const LIVE_ROWS_KEPT = 500; // a page left open all day keeps the newest rows only

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Absync-Console"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch("/console/api" + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 401) {
    location.assign("/console/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, "signed out");
  }
  const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const detail = data && data.detail;
    const text = Array.isArray(detail)
      ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ")
      : detail || response.statusText;
    throw new ApiError(response.status, text);
  }
  return data;
}

function announce(text) {
  const live = document.getElementById("live");
  live.textContent = "";
  setTimeout(() => (live.textContent = text), 50);
}

function badge(status, manual) {
  const label = STATUS_LABELS[status] || status;
  return h("span", { class: `badge status-${status.toLowerCase()}`, "data-status": status },
    h("span", { class: "icon", "aria-hidden": "true" }), manual ? `${label} (by hand)` : label);
}

function time(value) {
  if (!value) return "—";
  const date = new Date(value);
  return h("time", { datetime: date.toISOString(), title: date.toISOString() },
    date.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" }));
}

function dateRange(start, end) {
  const fmt = (d) => new Date(d + "T00:00:00").toLocaleDateString("en-GB", { day: "numeric", month: "short", year: "numeric" });
  return start === end ? fmt(start) : `${fmt(start)} – ${fmt(end)}`;
}

function pretty(text) {
  if (text === null || text === undefined || text === "") return "(empty)";
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function showState(el, text, kind = "info") {
  el.hidden = !text;
  el.textContent = text || "";
  el.className = `alert ${kind}`;
}

// -- follow-up page ---------------------------------------------------------------------------------

function followUpPage() {
  const params = new URLSearchParams(location.search);
  const form = document.getElementById("filters");
  for (const [name, value] of params) if (form.elements[name]) form.elements[name].value = value;
  const tbody = document.querySelector("#deliveries tbody");
  const nextButton = document.getElementById("next-page");
  const firstLink = document.getElementById("first-page");
  const liveState = document.getElementById("live-state");
  const filters = Object.fromEntries([...params].filter(([k, v]) => v && k !== "cursor"));
  const cursor = params.get("cursor");
  let nextCursor = null;
  let shownDestinations = new Set();
  document.getElementById("export-csv").href = "/console/api/deliveries/export.csv?" + new URLSearchParams(filters);

  const row = (d) =>
    h("tr", { "data-delivery-id": d.delivery_id, "data-status": d.status },
      h("td", {}, badge(d.status, d.manual)),
      h("td", {}, h("a", { href: `/console/deliveries/${encodeURIComponent(d.delivery_id)}` }, d.employee_name),
        h("div", { class: "sub" }, d.employee_email || d.employee_id)),
      h("td", {}, dateRange(d.start_date, d.end_date), h("div", { class: "sub mono" }, d.absence_id)),
      h("td", {}, d.change, h("div", { class: "sub" }, d.operation === "DELETE" ? "delete" : "upsert")),
      h("td", { class: "mono" }, d.destination_id),
      h("td", { class: "num" }, String(d.attempt_count)),
      h("td", { class: "why" }, d.status === "PENDING" && d.next_retry_at
        ? h("span", {}, "Retry at ", time(d.next_retry_at))
        : d.status === "ERROR" ? h("span", { class: "error-text clamp", title: d.last_error || "" }, d.last_error || "") : ""),
      h("td", {}, time(d.updated_at)));

  const matches = (d) =>
    (!filters.status || d.status === filters.status) &&
    (!filters.destination || d.destination_id === filters.destination) &&
    (!filters.employee || `${d.employee_name} ${d.employee_email || ""}`.toLowerCase().includes(filters.employee.toLowerCase())) &&
    (!filters.date_from || d.end_date >= filters.date_from) &&
    (!filters.date_to || d.start_date <= filters.date_to) &&
    (!filters.tenant || d.tenant === filters.tenant) &&
    (!filters.legal_entity || d.legal_entity_id === filters.legal_entity) &&
    (!filters.department || d.department_id === filters.department) &&
    (!filters.trigger || (filters.trigger === "manual" ? d.manual : !d.manual && d.trigger === filters.trigger)) &&
    (!filters.kind || shownDestinations.has(d.destination_id)); // a row's kind is not in the stream

  function empty() {
    if (!tbody.querySelector("tr[data-delivery-id]")) {
      tbody.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "8" }, "No delivery matches these filters.")));
    }
  }

  function showCounters(stats) {
    for (const [status, n] of Object.entries(stats.counts)) {
      document.querySelector(`[data-count="${status}"]`).textContent = n.toLocaleString("en-GB");
    }
    document.querySelector('[data-count="total"]').textContent = stats.total.toLocaleString("en-GB");
  }

  async function refreshCounters() {
    const query = filters.destination ? `?destination=${encodeURIComponent(filters.destination)}` : "";
    showCounters(await api(`/deliveries/stats${query}`));
  }

  async function load() {
    const query = new URLSearchParams({ limit: "50", ...filters });
    if (cursor) query.set("cursor", cursor);
    const page = await api(`/deliveries?${query}`);
    tbody.replaceChildren(...page.items.map(row));
    empty();
    nextCursor = page.next_cursor;
    nextButton.hidden = !nextCursor;
    firstLink.hidden = !cursor;
    firstLink.href = "?" + new URLSearchParams(filters);
    const ids = new Set(page.items.map((d) => d.destination_id));
    shownDestinations = ids;
    document.getElementById("destination-ids").replaceChildren(...[...ids].sort().map((id) => h("option", { value: id })));
  }

  nextButton.addEventListener("click", () => {
    location.assign("?" + new URLSearchParams({ ...filters, cursor: nextCursor }));
  });

  // One row per delivery, latest state wins. The counters come with the batches (the server sends
  // them when they move), so an open page costs the database nothing per change.
  function onChange(d, fresh) {
    const existing = tbody.querySelector(`tr[data-delivery-id="${CSS.escape(d.delivery_id)}"]`);
    if (existing && !matches(d)) existing.remove();
    else if (existing) existing.replaceWith(row(d));
    else if (!cursor && matches(d)) {
      tbody.querySelector("tr.empty")?.remove();
      const added = row(d);
      added.classList.add("fresh");
      tbody.prepend(added);
      fresh.push(d);
    }
  }

  function onBatch(batch) {
    const fresh = [];
    for (const d of batch.items) onChange(d, fresh);
    const rows = tbody.querySelectorAll("tr[data-delivery-id]");
    for (let i = LIVE_ROWS_KEPT; i < rows.length; i++) rows[i].remove();
    empty();
    if (batch.stats) showCounters(batch.stats);
    if (fresh.length === 1) announce(`New delivery: ${fresh[0].employee_name}, ${STATUS_LABELS[fresh[0].status]}`);
    else if (fresh.length > 1) announce(`${fresh.length} new deliveries`);
  }

  // The stream first, then the rows: a change written while the page loads is in a batch held until
  // the rows are there, and applied over them (the latest state wins). On "resync" (this page fell
  // behind a burst, or the view was rebuilt) the page reloads; after a reconnection it loads again.
  function connect() {
    const stream = "/console/api/deliveries/stream" + (filters.destination ? `?destination=${encodeURIComponent(filters.destination)}` : "");
    const source = new EventSource(stream);
    let held = null;
    const setLive = (on, text) => {
      liveState.classList.toggle("on", on);
      liveState.querySelector(".text").textContent = text;
    };
    source.addEventListener("open", () => {
      held = [];
      Promise.all([load(), refreshCounters()]).then(() => {
        const batches = held;
        held = null;
        for (const batch of batches) onBatch(batch);
        setLive(true, "Live");
      }, (error) => {
        source.close();
        setLive(false, "Not live");
        tbody.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "8", role: "alert" }, `Could not load deliveries: ${error.message}`)));
      });
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) return setLive(false, "Reconnecting…");
      setLive(false, "Not live"); // refused (signed out: api() goes to sign-in; too many tabs open: 429)
      Promise.all([load(), refreshCounters()]).then(
        () => setTimeout(connect, 30000), // the 429's Retry-After: try again
        (error) => setLive(false, `Not live: ${error.message}`),
      );
    });
    source.addEventListener("deliveries", (event) => {
      const batch = JSON.parse(event.data);
      if (held) held.push(batch);
      else onBatch(batch);
    });
    source.addEventListener("resync", () => {
      source.close();
      setLive(false, "Catching up…");
      location.reload();
    });
    source.addEventListener("unauthorized", () => {
      source.close();
      location.assign("/console/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
    });
  }

  connect();
}

// -- delivery detail --------------------------------------------------------------------------------

function deliveryPage() {
  const id = document.body.dataset.deliveryId;
  const box = document.getElementById("delivery");
  const attemptsBox = document.getElementById("attempts");
  const commandState = document.getElementById("command-state");
  const retry = document.getElementById("retry");
  const mark = document.getElementById("mark");
  const dialog = document.getElementById("confirm");
  let current = null;

  const item = (label, value) => [h("dt", {}, label), h("dd", {}, value)];

  function render(d) {
    current = d;
    document.getElementById("delivery-title").replaceChildren(`${d.employee_name} · ${dateRange(d.start_date, d.end_date)} `, badge(d.status, d.manual));
    document.title = `${d.employee_name} · Delivery · absync console`;
    box.setAttribute("aria-busy", "false");
    box.replaceChildren(
      h("section", { class: "card" }, h("h2", {}, "Absence"),
        h("dl", { class: "facts" },
          item("Employee", `${d.employee_name} (${d.employee_email || d.employee_id})`),
          item("Dates", dateRange(d.start_date, d.end_date)),
          item("Change", `${d.change} (version ${d.version}, ${d.operation.toLowerCase()})`),
          item("Absence id", h("code", {}, d.absence_id)))),
      h("section", { class: "card" }, h("h2", {}, "Delivery"),
        h("dl", { class: "facts" },
          item("Destination", h("code", {}, d.destination_id)),
          item("Status", badge(d.status, d.manual)),
          item("Attempts", String(d.attempt_count)),
          item("Next retry", d.next_retry_at ? time(d.next_retry_at) : "None scheduled"),
          item("Last error", d.last_error ? h("span", { class: "error-text" }, d.last_error) : "—"),
          item("Created item", d.external_id ? h("code", { id: "external-id" }, d.external_id) : "—"),
          item("Created", time(d.created_at)),
          item("Updated", time(d.updated_at)),
          item("Delivery id", h("code", {}, d.delivery_id)))));
    attemptsBox.replaceChildren(...(d.attempts.length ? [...d.attempts].reverse().map(attempt) : [h("p", { class: "help" }, "No attempt yet.")]));
    retry.hidden = d.status === "SUPERSEDED";
    mark.hidden = d.status === "SUCCESSFUL" || d.status === "SUPERSEDED";
  }

  const headers = (map) => {
    const lines = Object.entries(map || {}).map(([k, v]) => `${k}: ${v}`);
    return h("details", { class: "headers" }, h("summary", {}, `Headers (${lines.length})`),
      h("pre", { class: "code headers" }, lines.join("\n") || "(none)"));
  };

  function attempt(a) {
    const ok = a.response_status !== null && a.response_status < 400 && !a.error;
    return h("details", { class: "attempt", open: a === current.attempts[current.attempts.length - 1] },
      h("summary", {},
        h("span", { class: `result ${ok ? "ok" : "ko"}` }, ok ? "OK" : "Failed"),
        h("strong", {}, `Attempt ${a.number}`), " · ", time(a.started_at), " · ",
        `${Math.round(a.duration_ms).toLocaleString("en-GB")} ms`, " · ", a.trigger,
        " · ", h("code", {}, `${a.request_method} ${a.request_url}`), " → ",
        a.response_status === null ? "no response" : `HTTP ${a.response_status}`),
      a.error ? h("p", { class: "error-text" }, a.error) : null,
      h("div", { class: "exchange" },
        h("section", {}, h("h3", {}, "Request"), h("pre", { class: "code" }, pretty(a.request_body)), headers(a.request_headers)),
        h("section", {}, h("h3", {}, "Response"), h("pre", { class: "code" }, pretty(a.response_body)), headers(a.response_headers))));
  }

  async function load() {
    try {
      render(await api(`/deliveries/${encodeURIComponent(id)}`));
    } catch (error) {
      box.replaceChildren(h("p", { class: "alert error", role: "alert" }, `Could not load this delivery: ${error.message}`));
    }
  }

  function confirmDialog(text, action) {
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = action;
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
  }

  async function command(kind, label, question) {
    if (!(await confirmDialog(question, label))) return;
    const before = current;
    retry.disabled = mark.disabled = true;
    try {
      await api(`/deliveries/${encodeURIComponent(id)}/${kind}`, { method: "POST" });
      showState(commandState, `${label}: command sent, waiting for the delivery worker…`);
      for (let i = 0; i < COMMAND_POLL_TRIES; i++) {
        await new Promise((r) => setTimeout(r, COMMAND_POLL_MS));
        const now = await api(`/deliveries/${encodeURIComponent(id)}`);
        if (now.status !== before.status || now.attempt_count !== before.attempt_count || now.updated_at !== before.updated_at) {
          render(now);
          showState(commandState, `${label} applied: the delivery is now ${STATUS_LABELS[now.status]}.`, "success");
          announce(commandState.textContent);
          return;
        }
      }
      showState(commandState, `${label}: sent, but not applied yet. The page updates on reload.`, "warning");
    } catch (error) {
      showState(commandState, `${label} failed: ${error.message}`, "error");
    } finally {
      retry.disabled = mark.disabled = false;
    }
  }

  retry.addEventListener("click", () =>
    command("retry", "Retry", "Send this absence to the destination again now? One attempt is made; no automatic retry follows it."));
  mark.addEventListener("click", () =>
    command("mark-processed", "Mark as processed", "Mark this delivery as processed? Use it when the change was handled by hand: no more attempts will be made."));
  load();
}

// -- destinations -----------------------------------------------------------------------------------

function destinationsPage() {
  const tbody = document.querySelector("#destinations tbody");
  const state = document.getElementById("destinations-state");
  const testResult = document.getElementById("test-result");

  async function toggle(d) {
    try {
      await api(`/destinations/${encodeURIComponent(d.id)}/${d.enabled ? "disable" : "enable"}`, { method: "POST" });
      showState(state, `${d.name} is now ${d.enabled ? "disabled" : "enabled"}.`, "success");
      await load();
    } catch (error) {
      showState(state, `Could not change ${d.name}: ${error.message}`, "error");
    }
  }

  async function test(d, button) {
    button.disabled = true;
    testResult.hidden = false;
    testResult.replaceChildren(h("p", {}, `Testing ${d.name}…`));
    try {
      const result = await api(`/destinations/${encodeURIComponent(d.id)}/test`, { method: "POST" });
      testResult.replaceChildren(
        h("h2", {}, `Connection test: ${d.name}`),
        h("p", { class: `alert ${result.ok ? "success" : "error"}`, role: "status" },
          result.ok ? `Works: ${result.summary || "the destination answered"}` : `Failed: ${result.error}`),
        ...result.calls.map((c) => h("p", { class: "mono" }, `${c.method} ${c.url} → ${c.response_status ?? "no response"} (${Math.round(c.duration_ms)} ms)`)));
      testResult.focus();
    } catch (error) {
      testResult.replaceChildren(h("p", { class: "alert error" }, `Test failed: ${error.message}`));
    } finally {
      button.disabled = false;
    }
  }

  const resyncDialog = document.getElementById("resync-dialog");

  function askResync(d) {
    const form = document.getElementById("resync-form");
    form.reset();
    document.getElementById("resync-title").textContent = `Resync ${d.name}`;
    resyncDialog.returnValue = "";
    resyncDialog.showModal();
    return new Promise((resolve) => resyncDialog.addEventListener("close", () => {
      if (resyncDialog.returnValue !== "ok") return resolve(null);
      const body = {};
      for (const name of ["ending_on_or_after", "legal_entity", "department"]) {
        const value = form.elements[name].value.trim();
        if (value) body[name] = value;
      }
      resolve(body);
    }, { once: true }));
  }

  // "1:02:03" or "2:03"; "-:--" when unknown (the CLI's bar shows the same figures).
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-:--";
    const whole = Math.round(seconds), h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return `${h ? `${h}:` : ""}${mm}:${String(s).padStart(2, "0")}`;
  }

  function resyncProgress(job) {
    const n = (value) => value.toLocaleString("en-GB");
    const percent = job.total ? ` (${Math.floor((100 * job.done) / job.total)}%)` : "";
    return `${job.phase}, ${n(job.done)} / ${n(job.total)} records${percent}, ${n(Math.round(job.rate))}/s, ${duration(job.seconds_left)} left; ${n(job.sent)} sent, ${n(job.skipped)} skipped, ${n(job.failed)} failed.`;
  }

  async function resync(d, button) {
    const path = `/destinations/${encodeURIComponent(d.id)}/resync`;
    const body = await askResync(d);
    if (body === null) return;
    button.disabled = true;
    try {
      let job = await api(path, { method: "POST", body });
      while (job.running) {
        showState(state, `Resync of ${d.name}: ${resyncProgress(job)}`, "info");
        await new Promise((resolve) => setTimeout(resolve, 1000));
        job = await api(path);
      }
      if (job.error || !job.completed) throw new Error(job.error || "interrupted: start it again to continue");
      showState(state, `Resync of ${d.name} complete: ${job.sent.toLocaleString("en-GB")} sent (${job.upserts.toLocaleString("en-GB")} upserts, ${job.deletes.toLocaleString("en-GB")} deletes), ${job.skipped.toLocaleString("en-GB")} skipped, ${job.failed.toLocaleString("en-GB")} failed in ${duration(job.seconds)}.`, "success");
    } catch (error) {
      showState(state, `Resync of ${d.name} failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  const recoverDialog = document.getElementById("recover-dialog");
  const recoverSince = document.getElementById("recover-since");

  function askSince(d) {
    document.getElementById("recover-title").textContent = `Recover ${d.name}`;
    const dayAgo = new Date(Date.now() - 864e5 - new Date().getTimezoneOffset() * 6e4);
    recoverSince.value = dayAgo.toISOString().slice(0, 19);
    recoverDialog.returnValue = "";
    recoverDialog.showModal();
    return new Promise((resolve) => recoverDialog.addEventListener("close", () =>
      resolve(recoverDialog.returnValue === "ok" && recoverSince.value ? new Date(recoverSince.value).toISOString() : null), { once: true }));
  }

  function skippedText(job) {
    const parts = Object.entries(job.skipped).map(([reason, n]) => `${n.toLocaleString("en-GB")} skipped: ${job.skip_reasons[reason]}`);
    return parts.length ? ` ${parts.join("; ")}.` : "";
  }

  async function recover(d, button) {
    const path = `/destinations/${encodeURIComponent(d.id)}/recover`;
    const since = await askSince(d);
    if (!since) return;
    button.disabled = true;
    try {
      let job = await api(path, { method: "POST", body: { since } });
      while (job.running) {
        showState(state, `Recover of ${d.name}: ${job.phase}, ${job.done.toLocaleString("en-GB")} / ${job.total.toLocaleString("en-GB")} re-sent.`, "info");
        await new Promise((resolve) => setTimeout(resolve, 1000));
        job = await api(path);
      }
      if (job.error || !job.completed) throw new Error(job.error || `stopped after ${job.done} re-sent: start it again to send the rest`);
      showState(state, `Recover of ${d.name} done: ${job.done.toLocaleString("en-GB")} of ${job.total.toLocaleString("en-GB")} in Error since ${new Date(job.since).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" })} re-sent.${skippedText(job)}`, "success");
    } catch (error) {
      showState(state, `Recover of ${d.name} failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  function row(d) {
    const rate = d.success_rate === null || d.success_rate === undefined ? "No finished delivery" : `${(d.success_rate * 100).toFixed(1)} %`;
    const counts = d.deliveries ? Object.entries(d.deliveries).filter(([, n]) => n).map(([s, n]) => `${STATUS_LABELS[s]} ${n}`).join(", ") || "None" : "";
    const testButton = h("button", { type: "button", onclick: () => test(d, testButton) }, "Test connection");
    const resyncButton = h("button", { type: "button", onclick: () => resync(d, resyncButton), disabled: !d.enabled }, "Resync");
    const recoverButton = h("button", { type: "button", onclick: () => recover(d, recoverButton), disabled: !d.enabled }, "Recover");
    return h("tr", { "data-destination-id": d.id },
      h("td", {}, h("a", { href: `/console/destinations/${encodeURIComponent(d.id)}?kind=${encodeURIComponent(d.kind)}` }, d.name), h("div", { class: "sub mono" }, d.id)),
      h("td", {}, d.kind),
      h("td", {}, h("span", { class: `badge ${d.enabled ? "status-successful" : "status-superseded"}` }, h("span", { class: "icon", "aria-hidden": "true" }), d.enabled ? "Enabled" : d.updated_by === "absync:auto-disable" ? "Disabled (auto)" : "Disabled")),
      h("td", { class: "num" }, rate),
      h("td", { class: "why" }, d.last_error ? [h("span", { class: "error-text" }, d.last_error), h("div", { class: "sub" }, time(d.last_error_at))] : "—"),
      h("td", {}, counts),
      h("td", { class: "row-actions" },
        h("button", { type: "button", onclick: () => toggle(d) }, d.enabled ? "Disable" : "Enable"), testButton, resyncButton, recoverButton));
  }

  async function load() {
    const list = await api("/destinations");
    const details = await Promise.all(list.map((d) => api(`/destinations/${encodeURIComponent(d.id)}`)));
    tbody.replaceChildren(...details.map(row));
    if (!details.length) tbody.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "7" }, "No destination yet.")));
  }

  load().catch((error) => showState(state, `Could not load destinations: ${error.message}`, "error"));
}

function destinationPage() {
  const form = document.getElementById("destination-form");
  const formState = document.getElementById("form-state");
  const id = document.body.dataset.destinationId;
  const kind = document.body.dataset.kind;
  const fieldNames = new Set([...form.querySelectorAll("[data-setting]")].map((el) => el.dataset.setting));
  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

  function fill(d) {
    if (d.kind !== kind) {
      location.replace(`/console/destinations/${encodeURIComponent(d.id)}?kind=${encodeURIComponent(d.kind)}`);
      return;
    }
    form.elements.tenant.value = d.tenant;
    form.elements.name.value = d.name;
    form.elements.changes.value = d.changes;
    form.elements.enabled.checked = d.enabled;
    form.elements.rate_limit.value = d.rate_limit === null || d.rate_limit === undefined ? "" : String(d.rate_limit);
    for (const el of form.querySelectorAll("[data-filter]")) el.value = (d.filters[el.dataset.filter] || []).join(", ");
    for (const el of form.querySelectorAll("[data-setting]")) {
      const value = d.settings[el.dataset.setting];
      if (el.type === "checkbox") el.checked = Boolean(value);
      else if (value !== undefined && value !== null) el.value = String(value);
    }
    const extra = Object.fromEntries(Object.entries(d.settings).filter(([k]) => !fieldNames.has(k)));
    document.getElementById("s-extra").value = Object.keys(extra).length ? JSON.stringify(extra, null, 2) : "";
    for (const el of form.querySelectorAll("[data-secret-state]")) {
      el.textContent = d.secrets[el.dataset.secretState] ? "(set)" : "(not set)";
    }
  }

  async function secretValue(el) {
    if (el.type !== "file") return el.value;
    const file = el.files[0];
    if (!file) return "";
    const max = Number(el.dataset.maxBytes);
    const label = el.labels[0]?.firstChild?.textContent.trim() || el.dataset.secret;
    if (file.size > max) throw new Error(`${label}: ${file.name} is larger than ${Math.floor(max / 1024)} kB.`);
    if (!file.size) throw new Error(`${label}: ${file.name} is empty.`);
    return file.text(); // sent to the API only: never shown, never put back in the page
  }

  async function collect() {
    const settings = {};
    const extraText = document.getElementById("s-extra").value.trim();
    if (extraText) {
      const extra = JSON.parse(extraText);
      if (typeof extra !== "object" || Array.isArray(extra) || extra === null) throw new Error("Other settings must be a JSON object.");
      Object.assign(settings, extra);
    }
    for (const el of form.querySelectorAll("[data-setting]")) {
      if (el.type === "checkbox") settings[el.dataset.setting] = el.checked;
      else if (el.type === "number" && el.value.trim()) settings[el.dataset.setting] = Number(el.value);
      else if (el.value.trim()) settings[el.dataset.setting] = el.value.trim();
    }
    const secrets = {};
    for (const el of form.querySelectorAll("[data-secret]")) {
      const value = await secretValue(el);
      if (value) secrets[el.dataset.secret] = value;
    }
    const filters = {};
    for (const el of form.querySelectorAll("[data-filter]")) filters[el.dataset.filter] = list(el.value);
    return {
      name: form.elements.name.value.trim(),
      kind,
      enabled: form.elements.enabled.checked,
      changes: form.elements.changes.value,
      rate_limit: form.elements.rate_limit.value.trim() ? Number(form.elements.rate_limit.value) : null,
      filters,
      settings,
      secrets,
    };
  }

  // A new file chosen: the error about the previous one no longer holds.
  form.addEventListener("change", (event) => { if (event.target.type === "file") formState.hidden = true; });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    try {
      const body = await collect();
      if (id) await api(`/destinations/${encodeURIComponent(id)}`, { method: "PUT", body });
      else {
        body.id = form.elements.id.value.trim();
        if (form.elements.tenant.value.trim()) body.tenant = form.elements.tenant.value.trim();
        await api("/destinations", { method: "POST", body });
      }
      location.assign("/console/destinations");
    } catch (error) {
      showState(formState, `Not saved: ${error.message}`, "error");
      formState.focus();
    }
  });

  if (id) {
    api(`/destinations/${encodeURIComponent(id)}`).then(fill, (error) => showState(formState, `Could not load: ${error.message}`, "error"));
    api(`/destinations/${encodeURIComponent(id)}/health`).then(showHealth, (error) =>
      document.getElementById("health").replaceChildren(h("p", { class: "alert error" }, `Could not load the health: ${error.message}`)));
    api(`/destinations/${encodeURIComponent(id)}/audit`).then((entries) => {
      document.getElementById("audit").replaceChildren(...entries.map((e) =>
        h("li", {}, time(e.at), ` · ${e.actor} · ${e.action}: `, Object.keys(e.changes).join(", ") || "no change")));
    });
  }
}

// -- destination health and alerts -----------------------------------------------------------------

const HEALTH_LABELS = { healthy: "Healthy", failing: "Failing", disabled: "Disabled" };
const HEALTH_CLASS = { healthy: "status-successful", failing: "status-error", disabled: "status-superseded" };
const NOTIFY_LABELS = { pending: "alert pending", sent: "alert sent", failed: "alert not delivered", none: "no alert target" };

function showHealth(x) {
  const box = document.getElementById("health");
  const item = (label, value) => [h("dt", {}, label), h("dd", {}, value)];
  box.setAttribute("aria-busy", "false");
  box.replaceChildren(
    h("p", {}, h("span", { id: "health-state", class: `badge ${HEALTH_CLASS[x.state]}` }, h("span", { class: "icon", "aria-hidden": "true" }), HEALTH_LABELS[x.state])),
    x.disabled_automatically ? h("p", { id: "auto-disabled", class: "alert warning", role: "status" },
      "Disabled automatically: it failed without a single success for the auto-disable period. Fix it, then enable it again.") : null,
    h("dl", { class: "facts" },
      item("Failing since", x.failing_since ? time(x.failing_since) : "—"),
      item("Will be disabled at", x.disables_at ? time(x.disables_at) : "—"),
      item("Last success", x.last_success_at ? time(x.last_success_at) : "—"),
      item("Last failure", x.last_failure_at ? time(x.last_failure_at) : "—"),
      item("Last error", x.last_error ? h("span", { class: "error-text" }, x.last_error) : "—"),
      item("Attempts", `${x.successes.toLocaleString("en-GB")} successful, ${x.failures.toLocaleString("en-GB")} failed`)));
  const list = document.getElementById("health-events");
  list.replaceChildren(...(x.events.length ? x.events.map((e) =>
    h("li", { "data-event": e.event }, time(e.at), " · ", h("strong", {}, e.event), ` · ${e.summary} (${NOTIFY_LABELS[e.notify_status]}${e.notify_error ? `: ${e.notify_error}` : ""})`))
    : [h("li", {}, "Nothing to report.")]));
}

function alertsPage() {
  const form = document.getElementById("alerts-form");
  const state = document.getElementById("alerts-state");
  const fields = ["slack_channel", "slack_base_url", "webhook_url"];

  function fill(a) {
    for (const name of fields) form.elements[name].value = a[name] || "";
    form.elements.slack_token.value = form.elements.webhook_secret.value = "";
    document.getElementById("a-slack-token-state").textContent = a.slack_token_set ? "(set)" : "(not set)";
    document.getElementById("a-webhook-secret-state").textContent = a.webhook_secret_set ? "(set)" : "(not set)";
    const updated = document.getElementById("alerts-updated");
    if (a.updated_at) updated.replaceChildren(`Last changed by ${a.updated_by}, `, time(a.updated_at), ".");
    else updated.textContent = "Not set yet.";
    for (const fieldset of form.querySelectorAll("fieldset")) fieldset.disabled = false; // loaded: editable
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    for (const name of [...fields, "slack_token", "webhook_secret"]) {
      const value = form.elements[name].value.trim();
      body[name] = value || null;
    }
    try {
      fill(await api("/alerts", { method: "PUT", body }));
      showState(state, "Alert settings saved.", "success");
    } catch (error) {
      showState(state, `Not saved: ${error.message}`, "error");
    }
    state.focus();
  });
  api("/alerts").then(fill, (error) => showState(state, `Could not load: ${error.message}`, "error"));
}

// -- audit page ------------------------------------------------------------------------------------

function auditDetails(e) {
  return Object.entries(e.changes).map(([field, value]) =>
    value && typeof value === "object" && "from" in value
      ? `${field}: ${JSON.stringify(value.from)} → ${JSON.stringify(value.to)}`
      : `${field}: ${typeof value === "string" ? value : JSON.stringify(value)}`).join("; ");
}

function auditPage() {
  const params = new URLSearchParams(location.search);
  const form = document.getElementById("audit-filters");
  for (const [name, value] of params) if (form.elements[name]) form.elements[name].value = value;
  const filters = Object.fromEntries([...params].filter(([k, v]) => v && k !== "before"));
  const tbody = document.querySelector("#audit tbody");
  const query = new URLSearchParams({ limit: "50", ...filters });
  if (params.get("before")) query.set("before", params.get("before"));
  api(`/audit?${query}`).then((page) => {
    tbody.replaceChildren(...page.items.map((e) =>
      h("tr", { "data-audit-id": String(e.id), "data-action": e.action },
        h("td", {}, time(e.at)),
        h("td", {}, e.actor),
        h("td", {}, e.action),
        h("td", { class: "mono" }, e.destination_id),
        h("td", { class: "why" }, auditDetails(e)))));
    if (!page.items.length) tbody.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "5" }, "Nothing recorded matches these filters.")));
    const next = document.getElementById("audit-next");
    next.hidden = !page.next_cursor;
    if (page.next_cursor) next.href = "?" + new URLSearchParams({ ...filters, before: String(page.next_cursor) });
    const first = document.getElementById("audit-first");
    first.hidden = !params.get("before");
    first.href = "?" + new URLSearchParams(filters);
  }, (error) => {
    tbody.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "5", role: "alert" }, `Could not load the audit log: ${error.message}`)));
  });
}

const PAGES = {
  alerts: alertsPage,
  deliveries: followUpPage,
  delivery: deliveryPage,
  destinations: destinationsPage,
  destination: destinationPage,
  audit: auditPage,
};
PAGES[document.body.dataset.page]?.();
