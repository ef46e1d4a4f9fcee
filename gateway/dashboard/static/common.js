// Shared by the dashboard's pages. Values from instances only ever reach the page as text
// (textContent / createTextNode): never innerHTML, so an output holding "<script>" shows as text.

const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

/** An element with attributes and children; string children become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export class ApiError extends Error {}

/** fetch a /ui/data endpoint; the result, or an ApiError with the envelope's message. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = csrf;
  }
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(`the gateway did not answer (${error.message})`);
  }
  if (response.status === 401) {
    location.assign(`/ui/signin?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError("signed out");
  }
  let envelope = null;
  try { envelope = await response.json(); } catch { /* not JSON: reported below */ }
  if (!response.ok || !envelope || envelope.success === false) {
    const detail = envelope?.errors?.map((e) => e.message).join("; ") || envelope?.detail || response.statusText;
    throw new ApiError(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return envelope.result;
}

/** Show a message (or clear it with ""). */
export function say(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

export function badge(status) {
  return el("span", { class: `badge s-${status}`, text: status });
}

export function when(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** A JSON value as readable text (strings as they are). */
export function asText(value) {
  if (value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

export function instanceUrl(workflow, id) {
  return `/ui/instance/${encodeURIComponent(workflow)}/${encodeURIComponent(id)}`;
}
