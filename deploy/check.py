#!/usr/bin/env python3
"""Offline checks of tollgate's deployment files, run by deploy/check.sh.

Subcommands (paths are relative to the repository root, the working directory):

  names             every metric name in the alerts, their tests and the dashboard is in
                    deploy/prometheus/metric-names.txt
  runbooks          every alert links README.md#runbook-<alertname lower case> and that
                    heading exists (README.md or the deploy/README.md draft)
  dashboard OUT     the dashboard's structure; writes its PromQL as a rule file to OUT so
                    that promtool parses every expression
  k8s-config        the ConfigMap's TOML (no secrets, plans.toml == config/plans.toml),
                    secretKeyRefs against secret.example.yaml, ports, probes, drain timing
  k8s-files         prints the manifest files kustomization.yaml lists (fallback when no
                    kustomize is installed)
  env-file OUT      writes the TOML of the ConfigMap to OUT and prints, one per line,
                    NAME=VALUE environment overrides with dummy secrets (binary check)
  docker            the Dockerfiles: known instructions, stages, base images, COPY sources,
                    cargo package names, non-root user, exposed ports
  scrape-k8s OUT    prometheus-k8s.yml keeps the deployments' metrics ports in the right
                    namespace under the same jobs as prometheus.yml; writes to OUT a copy
                    with static targets for a promtool built without Kubernetes discovery
  live FILE...      scraped /metrics texts: every allow-listed tollgate_* family is present
                    (with --allow-missing among the arguments, absent ones only warn)

Needs PyYAML (installed by check.sh into its virtualenv). Exits 1 on any failure.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

PROM = Path("deploy/prometheus")
ALERTS = PROM / "alerts.yml"
ALERT_TESTS = PROM / "alerts_test.yml"
ALLOW = PROM / "metric-names.txt"
DASHBOARD = Path("deploy/grafana/tollgate-dashboard.json")
K8S = Path("deploy/k8s")
DOCKER = Path("deploy/docker")

failures: list[str] = []


# Kinds whose pod template the checks read.
WORKLOADS = ("Deployment", "StatefulSet")

def fail(message: str) -> None:
    failures.append(message)
    print(f"  FAIL {message}")


def done(what: str) -> int:
    if failures:
        print(f"{what}: {len(failures)} problem(s)")
        return 1
    print(f"{what}: ok")
    return 0


# ------------------------------------------------------------------ metric names

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan",
}


def allow_list() -> list[str]:
    names = []
    for line in ALLOW.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed)."""
    if "__name__" in expr:
        fail(f"selects metrics by __name__ (name them explicitly): {expr}")
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "1m", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        token = m.group(0)
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if token.lower() in KEYWORDS:
            continue
        names.add(token)
    return names


def name_allowed(name: str, allowed: set[str]) -> bool:
    if name in allowed:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in allowed and not base.endswith("_total"):
                return True
    return False


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    out.append((f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []) or [])

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            m = re.match(r"\s*label_values\((.*),\s*\w+\)\s*$", q)
            out.append((f"variable {var.get('name')}", m.group(1) if m else q))
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def cmd_names() -> int:
    allowed = set(allow_list())
    if len(allowed) != len(allow_list()):
        fail(f"{ALLOW}: a name is listed twice")
    for n in allowed:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", n):
            fail(f"{ALLOW}: {n!r} is not a metric name")
        if n.endswith(HISTOGRAM_SUFFIXES):
            fail(f"{ALLOW}: list histogram {n!r} without its suffix")
    used: dict[str, str] = {}
    for rule in alert_rules():
        for n in metric_names(str(rule["expr"])):
            used.setdefault(n, f"{ALERTS} {rule.get('alert') or rule.get('record')}")
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    for test in tests.get("tests", []):
        for series in test.get("input_series", []):
            n = series["series"].split("{", 1)[0].strip()
            used.setdefault(n, f"{ALERT_TESTS} {test.get('name')!r}")
    dash = json.loads(DASHBOARD.read_text())
    for where, expr in dashboard_exprs(dash):
        for n in metric_names(expr):
            used.setdefault(n, f"{DASHBOARD} {where}")
    for n, where in sorted(used.items()):
        if not name_allowed(n, allowed):
            fail(f"{where}: metric {n!r} is not in {ALLOW}")
    print(f"  {len(used)} metric names referenced, {len(allowed)} allowed")
    return done("metric names")


# ------------------------------------------------------------------ runbooks


def cmd_runbooks() -> int:
    docs = [p for p in (Path("README.md"), Path("deploy/README.md")) if p.is_file()]
    headings = set()
    for p in docs:
        for line in p.read_text().splitlines():
            m = re.match(r"#{2,4}\s+(runbook-[a-z0-9-]+)\s*$", line)
            if m:
                headings.add(m.group(1))
    names = set()
    for rule in alert_rules():
        name = rule.get("alert")
        if not name:
            continue
        if name in names:
            fail(f"alert {name} is defined twice")
        names.add(name)
        for key in ("for",):
            if key not in rule:
                fail(f"alert {name}: no `{key}`")
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            fail(f"alert {name}: labels.severity must be critical, warning or info")
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                fail(f"alert {name}: no annotations.{key}")
        anchor = f"runbook-{name.lower()}"
        if ann.get("runbook_url") != f"README.md#{anchor}":
            fail(f"alert {name}: runbook_url must be README.md#{anchor}")
        if anchor not in headings:
            fail(f"alert {name}: no heading `### {anchor}` in {', '.join(map(str, docs))}")
    for h in sorted(headings):
        if h.removeprefix("runbook-") not in {n.lower() for n in names}:
            fail(f"runbook heading {h} has no alert")
    print(f"  {len(names)} alerts, {len(headings)} runbook headings")
    return done("alert annotations and runbooks")


# ------------------------------------------------------------------ dashboard


def cmd_dashboard(out: str) -> int:
    dash = json.loads(DASHBOARD.read_text())
    if not 36 <= int(dash.get("schemaVersion", 0)) <= 41:
        fail(f"schemaVersion {dash.get('schemaVersion')} (expected ~39)")
    if not dash.get("uid") or not dash.get("title"):
        fail("dashboard needs uid and title")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("DS_PROMETHEUS")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("templating needs a datasource variable DS_PROMETHEUS of type prometheus")
    ids = set()

    def walk(panels):
        for p in panels:
            pid = p.get("id")
            if pid in ids:
                fail(f"panel id {pid} used twice")
            ids.add(pid)
            g = p.get("gridPos", {})
            if g.get("x", 0) + g.get("w", 0) > 24 or g.get("w", 0) <= 0 or g.get("h", 0) <= 0:
                fail(f"panel {pid} {p.get('title')!r}: gridPos {g} outside the 24-column grid")
            if p.get("type") != "row":
                if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                    fail(f"panel {pid} {p.get('title')!r}: datasource is not ${{DS_PROMETHEUS}}")
                if not p.get("targets"):
                    fail(f"panel {pid} {p.get('title')!r}: no query")
                refs = [t.get("refId") for t in p.get("targets", [])]
                if len(set(refs)) != len(refs):
                    fail(f"panel {pid}: duplicate refId")
                for t in p.get("targets", []):
                    if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                        fail(f"panel {pid} target {t.get('refId')}: datasource is not ${{DS_PROMETHEUS}}")
            walk(p.get("panels", []) or [])

    walk(dash.get("panels", []))
    # Every expression as a recording rule, Grafana's variables replaced, for promtool.
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs(dash)):
        e = (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
             .replace("$__range", "1d").replace("${__range}", "1d"))
        if "$" in e:
            fail(f"{where}: unknown Grafana variable in {expr}")
        rules.append({"record": f"dashboard:expr_{i}", "expr": e})
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    print(f"  {len(ids)} panels, {len(rules)} queries written to {out}")
    return done("dashboard structure")


# ------------------------------------------------------------------ kubernetes

SECRET_KEYS = {
    ("identity", "hs256_secret"),
    ("redis", "url"),
    ("internal", "service_token"),
    ("control_plane", "database_url"),
    ("stripe", "secret_key"),
    ("stripe", "webhook_secrets"),
    ("control_plane", "notifications", "secret"),
}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize_resources() -> list[Path]:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / r for r in k.get("resources", [])]


def cmd_k8s_files() -> int:
    for p in kustomize_resources():
        print(p)
    return 0


def objects() -> dict[tuple[str, str], dict]:
    out = {}
    for path in kustomize_resources():
        for d in load_docs(path):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


def config_toml(objs) -> tuple[dict, dict]:
    cm = objs[("ConfigMap", "tollgate-config")]
    return tomllib.loads(cm["data"]["tollgate.toml"]), cm


def walk_keys(d: dict, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from walk_keys(v, prefix + (k,))


def env_key_path(name: str) -> tuple[str, ...]:
    return tuple(name.removeprefix("TOLLGATE_").lower().split("__"))


def cmd_k8s_config() -> int:
    objs = objects()
    if (K8S / "secret.example.yaml") in kustomize_resources():
        fail("secret.example.yaml must not be a kustomization resource")
    for (kind, name), o in objs.items():
        if kind == "Secret":
            fail(f"Secret {name} is in the kustomization: secrets are only referenced")
    config, cm = config_toml(objs)
    for path in walk_keys(config):
        if path in SECRET_KEYS:
            fail(f"ConfigMap tollgate.toml holds the secret {'.'.join(path)}")
    if cm["data"].get("plans.toml") != Path("config/plans.toml").read_text():
        fail("ConfigMap plans.toml differs from config/plans.toml (copy it again)")
    if config.get("plans_file") != "/etc/tollgate/plans.toml":
        fail("plans_file must be /etc/tollgate/plans.toml (the mounted ConfigMap)")
    tomllib.loads(cm["data"]["plans.toml"])

    secret = load_docs(K8S / "secret.example.yaml")[0]
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    proxy = config["proxy"]
    cp = config["control_plane"]
    port = lambda addr: int(str(addr).rsplit(":", 1)[1])  # noqa: E731

    for (kind, name), o in objs.items():
        if kind not in WORKLOADS:
            continue
        spec = o["spec"]["template"]["spec"]
        if spec.get("enableServiceLinks") is not False:
            fail(f"{kind} {name}: enableServiceLinks must be false (service env vars look like TOLLGATE_* keys)")
        claims = {t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in spec.get("volumes", [])} | claims
        for c in spec.get("initContainers", []) + spec["containers"]:
            cname = f"{name}/{c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    fail(f"{cname}: mounts unknown volume {m['name']}")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                pr = c.get(probe, {})
                p = (pr.get("httpGet") or pr.get("tcpSocket") or {}).get("port")
                if isinstance(p, str) and p not in ports:
                    fail(f"{cname}: {probe} uses unknown port name {p}")
            sc = c.get("securityContext", {})
            if not c["image"].startswith("ticket-api"):
                if sc.get("readOnlyRootFilesystem") is not True:
                    fail(f"{cname}: readOnlyRootFilesystem must be true")
                if sc.get("allowPrivilegeEscalation") is not False:
                    fail(f"{cname}: allowPrivilegeEscalation must be false")
            user = sc.get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
            if c["image"].startswith("tollgate") and user != 10001:
                fail(f"{cname}: must run as uid 10001 (the image's user)")
            if c["image"].startswith("tollgate"):
                if c.get("args", [])[:2] != ["--config", "/etc/tollgate/tollgate.toml"]:
                    fail(f"{cname}: args must start with --config /etc/tollgate/tollgate.toml")
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                if mounts.get("/etc/tollgate") != "tollgate-config":
                    fail(f"{cname}: mount the ConfigMap at /etc/tollgate")
                if "resources" not in c or "limits" not in c["resources"] or "requests" not in c["resources"]:
                    fail(f"{cname}: needs resources.requests and resources.limits")
            for env in c.get("env", []):
                n = env["name"]
                if n.startswith("TOLLGATE_"):
                    if "__" not in n:
                        fail(f"{cname}: {n} is not a TOLLGATE_<SECTION>__<KEY> override")
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if env_key_path(n) in SECRET_KEYS and not ref:
                        fail(f"{cname}: {n} is a secret: use secretKeyRef")
                    if ref:
                        if ref.get("name") != secret["metadata"]["name"]:
                            fail(f"{cname}: {n} refers to Secret {ref.get('name')}")
                        if ref.get("key") not in secret_keys:
                            fail(f"{cname}: {n} refers to key {ref.get('key')} missing from secret.example.yaml")
            if c["image"] == "tollgate-proxy":
                if ports.get("proxy") != port(proxy["listen"]) or ports.get("proxy-metrics") != port(proxy["metrics_listen"]):
                    fail(f"{cname}: container ports differ from proxy.listen / proxy.metrics_listen")
                for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
                    g = c.get(probe, {}).get("httpGet", {})
                    if g.get("path") != path or g.get("port") != "proxy-metrics":
                        fail(f"{cname}: {probe} must be GET {path} on proxy-metrics")
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                vol = mounts.get(proxy["spool_dir"])
                # Spooled usage must outlive the pod: a claim of its own, kept on scale-down.
                if kind != "StatefulSet" or vol not in claims:
                    fail(f"{cname}: proxy.spool_dir {proxy['spool_dir']} must be a volumeClaimTemplate of a StatefulSet")
                retention = o["spec"].get("persistentVolumeClaimRetentionPolicy", {})
                if retention.get("whenScaled") != "Retain" or retention.get("whenDeleted") != "Retain":
                    fail(f"{name}: the spool claims must be retained when scaled down or deleted")
                drain = int(proxy.get("drain_seconds", 10))
                sleep = int(c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["", "", "0"])[-1])
                grace = int(spec.get("terminationGracePeriodSeconds", 30))
                if not sleep:
                    fail(f"{cname}: needs a preStop sleep")
                if grace <= sleep + drain + 2:
                    fail(f"{cname}: terminationGracePeriodSeconds {grace} must exceed preStop {sleep} + drain {drain} + 2")
                upstream = port(proxy["upstream"])
                app_ports = [p["containerPort"] for x in spec["containers"] if x is not c for p in x.get("ports", [])]
                if not str(proxy["upstream"]).startswith("127.0.0.1:") or upstream not in app_ports:
                    fail(f"{cname}: proxy.upstream {proxy['upstream']} is not the ticket API container on loopback")
            if c["image"] == "tollgate-control-plane" and c["name"] != "migrate":
                if ports.get("http") != port(cp["listen"]) or ports.get("cp-metrics") != port(cp["metrics_listen"]):
                    fail(f"{cname}: container ports differ from control_plane.listen / metrics_listen")
                for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
                    g = c.get(probe, {}).get("httpGet", {})
                    if g.get("path") != path or g.get("port") != "http":
                        fail(f"{cname}: {probe} must be GET {path} on the API port")
        if name == "tollgate-control-plane":
            if o["spec"].get("replicas", 1) < 2:
                fail("control plane: replicas must be at least 2")
            inits = spec.get("initContainers", [])
            if not any(i.get("args", [])[-1:] == ["migrate"] for i in inits):
                fail("control plane: no initContainer running `migrate`")

    svc = objs[("Service", "ticket-api")]
    if [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] != [(80, "proxy")]:
        fail("Service ticket-api must route port 80 to the proxy's port")
    url = proxy["control_plane_url"]
    m = re.match(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)$", url)
    cps = objs[("Service", "tollgate-control-plane")]
    ns = yaml.safe_load((K8S / "kustomization.yaml").read_text()).get("namespace")
    if not m or m.group(1) != cps["metadata"]["name"] or m.group(2) != ns or int(m.group(3)) not in [p["port"] for p in cps["spec"]["ports"]]:
        fail(f"proxy.control_plane_url {url} is not the control plane Service")
    pdb = objs[("PodDisruptionBudget", "tollgate-control-plane")]
    if pdb["spec"].get("minAvailable") != 1:
        fail("control plane PDB: minAvailable must be 1")
    return done("kubernetes configuration")


def cmd_env_file(out: str) -> int:
    """The ConfigMap's TOML, and dummy secrets as env overrides, for the real binaries."""
    config, cm = config_toml(objects())
    Path(out).write_text(cm["data"]["tollgate.toml"].replace("/etc/tollgate/plans.toml", str(Path("config/plans.toml").resolve())))
    dummy = {
        "identity-hs256-secret": "check-only-hs256-secret-0123456789abcdef",
        "internal-service-token": "check-only-service-token",
        "redis-url": "redis://127.0.0.1:6379",
        "database-url": "postgres://check@127.0.0.1:5432/check",
        "stripe-secret-key": "sk_test_check",
        "stripe-webhook-secrets": '["whsec_check_new","whsec_check_old"]',
    }
    names = {}
    for (kind, _), o in objects().items():
        if kind in WORKLOADS:
            spec = o["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        names[env["name"]] = dummy[ref["key"]]
    for n, v in sorted(names.items()):
        print(f"{n}={v}")
    return 0


# ------------------------------------------------------------------ docker

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
}


def dockerignored(path: str, patterns: list[str]) -> bool:
    import fnmatch
    first = path.split("/", 1)[0]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(first, p) for p in patterns)


def cmd_docker() -> int:
    import dockerfile  # installed by check.sh; Docker's own (Go) parser

    ignore = [line.strip() for line in (DOCKER / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    cargo = tomllib.loads(Path(".cargo/config.toml").read_text())
    if str(cargo.get("env", {}).get("SQLX_OFFLINE")) != "true":
        fail(".cargo/config.toml must set SQLX_OFFLINE = \"true\" (the images build without a database)")
    expected = {
        "Dockerfile.proxy": ("tollgate-proxy", {8080, 9101}),
        "Dockerfile.control-plane": ("tollgate-control-plane", {8081, 9102}),
    }
    for fname, (package, ports) in expected.items():
        path = DOCKER / fname
        cmds = dockerfile.parse_file(str(path))
        where = str(path)
        for c in cmds:
            if c.cmd.upper() not in INSTRUCTIONS:
                fail(f"{where}:{c.start_line}: unknown instruction {c.cmd}")
        if not cmds or cmds[0].cmd.upper() not in ("FROM", "ARG"):
            fail(f"{where}: must start with FROM")
        stages = [c for c in cmds if c.cmd.upper() == "FROM"]
        names = [s.value[2].lower() for s in stages if len(s.value) == 3 and s.value[1].upper() == "AS"]
        if [s.value[0] for s in stages] != ["rust:1.95-bookworm", "debian:bookworm-slim"]:
            fail(f"{where}: stages must be rust:1.95-bookworm then debian:bookworm-slim")
        final = cmds[cmds.index(stages[-1]):]
        build = cmds[: cmds.index(stages[-1])]
        runs = " ".join(" ".join(c.value) for c in build if c.cmd.upper() == "RUN")
        if f"cargo build --release --locked -p {package}" not in runs:
            fail(f"{where}: must run `cargo build --release --locked -p {package}`")
        if "cmake" not in runs or "pkg-config" not in runs:
            fail(f"{where}: the builder must install cmake and pkg-config")
        cargo_toml = tomllib.loads(Path(package.removeprefix("tollgate-"), "Cargo.toml").read_text())
        if cargo_toml["package"]["name"] != package or package not in [b["name"] for b in cargo_toml.get("bin", [])]:
            fail(f"{where}: {package} is not a workspace package with a binary of that name")
        final_runs = " ".join(" ".join(c.value) for c in final if c.cmd.upper() == "RUN")
        installed = re.findall(r"apt-get install ([^&]*)", final_runs)
        pkgs = {w for chunk in installed for w in chunk.split() if not w.startswith("-")}
        if pkgs != {"ca-certificates"}:
            fail(f"{where}: the runtime must install only ca-certificates (found {sorted(pkgs)})")
        for c in cmds:
            if c.cmd.upper() in ("COPY", "ADD"):
                flags = dict(f.lstrip("-").split("=", 1) for f in c.flags if "=" in f)
                if "from" in flags:
                    if flags["from"].lower() not in names:
                        fail(f"{where}:{c.start_line}: COPY --from={flags['from']} is not a stage")
                    continue
                for src in c.value[:-1]:
                    if src != "." and not Path(src).exists():
                        fail(f"{where}:{c.start_line}: COPY source {src} does not exist")
                    if src != "." and dockerignored(src, ignore):
                        fail(f"{where}:{c.start_line}: COPY source {src} is excluded by .dockerignore")
        for needed in (".sqlx", ".cargo", "migrations", "Cargo.lock", "config"):
            if dockerignored(needed, ignore):
                fail(f"{DOCKER}/.dockerignore excludes {needed}, which the build needs")
        users = [c.value[0] for c in final if c.cmd.upper() == "USER"]
        if not users or users[-1].split(":")[0] != "10001":
            fail(f"{where}: the runtime must run as USER 10001")
        exposed = {int(p.split("/")[0]) for c in final if c.cmd.upper() == "EXPOSE" for p in c.value}
        if exposed != ports:
            fail(f"{where}: EXPOSE {sorted(exposed)}, expected {sorted(ports)}")
        entry = [c for c in final if c.cmd.upper() == "ENTRYPOINT"]
        if not entry or not entry[-1].json or entry[-1].value[0] != f"/usr/local/bin/{package}":
            fail(f"{where}: ENTRYPOINT must be [\"/usr/local/bin/{package}\"] (exec form)")
        copied = [c.value[-1] for c in final if c.cmd.upper() == "COPY"]
        if f"/usr/local/bin/{package}" not in copied or "/etc/tollgate/plans.toml" not in copied:
            fail(f"{where}: the runtime must copy the binary and config/plans.toml")
        print(f"  {where}: {len(cmds)} instructions, {len(stages)} stages")
    return done("Dockerfiles")


# ------------------------------------------------------------------ Kubernetes scraping


def cmd_scrape_k8s(out: str) -> int:
    static = yaml.safe_load((PROM / "prometheus.yml").read_text())
    k8s = yaml.safe_load((PROM / "prometheus-k8s.yml").read_text())
    jobs = [j["job_name"] for j in static["scrape_configs"]]
    if [j["job_name"] for j in k8s["scrape_configs"]] != jobs:
        fail("prometheus-k8s.yml must have the same jobs as prometheus.yml")
    if k8s.get("rule_files") != static.get("rule_files"):
        fail("prometheus-k8s.yml must load the same rule files as prometheus.yml")
    objs = objects()
    ns = yaml.safe_load((K8S / "kustomization.yaml").read_text()).get("namespace")
    port_names = {}
    for (kind, name), o in objs.items():
        if kind in WORKLOADS:
            for c in o["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports", []):
                    port_names[p["name"]] = (c["image"], p["containerPort"])
    wanted = {"tollgate-proxy": "tollgate-proxy", "tollgate-control-plane": "tollgate-control-plane"}
    for job in k8s["scrape_configs"]:
        sds = job.get("kubernetes_sd_configs", [])
        if not sds or any(sd.get("role") != "pod" or sd.get("namespaces", {}).get("names") != [ns] for sd in sds):
            fail(f"job {job['job_name']}: needs pod discovery in the namespace {ns}")
        keeps = [r for r in job.get("relabel_configs", [])
                 if r.get("action") == "keep" and r.get("source_labels") == ["__meta_kubernetes_pod_container_port_name"]]
        if len(keeps) != 1 or port_names.get(keeps[0].get("regex"), ("",))[0] != wanted.get(job["job_name"]):
            fail(f"job {job['job_name']}: must keep exactly the metrics port of the {wanted.get(job['job_name'])} container")
        job.pop("kubernetes_sd_configs", None)
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    k8s["rule_files"] = [str((PROM / f).resolve()) for f in k8s.get("rule_files", [])]
    Path(out).write_text(yaml.safe_dump(k8s, sort_keys=False))
    return done("Kubernetes scrape configuration")


# ------------------------------------------------------------------ live scrapes


def cmd_live(files: list[str]) -> int:
    warn_only = "--allow-missing" in files
    files = [f for f in files if f != "--allow-missing"]
    present: set[str] = set()
    for f in files:
        for line in Path(f).read_text().splitlines():
            if line and not line.startswith("#"):
                present.add(re.split(r"[{\s]", line, 1)[0])
    for name in allow_list():
        if not name.startswith("tollgate_"):
            continue  # synthetic (up)
        if not any(p == name or p in (name + s for s in HISTOGRAM_SUFFIXES) for p in present):
            if warn_only:
                print(f"  warning: {name} is in {ALLOW} but in no scrape")
            else:
                fail(f"{name} is in {ALLOW} but in no scrape")
    allowed = set(allow_list())
    for p in sorted(present):
        if p.startswith("tollgate_") and not name_allowed(p, allowed):
            print(f"  note: {p} is exported but not in {ALLOW}")
    return done(f"live metrics ({len(files)} scrape(s))")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    table = {
        "names": lambda: cmd_names(),
        "runbooks": lambda: cmd_runbooks(),
        "dashboard": lambda: cmd_dashboard(args[0]),
        "k8s-config": lambda: cmd_k8s_config(),
        "k8s-files": lambda: cmd_k8s_files(),
        "env-file": lambda: cmd_env_file(args[0]),
        "docker": lambda: cmd_docker(),
        "scrape-k8s": lambda: cmd_scrape_k8s(args[0]),
        "live": lambda: cmd_live(args),
    }
    if cmd not in table:
        print(__doc__)
        return 2
    return table[cmd]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
