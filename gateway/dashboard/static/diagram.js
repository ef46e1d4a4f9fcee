import { el } from "./common.js";

// The workflow's diagram (hutch workflows diagram's JSON) as nested lists: step nodes carry
// data-state (pending, running, waiting, errored, complete) and are coloured by it.

const LABELS = {
  step_do: (n) => ["step", n.name], sleep: (n) => ["sleep", `${n.name} (${n.duration ?? n.duration_expr ?? ""})`],
  sleep_until: (n) => ["sleep until", n.name], wait_for_event: (n) => ["wait for event", `${n.name} (${n.event_type ?? n.event_type_expr ?? ""})`],
  invoke: (n) => ["child", `${n.name} → ${n.workflow ?? n.workflow_expr ?? ""}`], rollback_all: () => ["rollback all", ""],
  call: (n) => ["call", n.function], resolve: (n) => ["await", n.expr], return: (n) => ["return", n.value ?? ""],
  raise: (n) => ["raise", n.exception ?? ""], break: () => ["break", ""], continue: () => ["continue", ""],
};

function block(nodes, states) {
  return el("ol", { class: "block" }, (nodes ?? []).map((n) => el("li", {}, node(n, states))));
}

function group(title, ...blocks) {
  return [el("span", { class: "group" }, title), ...blocks];
}

function node(n, states) {
  switch (n.kind) {
    case "loop": return group(`${n.concurrent ? "concurrent " : ""}${n.header}`, block(n.body, states), n.orelse ? group("else", block(n.orelse, states)) : null);
    case "parallel": return group(`in parallel (${n.mode})`, ...n.branches.map((b) => block(b, states)));
    case "if": return n.branches.flatMap((b, i) => group(b.condition === undefined || b.condition === null ? "else" : `${i ? "elif" : "if"} ${b.condition}`, block(b.body, states)));
    case "match": return group(`match ${n.subject}`, ...n.cases.flatMap((c) => group(`case ${c.pattern}${c.guard ? ` if ${c.guard}` : ""}`, block(c.body, states))));
    case "try": return group("try", block(n.body, states),
      ...n.handlers.flatMap((h) => group(`except ${h.types.join(", ") || ""}`, block(h.body, states))),
      n.orelse ? group("else", block(n.orelse, states)) : null, n.finalbody ? group("finally", block(n.finalbody, states)) : null);
    case "dag": return group("DAG", block(n.steps, states));
    default: {
      const [kind, label] = (LABELS[n.kind] ?? (() => [n.kind, ""]))(n);
      const state = states[n.id];
      return el("span", { class: "node", dataset: { nodeId: n.id, state: state ?? "none", kind: n.kind }, title: state ? `${kind}: ${state}` : kind },
        el("span", { class: "kind" }, kind), label, state ? el("span", { class: "sr-state" }, ` (${state})`) : null);
    }
  }
}

export function renderDiagram(container, diagram, states) {
  if (!diagram) {
    container.replaceChildren(el("p", {}, "No diagram: this process does not have the workflow's code."));
    return;
  }
  container.replaceChildren(...diagram.functions.map((fn) =>
    el("div", { class: "fn" }, el("strong", {}, fn.name), block(fn.body, states))));
}
