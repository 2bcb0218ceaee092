// absync console, follow-up page: "Retry all" and "Mark all as processed" on the deliveries the page's
// filters select (the filters in the address, as the list and the CSV export use them). The count
// comes from the API (GET /deliveries/bulk/count, same filters) and is confirmed in a dialog; the
// confirmed count goes back as `expected`, so if the filters select another number by then the API
// refuses and the new count is confirmed again. Then the job's progress and result are shown; the
// rows change as the delivery worker applies the commands (live stream). Uses console.js's helpers.
"use strict";

(function bulkActions() {
  const dialog = document.getElementById("bulk-dialog");
  if (!dialog) return;
  const NAMES = { retry: "Retry all", "mark-processed": "Mark all as processed" };
  const WHAT = {
    retry: "Each is sent again now: one attempt, no automatic retry after it.",
    "mark-processed": "Use it when the changes were handled by hand: no more attempts will be made for them.",
  };
  const POLL_MS = 1000;
  const state = document.getElementById("bulk-state");
  const buttons = [document.getElementById("bulk-retry"), document.getElementById("bulk-mark")];
  const form = document.getElementById("filters");
  const filters = new URLSearchParams([...new URLSearchParams(location.search)].filter(([k, v]) => v && k !== "cursor"));
  const n = (x) => x.toLocaleString("en-GB");
  const plural = (x, one, many) => `${n(x)} ${x === 1 ? one : many}`;

  function filterItems() {
    const items = [...filters].map(([name, value]) => {
      const el = form.elements[name];
      const label = el?.labels?.[0]?.textContent.trim() || name;
      const shown = el?.tagName === "SELECT" ? el.selectedOptions[0]?.textContent || value : value;
      return h("li", {}, `${label}: ${shown}`);
    });
    return items.length ? items : [h("li", {}, "No filter: every delivery you can see")];
  }

  function ask(action, count, note) {
    const acted = count.actionable[action];
    const skipped = count.matching - acted;
    document.getElementById("bulk-title").textContent = NAMES[action];
    document.getElementById("bulk-text").textContent = `${note ? note + " " : ""}${WHAT[action]}`;
    const countEl = document.getElementById("bulk-count");
    countEl.textContent = plural(count.matching, "delivery", "deliveries");
    countEl.dataset.count = String(count.matching);
    document.getElementById("bulk-statuses").textContent = "(" + Object.entries(count.by_status)
      .map(([s, x]) => `${STATUS_LABELS[s] || s} ${n(x)}`).join(", ") + `; ${plural(count.destinations, "destination", "destinations")})`;
    const skip = document.getElementById("bulk-skip");
    skip.hidden = !skipped;
    skip.textContent = `${plural(skipped, "of them is", "of them are")} in a status where ${action === "retry" ? "Retry" : "Mark as processed"} does not apply, and will be skipped.`;
    document.getElementById("bulk-filters").replaceChildren(...filterItems());
    document.getElementById("bulk-ok").textContent = `${action === "retry" ? "Retry" : "Mark"} ${plural(count.matching, "delivery", "deliveries")}`;
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
  }

  function result(job) {
    const name = NAMES[job.action];
    const parts = [`${name} done: ${n(job.done)} of ${plural(job.total, "delivery", "deliveries")} ${job.action === "retry" ? "sent again" : "marked as processed"}.`];
    for (const [reason, x] of Object.entries(job.skipped)) parts.push(`${n(x)} skipped (${reason}): ${job.skip_reasons[reason]}.`);
    if (job.failed) parts.push(`${n(job.failed)} failed: ${job.failures.join("; ")}.`);
    if (job.error) parts.push(`Stopped by an error: ${job.error}.`);
    showState(state, parts.join(" "), job.error || job.failed ? "warning" : "success");
    state.dataset.jobId = job.job_id;
    announce(parts[0]);
  }

  async function follow(job) {
    buttons.forEach((b) => (b.disabled = true));
    try {
      while (job.running) {
        showState(state, `${NAMES[job.action]} (started by ${job.started_by}): ${n(job.done)} / ${n(job.total)} sent, ${n(job.failed)} failed…`, "info");
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        job = await api(`/deliveries/bulk?job_id=${encodeURIComponent(job.job_id)}`);
      }
      result(job);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  async function start(action, note = "") {
    const count = await api(`/deliveries/bulk/count?${filters}`);
    if (count.over_limit) {
      showState(state, `More than ${n(count.limit)} deliveries match these filters: narrow them (a bulk action acts on ${n(count.limit)} at most).`, "warning");
      return;
    }
    if (!count.matching) {
      showState(state, "No delivery matches these filters: nothing to do.", "warning");
      return;
    }
    if (!(await ask(action, count, note))) return;
    const query = new URLSearchParams(filters);
    query.set("expected", String(count.matching));
    let job;
    try {
      job = await api(`/deliveries/bulk/${action}?${query}`, { method: "POST" });
    } catch (error) {
      if (error.status === 409 && error.message.includes("now select")) return start(action, "The count changed since you looked.");
      throw error;
    }
    await follow(job);
  }

  for (const button of buttons) {
    button.addEventListener("click", () =>
      start(button.dataset.action).catch((error) => {
        showState(state, `${NAMES[button.dataset.action]} failed: ${error.message}`, "error");
        buttons.forEach((b) => (b.disabled = false));
      }));
  }
  // A job of this tenant scope still running (another tab, a reload): show it until it is done.
  api("/deliveries/bulk").then((job) => (job.running ? follow(job) : null), () => null);
})();
