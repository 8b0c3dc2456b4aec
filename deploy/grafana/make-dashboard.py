#!/usr/bin/env python3
"""Writes deploy/grafana/smartstack.json, the Grafana dashboard over the metrics of
docs/metrics.md. The JSON is generated so that panels stay uniform; edit this file, run it,
commit both. A test (tests/e2e/dashboards.rs) checks that every metric the JSON queries is
exported by the real binaries."""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(title, exprs, unit="short", x=0, y=0, w=12, h=8, legend="{{service}}"):
    targets = []
    for i, e in enumerate(exprs):
        expr, fmt = e if isinstance(e, tuple) else (e, legend)
        targets.append({"datasource": DS, "expr": expr, "legendFormat": fmt,
                        "refId": chr(ord("A") + i)})
    return {
        "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi"}},
        "targets": targets,
    }


def row(title, y):
    return {"type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


S = '{job="synapse", service=~"$service"}'
SR = 'job="synapse", service=~"$service"'
N = '{job="nerve", service=~"$service"}'
NR = 'job="nerve", service=~"$service"'

panels = [
    row("synapse: traffic", 0),
    panel("Connections/s", [f"sum by (service) (rate(synapse_connections_total{S}[$__rate_interval]))"], "reqps", 0, 1),
    panel("Active connections", [f"sum by (service) (synapse_connections_active{S})"], "short", 12, 1),
    panel("Connect attempts/s by result",
          [(f"sum by (service, result) (rate(synapse_connect_attempts_total{S}[$__rate_interval]))", "{{service}} {{result}}")],
          "ops", 0, 9),
    panel("Unserved connections, retries, replays /s",
          [(f"sum by (service) (rate(synapse_unserved_connections_total{S}[$__rate_interval]))", "{{service}} unserved"),
           (f"sum by (service) (rate(synapse_retries_total{S}[$__rate_interval]))", "{{service}} retries"),
           (f"sum by (service) (rate(synapse_replays_total{S}[$__rate_interval]))", "{{service}} replays")],
          "ops", 12, 9),
    panel("Backend connect time p50 / p99",
          [(f"histogram_quantile(0.5, sum by (le, service) (rate(synapse_connect_duration_seconds_bucket{S}[$__rate_interval])))", "{{service}} p50"),
           (f"histogram_quantile(0.99, sum by (le, service) (rate(synapse_connect_duration_seconds_bucket{S}[$__rate_interval])))", "{{service}} p99")],
          "s", 0, 17),
    panel("Connection lifetime p50 / p99",
          [(f"histogram_quantile(0.5, sum by (le, service) (rate(synapse_connection_duration_seconds_bucket{S}[$__rate_interval])))", "{{service}} p50"),
           (f"histogram_quantile(0.99, sum by (le, service) (rate(synapse_connection_duration_seconds_bucket{S}[$__rate_interval])))", "{{service}} p99")],
          "s", 12, 17),
    panel("Bytes/s",
          [(f"sum by (service, direction) (rate(synapse_bytes_total{S}[$__rate_interval]))", "{{service}} {{direction}}")],
          "Bps", 0, 25),
    panel("Ejections",
          [(f"sum by (service) (increase(synapse_ejections_total{S}[$__rate_interval]))", "{{service}}")],
          "short", 12, 25),
    row("synapse: backends and registry", 33),
    panel("Backends by state",
          [(f"sum by (service, state) (synapse_backends{S})", "{{service}} {{state}}")], "short", 0, 34),
    panel("Connections/s per backend",
          [(f"sum by (service, backend) (rate(synapse_backend_connections_total{S}[$__rate_interval]))", "{{service}}/{{backend}}")],
          "reqps", 12, 34),
    panel("Connect failures/s per backend",
          [(f"sum by (service, backend) (rate(synapse_backend_connect_failures_total{S}[$__rate_interval]))", "{{service}}/{{backend}}")],
          "ops", 0, 42),
    panel("Backends taking connections (up) and weight",
          [(f"sum by (service) (synapse_backend_up{S})", "{{service}} up"),
           (f"sum by (service) (synapse_backend_weight{S})", "{{service}} total weight")],
          "short", 12, 42),
    panel("Registry: watch connected (min over synapses)",
          [(f"min by (service) (synapse_registry_connected{S})", "{{service}}")], "short", 0, 50),
    panel("Registry: seconds since etcd last confirmed the view (max)",
          [(f"max by (service) (time() - synapse_registry_last_sync_timestamp_seconds{S})", "{{service}}")],
          "s", 12, 50),
    panel("Backends served from (synapses per source)",
          [(f"sum by (source) (synapse_backend_source{S})", "{{source}}")], "short", 0, 58),
    panel("Registry revision seen (max)",
          [(f"max by (service) (synapse_registry_revision{S})", "{{service}}")], "short", 12, 58),
    row("nerve: instances", 66),
    panel("Instances healthy / registered / in maintenance",
          [(f"sum by (service) (nerve_instance_healthy{N})", "{{service}} healthy"),
           (f"sum by (service) (nerve_instance_registered{N})", "{{service}} registered"),
           (f"sum by (service) (nerve_instance_maintenance{N})", "{{service}} maintenance")],
          "short", 0, 67),
    panel("Failed checks/s",
          [(f'sum by (service, instance, check) (rate(nerve_checks_total{{{NR}, result="fail"}}[$__rate_interval]))', "{{service}}/{{instance}} {{check}}")],
          "ops", 12, 67),
    panel("Check duration p99",
          [(f"histogram_quantile(0.99, sum by (le, service, check) (rate(nerve_check_duration_seconds_bucket{N}[$__rate_interval])))", "{{service}} {{check}}")],
          "s", 0, 75),
    panel("Health transitions",
          [(f"sum by (service, to) (increase(nerve_health_transitions_total{N}[$__rate_interval]))", "{{service}} to {{to}}")],
          "short", 12, 75),
    row("nerve: etcd", 83),
    panel("etcd connected / lease held (min over nerves)",
          [('min(nerve_etcd_connected{job="nerve"})', "etcd connected"),
           ('min(nerve_lease_held{job="nerve"})', "lease held")], "short", 0, 84),
    panel("Lease keepalive failures and leases lost",
          [('sum(increase(nerve_lease_keepalive_failures_total{job="nerve"}[$__rate_interval]))', "keepalive failures"),
           ('sum(increase(nerve_leases_lost_total{job="nerve"}[$__rate_interval]))', "leases lost")],
          "short", 12, 84),
    panel("Registry writes/s",
          [('sum by (op) (rate(nerve_registry_writes_total{job="nerve"}[$__rate_interval]))', "{{op}}")],
          "ops", 0, 92),
    row("processes", 100),
    panel("Resident memory",
          [('process_resident_memory_bytes{job=~"synapse|nerve"}', "{{job}} {{instance}}")], "bytes", 0, 101),
    panel("CPU",
          [('rate(process_cpu_seconds_total{job=~"synapse|nerve"}[$__rate_interval])', "{{job}} {{instance}}")],
          "percentunit", 12, 101),
    panel("Open file descriptors / limit",
          [('process_open_fds{job=~"synapse|nerve"} / process_max_fds{job=~"synapse|nerve"}', "{{job}} {{instance}}")],
          "percentunit", 0, 109),
]

for i, p in enumerate(panels, start=1):
    p["id"] = i

dashboard = {
    "title": "SmartStack mesh (nerve + synapse)",
    "uid": "smartstack-mesh",
    "tags": ["smartstack", "synapse", "nerve"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
         "current": {}, "hide": 0},
        {"name": "service", "type": "query", "datasource": DS, "label": "service",
         "query": {"query": "label_values(synapse_connections_total, service)", "refId": "service"},
         "definition": "label_values(synapse_connections_total, service)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"text": "All", "value": "$__all"}, "hide": 0},
    ]},
    "panels": panels,
}

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smartstack.json")
with open(path, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
