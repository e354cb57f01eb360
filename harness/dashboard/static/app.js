// raftkv dashboard: renders the controller's status map and timeline as they stream in
// (server-sent events from /api/stream); every button is one controller command.
// Every request but the page's own files carries the token `raftkv dashboard` printed in
// the page's URL (?token=...): in the X-Raftkv-Token header, or, for the EventSource,
// which cannot set one, in the query.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const NO_TOKEN = "no token in this page's URL: open the URL that `raftkv dashboard` " +
  "printed (it ends in ?token=...)";

const STRIP_WIDTH = 32;       // log entries shown per node
const TIMELINE_KEEP = 300;    // rows kept on the page
const GROUPS = ["A", "B", "C"];

let lastStatus = null;
let groups = {};              // node id -> group letter, for the partition panel
let groupsEdited = false;     // the user changed groups since the last apply

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function termColor(term) {
  return `hsl(${(term * 67) % 360}, 62%, 44%)`;
}

function dash(v) { return v === null || v === undefined ? "–" : v; }

// -- commands ---------------------------------------------------------------------------

async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Raftkv-Token": TOKEN },
    body: JSON.stringify(body),
  });
  let data;
  try { data = await resp.json(); } catch { data = { ok: false, error: await resp.text() }; }
  return data;
}

function say(text, isError = false) {
  const r = $("#result");
  r.textContent = text;
  r.className = isError ? "error" : "";
}

async function command(name, ...args) {
  say(`${name} ${args.join(" ")}…`);
  const data = await post("/api/command", { name, args });
  if (data.ok) say(`${name} ${args.join(" ")}: ${JSON.stringify(data.result)}`);
  else say(`${name} ${args.join(" ")} failed: ${data.error}`, true);
  return data;
}

async function membership(action, node) {
  const what = action === "add" ? "add-node" : `remove-node ${node}`;
  say(`${what}… (the new node catches up before it is promoted)`);
  const data = await post("/api/membership", { action, node });
  if (data.ok) say(`${what}: ${data.progress.join("; ")}`);
  else say(`${what} failed: ${data.error}`, true);
  return data;
}

// -- cards ------------------------------------------------------------------------------

function renderCards(st) {
  const cards = $("#cards");
  cards.replaceChildren(...st.nodes.map((n) => {
    const isLeader = st.leader === n.id;
    const role = n.alive ? (n.role || "no answer") : "down";
    const badges = [
      n.alive ? el("span", { class: "badge" }, "alive") : el("span", { class: "badge down" }, "down"),
      n.paused ? el("span", { class: "badge paused" }, "paused") : null,
      n.member === "learner"
        ? el("span", { class: "badge learner", "data-testid": `learner-${n.id}` }, "learner")
        : null,
      n.partitioned_from && n.partitioned_from.length
        ? el("span", { class: "badge cut", "data-testid": `cut-${n.id}` },
             `cut from ${n.partitioned_from.join(",")}`)
        : null,
    ];
    const c = n.counters || {};
    const mb = n.rss_bytes ? (n.rss_bytes / 2 ** 20).toFixed(1) : null;
    const fsync = n.fsync_ms ? `${dash(n.fsync_ms.p50)} / ${dash(n.fsync_ms.p99)}` : null;
    return el("article", {
      class: `card${isLeader ? " leader" : ""}${n.alive ? "" : " down"}`,
      "data-testid": `card-${n.id}`, "data-role": n.role || "", "data-term": dash(n.term),
      "data-alive": String(n.alive),
    },
      el("h3", {}, `node ${n.id}`,
         el("span", { class: `role ${n.role || ""}`, "data-testid": `role-${n.id}` },
            isLeader ? "★ leader" : role)),
      el("div", { class: "badges" }, badges),
      el("dl", {},
         el("dt", {}, "term"), el("dd", { "data-testid": `term-${n.id}` }, dash(n.term)),
         el("dt", {}, "vote"), el("dd", {}, n.vote ? `node ${n.vote}` : "–"),
         el("dt", {}, "last / commit / applied"),
         el("dd", {}, `${dash(n.last_index)} / ${dash(n.commit_index)} / ${dash(n.applied_index)}`),
         el("dt", {}, "cpu / rss"),
         el("dd", {}, `${dash(n.cpu_percent)} % / ${dash(mb)} MB`),
         el("dt", {}, "elections"),
         el("dd", {}, `${c.elections_started ?? "–"} started, ${c.elections_won ?? "–"} won`),
         el("dt", {}, "fsync p50 / p99"), el("dd", {}, fsync ? `${fsync} ms` : "–")),
      el("div", { class: "buttons" },
         el("button", { "data-testid": `kill-${n.id}`, disabled: !n.alive,
                        onclick: () => command("kill", n.id) }, "kill"),
         el("button", { "data-testid": `restart-${n.id}`, disabled: n.alive,
                        onclick: () => command("restart", n.id) }, "restart"),
         n.paused
           ? el("button", { "data-testid": `resume-${n.id}`, onclick: () => command("resume", n.id) }, "resume")
           : el("button", { "data-testid": `pause-${n.id}`, disabled: !n.alive,
                            onclick: () => command("pause", n.id) }, "pause"),
         el("button", { "data-testid": `transfer-${n.id}`, disabled: !n.alive || isLeader,
                        onclick: () => command("transfer-leader", n.id) }, "make leader"),
         el("button", { "data-testid": `remove-${n.id}`, disabled: st.nodes.length < 2,
                        onclick: () => membership("remove", n.id) }, "remove")));
  }));
}

// -- log strips -------------------------------------------------------------------------

function renderStrips(st) {
  const tails = st.nodes.filter((n) => n.log_tail && n.log_tail.length);
  const hi = Math.max(0, ...tails.map((n) => n.log_tail[n.log_tail.length - 1][0]));
  const lo = Math.max(1, hi - STRIP_WIDTH + 1);
  const rows = st.nodes.map((n) => {
    const terms = new Map((n.log_tail || []).map(([i, t]) => [i, t]));
    const cells = [];
    for (let i = lo; i <= hi; i++) {
      const t = terms.get(i);
      if (t === undefined) {
        cells.push(el("span", { class: "cell empty", title: `index ${i}: none` }, "·"));
        continue;
      }
      let cls = "cell";
      if (n.commit_index !== null && i > n.commit_index) cls += " uncommitted";
      if (i === n.commit_index) cls += " commit";
      cells.push(el("span", {
        class: cls, style: `background:${termColor(t)}`, "data-term": t,
        title: `index ${i}, term ${t}${i <= (n.commit_index ?? -1) ? ", committed" : ""}`,
      }, t));
    }
    return el("div", { class: "strip", "data-testid": `strip-${n.id}` },
      el("span", { class: `who${st.leader === n.id ? " leader" : ""}` }, `node ${n.id}`),
      el("span", { class: "cells" }, cells));
  });
  const axis = [];
  for (let i = lo; i <= hi; i++) axis.push(el("span", { class: "cell" }, i % 4 === 0 ? i : ""));
  rows.push(el("div", { class: "strip axis" }, el("span", { class: "who" }, "index"),
                el("span", { class: "cells" }, axis)));
  $("#strips").replaceChildren(...rows);
}

// -- partition panel --------------------------------------------------------------------

function groupsFromCluster(st) {
  // A node's group: itself and every node it is not cut from.
  const out = {};
  let next = 0;
  for (const n of st.nodes) {
    if (out[n.id]) continue;
    const letter = GROUPS[Math.min(next++, GROUPS.length - 1)];
    const cut = new Set(n.partitioned_from || []);
    for (const m of st.nodes) if (!cut.has(m.id) && !out[m.id]) out[m.id] = letter;
  }
  return out;
}

function renderGroups() {
  if (!lastStatus) return;
  const ids = lastStatus.nodes.map((n) => n.id);
  const boxes = GROUPS.map((g) => {
    const box = el("div", { class: "group", "data-group": g, "data-testid": `group-${g}` },
      el("h4", {}, `group ${g}`),
      ids.filter((id) => groups[id] === g).map((id) =>
        el("span", { class: "chip", draggable: "true", "data-node": id,
                     ondragstart: (ev) => ev.dataTransfer.setData("text/plain", String(id)) },
           `node ${id}`,
           el("select", { "data-testid": `group-of-${id}`, "aria-label": `group of node ${id}`,
                          onchange: (ev) => moveTo(id, ev.target.value) },
              GROUPS.map((o) => el("option", { value: o, selected: o === g }, o))))));
    box.addEventListener("dragover", (ev) => { ev.preventDefault(); box.classList.add("over"); });
    box.addEventListener("dragleave", () => box.classList.remove("over"));
    box.addEventListener("drop", (ev) => {
      ev.preventDefault();
      moveTo(Number(ev.dataTransfer.getData("text/plain")), g);
    });
    return box;
  });
  $("#groups").replaceChildren(...boxes);
}

function moveTo(id, group) {
  groups[id] = group;
  groupsEdited = true;
  renderGroups();
}

async function applyPartition() {
  const parts = GROUPS.map((g) => Object.keys(groups).filter((id) => groups[id] === g))
    .filter((ids) => ids.length);
  if (parts.length < 2) {
    say("put the nodes in at least two groups (or use Heal)", true);
    return;
  }
  const data = await command("partition", ...parts.map((ids) => ids.join(",")));
  if (data.ok) groupsEdited = false;
}

// -- timeline ---------------------------------------------------------------------------

function addEvents(events) {
  const list = $("#timeline");
  for (const e of events) {
    const t = new Date(e.time * 1000);
    const stamp = t.toLocaleTimeString([], { hour12: false }) + "." +
      String(t.getMilliseconds()).padStart(3, "0");
    list.prepend(el("li", { "data-kind": e.kind, "data-seq": e.seq, "data-time": e.time },
      el("time", {}, stamp), el("span", { class: `kind ${e.kind}` }, e.kind),
      el("span", {}, e.term ? `[term ${e.term}] ${e.text}` : e.text)));
  }
  // Node events reach the controller with its next poll: order rows by when they happened.
  const rows = [...list.children].sort((a, b) =>
    Number(b.dataset.time) - Number(a.dataset.time) || Number(b.dataset.seq) - Number(a.dataset.seq));
  list.replaceChildren(...rows.slice(0, TIMELINE_KEEP));
}

// -- the feed ---------------------------------------------------------------------------

function onStatus(payload) {
  const conn = $("#conn");
  if (payload.error || !payload.status) {
    conn.textContent = payload.error || "waiting for the controller";
    conn.className = "conn bad";
    return;
  }
  conn.textContent = "live";
  conn.className = "conn";
  const st = payload.status;
  const firstOrNewNodes = !lastStatus || lastStatus.nodes.length !== st.nodes.length;
  lastStatus = st;
  $("#leader").textContent = st.leader ? `node ${st.leader}` : "none";
  $("#leader").dataset.leader = st.leader ?? "";
  $("#term").textContent = st.term;
  $("#kill-leader").disabled = !st.leader;
  renderCards(st);
  renderStrips(st);
  if (!groupsEdited) {
    const fresh = groupsFromCluster(st);
    if (firstOrNewNodes || JSON.stringify(fresh) !== JSON.stringify(groups)) {
      groups = fresh;
      renderGroups();
    }
  }
}

function connect() {
  if (!TOKEN) {
    $("#conn").textContent = NO_TOKEN;
    $("#conn").className = "conn bad";
    return;
  }
  const source = new EventSource(`/api/stream?token=${encodeURIComponent(TOKEN)}`);
  source.addEventListener("status", (ev) => onStatus(JSON.parse(ev.data)));
  source.addEventListener("events", (ev) => addEvents(JSON.parse(ev.data)));
  source.onerror = async () => {
    $("#conn").textContent = "reconnecting to the dashboard server…";
    $("#conn").className = "conn bad";
    if (source.readyState !== EventSource.CLOSED) return;  // the browser retries itself
    // Refused (an answer other than a stream): say why if it was the token, else retry.
    const resp = await fetch("/api/status", { headers: { "X-Raftkv-Token": TOKEN } })
      .catch(() => null);
    if (resp && resp.status === 403) {
      const data = await resp.json().catch(() => ({ error: "refused" }));
      $("#conn").textContent = data.error;
      return;
    }
    setTimeout(connect, 2000);
  };
}

$("#kill-leader").addEventListener("click", () => command("kill-leader"));
$("#add-node").addEventListener("click", () => membership("add"));
$("#heal").addEventListener("click", async () => {
  const data = await command("heal");
  if (data.ok) groupsEdited = false;
});
$("#apply-partition").addEventListener("click", applyPartition);
$("#reset-groups").addEventListener("click", () => {
  if (!lastStatus) return;
  for (const n of lastStatus.nodes) groups[n.id] = "A";
  groupsEdited = true;
  renderGroups();
});
$("#kv").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("#kv-key").value, value = $("#kv-value").value;
  const data = await post("/api/put", { key, value });
  $("#kv-result").textContent = data.ok ? `put ${key}: OK` : `put failed: ${data.error}`;
});
$("#kv-get").addEventListener("click", async () => {
  const key = $("#kv-key").value;
  const data = await post("/api/get", { key });
  $("#kv-result").textContent = !data.ok ? `get failed: ${data.error}`
    : data.found ? `${key} = ${data.value}` : `${key}: not found`;
});
connect();
