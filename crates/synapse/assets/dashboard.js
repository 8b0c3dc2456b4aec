"use strict";
// synapse's dashboard: polls /status every second and shows, per service, where it listens,
// what the registry said, its traffic and a table of its backends coloured by state. Rates
// are differences of the counters between two answers. Fields a given synapse does not
// send (older builds have no `traffic`, no bytes) are shown as a dash, never as zero.

const { h, count, rate, bytes, duration, clock, Rates, Chart, DASH } = Dash;

const WINDOW_MS = 5 * 60 * 1000;
const rates = new Rates();
const views = new Map();
let answers = 0;

// How each backend state is shown: row class, pill class, label.
function look(b) {
  switch (b.state) {
    case "healthy":
      return b.weight === 0 ? ["st-off", "off", "weight 0"] : ["st-ok", "ok", "healthy"];
    case "ejected":
      return ["st-bad", "bad", "ejected"];
    case "draining":
      return ["st-warn", "warn", "draining"];
    case "drained":
      return ["st-off", "off", "drained"];
    default:
      return ["st-off", "off", String(b.state)];
  }
}

// Label, class, and what the column holds where the label is short.
const COLUMNS = [
  ["State"], ["Instance"], ["Address"], ["Zone"], ["Weight", "num"],
  ["Active", "num", "open connections"],
  ["Conn/s", "num", "connections opened per second"],
  ["Total", "num", "connections opened since the instance appeared"],
  ["Failed", "num", "failed connects since the instance appeared"],
  ["Failed/s", "num", "failed connects per second"],
  ["Unanswered", "num", "requests closed unanswered, sent again elsewhere (retry_unanswered)"],
  ["Latency", "num", "peak-EWMA response time (http mode)"],
  ["To backend", "num", "bytes sent to the instance"],
  ["To client", "num", "bytes sent back to clients"],
];

function chartBox(title, color) {
  const canvas = h("canvas", { width: 400, height: 64 });
  const value = h("b", {}, DASH);
  const box = h("div", { class: "chart" }, h("div", { class: "label" }, h("span", {}, title), value), canvas);
  return { box, value, chart: new Chart(canvas, color, WINDOW_MS) };
}

// The block of one service, made once and updated in place (the charts keep their history).
function view(name) {
  let v = views.get(name);
  if (v) return v;
  const title = h("h2", {});
  const facts = h("div", { class: "facts registry" });
  const grace = h("div", { class: "grace", hidden: "" });
  const traffic = h("div", { class: "facts traffic" });
  const conn = chartBox("connections/s", "#0969da");
  const fail = chartBox("connect failures/s", "#cf222e");
  const tbody = h("tbody", {});
  const table = h("table", { class: "backends" },
    h("thead", {}, h("tr", {}, COLUMNS.map(([label, cls, title]) => h("th", { class: cls, title }, label)))), tbody);
  const section = h("section", { class: "service", data: { service: name } },
    title, facts, grace, traffic, h("div", { class: "charts" }, conn.box, fail.box),
    h("div", { class: "scroll" }, table));
  v = { section, title, facts, grace, traffic, conn, fail, tbody };
  views.set(name, v);
  return v;
}

function fact(label, value, cls) {
  return h("span", {}, label + " ", h("b", { class: cls }, value));
}

function sum(values) {
  const known = values.filter((x) => x !== null && x !== undefined);
  return known.length === 0 ? null : known.reduce((a, b) => a + b, 0);
}

function renderRegistry(v, name, s, now) {
  const r = s.registry || {};
  const age = r.last_sync_unix_ms ? duration(now - r.last_sync_unix_ms) + " ago" : "never";
  v.facts.replaceChildren(...[
    fact("registry", r.source || "nothing yet", r.source === "etcd" ? "ok" : "warn"),
    fact("watch", r.connected ? "connected" : "not connected", r.connected ? "ok" : "bad"),
    fact("synced", age),
    fact("revision", count(r.revision)),
    s.effective_max_connections !== undefined ? fact("connection limit", count(s.effective_max_connections), "warn") : null,
  ].filter((x) => x !== null));
  if (r.grace) {
    const until = r.grace.until_unix_ms ? " until " + clock(r.grace.until_unix_ms) : "";
    v.grace.textContent = `grace period: holding ${r.grace.held_instances} instance(s) etcd no longer lists${until}: ${r.grace.reason}`;
    v.grace.hidden = false;
  } else {
    v.grace.hidden = true;
  }
}

function renderBackends(v, name, s, now) {
  const rows = [];
  const connRates = [];
  const failRates = [];
  for (const b of s.backends || []) {
    const key = `${name}|${b.id}|${b.host}:${b.port}`;
    const connRate = rates.update(key + "|total", b.total, now);
    const failRate = rates.update(key + "|failures", b.connect_failures, now);
    connRates.push(connRate);
    failRates.push(failRate);
    const [rowClass, pillClass, label] = look(b);
    const address = `${b.host}:${b.port}`;
    const resolved = b.addresses ? " \u2192 " + (b.addresses.length ? b.addresses.join(", ") : "unresolved") : "";
    rows.push(h("tr", { class: rowClass, data: { backend: b.id, state: b.state, weight: b.weight } },
      h("td", {}, h("span", { class: "pill " + pillClass }, label)),
      h("td", { class: "mono" }, b.id),
      h("td", { class: "mono" }, address + resolved),
      h("td", {}, b.zone || DASH),
      h("td", { class: "num", title: "registry weight (effective weight while it warms up: slow_start)" },
        b.effective_weight !== undefined && b.effective_weight !== b.weight && b.state === "healthy"
          ? `${count(b.effective_weight)} / ${count(b.weight)}` : count(b.weight)),
      h("td", { class: "num" }, count(b.active)),
      h("td", { class: "num" }, rate(connRate)),
      h("td", { class: "num" }, count(b.total)),
      h("td", { class: "num " + (b.connect_failures > 0 ? "warn" : "") }, count(b.connect_failures)),
      h("td", { class: "num " + (failRate > 0 ? "bad" : "") }, rate(failRate)),
      h("td", { class: "num" }, count(b.unanswered)),
      h("td", { class: "num" }, b.latency_ms === undefined || !s.traffic || !s.traffic.requests
        || sum(Object.values(s.traffic.requests)) === 0 ? DASH : b.latency_ms.toFixed(1) + " ms"),
      h("td", { class: "num" }, bytes(b.bytes_to_backend)),
      h("td", { class: "num" }, bytes(b.bytes_to_client)),
    ));
  }
  if (rows.length === 0) {
    rows.push(h("tr", { class: "st-bad" }, h("td", { class: "none", colspan: COLUMNS.length }, "no backends")));
  }
  v.tbody.replaceChildren(...rows);
  return { connRate: sum(connRates), failRate: sum(failRates) };
}

// http mode: answered requests by status class, shown once a request was answered.
function requestFacts(t) {
  const r = t.requests;
  if (!r || sum(Object.values(r)) === 0) return [];
  return [
    fact("2xx", count(r["2xx"]), "ok"),
    fact("4xx", count(r["4xx"])),
    fact("5xx", count(r["5xx"]), r["5xx"] > 0 ? "warn" : ""),
    fact("retry budget spent", count(t.retry_budget_exhausted_total),
      t.retry_budget_exhausted_total > 0 ? "warn" : ""),
  ];
}

// The service's totals: from `traffic` where synapse sends it (it also counts connections
// whose backend has left since), else summed over the backends listed now.
function renderTraffic(v, name, s, now, fromBackends) {
  const t = s.traffic;
  const backends = s.backends || [];
  let connRate = fromBackends.connRate;
  let failRate = fromBackends.failRate;
  const parts = [];
  if (t) {
    const a = t.connect_attempts || {};
    const failed = sum([a.refused, a.timeout, a.error]);
    connRate = rates.update(name + "|connections", t.connections_total, now);
    if (failed !== null) failRate = rates.update(name + "|failed", failed, now);
    const toBackend = rates.update(name + "|bytes_to_backend", t.bytes_to_backend, now);
    const toClient = rates.update(name + "|bytes_to_client", t.bytes_to_client, now);
    parts.push(
      fact("active", count(t.connections_active)),
      fact("connections", count(t.connections_total)),
      fact("connects ok", count(a.ok), "ok"),
      fact("refused", count(a.refused), a.refused > 0 ? "warn" : ""),
      fact("timeout", count(a.timeout), a.timeout > 0 ? "warn" : ""),
      fact("error", count(a.error), a.error > 0 ? "warn" : ""),
      fact("retries", count(t.retries_total)),
      fact("replays", count(t.replays_total)),
      fact("ejections", count(t.ejections_total), t.ejections_total > 0 ? "warn" : ""),
      ...requestFacts(t),
      fact("to backends", bytes(t.bytes_to_backend) + (toBackend === null ? "" : " (" + bytes(toBackend) + "/s)")),
      fact("to clients", bytes(t.bytes_to_client) + (toClient === null ? "" : " (" + bytes(toClient) + "/s)")),
    );
  } else {
    parts.push(
      fact("active", count(backends.reduce((n, b) => n + (b.active || 0), 0))),
      fact("connections", count(backends.reduce((n, b) => n + (b.total || 0), 0))),
      fact("connect failures", count(backends.reduce((n, b) => n + (b.connect_failures || 0), 0))),
    );
  }
  parts.push(fact("unserved", count(s.unserved_connections), s.unserved_connections > 0 ? "bad" : ""));
  v.traffic.replaceChildren(...parts);
  return { connRate, failRate };
}

function renderTitle(v, name, s) {
  const backends = s.backends || [];
  const serving = backends.filter((b) => b.state === "healthy" && b.weight > 0).length;
  const [cls, label] = !s.ready ? ["warn", "waiting"] : serving === 0 ? ["bad", "no healthy backend"] : ["ok", "serving"];
  v.title.replaceChildren(
    h("span", {}, name),
    h("span", { class: "pill " + cls }, label),
    h("span", { class: "meta mono" }, s.listen),
    h("span", { class: "meta" }, `${s.balance}, ${serving} of ${backends.length} backends healthy`),
  );
}

function update(status, now) {
  answers++;
  document.body.dataset.answers = answers;
  const services = status.services || {};
  const names = Object.keys(services).sort();
  for (const [name, v] of views) {
    if (!(name in services)) {
      v.section.remove();
      views.delete(name);
    }
  }
  let backendCount = 0;
  let active = 0;
  for (const name of names) {
    const s = services[name];
    const v = view(name);
    renderTitle(v, name, s);
    renderRegistry(v, name, s, now);
    const perBackend = renderBackends(v, name, s, now);
    const { connRate, failRate } = renderTraffic(v, name, s, now, perBackend);
    for (const [box, value] of [[v.conn, connRate], [v.fail, failRate]]) {
      if (value !== null) box.chart.push(now, value);
      box.value.textContent = rate(value);
      box.chart.draw(now);
    }
    backendCount += (s.backends || []).length;
    active += s.traffic && s.traffic.connections_active !== undefined ? s.traffic.connections_active
      : (s.backends || []).reduce((n, b) => n + (b.active || 0), 0);
  }
  rates.sweep();
  // Sections in name order; moved only when the set of services changed.
  const main = document.getElementById("services");
  const shown = [...main.children].map((e) => e.dataset.service);
  if (shown.join("\n") !== names.join("\n")) main.replaceChildren(...names.map((n) => views.get(n).section));
  if (names.length === 0) main.replaceChildren(h("p", { class: "none" }, "synapse forwards no service."));
  document.getElementById("summary").textContent =
    `${names.length} service(s), ${backendCount} backend(s), ${count(active)} active connection(s)`;
}

// No answer: a gap in every chart, so that the lines do not pretend nothing happened.
function fail(now) {
  for (const v of views.values()) {
    for (const box of [v.conn, v.fail]) {
      box.chart.push(now, null);
      box.chart.draw(now);
    }
  }
}

document.getElementById("where").textContent = location.host;
Dash.poll({ program: "synapse", url: "status", everyMs: 1000, timeoutMs: 2500, onData: update, onFail: fail });
