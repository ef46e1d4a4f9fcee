import { api, badge, el, instanceUrl, say, when } from "./common.js";

const form = document.getElementById("filters");
const tbody = document.querySelector("#instances tbody");
const more = document.getElementById("more");
const selectAll = document.getElementById("select-all");
const FIELDS = ["workflow", "status", "since", "until", "id_prefix", "version", "order"];
let cursor = null;
let shown = 0;

function selected() {
  return [...tbody.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
}

function updateSelection() {
  const boxes = tbody.querySelectorAll("input[type=checkbox]");
  const count = selected().length;
  say("selected-count", `${count} selected`);
  selectAll.checked = boxes.length > 0 && count === boxes.length;
  for (const button of document.querySelectorAll("[data-bulk]")) button.disabled = count === 0;
}

function query(extra = {}) {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    let value = form.elements[name].value;
    if (!value) continue;
    if (name === "since" || name === "until") value = new Date(value).toISOString();
    params.set(name, value);
  }
  for (const [k, v] of Object.entries(extra)) if (v) params.set(k, v);
  return params;
}

async function run(append) {
  const workflow = form.elements.workflow.value;
  if (!workflow) return;
  if (!append) {
    cursor = null;
    shown = 0;
    const url = new URLSearchParams();
    for (const name of FIELDS) if (form.elements[name].value) url.set(name, form.elements[name].value);
    history.replaceState(null, "", `?${url}`);
  }
  try {
    const page = await api(`/ui/data/search?${query({ cursor: append ? cursor : null })}`);
    const rows = page.instances.map((row) => el("tr", { dataset: { id: row.id } },
      el("td", {}, el("input", { type: "checkbox", value: row.id, "aria-label": `Select ${row.id}`, onchange: updateSelection })),
      el("td", {}, el("a", { href: instanceUrl(row.workflow, row.id) }, row.id)),
      el("td", { dataset: { status: row.status } }, badge(row.status)),
      el("td", {}, when(row.created_on)),
      el("td", { class: "optional" }, when(row.ended_on)),
      el("td", { class: "optional" }, row.version ?? "")));
    if (append) tbody.append(...rows); else tbody.replaceChildren(...rows);
    shown += rows.length;
    cursor = page.cursor;
    more.hidden = !cursor;
    say("summary", shown ? `${shown} shown${cursor ? "; more match" : ""}.` : "No instance matches.");
    say("error", "");
    updateSelection();
  } catch (error) {
    say("error", error.message);
  }
}

async function bulk(action) {
  const ids = selected();
  if (!ids.length) return;
  if (action === "terminate" && !confirm(`Terminate ${ids.length} instance(s)?`)) return;
  const workflow = form.elements.workflow.value;
  const progress = document.getElementById("bulk-progress");
  progress.hidden = false;
  progress.max = ids.length;
  progress.value = 0;
  let done = 0;
  const failures = [];
  const report = () => say("bulk-status", `${action}: ${done} of ${ids.length} done${failures.length ? `, ${failures.length} failed` : ""}`);
  report();
  const queue = [...ids];
  async function lane() {  // a few at a time: the gateway applies each through the instance's worker
    while (queue.length) {
      const id = queue.shift();
      try {
        await api(`/ui/data/instance/${encodeURIComponent(workflow)}/${encodeURIComponent(id)}/action`, { method: "POST", body: { action } });
      } catch (error) {
        failures.push(`${id}: ${error.message}`);
      }
      done += 1;
      progress.value = done;
      report();
    }
  }
  await Promise.all([lane(), lane(), lane(), lane()]);
  say("error", failures.join("\n"));
  await run(false);
}

async function init() {
  const params = new URLSearchParams(location.search);
  try {
    const workflows = await api("/ui/data/workflows");
    const select = form.elements.workflow;
    select.replaceChildren(...workflows.map((w) => el("option", { value: w.name }, w.name)));
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
  for (const button of document.querySelectorAll("[data-bulk]")) button.addEventListener("click", () => bulk(button.dataset.bulk));
  updateSelection();
  await run(false);
}

init();
