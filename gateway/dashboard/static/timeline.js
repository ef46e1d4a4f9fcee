import { el } from "./common.js";

// A Gantt-like view: one row per step, its bar placed on the instance's time axis. A step's
// attempts are segments (green ok, red failed, blue running) with the waits before retries
// hatched between them; sleeps, waits for events and children are one segment each.

const ms = (value) => (value ? new Date(value).getTime() : null);

function span(detail) {
  const start = ms(detail.start) ?? ms(detail.queued);
  let end = ms(detail.end) ?? Date.now();
  for (const step of detail.steps) {
    end = Math.max(end, ms(step.end) ?? 0, ms(step.due) ?? 0);
    for (const attempt of step.attempts) end = Math.max(end, ms(attempt.retry_at) ?? 0);
  }
  return [start, Math.max(end, start + 1)];
}

function segment(axis, from, to, kind, label) {
  const [start, end] = axis;
  const node = el("div", { class: `seg ${kind}`, title: label, role: "img", "aria-label": label });
  node.style.left = `${((from - start) / (end - start)) * 100}%`;
  node.style.width = `${(Math.max(to - from, 0) / (end - start)) * 100}%`;
  return node;
}

function seconds(from, to) {
  return `${((to - from) / 1000).toFixed(2)} s`;
}

function segments(axis, step) {
  const now = Date.now();
  const start = ms(step.start);
  const end = ms(step.end);
  if (step.type === "sleep") {
    return [segment(axis, start, end ?? now, `sleep${end ? "" : " live"}`, `sleep ${step.name}: ${end ? seconds(start, end) : `until ${step.due}`}`)];
  }
  if (step.type === "waitForEvent") {
    return [segment(axis, start, end ?? now, `event${end ? "" : " live"}`, `wait for ${step.event_type ?? "event"}: ${step.outcome ?? "waiting"}`)];
  }
  if (step.type === "invoke") {
    return [segment(axis, start, end ?? now, `child${end ? "" : " live"}`, `child ${step.child?.instance_id ?? ""}: ${step.outcome ?? (end ? "done" : "running")}`)];
  }
  const parts = [];
  step.attempts.forEach((attempt, i) => {
    const from = ms(attempt.start);
    const to = ms(attempt.end) ?? now;
    const state = attempt.success === true ? "ok" : attempt.success === false ? "failed" : "running";
    const why = attempt.error ? ` — ${attempt.error.name}: ${attempt.error.message}` : "";
    parts.push(segment(axis, from, to, `attempt ${state}`, `attempt ${attempt.attempt}: ${state} (${seconds(from, to)})${why}`));
    const nextStart = ms(step.attempts[i + 1]?.start) ?? ms(attempt.retry_at);
    if (attempt.success === false && nextStart && nextStart > to) {
      parts.push(segment(axis, to, Math.min(nextStart, Math.max(now, to)), "retry-wait", `wait before retry: ${seconds(to, nextStart)}`));
    }
  });
  return parts;
}

export function renderTimeline(list, detail, chosen, choose) {
  const axis = span(detail);
  if (!detail.steps.length) {
    list.replaceChildren(el("li", {}, "No step has run yet."));
    return;
  }
  list.replaceChildren(...detail.steps.map((step) => {
    const picked = chosen && chosen.name === step.name && chosen.count === step.count;
    const state = step.end ? (step.success === false ? "failed" : "done") : "running";
    const errors = step.attempts.filter((a) => a.error).map((a) => el("li", {}, `attempt ${a.attempt}: ${a.error.name}: ${a.error.message}`));
    return el("li", { class: picked ? "selected" : "", dataset: { step: step.name, count: step.count, type: step.type, state } },
      el("button", {
        type: "button", class: "step", "aria-pressed": picked ? "true" : "false",
        title: "Select this step (for restart from a step)",
        onclick: () => choose(picked ? null : { name: step.name, count: step.count, type: step.type }),
      }, `${step.name}${step.count > 1 ? ` #${step.count}` : ""}`, el("span", { class: "kind" }, ` ${step.type}, ${state}`)),
      el("div", { class: "track" }, segments(axis, step)),
      errors.length ? el("ul", { class: "errors" }, errors) : null);
  }));
}
