#!/usr/bin/env python3
"""Turns deploy/bench/run.sh's raw results into the printed table, docs/benchmarks.md and
docs/benchmarks.png (via gnuplot).

Usage: report.py RESULTS_TSV META_ENV OUT_DIR

RESULTS_TSV has one line per measurement: metric, path, round, value. Each figure is the
median over rounds, shown with its spread (half the min-max range, in % of the median).
Everything in OUT_DIR/benchmarks.md below the NOTES_MARKER line is kept across runs (the
hand-written analysis); everything above it is regenerated.
"""
import collections
import os
import statistics
import subprocess
import sys

NOTES_MARKER = "<!-- Everything below this line is kept when make bench rewrites the file. -->"

# metric -> (label, unit, higher_is_better)
METRICS = collections.OrderedDict([
    ("keepalive_rps", ("keepalive HTTP", "req/s", True)),
    ("keepalive_p50_ms", ("keepalive p50", "ms", False)),
    ("keepalive_p99_ms", ("keepalive p99", "ms", False)),
    ("keepalive_cpu_us_per_req", ("keepalive proxy CPU per request", "us", False)),
    ("newconn_rps", ("new connection per request", "req/s", True)),
    ("newconn_p99_ms", ("new connection p99", "ms", False)),
    ("newconn_errors", ("new connection socket errors", "count", False)),
    ("newconn_cpu_us_per_req", ("new connection proxy CPU per request", "us", False)),
    ("bulk1_gbps", ("bulk, 1 stream", "Gb/s", True)),
    ("bulk1_cpu_s_per_gb", ("bulk, 1 stream, proxy CPU per GB", "s", False)),
    ("bulk8_gbps", ("bulk, 8 streams", "Gb/s", True)),
    ("bulk8_cpu_s_per_gb", ("bulk, 8 streams, proxy CPU per GB", "s", False)),
])
SINGLE = collections.OrderedDict([
    ("rss_idle_mb", "RSS idle (MB)"),
    ("rss_1k_backends_mb", "RSS with 1,000 registered backends (MB)"),
    ("rss_held_conns", "idle proxied connections held (fd limit permitting)"),
    ("rss_held_mb", "RSS with those connections (MB)"),
    ("rss_per_conn_kb", "RSS per idle proxied connection (KB)"),
    ("rss_10k_conns_mb", "RSS with 10,000 idle proxied connections (MB; scaled from the above)"),
    ("reg_p50_ms", "registration -> routable p50 (ms)"),
    ("reg_p99_ms", "registration -> routable p99 (ms)"),
    ("rem_p50_ms", "removal -> unroutable p50 (ms)"),
    ("rem_p99_ms", "removal -> unroutable p99 (ms)"),
    ("etcd_rtt_p50_ms", "etcd put/delete round trip p50 (ms, inside the above)"),
    ("reg_miss", "registrations not routable within 3 s"),
    ("failover_failed", "failover: failed requests, worst round (a backend killed -9 under load)"),
    ("failover_ok", "failover: successful requests in the same 6 s (median of the rounds)"),
])


def load(path):
    data = collections.defaultdict(list)
    paths = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            metric, p, _round, value = parts
            try:
                v = float(value)
            except ValueError:
                continue
            data[(metric, p)].append(v)
            if p not in paths:
                paths.append(p)
    return data, paths


# Figures where one bad round is the news: reported as the worst round, not the median.
WORST_OF_ROUNDS = {"failover_failed"}


def med(data, metric, path):
    v = data.get((metric, path))
    if not v:
        return None
    return max(v) if metric in WORST_OF_ROUNDS else statistics.median(v)


def spread(data, metric, path):
    v = data.get((metric, path))
    m = statistics.median(v) if v else None
    if not v or len(v) < 2 or not m:
        return None
    return (max(v) - min(v)) / 2 / m * 100


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "req/s" or abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(data, metric, path, unit):
    m = med(data, metric, path)
    if m is None:
        return "-"
    s = spread(data, metric, path)
    return fmt(m, unit) + (f" ±{s:.0f}%" if s is not None and s >= 0.5 else "")


def ratio(data, metric, a, b):
    x, y = med(data, metric, a), med(data, metric, b)
    if x is None or y is None or y == 0:
        return "-"
    return f"{x / y:.2f}x"


def table(data, cols, ratios):
    head = ["figure"] + cols + [f"{a} / {b}" for a, b in ratios]
    rows = [head, ["---"] * len(head)]
    for metric, (label, unit, _hib) in METRICS.items():
        if not any((metric, c) in data for c in cols):
            continue
        row = [f"{label} ({unit})"] + [cell(data, metric, c, unit) for c in cols]
        row += [ratio(data, metric, a, b) for a, b in ratios]
        rows.append(row)
    return rows


def render(rows):
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def render_plain(rows):
    widths = [max(len(r[i]) for r in rows if r[0] != "---") for i in range(len(rows[0]))]
    out = []
    for r in rows:
        if r[0] == "---":
            out.append("  ".join("-" * w for w in widths))
        else:
            out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def targets(data, syns):
    """One row per target of issue 5, one column per synapse build measured."""

    def r(metric, syn):
        x, y = med(data, metric, syn), med(data, metric, "haproxy")
        return x / y if x is not None and y else None

    def verdict(value, ok):
        return "not measured" if value is None else f"{value} ({'met' if ok else 'NOT met'})"

    def checks(syn):
        k, n = r("keepalive_rps", syn), r("newconn_rps", syn)
        b1, b8 = r("bulk1_gbps", syn), r("bulk8_gbps", syn)
        p, q = r("keepalive_p99_ms", syn), r("newconn_p99_ms", syn)
        g = med(data, "reg_p99_ms", syn)
        f = med(data, "failover_failed", syn)
        i = med(data, "rss_idle_mb", syn)
        c = med(data, "rss_10k_conns_mb", syn)
        return [
            verdict(k and f"{k:.2f}x", k is not None and k >= 1.25),
            verdict(n and f"{n:.2f}x", n is not None and n >= 1.15),
            verdict(b1 and b8 and f"{b1:.2f}x / {b8:.2f}x", b1 is not None and b8 is not None and min(b1, b8) >= 1.3),
            verdict(p and q and f"{p:.2f}x / {q:.2f}x", p is not None and q is not None and p <= 1.0 and q <= 1.0),
            verdict(None if g is None else f"{g:.1f} ms", g is not None and g < 20),
            verdict(None if f is None else f"{f:.0f}", f == 0),
            verdict(None if i is None else f"{i:.1f} MB", i is not None and i < 10),
            verdict(None if c is None else f"{c:.1f} MB", c is not None and c < 100),
        ]

    names = [
        "keepalive req/s >= 1.25x HAProxy",
        "new connections/s >= 1.15x HAProxy",
        "bulk >= 1.3x HAProxy (1 / 8 streams)",
        "p99 no worse than HAProxy (keepalive / new connection)",
        "registration -> routable p99 < 20 ms",
        "0 failed requests in failover (worst round)",
        "idle RSS < 10 MB",
        "RSS < 100 MB with 10,000 idle connections",
    ]
    cols = [checks(s) for s in syns]
    out = ["| target | " + " | ".join(syns) + " |", "|---|" + "---|" * len(syns)]
    for i, name in enumerate(names):
        out.append(f"| {name} | " + " | ".join(c[i] for c in cols) + " |")
    return "\n".join(out)


def plot(data, paths, out_dir):
    dat = os.path.join(out_dir, "bench-raw", "plot.dat")
    cols = ["keepalive_rps", "newconn_rps", "bulk1_gbps", "bulk8_gbps", "keepalive_p99_ms", "bulk1_cpu_s_per_gb"]
    with open(dat, "w") as f:
        for p in paths:
            vals = [med(data, c, p) for c in cols]
            f.write('"%s" %s\n' % (p, " ".join("%.4f" % v if v is not None else "0" for v in vals)))
    titles = ["keepalive HTTP (req/s, higher is better)", "new connection per request (req/s)",
              "bulk, 1 stream (Gb/s)", "bulk, 8 streams (Gb/s)", "keepalive p99 (ms, lower is better)",
              "bulk: proxy CPU seconds per GB (lower is better)"]
    png = os.path.join(out_dir, "benchmarks.png")
    script = [
        "set terminal pngcairo size 1500,900 font ',10'" if has_cairo() else "set terminal png size 1500,900",
        f"set output '{png}'",
        "set multiplot layout 2,3 title 'smartstack-rs make bench: medians; left of the gap: proxies; right: relay strategies alone (own rotation)'",
        "set style fill solid 0.7 border -1",
        "set boxwidth 0.7",
        "set yrange [0:*]",
        "set xtics rotate by -30 font ',8'",
        "set grid ytics",
        "unset key",
    ]
    for i, t in enumerate(titles):
        script.append(f"set title '{t}'")
        script.append(f"plot '{dat}' using 0:{i + 2}:xtic(1) with boxes lc rgb '#4477aa'")
    script.append("unset multiplot")
    try:
        subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"gnuplot failed: {e}", file=sys.stderr)


def has_cairo():
    try:
        r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
        return "pngcairo" in (r.stdout + r.stderr)
    except OSError:
        return False


def main():
    results, meta_path, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    data, paths = load(results)
    meta = {}
    with open(meta_path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    order = {"direct": 0, "haproxy": 1}
    proxies = sorted((p for p in paths if not p.startswith("relay:")), key=lambda p: (order.get(p, 2), paths.index(p)))
    relays = [p for p in paths if p.startswith("relay:")]
    relays = sorted(relays, key=lambda p: (p != "relay:haproxy", paths.index(p)))
    syn = [p for p in proxies if p.startswith("synapse")]
    ratios = [(s, "haproxy") for s in syn] + [(s, "direct") for s in syn] + [("haproxy", "direct")]
    main_rows = table(data, proxies, ratios)
    relay_rows = None
    if relays:
        base = "relay:tokio"
        dp = [p for p in relays if p not in (base, "relay:haproxy")]
        rr = [(p, base) for p in dp] + [(p, "relay:haproxy") for p in ("relay:auto", base) if p in relays]
        relay_rows = table(data, relays, rr)
    single_cols = [p for p in ["haproxy"] + syn if any((m, p) in data for m in SINGLE)]
    single_rows = [["figure"] + single_cols, ["---"] * (1 + len(single_cols))]
    for m, label in SINGLE.items():
        if any((m, c) in data for c in single_cols):
            single_rows.append([label] + [fmt(med(data, m, c)) for c in single_cols])

    print()
    print(render_plain(main_rows))
    if relay_rows:
        print("\nrelay strategies alone (smartstack-bench relay):")
        print(render_plain(relay_rows))
    print()
    print(render_plain(single_rows))
    print()

    machine = (f"{meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), Linux {meta.get('kernel', '?')}; "
               f"HAProxy {meta.get('haproxy', '?')}, nginx {meta.get('nginx', '?')}, wrk {meta.get('wrk', '?')}, "
               f"iperf3 {meta.get('iperf3', '?')}, etcd {meta.get('etcd', '?')}, rustc {meta.get('rustc', '?')}")
    md = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (deploy/bench/run.sh); the section after the marker below is",
        "hand-written and kept across runs. Raw numbers: [bench-raw/results.tsv](bench-raw/results.tsv).",
        "",
        "## Latest run",
        "",
        f"- machine: {machine}",
        f"- command: `{meta.get('command', 'make bench')}` at commit {meta.get('synapse_commit', '?')}, "
        f"{meta.get('duration_s', '?')} s; load average at start {meta.get('load_avg_at_start', '?')}, "
        f"at end {meta.get('load_avg_at_end', '?')}",
        f"- method: loopback only; nginx (1 worker, 17-byte body) as the backend, iperf3 for bulk; "
        f"HAProxy {meta.get('haproxy', '')} in TCP mode with nbthread {meta.get('threads', '?')} "
        f"(synapse's runtime has as many workers); wrk -t1 -c{meta.get('conns', '?')}, "
        f"{meta.get('secs', '?')} s per step; paths alternate, each round starting one path later "
        f"(A B C, B C A, C A B), {meta.get('rounds', '?')} rounds; "
        "each cell is the median, ±x% is half the min-max range over the rounds.",
        "- everything (load generator, proxy, backend) shares the same CPUs, as on a real host "
        "with a sidecar; the absolute numbers are small and noisy, the ratios are the point.",
        "",
        "### Proxies side by side",
        "",
        render(main_rows),
        "",
    ]
    if relay_rows:
        md += [
            "### The relay alone (`smartstack-bench relay`: accept, connect, relay; no discovery)",
            "",
            "A separate rotation (its own time window, so compare within this table only): "
            "`relay:haproxy` is the same HAProxy again, `relay:tokio` is `tokio::io::copy_bidirectional`, "
            "the others are `datapath::relay_with` with `Strategy::Buffered`, `Splice` and `Auto` "
            "(the default). Same runtime (2 workers) and socket options for all four.",
            "",
            render(relay_rows),
            "",
        ]
    md += ["### Memory, discovery, failover", "", render(single_rows), "", "### Targets (issue 5)", "",
           targets(data, syn), "", "![benchmark plot](benchmarks.png)", ""]
    target = os.path.join(out_dir, "benchmarks.md")
    notes = ""
    if os.path.exists(target):
        with open(target) as f:
            old = f.read()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    with open(target, "w") as f:
        f.write("\n".join(md) + "\n" + NOTES_MARKER + (notes if notes else "\n"))
    plot(data, proxies + relays, out_dir)
    print(f"wrote {target} and {os.path.join(out_dir, 'benchmarks.png')}")


if __name__ == "__main__":
    main()
