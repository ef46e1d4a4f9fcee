import { api, asText, badge, el, instanceUrl, say, when } from "./common.js";
import { renderDiagram } from "./diagram.js";
import { renderTimeline } from "./timeline.js";

const [, , , workflow, id] = location.pathname.split("/").map(decodeURIComponent);
const base = `/ui/data/instance/${encodeURIComponent(workflow)}/${encodeURIComponent(id)}`;
let snapshot = null;
let chosen = null; // {name, count, type} picked on the timeline for "restart from"

document.title = `${id} · ${workflow} · Hutch`;
say("title", `${workflow} / ${id}`);
document.getElementById("back").href = `/ui/instances?workflow=${encodeURIComponent(workflow)}`;

function link(ref) {
  return el("a", { href: instanceUrl(ref.workflow, ref.instance_id) }, `${ref.workflow} / ${ref.instance_id}`);
}

function renderFacts(detail) {
  const children = detail.steps.filter((s) => s.child).map((s) => el("li", {}, link(s.child)));
  const facts = [
    ["Workflow", detail.workflow], ["Id", detail.id], ["Version", detail.version ?? "—"],
    ["Queued", when(detail.queued)], ["Started", when(detail.start) || "—"], ["Ended", when(detail.end) || "—"],
    ["Parent", detail.parent ? link(detail.parent) : "—"],
    ["Children", children.length ? el("ul", {}, children) : "—"],
  ];
  if (detail.waiting_for_version) facts.push(["Waiting for version", detail.waiting_for_version]);
  document.getElementById("facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function render(next) {
  snapshot = next;
  const detail = next.detail;
  document.getElementById("status").replaceChildren(badge(detail.status));
  document.getElementById("status").className = "";
  renderFacts(detail);
  say("params", asText(detail.params ?? null));
  say("output", detail.error ? `${detail.error.name}: ${detail.error.message}` : asText(detail.output ?? null));
  renderTimeline(document.getElementById("timeline"), detail, chosen, choose);
  renderDiagram(document.getElementById("diagram"), next.diagram, next.states);
  document.getElementById("restart-from").disabled = !chosen;
}

function choose(step) {
  chosen = step;
  if (snapshot) render(snapshot);
  if (step) say("info", `Selected ${step.name} #${step.count}.`);
}

async function act(action, extra = {}) {
  say("error", "");
  try {
    const result = await api(`${base}/action`, { method: "POST", body: { action, ...extra } });
    say("info", result.applied ? `${action}: done, now ${result.status}.` : `${action}: queued; no worker applied it yet.`);
  } catch (error) {
    say("error", `${action} failed: ${error.message}`);
  }
}

for (const button of document.querySelectorAll("[data-action]")) {
  button.addEventListener("click", () => {
    const action = button.dataset.action;
    if (action === "terminate" && !confirm(`Terminate ${id}?`)) return;
    act(action);
  });
}
document.getElementById("restart-from").addEventListener("click", () => {
  if (chosen) act("restart_from", { step: chosen.name, count: chosen.count, type: chosen.type });
});

document.getElementById("event-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const type = document.getElementById("event-type").value.trim();
  const text = document.getElementById("event-payload").value;
  let payload;
  try {
    payload = text.trim() === "" ? null : JSON.parse(text);
  } catch (error) {
    say("error", `The payload is not valid JSON (${error.message}); nothing was sent.`);
    document.getElementById("event-payload").setAttribute("aria-invalid", "true");
    return;
  }
  document.getElementById("event-payload").removeAttribute("aria-invalid");
  say("error", "");
  try {
    const result = await api(`${base}/event`, { method: "POST", body: { type, payload } });
    say("info", result.instance_finished ? `Event ${type} sent, but the instance had finished.` : `Event ${type} sent.`);
  } catch (error) {
    say("error", `Sending the event failed: ${error.message}`);
  }
});

function live() {
  const source = new EventSource(`/ui/live/${encodeURIComponent(workflow)}/${encodeURIComponent(id)}`);
  source.addEventListener("snapshot", (message) => {
    const next = JSON.parse(message.data);
    if (next.gone) { say("error", next.gone); return; }
    say("live-state", `Live: updated ${new Date().toLocaleTimeString()}`);
    render(next);
  });
  source.addEventListener("error", () => say("live-state", "Live updates interrupted; reconnecting…"));
}

async function init() {
  try {
    render(await api(base));
  } catch (error) {
    say("error", error.message);
    return;
  }
  live();
}

init();
