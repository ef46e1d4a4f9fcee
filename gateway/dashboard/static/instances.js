// The instances page: a search over the server's indexes (GET /ui/data/search: client.search, a page at
// a time by cursor) and bulk actions as durable jobs (POST /ui/data/bulk), whose progress is followed
// over server-sent events until the job ends.
import { api, badge, el, instanceUrl, say, when } from "./common.js";

const form = document.getElementById("filters");
const tbody = document.querySelector("#instances tbody");
const more = document.getElementById("more");
const selectAll = document.getElementById("select-all");
const bulkAction = document.getElementById("bulk-action");
const bulkSelected = document.getElementById("bulk-selected");
const bulkMatching = document.getElementById("bulk-matching");
const jobBox = document.getElementById("bulk-job");
const FILTERS = ["workflow", "status", "since", "until", "id_prefix", "version"];
const FIELDS = [...FILTERS, "order", "limit"];
let applied = {};  // the filters of the rows shown: what "everything the search matches" acts on
let view = {};  // their order and page size
let cursor = null;
let shown = 0;
let following = null;  // the EventSource of the bulk job shown

function selected() {
  return [...tbody.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
}

function updateSelection() {
  const boxes = tbody.querySelectorAll("input[type=checkbox]");
  const count = selected().length;
  say("selected-count", String(count));
  selectAll.checked = boxes.length > 0 && count === boxes.length;
  bulkSelected.disabled = count === 0 || !applied.workflow || following !== null;
  bulkSelected.title = applied.workflow ? "" : "Choose a workflow to act on selected instances";
  bulkMatching.disabled = following !== null;
}

/** The form's filters as the API takes them (times as ISO instants); empty fields left out. */
function filters() {
  const out = {};
  for (const name of FILTERS) {
    const value = form.elements[name].value;
    if (value) out[name] = name === "since" || name === "until" ? new Date(value).toISOString() : value;
  }
  return out;
}

/** Search: a new search from the form, the next page (append), or the search shown again (again). */
async function run(append, again = false) {
  if (!append && !again) {
    applied = filters();
    view = { order: form.elements.order.value, limit: form.elements.limit.value };
    const url = new URLSearchParams();
    for (const name of FIELDS) if (form.elements[name].value) url.set(name, form.elements[name].value);
    history.replaceState(null, "", `?${url}`);
  }
  if (!append) {
    cursor = null;
    shown = 0;
  }
  const params = new URLSearchParams({ ...applied, ...view });
  if (append && cursor) params.set("cursor", cursor);
  try {
    const page = await api(`/ui/data/search?${params}`);
    const rows = page.instances.map((row) => el("tr", { dataset: { id: row.id, workflow: row.workflow } },
      el("td", {}, el("input", { type: "checkbox", value: row.id, "aria-label": `Select ${row.id}`, onchange: updateSelection })),
      el("td", {}, el("a", { href: instanceUrl(row.workflow, row.id) }, row.id)),
      el("td", { class: "optional" }, row.workflow),
      el("td", { dataset: { status: row.status } }, badge(row.status)),
      el("td", {}, when(row.created_on)),
      el("td", { class: "optional" }, when(row.ended_on)),
      el("td", { class: "optional" }, row.version ?? "")));
    if (append) tbody.append(...rows); else tbody.replaceChildren(...rows);
    shown += rows.length;
    cursor = page.cursor;
    more.hidden = !cursor;
    say("summary", shown ? `${shown} shown${cursor ? "; more may match" : ""}.` : cursor ? "None yet; more may match." : "No instance matches.");
    say("error", "");
    updateSelection();
  } catch (error) {
    say("error", error.message);
  }
}

function showProgress(job) {
  const handled = job.done + job.failed;
  const progress = document.getElementById("bulk-progress");
  progress.max = Math.max(job.total, 1);
  progress.value = handled;
  Object.assign(jobBox.dataset, { job: job.id, state: job.state, total: job.total, done: job.done, failed: job.failed });
  const skipped = job.skipped ? ` (${job.skipped} with nothing to do)` : "";
  say("bulk-status", `${job.action} ${job.state}: ${job.done} of ${job.total} done${skipped}, ${job.failed} failed`);
  document.getElementById("bulk-cancel").hidden = job.state === "done" || job.state === "cancelled";
  document.getElementById("bulk-failures").replaceChildren(
    ...job.failures.map((f) => el("li", {}, `${f.workflow} / ${f.id}: ${f.reason}`)));
}

/** Follow a job's progress over server-sent events until it ends, then search again. */
function follow(job) {
  following?.close();
  jobBox.hidden = false;
  showProgress(job);
  const source = new EventSource(`/ui/data/bulk/${encodeURIComponent(job.id)}/live`);
  following = source;
  updateSelection();
  const stop = () => {
    source.close();
    if (following === source) following = null;
    updateSelection();
  };
  source.addEventListener("progress", (event) => showProgress(JSON.parse(event.data)));
  source.addEventListener("end", () => {
    stop();
    // The job is done when every request was sent; each applies as its instance's worker takes it,
    // so the rows are read again now and once more a moment later.
    run(false, true);
    setTimeout(() => run(false, true), 2000);
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {  // refused (signed out, or the job is gone)
      stop();
      say("error", "lost the bulk job's progress: reload the page");
    }  // otherwise the browser reconnects by itself
  });
}

async function startBulk(scope) {
  const action = bulkAction.value;
  const body = { action, filter: { ...applied } };
  let what = "every instance the search matches";
  if (scope === "selected") {
    body.ids = selected();
    body.filter = { workflow: applied.workflow };
    what = `${body.ids.length} selected instance(s)`;
    if (!body.ids.length) return;
  }
  if (!confirm(`${action} ${what}?`)) return;
  try {
    follow(await api("/ui/data/bulk", { method: "POST", body }));
    say("error", "");
  } catch (error) {
    say("error", error.message);
  }
}

async function cancelBulk() {
  const id = jobBox.dataset.job;
  if (!id) return;
  try {
    showProgress(await api(`/ui/data/bulk/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
  } catch (error) {
    say("error", error.message);
  }
}

async function init() {
  const params = new URLSearchParams(location.search);
  try {
    const workflows = await api("/ui/data/workflows");
    form.elements.workflow.append(...workflows.map((w) => el("option", { value: w.name }, w.name)));
  } catch (error) {
    say("error", error.message);
    return;
  }
  for (const name of FIELDS) if (params.has(name)) form.elements[name].value = params.get(name);
  form.addEventListener("submit", (event) => { event.preventDefault(); run(false); });
  more.addEventListener("click", () => run(true));
  selectAll.addEventListener("change", () => {
    for (const box of tbody.querySelectorAll("input[type=checkbox]")) box.checked = selectAll.checked;
    updateSelection();
  });
  bulkSelected.addEventListener("click", () => startBulk("selected"));
  bulkMatching.addEventListener("click", () => startBulk("matching"));
  document.getElementById("bulk-cancel").addEventListener("click", cancelBulk);
  updateSelection();
  await run(false);
}

init();
