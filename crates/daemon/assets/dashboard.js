"use strict";
// What the nerve and synapse dashboards share: building elements, number formats, counters
// turned into rates, small canvas charts, and the polling loop with its "not answering"
// banner. No framework and no build step: the admin server serves this file as written.

const Dash = (() => {
  // Element builder. Text goes in as text nodes, never as HTML: instance ids, hosts and
  // reasons come from the registry and from checks, and must not be able to inject markup.
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "data") for (const [k, v] of Object.entries(value)) el.dataset[k] = v;
      else if (key === "title") el.title = value;
      else el.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const DASH = "\u2013";
  const MINUTE = 60 * 1000;

  function count(n) {
    if (n === undefined || n === null) return DASH;
    return Math.round(n).toLocaleString("en-US");
  }

  // Rates: a few significant digits, never "0.0000".
  function rate(r) {
    if (r === undefined || r === null || !isFinite(r)) return DASH;
    if (r === 0) return "0";
    if (r < 10) return r.toFixed(1);
    return count(r);
  }

  function bytes(n) {
    if (n === undefined || n === null || !isFinite(n)) return DASH;
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) {
      n /= 1000;
      i++;
    }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + units[i];
  }

  // A duration in milliseconds as "850 ms", "12.3 s", "4 m 05 s", "2 h 10 m".
  function duration(ms) {
    if (ms === undefined || ms === null || !isFinite(ms)) return DASH;
    ms = Math.max(0, ms);
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " m";
  }

  function clock(unixMs) {
    if (!unixMs) return DASH;
    return new Date(unixMs).toLocaleTimeString("en-GB");
  }

  // Per-second rates of counters from successive samples, by key. A counter that went
  // down was reset (the program restarted, or the instance left and came back): no rate
  // for that sample rather than a negative one. Keys not seen in a sample are forgotten.
  class Rates {
    constructor() {
      this.last = new Map();
      this.seen = new Set();
    }
    // The rate of `key` given its value now (`t`: ms); null on the first sample.
    update(key, value, t) {
      if (value === undefined || value === null) return null;
      this.seen.add(key);
      const prev = this.last.get(key);
      this.last.set(key, { value, t });
      if (!prev || value < prev.value || t <= prev.t) return null;
      return ((value - prev.value) * 1000) / (t - prev.t);
    }
    // Drops the keys not updated since the last call.
    sweep() {
      for (const key of this.last.keys()) if (!this.seen.has(key)) this.last.delete(key);
      this.seen.clear();
    }
  }

  // A small line chart of one series over the last `windowMs`, drawn on a <canvas>. A null
  // value is a gap (no answer then), drawn as a break in the line. Until the page has a
  // minute of history the chart spans one minute, so that a page just opened does not show
  // a sliver at the right edge.
  class Chart {
    constructor(canvas, color, windowMs) {
      this.canvas = canvas;
      this.color = color;
      this.windowMs = windowMs;
      this.points = [];
      this.first = null;
    }
    push(t, value) {
      if (this.first === null) this.first = t;
      this.points.push({ t, value });
      const oldest = t - this.windowMs;
      while (this.points.length > 0 && this.points[0].t < oldest) this.points.shift();
    }
    draw(now) {
      const c = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      const w = Math.round(c.clientWidth * ratio);
      const hgt = Math.round(c.clientHeight * ratio);
      if (w === 0 || hgt === 0) return;
      if (c.width !== w || c.height !== hgt) {
        c.width = w;
        c.height = hgt;
      }
      const g = c.getContext("2d");
      g.clearRect(0, 0, w, hgt);
      const values = this.points.map((p) => p.value).filter((v) => v !== null);
      const max = niceCeiling(Math.max(1, ...values));
      const pad = 3 * ratio;
      const span = this.first !== null && now - this.first > MINUTE ? this.windowMs : MINUTE;
      const x = (t) => w - ((now - t) / span) * w;
      const y = (v) => hgt - pad - (v / max) * (hgt - 2 * pad);
      // Scale: the top value, in the corner where the newest points are least likely.
      g.fillStyle = "#656d76";
      g.font = `${10 * ratio}px system-ui, sans-serif`;
      g.textBaseline = "top";
      g.fillText(rate(max), 3 * ratio, 2 * ratio);
      g.textBaseline = "bottom";
      g.fillText("last " + Math.round(span / MINUTE) + " min", 3 * ratio, hgt - ratio);
      g.strokeStyle = "#eaeef2";
      g.lineWidth = ratio;
      g.beginPath();
      g.moveTo(0, y(max / 2));
      g.lineTo(w, y(max / 2));
      g.stroke();
      // Each run of points without a gap is one filled line.
      let run = [];
      const flush = () => {
        if (run.length > 0) this.drawRun(g, run, x, y, hgt, ratio);
        run = [];
      };
      for (const p of this.points) {
        if (p.value === null) flush();
        else run.push(p);
      }
      flush();
    }
    drawRun(g, run, x, y, hgt, ratio) {
      g.beginPath();
      g.moveTo(x(run[0].t), hgt);
      for (const p of run) g.lineTo(x(p.t), y(p.value));
      g.lineTo(x(run[run.length - 1].t), hgt);
      g.closePath();
      g.globalAlpha = 0.15;
      g.fillStyle = this.color;
      g.fill();
      g.globalAlpha = 1;
      g.beginPath();
      run.forEach((p, i) => (i === 0 ? g.moveTo(x(p.t), y(p.value)) : g.lineTo(x(p.t), y(p.value))));
      g.strokeStyle = this.color;
      g.lineWidth = 1.5 * ratio;
      g.stroke();
    }
  }

  // 1, 2 or 5 times a power of ten, at least `v`: a scale a reader takes in at a glance.
  function niceCeiling(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // Polls `url` every `everyMs` (measured from the start of each request, so a slow
  // answer does not stretch the period) and hands each JSON answer to `onData(json, t)`.
  // A failed, late (after `timeoutMs`) or non-JSON answer calls `onFail(t)`, shows the
  // red banner with the time since the last good answer, and greys the page out; the next
  // good answer takes both away.
  function poll({ program, url, everyMs, timeoutMs, onData, onFail }) {
    const banner = document.getElementById("banner");
    const updated = document.getElementById("updated");
    const started = Date.now();
    let lastGood = null;
    let failure = null;

    function showState() {
      const now = Date.now();
      if (failure === null) {
        banner.hidden = true;
        document.body.classList.remove("stale");
        updated.textContent = lastGood === null ? "waiting for the first answer" : "updated " + clock(lastGood);
        return;
      }
      const since = lastGood === null ? "since this page was opened " + duration(now - started) + " ago"
        : "for " + duration(now - lastGood) + " (last good answer at " + clock(lastGood) + ")";
      banner.textContent = `${program} at ${location.host} is not answering ${since}: ${failure}. ` +
        "Everything below is as it was then.";
      banner.hidden = false;
      document.body.classList.add("stale");
      updated.textContent = "not answering";
    }

    async function once() {
      const begun = Date.now();
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), timeoutMs);
      let json = null;
      try {
        const response = await fetch(url, { cache: "no-store", signal: abort.signal });
        if (!response.ok) throw new Error("HTTP " + response.status);
        json = await response.json();
        lastGood = Date.now();
        failure = null;
      } catch (e) {
        failure = e.name === "AbortError" ? "no answer within " + duration(timeoutMs) : e.message || String(e);
      } finally {
        clearTimeout(timer);
      }
      // A page bug must not pass for the program not answering: it goes to the console and
      // polling goes on.
      try {
        if (failure === null) onData(json, lastGood);
        else onFail(Date.now());
      } catch (e) {
        console.error("dashboard update failed", e);
      }
      showState();
      setTimeout(once, Math.max(0, everyMs - (Date.now() - begun)));
    }

    // The time in the banner keeps counting while a request hangs.
    setInterval(showState, 1000);
    showState();
    once();
  }

  return { h, count, rate, bytes, duration, clock, Rates, Chart, poll, DASH };
})();
