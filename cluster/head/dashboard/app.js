// shoal's dashboard: renders the page's data (embedded in the page, then polled from
// /api/<page> every second while the cluster runs). No framework, no build step.
"use strict";

const PAGE = document.body.dataset.page;
const main = document.getElementById("main");
const STATES = ["queued", "running", "done", "failed", "cancelled"];

function esc(v) {
  return String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g,
    c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function bytes(n) {
  n = Number(n || 0);
  if (n < 1024) return n + " B";
  const u = ["KiB", "MiB", "GiB", "TiB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(1) + " " + u[i];
}
function num(v, d) { return Number(v || 0).toFixed(d === undefined ? 0 : d); }
function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "-"; }
function secs(a, b) { return a && b ? (b - a).toFixed(3) + " s" : "-"; }
function table(id, head, rows) {
  return `<table id="${id}"><thead><tr>${head.map(h => `<th>${esc(h)}</th>`).join("")}` +
    `</tr></thead><tbody>${rows.join("") || `<tr><td colspan="${head.length}">none</td></tr>`}` +
    `</tbody></table>`;
}
function res(total, used, key, fmt) {
  if (!(key in (total || {}))) return "-";
  const f = fmt || (x => num(x, 1).replace(/\.0$/, ""));
  return `${f((used || {})[key] || 0)} / ${f(total[key])}`;
}

function chart(samples) {
  if (!samples || samples.length < 2) return `<p class="dim">the chart fills in as the cluster runs</p>`;
  const W = 640, H = 160, t0 = samples[0].t, t1 = samples[samples.length - 1].t || t0 + 1;
  const series = [["queued", "#d9822b"], ["running", "#2b7bd9"], ["done", "#2f9e44"], ["failed", "#c92a2a"]];
  let max = 1;
  for (const s of samples) for (const [k] of series) max = Math.max(max, s[k] || 0);
  const x = t => ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - 40) + 35;
  const y = v => H - 20 - (v / max) * (H - 30);
  const lines = series.map(([k, color]) =>
    `<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${samples.map(s => `${x(s.t).toFixed(1)},${y(s[k] || 0).toFixed(1)}`).join(" ")}"><title>${k}</title></polyline>`).join("");
  const legend = series.map(([k, c], i) => `<text x="${40 + i * 90}" y="12" fill="${c}">${k}</text>`).join("");
  return `<svg id="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">` +
    `<line x1="35" y1="${H - 20}" x2="${W - 5}" y2="${H - 20}" stroke="#999"/>` +
    `<text x="0" y="${y(max) + 4}">${max}</text><text x="0" y="${H - 16}">0</text>` +
    `<text x="${W - 90}" y="${H - 4}">${((t1 - t0) / 60).toFixed(1)} min</text>${lines}${legend}</svg>`;
}

const render = {
  overview(d) {
    const c = d.counts || {};
    const counts = STATES.map(s => `<div class="count ${s}" id="count-${s}"><b>${c[s] || 0}</b> ${s}</div>`).join("");
    const nodes = (d.nodes || []).map(n => `<tr class="node ${esc(n.state)}"><td class="name">${esc(n.name)}</td>` +
      `<td class="state">${esc(n.state)}${n.draining ? " (draining)" : ""}${n.reason ? `: <span class="reason">${esc(n.reason)}</span>` : ""}</td>` +
      `<td>${res(n.total, n.used, "cpus")}</td><td>${res(n.total, n.used, "gpus")}</td>` +
      `<td>${res(n.total, n.used, "memory", bytes)}</td><td>${n.running === undefined ? "-" : n.running}</td>` +
      `<td>${n.done === undefined ? "-" : n.done}</td>` +
      `<td>${n.store ? `${n.store.objects} obj, ${bytes(n.store.bytes)} of ${bytes(n.store.capacity)}` + (n.store.spilled ? `, ${bytes(n.store.spilled)} spilled` : "") : "-"}</td></tr>`);
    const byClass = {};
    for (const a of d.actors || []) if (a.state !== "dead") (byClass[a.class_name] = byClass[a.class_name] || []).push(a);
    const actors = Object.keys(byClass).sort().map(k => `<tr><td class="actor-class">${esc(k)}</td><td>${byClass[k].length}</td>` +
      `<td>${byClass[k].map(a => esc(a.name || a.id || a.actor_id)).join(", ")}</td></tr>`);
    return `<h2>Tasks</h2><div class="counts">${counts}</div>${chart(d.samples)}` +
      `<h2>Nodes (${d.nodes_total === undefined ? (d.nodes || []).length : d.nodes_alive + " alive of " + d.nodes_total}` +
      `${d.nodes_total > (d.nodes || []).length ? ", the first " + d.nodes.length + " below" : ""})</h2>` +
      table("nodes", ["node", "state", "CPUs used", "GPUs used", "memory used", "running", "done", "object store"], nodes) +
      `<h2>Live actors</h2>` + table("actors-by-class", ["class", "live", "names"], actors) +
      (d.objects ? `<p>objects tracked: ${d.objects.count} (${bytes(d.objects.bytes)}), drivers: ${d.drivers}</p>` : "");
  },
  tasks(d) {
    const q = new URLSearchParams(location.search);
    const opt = (v, sel) => `<option value="${esc(v)}"${v === sel ? " selected" : ""}>${esc(v || "any")}</option>`;
    const form = `<form id="filters" method="get">state <select name="state" onchange="this.form.submit()">` +
      ["", ...STATES].map(s => opt(s, d.state || "")).join("") + `</select> app <select name="app" onchange="this.form.submit()">` +
      ["", ...(d.apps || [])].map(a => opt(a, d.app || "")).join("") + `</select></form>`;
    const rows = (d.rows || []).map(t => `<tr class="task ${esc(t.state)}"><td><a href="/task/${esc(t.id)}">${esc(t.id)}</a></td>` +
      `<td>${esc(t.name)}</td><td class="state">${esc(t.state)}</td><td>${esc(t.node || "-")}</td><td>${t.attempts || 0}</td>` +
      `<td>${when(t.submitted)}</td><td>${secs(t.started, t.finished)}</td><td>${esc(t.error_type ? t.error_type + ": " + (t.error || "").split("\n")[0] : "")}</td></tr>`);
    const page = d.page || 0, pages = Math.max(1, Math.ceil((d.total || 0) / (d.per_page || 50)));
    const link = p => { q.set("page", p); return "?" + q.toString(); };
    const nav = `<p id="pager">${d.total || 0} tasks, page ${page + 1} of ${pages} (newest first) ` +
      (page > 0 ? `<a href="${link(page - 1)}">newer</a> ` : "") + (page + 1 < pages ? `<a href="${link(page + 1)}">older</a>` : "") + `</p>`;
    return form + nav + table("tasks", ["task", "app", "state", "node", "attempts", "submitted", "ran", "error"], rows);
  },
  task(d) {
    if (d.error) return `<p class="error">${esc(d.error)}</p>`;
    const t = d.task;
    const facts = [["task", t.id + ` (fut.task_id ${t.task_id})`], ["app", t.name], ["kind", t.kind], ["state", t.state], ["node", t.node],
      ["worker pid", t.worker_pid], ["block", t.block], ["attempts", t.attempts], ["resources", JSON.stringify(t.resources)],
      ["submitted", when(t.submitted)], ["started", when(t.started)], ["finished", when(t.finished)], ["run time", t.run_seconds ? num(t.run_seconds, 4) + " s" : "-"],
      ["error", t.error_type ? t.error_type + ": " + t.error : ""], ["stdout file", t.stdout], ["stderr file", t.stderr]]
      .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v === null || v === undefined ? "" : v)}</td></tr>`).join("");
    const events = (t.events || []).map(e => `<tr><td>${when(e.t)}</td><td>${esc(e.state)}</td><td>${esc(e.attempt)}</td></tr>`);
    const logs = (d.logs || []).map(l => `<span class="${esc(l.stream)}">${esc(l.text)}</span>`).join("");
    return `<h2>Task <span id="task-id">${esc(t.id)}</span></h2><table id="facts">${facts}</table>` +
      (t.traceback ? `<h3>Traceback</h3><pre id="traceback">${esc(t.traceback)}</pre>` : "") +
      `<h3>Output</h3><pre id="log">${logs || '<span class="dim">(nothing printed)</span>'}</pre>` +
      `<h3>State changes</h3>` + table("events", ["time", "state", "attempt"], events);
  },
  actors(d) {
    const rows = (d.actors || []).map(a => `<tr class="actor ${esc(a.state)}"><td>${esc(a.class_name)}</td><td>${esc(a.name || "-")}</td>` +
      `<td>${esc(a.node || "-")}</td><td>${esc(a.state)}</td><td>${esc(a.restarts)}</td><td>${a.detached ? "yes" : ""}</td><td>${esc(a.message || "")}</td></tr>`);
    return table("actors", ["class", "name", "node", "state", "restarts", "detached", "why it died"], rows);
  },
  objects(d) {
    if (!d.live) return `<p>objects live only as long as their cluster; this run has ended.</p>`;
    const rows = (d.objects || []).map(o => `<tr><td>${esc(o.id)}</td><td>${bytes(o.size)}</td><td>${o.stored ? "node store" : "inline"}</td>` +
      `<td>${esc(o.holders.join(", ") || "-")}</td><td>${o.refs}</td></tr>`);
    return `<p id="objects-total">${d.count} objects, ${bytes(d.bytes)} (the 200 largest below)</p>` +
      table("objects", ["object", "size", "where", "held by", "references"], rows);
  },
  blocks(d) {
    const rows = (d.blocks || []).map(b => `<tr><td>${esc(b.block_id)}</td><td>${esc(b.job_id || "-")}</td><td>${esc(b.state)}</td>` +
      `<td>${esc(b.nodes)}</td><td>${b.walltime_left >= 0 ? num(b.walltime_left) + " s" : "-"}</td><td>${esc(b.reason || "")}</td></tr>`);
    return (d.blocks || []).length ? table("blocks", ["block", "Slurm job", "state", "nodes", "walltime left", "reason"], rows)
      : `<p>no Slurm blocks: this cluster does not autoscale.</p>`;
  },
  timeline(d) {
    const ev = (d.traceEvents || []).filter(e => e.ph === "X");
    const names = {};
    for (const e of d.traceEvents || []) if (e.ph === "M" && e.name === "process_name") names[e.pid] = e.args.name;
    const rowsKey = [...new Set(ev.map(e => e.pid + "/" + e.tid))].sort();
    const link = `<p><a id="download" href="/api/timeline?download=1&limit=0">download trace.json</a> (all tasks; open it in ui.perfetto.dev or chrome://tracing)</p>`;
    if (!ev.length) return link + `<p>no task has finished yet</p>`;
    const t0 = Math.min(...ev.map(e => e.ts)), t1 = Math.max(...ev.map(e => e.ts + e.dur));
    const W = 900, R = 18, L = 170, H = rowsKey.length * R + 20;
    const x = t => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 10);
    const labels = rowsKey.map((k, i) => { const [p, t] = k.split("/"); return `<text x="0" y="${i * R + 13}">${esc((names[p] || "node " + p) + " / " + t)}</text>`; }).join("");
    const bars = ev.map(e => { const i = rowsKey.indexOf(e.pid + "/" + e.tid);
      return `<rect x="${x(e.ts).toFixed(1)}" y="${i * R + 2}" width="${Math.max(1, x(e.ts + e.dur) - x(e.ts)).toFixed(1)}" height="${R - 4}" class="${esc(e.args.state)}"><title>${esc(e.name)} ${esc(e.args.id)} ${num(e.dur / 1000, 2)} ms</title></rect>`; }).join("");
    return link + `<p>${ev.length} latest tasks, one row per worker, over ${num((t1 - t0) / 1e6, 2)} s</p>` +
      `<svg id="timeline" width="${W}" height="${H}">${labels}${bars}</svg>`;
  },
};

function show(d) {
  if (d.cluster_id) document.getElementById("cluster").textContent = "cluster " + d.cluster_id;
  document.getElementById("live").textContent = d.live === false ? "(finished run, read-only)" : "(live)";
  main.innerHTML = d.error && PAGE !== "task" ? `<p class="error">${esc(d.error)}</p>` : render[PAGE](d);
}

function apiUrl() {
  const q = new URLSearchParams(location.search);
  if (PAGE === "task") q.set("id", decodeURIComponent(location.pathname.split("/").pop()));
  return `/api/${PAGE}?${q.toString()}`;
}

let initial = {};
try { initial = JSON.parse(document.getElementById("initial").textContent); } catch (e) { initial = {}; }
show(initial);
if (initial.live !== false) {
  setInterval(async () => {
    try {
      const r = await fetch(apiUrl(), {credentials: "same-origin"});
      if (r.ok) show(await r.json());
    } catch (e) { /* the head is gone: keep the last view */ }
  }, PAGE === "timeline" ? 5000 : 1000);
}
