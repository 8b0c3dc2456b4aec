"use strict";
// nerve's dashboard: polls /status every second and shows one row per instance, grouped by
// service: health, whether it is registered (and under which lease, where it is not nerve's
// one lease shown at the top), maintenance and what holds it, the consecutive passes and
// failures against rise and fall, the last check and a strip of the recent ones.
// A nerve that sends no `recent_checks` (older builds) gets a strip made here from the
// successive `last_check`s this page saw; one without `rise`/`fall` shows the counts alone.

const { h, count, duration, clock, DASH } = Dash;

const STRIP = 30;
const COLUMNS = 10;
const seen = new Map();
let answers = 0;

// The checks of instance `key` this page saw, oldest first, for a nerve that does not send
// its own list.
function remembered(key, last) {
  let list = seen.get(key);
  if (!list) {
    list = [];
    seen.set(key, list);
  }
  if (last && (list.length === 0 || list[list.length - 1].at_unix_ms !== last.at_unix_ms)) {
    list.push(last);
    if (list.length > STRIP) list.shift();
  }
  return list;
}

function look(i) {
  if (i.maintenance) return ["st-warn", "warn", "maintenance"];
  if (!i.healthy && !i.last_check) return ["st-off", "off", "pending"];
  if (!i.healthy) return ["st-bad", "bad", "unhealthy"];
  if (!i.registered) return ["st-warn", "warn", "not registered"];
  return ["st-ok", "ok", "healthy"];
}

// "3 / 2": the count against its threshold, orange while it is moving the instance
// towards the other state.
function against(n, threshold, moving) {
  const text = threshold === undefined ? count(n) : `${count(n)} / ${count(threshold)}`;
  return h("td", { class: "num " + (moving && n > 0 ? "warn" : "") }, text);
}

function strip(checks, fromPage) {
  const squares = checks.map((c) => {
    const parts = [clock(c.at_unix_ms), c.passed ? "passed" : "failed"];
    if (c.duration_ms !== undefined) parts.push(duration(c.duration_ms));
    if (c.reason) parts.push(c.reason);
    return h("span", { class: "sq " + (c.passed ? "pass" : "fail"), title: parts.join(" \u00b7 ") });
  });
  const title = fromPage ? "the checks this page saw (this nerve does not send its recent checks)" : undefined;
  return h("span", { class: "strip", title }, squares);
}

function lastCheck(i, checks, now) {
  const c = i.last_check;
  if (!c) return h("td", { class: "off" }, "not yet");
  const latest = checks.length ? checks[checks.length - 1] : null;
  const took = latest && latest.at_unix_ms === c.at_unix_ms && latest.duration_ms !== undefined
    ? `, took ${duration(latest.duration_ms)}` : "";
  return h("td", {},
    h("b", { class: c.passed ? "ok" : "bad" }, c.passed ? "passed" : "failed"),
    ` ${duration(now - c.at_unix_ms)} ago${took}`);
}

// "yes" or "no"; the lease the key is written under is in the title, and in the cell when
// it is not the nerve's lease shown at the top.
function registered(i, lease) {
  const title = i.lease ? "lease " + i.lease : "no lease";
  const text = (i.registered ? "yes" : "no") + (i.lease && i.lease !== lease ? ", lease " + i.lease : "");
  return h("td", { class: i.registered ? "ok" : "bad", title }, text);
}

function row(i, lease, now) {
  const key = `${i.service}/${i.instance_id}`;
  const own = Array.isArray(i.recent_checks);
  const checks = own ? i.recent_checks.slice(-STRIP) : remembered(key, i.last_check);
  const [rowClass, pillClass, label] = look(i);
  const reasons = i.maintenance_reasons || [];
  const reason = i.last_check && i.last_check.reason;
  return h("tr", { class: rowClass, data: { instance: key, state: label, healthy: String(i.healthy) } },
    h("td", {}, h("span", { class: "pill " + pillClass }, label)),
    h("td", { class: "mono" }, i.instance_id),
    h("td", { class: "mono" }, `${i.host}:${i.port}`),
    registered(i, lease),
    h("td", { class: i.maintenance ? "warn fold" : "fold" }, i.maintenance ? "yes: " + (reasons.join(", ") || "?") : "no"),
    against(i.consecutive_passes, i.rise, !i.healthy),
    against(i.consecutive_failures, i.fall, i.healthy),
    lastCheck(i, checks, now),
    h("td", { class: "wrap " + (reason ? "bad" : "") }, reason || DASH),
    h("td", {}, strip(checks, !own)),
  );
}

function update(status, now) {
  answers++;
  document.body.dataset.answers = answers;
  const instances = status.instances || [];
  const rows = [];
  let service = null;
  for (const i of instances) {
    if (i.service !== service) {
      service = i.service;
      rows.push(h("tr", { class: "group" }, h("td", { colspan: COLUMNS }, service)));
    }
    rows.push(row(i, status.lease, now));
  }
  if (rows.length === 0) rows.push(h("tr", {}, h("td", { class: "none", colspan: COLUMNS }, "nerve runs no instance.")));
  document.getElementById("instances").replaceChildren(...rows);
  const live = new Set(instances.map((i) => `${i.service}/${i.instance_id}`));
  for (const key of seen.keys()) if (!live.has(key)) seen.delete(key);
  const healthy = instances.filter((i) => i.healthy).length;
  const registered = instances.filter((i) => i.registered).length;
  const etcd = status.etcd && status.etcd.reachable;
  const summary = document.getElementById("summary");
  summary.replaceChildren(
    `${instances.length} instance(s), ${healthy} healthy, ${registered} registered \u00b7 etcd `,
    h("b", { class: etcd ? "ok" : "bad" }, etcd ? "reachable" : "unreachable"),
    " \u00b7 lease ",
    h("b", { class: status.lease ? "mono" : "bad" }, status.lease || "none"),
  );
}

document.getElementById("where").textContent = location.host;
Dash.poll({ program: "nerve", url: "status", everyMs: 1000, timeoutMs: 2500, onData: update, onFail: () => {} });
