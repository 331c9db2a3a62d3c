#!/usr/bin/python3
"""Offline checks of deploy/ and helm/ (no Docker, no Helm, no cluster).

  check_deploy.py static
      yamllint; values.schema.json against the defaults, every example and the
      invalid cases; promtool check/test rules and check config; every PromQL
      expression of the dashboard parsed by promtool; the dashboard's structure;
      the chart's copies of the dashboard and rules; the chart's templates
      (balanced blocks, .Values paths that exist, defined includes, labels);
      Dockerfiles, .dockerignore files and compose.yaml; the flags passed to the
      binaries exist in their usage text.
  check_deploy.py metrics BUILD_DIR
      starts a coordinator and a worker from BUILD_DIR, runs a small job on the
      demo model, scrapes both /metrics and checks that every metric the
      dashboard and the alert rules query is exported (EXPECTED_LATER aside);
      also the images' health check against them, and runtime-packages.sh on
      the built binaries.

Exit 0: passed; 1: a check failed; 77: a tool is missing (ctest SKIP_RETURN_CODE).
"""
import copy
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "shrinkray")
DASHBOARDS = sorted(glob.glob(os.path.join(ROOT, "deploy", "grafana", "*.json")))
RULES = os.path.join(ROOT, "deploy", "prometheus", "shrinkray-alerts.yaml")
RULES_TEST = os.path.join(ROOT, "deploy", "prometheus", "shrinkray-alerts.test.yaml")
PROMETHEUS_CONFIG = os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml")
SKIP = 77

# Metric names the dashboard queries before any binary exports them. Each is
# to be exported by a stage still being written; remove a name from here when
# its exporter lands (the metrics check then requires it).
EXPECTED_LATER = {
    "shrinkray_worker_gpu_memory_used_bytes",  # CUDA worker: device memory in use
}
# Non-shrinkray names the dashboard and rules may use (Prometheus' own).
PROMETHEUS_NAMES = {"up"}

# What the dashboard's variables stand for when its expressions are parsed.
VARIABLES = {
    "coordinator_job": "shrinkray-coordinator",
    "worker_job": "shrinkray-worker",
    "namespace": ".*",
    "worker": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def ok(msg):
    print(f"ok: {msg}")


def skip(msg):
    print(f"[  SKIPPED ] {msg}")
    sys.exit(SKIP)


def need_tools(*tools):
    for t in tools:
        if shutil.which(t) is None:
            skip(f"{t} not installed (scripts/install-deps.sh installs it)")
    try:
        import jsonschema  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as e:
        skip(f"python module missing: {e.name} (Debian python3-jsonschema / python3-yaml)")


def rel(path):
    return os.path.relpath(path, ROOT)


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


# ---------------------------------------------------------------- dashboards
def dashboard_targets(dash):
    """(panel, target) for every target of every panel, rows included."""
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(dash.get("panels", [])):
        for t in p.get("targets", []):
            yield p, t


def substitute(expr):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name not in VARIABLES:
            raise KeyError(name)
        return VARIABLES[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard_expressions(dash):
    """Every PromQL expression: targets, and the selectors of label_values() variables."""
    exprs = []
    for p, t in dashboard_targets(dash):
        if "expr" in t:
            exprs.append((f"panel {p.get('id')} '{p.get('title')}' target {t.get('refId')}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        if m:
            exprs.append((f"variable {v['name']}", m.group(1)))
        elif q.strip():
            exprs.append((f"variable {v['name']}", q))
    return exprs


def metric_names(expr):
    names = set(re.findall(r"\b(shrinkray_[a-zA-Z0-9_]+)\b", expr))
    names |= {n for n in PROMETHEUS_NAMES if re.search(rf"\b{n}\s*[{{\[]", expr)}
    return names


def check_dashboard_structure(path):
    name = rel(path)
    try:
        dash = json.load(open(path))
    except ValueError as e:
        fail(f"{name}: not JSON: {e}")
        return None
    problems = []
    if "__inputs" in dash or "__requires" in dash:
        problems.append("has __inputs/__requires (an export for sharing; sidecars cannot fill them)")
    if "${DS_" in json.dumps(dash):
        problems.append("refers to a ${DS_...} input")
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", str(dash.get("uid", ""))):
        problems.append(f"uid {dash.get('uid')!r} is not a fixed uid (1-40 of [a-zA-Z0-9_-])")
    if dash.get("id") not in (None,):
        problems.append("has a numeric id (Grafana assigns it; leave it out or null)")
    variables = dash.get("templating", {}).get("list", [])
    ds_vars = [v for v in variables if v.get("name") == "datasource"]
    if not ds_vars or ds_vars[0].get("type") != "datasource" or ds_vars[0].get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource, query prometheus")
    want = {"type": "prometheus", "uid": "${datasource}"}
    for v in variables:
        if v.get("type") == "query" and v.get("datasource") != want:
            problems.append(f"variable {v.get('name')}: datasource is not the variable")
    ids = set()
    count = 0
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            continue
        count += 1
        label = f"panel {p.get('id')} '{p.get('title')}'"
        if p.get("id") in ids:
            problems.append(f"{label}: duplicate id")
        ids.add(p.get("id"))
        if not p.get("gridPos"):
            problems.append(f"{label}: no gridPos")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            problems.append(f"{label}: no unit (fieldConfig.defaults.unit)")
        if p.get("datasource") != want:
            problems.append(f"{label}: panel datasource is not the variable")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{label}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{label}: duplicate refId")
        for t in targets:
            if t.get("datasource") != want:
                problems.append(f"{label} target {t.get('refId')}: datasource is not the variable")
            if not t.get("expr"):
                problems.append(f"{label} target {t.get('refId')}: no expr")
            if "job_id" in t.get("expr", ""):
                problems.append(f"{label}: queries a job_id label (job ids stay out of labels)")
    for p in problems:
        fail(f"{name}: {p}")
    if not problems:
        ok(f"{name}: uid {dash['uid']}, datasource variable, {count} panels with units, no __inputs")
    return dash


def check_dashboard_promql(dashes, tmp):
    rules = {"groups": []}
    count = 0
    for dash_path, dash in dashes:
        group = {"name": f"dashboard-{os.path.basename(dash_path)}", "rules": []}
        for where, expr in dashboard_expressions(dash):
            try:
                expr = substitute(expr)
            except KeyError as e:
                fail(f"{rel(dash_path)}: {where}: unknown variable ${e.args[0]}")
                continue
            count += 1
            group["rules"].append({"record": f"dashboard_check:expr_{count}", "expr": expr,
                                   "labels": {"where": where[:100]}})
        rules["groups"].append(group)
    import yaml
    path = os.path.join(tmp, "dashboard-expressions.rules.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(rules, f, sort_keys=False, width=1000)
    r = run(["promtool", "check", "rules", path])
    if r.returncode != 0:
        fail(f"promtool cannot parse the dashboard's expressions:\n{r.stdout}")
    else:
        ok(f"promtool parses all {count} dashboard expressions (variables substituted)")


# ---------------------------------------------------------------- values
def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def check_values_schema():
    import jsonschema
    import yaml
    schema_path = os.path.join(CHART, "values.schema.json")
    schema = json.load(open(schema_path))
    if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
        fail(f"{rel(schema_path)}: $schema is not draft-07")
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        fail(f"{rel(schema_path)}: not a valid draft-07 schema: {e.message}")
        return
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    files = [os.path.join(CHART, "values.yaml")] + sorted(
        glob.glob(os.path.join(ROOT, "helm", "examples", "values*.yaml")))
    for path in files:
        values = deep_merge(defaults, yaml.safe_load(open(path)) or {})
        errors = list(validator.iter_errors(values))
        for e in errors:
            fail(f"{rel(path)}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}")
        if not errors:
            ok(f"{rel(path)} (merged onto the defaults) validates against values.schema.json")
    if len(files) < 4:
        fail("expected the defaults and at least 3 examples (GPU, CPU-only, existing PVC)")
    cases = yaml.safe_load(open(os.path.join(ROOT, "tests", "deploy", "invalid-values.yaml")))
    for case in cases:
        values = deep_merge(defaults, case["values"])
        paths = ['.'.join(map(str, e.absolute_path)) for e in validator.iter_errors(values)]
        if not paths:
            fail(f"invalid values '{case['name']}' were accepted by the schema")
        elif case["path"] not in paths:
            fail(f"invalid values '{case['name']}' rejected at {paths}, not at {case['path']}")
        else:
            ok(f"invalid values '{case['name']}' rejected at {case['path']}")


# ---------------------------------------------------------------- chart templates
def check_chart_templates():
    import yaml
    tdir = os.path.join(CHART, "templates")
    files = sorted(glob.glob(os.path.join(tdir, "**", "*"), recursive=True))
    files = [f for f in files if os.path.isfile(f)]
    defaults = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))

    def has_path(path):
        node = defaults
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    # Template comments ({{/* ... */}}) may mention example paths: not scanned.
    texts = {f: re.sub(r"{{-?\s*/\*.*?\*/\s*-?}}", "", open(f).read(), flags=re.S) for f in files}
    defined = set()
    for text in texts.values():
        defined |= set(re.findall(r'{{-?\s*define\s+"([^"]+)"', text))
    problems = []
    for f, text in texts.items():
        name = rel(f)
        actions = re.findall(r"{{-?\s*(.*?)\s*-?}}", text, re.S)
        depth = 0
        for a in actions:
            if a.startswith("/*"):
                continue
            if re.match(r"(if|range|with|define|block)\b", a):
                depth += 1
            elif re.match(r"end\b", a):
                depth -= 1
                if depth < 0:
                    problems.append(f"{name}: an {{{{ end }}}} without its block")
                    depth = 0
        if depth != 0:
            problems.append(f"{name}: {depth} block(s) not closed")
        for inc in re.findall(r'(?:include|template)\s+"([^"]+)"', text):
            if inc not in defined:
                problems.append(f"{name}: includes undefined template {inc!r}")
        # .Values paths, directly or through a variable bound to one.
        aliases = {}
        for var, path in re.findall(r"(\$\w+)\s*:=\s*\$?\.Values\.([\w.]+)", text):
            aliases[var] = [path.split(".")]
        for var, path in re.findall(r"(\$\w+)\s*:=\s*index\s+\$?\.Values\.([\w.]+)\s+\$\w+", text):
            base = path.split(".")
            node = defaults
            for part in base:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            # index over a map of groups: the variable stands for each of them.
            aliases[var] = [base + [k] for k, v in node.items() if isinstance(v, dict)]
        refs = [p.split(".") for p in re.findall(r"\$?\.Values\.([\w.]+)", text)]
        for var, bases in aliases.items():
            for tail in re.findall(re.escape(var) + r"((?:\.\w+)+)", text):
                for b in bases:
                    refs.append(b + tail.strip(".").split("."))
        for ref in refs:
            if not has_path(ref):
                problems.append(f"{name}: .Values.{'.'.join(ref)} is not in values.yaml")
        base = os.path.basename(f)
        if not base.startswith("_") and base != "NOTES.txt":
            if not re.search(r"^apiVersion:", text, re.M) or not re.search(r"^kind:", text, re.M):
                problems.append(f"{name}: no apiVersion/kind")
            if "shrinkray.labels" not in text:
                problems.append(f"{name}: resources without the shrinkray.labels labels")
    helpers = texts.get(os.path.join(tdir, "_helpers.tpl"), "")
    for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                  "app.kubernetes.io/managed-by", "helm.sh/chart"):
        if label not in helpers:
            problems.append(f"_helpers.tpl: no {label} label")
    kinds = " ".join(texts.values())
    for needed in ("kind: Deployment", "kind: StatefulSet", "kind: ServiceMonitor", "kind: PodMonitor",
                   "kind: PrometheusRule", "kind: ConfigMap", "kind: Secret", "kind: PersistentVolumeClaim",
                   "clusterIP: None", "type: Recreate", "nvidia.com/gpu", "grafana_dashboard: \"1\"",
                   "helm.sh/hook: test", "grpc:", "medium: Memory"):
        if needed not in kinds:
            problems.append(f"templates: nothing has `{needed}`")
    # The chart's copies of the dashboards and rules are the deploy/ files.
    chart_dash = sorted(glob.glob(os.path.join(CHART, "dashboards", "*.json")))
    if [os.path.basename(p) for p in chart_dash] != [os.path.basename(p) for p in DASHBOARDS]:
        problems.append("helm/shrinkray/dashboards/ and deploy/grafana/ hold different dashboards")
    for p in chart_dash:
        src = os.path.join(ROOT, "deploy", "grafana", os.path.basename(p))
        if os.path.exists(src) and open(src).read() != open(p).read():
            problems.append(f"{rel(p)} differs from {rel(src)}: cp {rel(src)} {rel(p)}")
    chart_rules = os.path.join(CHART, "files", "shrinkray-alerts.yaml")
    if not os.path.exists(chart_rules) or open(chart_rules).read() != open(RULES).read():
        problems.append(f"{rel(chart_rules)} differs from {rel(RULES)}: cp {rel(RULES)} {rel(chart_rules)}")
    chart = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))
    if chart.get("apiVersion") != "v2" or chart.get("name") != "shrinkray" or not chart.get("version"):
        problems.append("Chart.yaml: apiVersion v2, name shrinkray and a version expected")
    for p in problems:
        fail(p)
    if not problems:
        ok(f"chart templates: {len(files)} files, blocks balanced, every .Values path in values.yaml, "
           "includes defined, standard labels, chart copies of dashboard and rules up to date")


# ---------------------------------------------------------------- images and compose
def usage_flags(source):
    text = open(os.path.join(ROOT, source)).read()
    usage = re.search(r'kUsage = R"\((.*?)\)"', text, re.S)
    return set(re.findall(r"--([a-z][a-z0-9-]*)", usage.group(1) if usage else ""))


def check_flags(where, args, allowed, binary):
    for a in args:
        m = re.match(r"--([a-z][a-z0-9-]*)", a)
        if m and m.group(1) not in allowed:
            fail(f"{where}: {binary} has no flag --{m.group(1)}")


def check_images_and_compose():
    import yaml
    coordinator_flags = usage_flags("server/coordinator_main.cc")
    worker_flags = usage_flags("worker/worker_main.cc")
    deps = open(os.path.join(ROOT, "scripts", "install-deps.sh")).read()
    known_packages = set(re.search(r"PACKAGES=\((.*?)\)", deps, re.S).group(1).split()) | {"ca-certificates"}
    problems = []
    for df in sorted(glob.glob(os.path.join(ROOT, "deploy", "docker", "*.Dockerfile"))):
        name = rel(df)
        text = open(df).read()
        joined = re.sub(r"\\\n", " ", text)
        stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", joined, re.M)
        if len(stages) < 2:
            problems.append(f"{name}: not multi-stage")
        final = joined[joined.rfind("\nFROM "):]
        user = re.findall(r"^USER\s+(\S+)", final, re.M)
        if not user or user[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{name}: the runtime stage does not switch to a non-root USER")
        if not re.search(r"^HEALTHCHECK\s+.*CMD", final, re.M):
            problems.append(f"{name}: no HEALTHCHECK in the runtime stage")
        entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", final, re.M)
        cmd = re.search(r"^CMD\s+(\[.*\])", final, re.M)
        if not entry or not cmd:
            problems.append(f"{name}: no ENTRYPOINT/CMD in exec form")
        else:
            binary = json.loads(entry.group(1))[0]
            allowed = coordinator_flags if "coordinator" in binary else worker_flags
            check_flags(name, json.loads(cmd.group(1)), allowed, binary)
        first = joined[:joined.find("\nFROM ", 10)]
        for pkgs in re.findall(r"apt-get install -y --no-install-recommends([^&]*)", first):
            for p in pkgs.split():
                if p not in known_packages:
                    problems.append(f"{name}: build package {p} is not in scripts/install-deps.sh")
        ignore = open(df + ".dockerignore").read().split("\n") if os.path.exists(df + ".dockerignore") else None
        if ignore is None:
            problems.append(f"{name}: no {os.path.basename(df)}.dockerignore beside it")
        allowed_paths = [line[1:].rstrip("/") for line in (ignore or []) if line.startswith("!")]
        for src in re.findall(r"^COPY\s+(?!--from)(\S+)", joined, re.M):
            if not os.path.exists(os.path.join(ROOT, src)):
                problems.append(f"{name}: COPY {src}: no such path in the repository")
            if ignore is not None and src.rstrip("/") not in allowed_paths:
                problems.append(f"{name}: COPY {src} is excluded by its .dockerignore")
        if "cuda" in os.path.basename(df):
            if not re.search(r"^ARG CUDA_ARCHITECTURES=", text, re.M) or \
                    '-DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}"' not in text:
                problems.append(f"{name}: no CUDA_ARCHITECTURES build arg passed to CMake")
            if not re.search(r"^FROM nvidia/cuda:\S*-runtime-", joined, re.M):
                problems.append(f"{name}: the runtime stage is not an NVIDIA CUDA runtime image")
    compose_path = os.path.join(ROOT, "deploy", "compose.yaml")
    compose = yaml.safe_load(open(compose_path))
    services = compose.get("services", {})
    for s in ("coordinator", "worker-1", "worker-2", "prometheus", "grafana"):
        if s not in services:
            problems.append(f"compose.yaml: no service {s}")
    for s, spec in services.items():
        build = spec.get("build")
        if build:
            ctx = os.path.normpath(os.path.join(ROOT, "deploy", build["context"]))
            if not os.path.exists(os.path.join(ctx, build["dockerfile"])):
                problems.append(f"compose.yaml: {s}: Dockerfile {build['dockerfile']} not found")
        for vol in spec.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./") and not os.path.exists(os.path.join(ROOT, "deploy", src)):
                problems.append(f"compose.yaml: {s}: volume source {src} not found")
        if s == "coordinator":
            check_flags(f"compose.yaml {s}", spec.get("command", []), coordinator_flags, "shrinkray-coordinator")
        if s.startswith("worker"):
            check_flags(f"compose.yaml {s}", spec.get("command", []), worker_flags, "shrinkray-worker")
    prom = yaml.safe_load(open(PROMETHEUS_CONFIG))
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for job in ("shrinkray-coordinator", "shrinkray-worker"):
        if job not in jobs:
            problems.append(f"prometheus.yml: no scrape job {job} (the rules and dashboard expect it)")
            continue
        for t in jobs[job]["static_configs"][0]["targets"]:
            host = t.split(":")[0]
            if host not in services:
                problems.append(f"prometheus.yml: target {t} is not a compose service")
    # The chart's flags.
    for tpl, allowed, binary in (("coordinator-deployment.yaml", coordinator_flags, "shrinkray-coordinator"),
                                 ("worker-statefulset.yaml", worker_flags, "shrinkray-worker")):
        text = open(os.path.join(CHART, "templates", tpl)).read()
        args = re.findall(r"^\s*- (--[a-z][a-z0-9-]*)=", text, re.M)
        check_flags(f"helm template {tpl}", args, allowed, binary)
    for p in problems:
        fail(p)
    if not problems:
        ok("Dockerfiles (multi-stage, non-root, health checks, CUDA archs, COPY sources, .dockerignore), "
           "compose.yaml, prometheus.yml and the chart's flags")
    hc = os.path.join(ROOT, "deploy", "docker", "shrinkray-healthcheck")
    try:
        compile(open(hc).read(), hc, "exec")  # no .pyc left behind
    except SyntaxError as e:
        fail(f"shrinkray-healthcheck does not compile: {e}")
    r = run(["bash", "-n", os.path.join(ROOT, "deploy", "docker", "runtime-packages.sh")])
    if r.returncode != 0:
        fail(f"runtime-packages.sh: {r.stdout}")


def static():
    need_tools("promtool", "yamllint")
    yaml_files = ([os.path.join(CHART, "values.yaml"), os.path.join(CHART, "Chart.yaml")]
                  + sorted(glob.glob(os.path.join(ROOT, "helm", "examples", "*.yaml")))
                  + [os.path.join(ROOT, "deploy", "compose.yaml")]
                  + sorted(glob.glob(os.path.join(ROOT, "deploy", "prometheus", "*.y*ml")))
                  + sorted(glob.glob(os.path.join(ROOT, "deploy", "grafana", "provisioning", "*", "*.yaml")))
                  + [os.path.join(CHART, "files", "shrinkray-alerts.yaml")]
                  + sorted(glob.glob(os.path.join(ROOT, "tests", "deploy", "*.yaml"))))
    r = run(["yamllint", "-c", os.path.join(ROOT, "tests", "deploy", "yamllint.yaml"), "-f", "parsable"] + yaml_files)
    if r.returncode != 0:
        fail(f"yamllint:\n{r.stdout}")
    else:
        ok(f"yamllint: {len(yaml_files)} files")
    check_values_schema()
    for cmd in (["promtool", "check", "rules", RULES],
                ["promtool", "test", "rules", RULES_TEST],
                ["promtool", "check", "config", PROMETHEUS_CONFIG]):
        r = run(cmd, cwd=os.path.dirname(RULES))
        if r.returncode != 0:
            fail(f"{' '.join(cmd[:3])} {rel(cmd[3])}:\n{r.stdout}")
        else:
            ok(f"{' '.join(cmd[:3])} {rel(cmd[3])}")
    dashes = []
    for path in DASHBOARDS:
        d = check_dashboard_structure(path)
        if d:
            dashes.append((path, d))
    if not DASHBOARDS:
        fail("no dashboard in deploy/grafana")
    with tempfile.TemporaryDirectory() as tmp:
        check_dashboard_promql(dashes, tmp)
    check_chart_templates()
    check_images_and_compose()


# ---------------------------------------------------------------- live metrics
def queried_names():
    """Metric names the dashboards and the rules query: {name: [where, ...]}."""
    import yaml
    names = {}
    for path in DASHBOARDS:
        for where, expr in dashboard_expressions(json.load(open(path))):
            for n in metric_names(expr):
                names.setdefault(n, []).append(f"{rel(path)} {where}")
    for group in yaml.safe_load(open(RULES))["groups"]:
        for rule in group["rules"]:
            for n in metric_names(rule["expr"]):
                names.setdefault(n, []).append(f"{rel(RULES)} {rule.get('alert') or rule.get('record')}")
    return names


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text = r.read().decode()
    series = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return text, series


def wait_for(pattern, path, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if os.path.exists(path):
            m = re.search(pattern, open(path).read())
            if m:
                return m
        time.sleep(0.1)
    raise RuntimeError(f"'{pattern}' never appeared in {path}:\n" + (open(path).read() if os.path.exists(path) else ""))


def metrics(build):
    need_tools()
    coordinator = os.path.join(build, "server", "shrinkray-coordinator")
    worker = os.path.join(build, "worker", "shrinkray-worker")
    cli = os.path.join(build, "client", "shrinkray")
    for b in (coordinator, worker, cli):
        if not os.access(b, os.X_OK):
            fail(f"{b} is not built")
            return
    work = tempfile.mkdtemp(prefix="shrinkray-deploy-metrics.")
    procs = []
    try:
        r = run([cli, "demo", "--workdir", work, "--prepare-only", "--layers", "2", "--hidden", "64",
                 "--intermediate", "128", "--text-bytes", "20000"])
        if r.returncode != 0:
            fail(f"shrinkray demo --prepare-only:\n{r.stdout}")
            return
        clog, wlog = os.path.join(work, "coordinator.log"), os.path.join(work, "worker.log")
        procs.append(subprocess.Popen(
            [coordinator, "--listen=127.0.0.1:0", f"--port-file={work}/port", "--metrics-listen=127.0.0.1:0",
             f"--data-dir={work}/store", f"--allowed-root={work}"], stdout=open(clog, "w"), stderr=subprocess.STDOUT))
        cm = wait_for(r"metrics ([0-9.:]+),", clog).group(1)
        port = wait_for(r"(\d+)\n", os.path.join(work, "port")).group(1)
        server = f"127.0.0.1:{port}"
        procs.append(subprocess.Popen(
            [worker, f"--coordinator={server}", "--metrics-listen=127.0.0.1:0", "--name=deploy-check-worker"],
            stdout=open(wlog, "w"), stderr=subprocess.STDOUT))
        wm = wait_for(r"metrics ([0-9.:]+)", wlog).group(1)
        wait_for(r"registered", wlog)
        with open(os.path.join(work, "recipe.yaml"), "w") as f:
            # A short distill stage first: its training gauges appear with the first step.
            f.write("- distill: {student: {keep_layers: [0]}, steps: 2, batch: 2, seqlen: 32}\n"
                    "- gptq: {bits: 4, group_size: 32}\n")
        r = run([cli, "submit", "--server", server, "--model", f"{work}/demo-model-f32", "--recipe",
                 f"{work}/recipe.yaml", "--calib", f"{work}/demo-text.txt", "--num-samples", "8", "--seqlen", "64",
                 "--out", f"{work}/out", "--wait"], timeout=300)
        if r.returncode != 0:
            fail(f"the small job did not succeed:\n{r.stdout}")
            return
        ok("a small distill + GPTQ job ran on a coordinator + 1 worker")
        ctext, cseries = scrape(cm)
        wtext, wseries = scrape(wm)
        exported = cseries | wseries
        for n, where in sorted(queried_names().items()):
            if n in PROMETHEUS_NAMES:
                continue
            if n in EXPECTED_LATER:
                if n in exported:
                    print(f"note: {n} is exported now: remove it from EXPECTED_LATER in {rel(__file__)}")
                else:
                    print(f"ok: {n}: expected later (EXPECTED_LATER), not exported yet")
                continue
            if n in exported:
                ok(f"{n} is exported ({'coordinator' if n in cseries else 'worker'})")
            else:
                fail(f"{n} is queried ({where[0]}) but exported by neither the coordinator nor the worker")
        for text, who in ((ctext, "coordinator"), (wtext, "worker")):
            if "job_id" in text:
                fail(f"the {who} exports a job_id label")
        # The images' health check against the real binaries.
        hc = os.path.join(ROOT, "deploy", "docker", "shrinkray-healthcheck")
        for args in (["grpc", server], ["http", wm], ["http", cm]):
            r = run(["/usr/bin/python3", hc] + args)
            if r.returncode != 0:
                fail(f"shrinkray-healthcheck {' '.join(args)}:\n{r.stdout}")
            else:
                ok(f"shrinkray-healthcheck {args[0]} {args[1]}: healthy")
        r = run(["/usr/bin/python3", hc, "grpc", f"127.0.0.1:{free_port()}", "--timeout=2"])
        if r.returncode == 0:
            fail("shrinkray-healthcheck grpc passes on a port nobody listens on")
        # The runtime images' package list from the built binaries.
        rp = os.path.join(ROOT, "deploy", "docker", "runtime-packages.sh")
        if shutil.which("dpkg"):
            r = subprocess.run([rp, coordinator, worker, cli], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            pkgs = r.stdout.split()
            if r.returncode != 0 or not any(p.startswith("libgrpc++") for p in pkgs):
                fail(f"runtime-packages.sh: rc {r.returncode}, {pkgs}\n{r.stderr}")
            else:
                ok(f"runtime-packages.sh: {len(pkgs)} packages for the built binaries ({' '.join(pkgs)})")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if failures:
            for log in ("coordinator.log", "worker.log"):
                path = os.path.join(work, log)
                if os.path.exists(path):
                    print(f"--- {log}\n" + open(path).read()[-3000:])
        shutil.rmtree(work, ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "static":
        static()
    elif len(sys.argv) == 3 and sys.argv[1] == "metrics":
        metrics(os.path.abspath(sys.argv[2]))
    else:
        print(__doc__)
        return 2
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("deploy checks: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
