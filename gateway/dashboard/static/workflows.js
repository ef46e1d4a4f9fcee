import { api, el, say } from "./common.js";

const STATUSES = ["queued", "running", "waiting", "paused", "errored", "terminated", "complete"];
const OPTIONAL = new Set(["paused", "terminated"]);

async function load() {
  try {
    const rows = await api("/ui/data/workflows");
    const body = document.querySelector("#workflows tbody");
    body.replaceChildren(...rows.map((row) => {
      const search = (status) => `/ui/instances?workflow=${encodeURIComponent(row.name)}${status ? `&status=${status}` : ""}`;
      return el("tr", { dataset: { workflow: row.name } },
        el("td", {}, el("a", { href: search("") }, row.name)),
        STATUSES.map((s) => el("td", { class: `num${OPTIONAL.has(s) ? " optional" : ""}`, dataset: { status: s } },
          row.instances[s] ? el("a", { href: search(s), "aria-label": `${row.instances[s]} ${s} ${row.name}` }, String(row.instances[s])) : "0")),
        el("td", { class: "num", dataset: { col: "created" } }, String(row.created_last_hour)),
        el("td", { class: "num", dataset: { col: "finished" } }, String(row.finished_last_hour)));
    }));
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 10, text: "No workflows yet." })));
    say("error", "");
    say("updated", `Updated ${new Date().toLocaleTimeString()}; refreshes every 10 s.`);
  } catch (error) {
    say("error", error.message);
  }
}

load();
setInterval(load, 10_000);
