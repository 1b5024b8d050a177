"""The offline checks of deploy/k8s/monitoring/ that promtool alone does not
make; scripts/monitoring-check.sh runs it after `promtool check rules` and
`promtool test rules`.

- alerts: every rule is an alert with a `for`, a severity, a summary, a
  description and a runbook_url naming a section of docs/operations.md that
  exists;
- alert tests: every alert has a test case where it fires and one where it
  stays silent, proven by mutation: with the alert's expression replaced by
  one that never fires, a firing case must fail, and with one that always
  fires, a silent case must fail;
- the dashboard: its structure (a Prometheus datasource variable, job and
  instance variables, unique panel ids, a gridPos inside the 24-column grid
  without overlaps, a datasource and targets on every panel, unique refIds),
  and every PromQL expression parses: they go, with Grafana's variables
  substituted, into a recording-rules file that `promtool check rules`
  reads;
- the metric names the alerts and the dashboard use (from the parsed
  expressions), which must equal the list in metrics-used.txt: the
  end-to-end test (tests/tests/prometheus.rs) checks each of them against
  running processes. `--write-metrics` rewrites that list.

Usage: monitoring_check.py --promtool PATH [--write-metrics]
(run from the repository's root).
"""

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import promql_parser
import yaml

MONITORING = Path("deploy/k8s/monitoring")
ALERTS = MONITORING / "alerts.yaml"
TESTS = MONITORING / "tests"
DASHBOARD = MONITORING / "dashboards" / "collab.json"
METRICS_USED = MONITORING / "metrics-used.txt"
RUNBOOK = Path("docs/operations.md")

SEVERITIES = {"critical", "warning", "info"}
GRID_COLUMNS = 24
# What Grafana puts in place of its variables, for parsing only.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": "collab-gateway",
    "$instance": "127.0.0.1:9090",
}
NEVER_FIRES = "vector(1) == 2"
ALWAYS_FIRES = "vector(1)"

METRICS_USED_HEADER = """\
# Every metric name the alerts (alerts.yaml) and the dashboard
# (dashboards/collab.json) use, one a line. scripts/monitoring-check.sh
# checks that this list is what they use (--write-metrics rewrites it);
# tests/tests/prometheus.rs checks that a running cluster, or `collab serve`
# for the embedded store's collab_store_* names, exports every one.
"""


class Failures:
    """Collects every problem, so one run reports all of them."""

    def __init__(self):
        self.messages = []
        self.reported = 0

    def add(self, where, what):
        self.messages.append(f"{where}: {what}")

    def report(self, ok):
        """Prints what a check proved, or that it failed."""
        new = len(self.messages) - self.reported
        self.reported = len(self.messages)
        print(ok if new == 0 else f"{ok.split(':')[0]}: {new} problem(s)")


# === alerts ===


def github_anchor(heading):
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors(failures):
    anchors = set()
    if not RUNBOOK.exists():
        failures.add(RUNBOOK, "missing")
        return anchors
    for line in RUNBOOK.read_text().splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            anchors.add(github_anchor(match.group(1)))
    return anchors


def load_alerts(failures):
    """The alert rules, in file order, as (group index, rule index, rule)."""
    rules = []
    doc = yaml.safe_load(ALERTS.read_text())
    for g, group in enumerate(doc.get("groups") or []):
        for r, rule in enumerate(group.get("rules") or []):
            if "alert" not in rule:
                failures.add(ALERTS, f"group {group.get('name')}: rule {r} is not an alert")
                continue
            rules.append((g, r, rule))
    if not rules:
        failures.add(ALERTS, "no alert rules")
    return doc, rules


def check_alerts(rules, failures):
    anchors = runbook_anchors(failures)
    names = set()
    for _, _, rule in rules:
        name = rule["alert"]
        where = f"{ALERTS} {name}"
        if name in names:
            failures.add(where, "the alert name is used twice")
        names.add(name)
        if not rule.get("for"):
            failures.add(where, "no `for`")
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            failures.add(where, f"severity {severity!r} is not one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                failures.add(where, f"no {key} annotation")
        url = annotations.get("runbook_url", "")
        page, _, anchor = url.partition("#")
        if page != str(RUNBOOK) or anchor not in anchors:
            failures.add(where, f"runbook_url {url!r} names no section of {RUNBOOK}")
    failures.report(f"alerts: {len(rules)} alerts, each with for, severity, summary, description, runbook section")


# === alert tests, by mutation ===


def test_cases():
    """(file, test index, test) of every unit test."""
    cases = []
    for path in sorted(TESTS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for i, test in enumerate(doc.get("tests") or []):
            cases.append((path, i, test))
    return cases


def expects(test, alert):
    """Whether `test` checks `alert`: None if not, else whether it expects
    it to fire at some evaluation."""
    checks = [c for c in test.get("alert_rule_test") or [] if c.get("alertname") == alert]
    if not checks:
        return None
    return any(c.get("exp_alerts") for c in checks)


def run_mutant(promtool, doc, where, expr, cases, workdir):
    """Runs `cases` against the rules with one alert's expression replaced;
    True when promtool reports a failure."""
    g, r = where
    mutant = copy.deepcopy(doc)
    mutant["groups"][g]["rules"][r]["expr"] = expr
    rules_path = workdir / "alerts.yaml"
    rules_path.write_text(yaml.safe_dump(mutant, sort_keys=False))
    tests_path = workdir / "tests.yaml"
    # One run per test file: each file sets its own evaluation interval.
    failed = False
    by_file = {}
    for path, _, test in cases:
        by_file.setdefault(path, []).append(test)
    for path, tests in by_file.items():
        original = yaml.safe_load(path.read_text())
        tests_path.write_text(
            yaml.safe_dump(
                {
                    "rule_files": [str(rules_path)],
                    "evaluation_interval": original.get("evaluation_interval", "1m"),
                    "tests": tests,
                },
                sort_keys=False,
            )
        )
        result = subprocess.run(
            [promtool, "test", "rules", str(tests_path)], capture_output=True, text=True
        )
        failed = failed or result.returncode != 0
    return failed


def check_alert_tests(promtool, doc, rules, failures):
    cases = test_cases()
    known = {rule["alert"] for _, _, rule in rules}
    for path, i, test in cases:
        for check in test.get("alert_rule_test") or []:
            if check.get("alertname") not in known:
                failures.add(f"{path} test {i} {test.get('name')!r}", f"checks no alert of {ALERTS}: {check.get('alertname')!r}")
    with tempfile.TemporaryDirectory(prefix="collab-alert-mutants-") as tmp:
        workdir = Path(tmp)
        for g, r, rule in rules:
            name = rule["alert"]
            firing = [c for c in cases if expects(c[2], name) is True]
            silent = [c for c in cases if expects(c[2], name) is False]
            where = f"{TESTS} {name}"
            if not firing:
                failures.add(where, "no test where it fires")
            elif not run_mutant(promtool, doc, (g, r), NEVER_FIRES, firing, workdir):
                failures.add(where, "its firing tests still pass when it never fires")
            if not silent:
                failures.add(where, "no test where it stays silent")
            elif not run_mutant(promtool, doc, (g, r), ALWAYS_FIRES, silent, workdir):
                failures.add(where, "its silent tests still pass when it always fires")
    failures.report(
        f"alert tests: every alert has a test where it fires and one where it stays "
        f"silent, each failing when the alert's expression is replaced "
        f"({len(cases)} test cases)"
    )


# === dashboard ===


def substitute(expr):
    # Longest names first: $__rate_interval before $__range and the like.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
        braced = "${" + name[1:] + "}"
        expr = expr.replace(braced, GRAFANA_VARIABLES[name])
    return expr


def is_prometheus_datasource(ds):
    return isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") == "${datasource}"


def check_dashboard(failures):
    """Checks the dashboard's structure; returns (where, expr) of every query."""
    dash = json.loads(DASHBOARD.read_text())
    where = str(DASHBOARD)
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        failures.add(where, "schemaVersion missing or older than Grafana 9")
    if not dash.get("uid") or not dash.get("title"):
        failures.add(where, "no uid or title")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        failures.add(where, "no `datasource` variable of type datasource for prometheus")
    for name in ("job", "instance"):
        var = variables.get(name)
        if not var or var.get("type") != "query" or not is_prometheus_datasource(var.get("datasource")):
            failures.add(where, f"no `{name}` query variable on ${{datasource}}")
    queries = []
    ids = set()
    cells = {}
    panels = dash.get("panels") or []
    if not panels:
        failures.add(where, "no panels")
    for panel in panels:
        title = panel.get("title")
        at = f"{where} panel {panel.get('id')} {title!r}"
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in ids:
            failures.add(at, "its id is missing or not unique")
        ids.add(pid)
        if not title:
            failures.add(at, "no title")
        pos = panel.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in ("x", "y", "w", "h")):
            failures.add(at, f"gridPos {pos} lacks x, y, w or h")
        elif pos["x"] < 0 or pos["w"] < 1 or pos["h"] < 1 or pos["x"] + pos["w"] > GRID_COLUMNS:
            failures.add(at, f"gridPos {pos} is outside the {GRID_COLUMNS}-column grid")
        else:
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    if (x, y) in cells:
                        failures.add(at, f"overlaps panel {cells[(x, y)]} at ({x}, {y})")
                        break
                    cells[(x, y)] = pid
                else:
                    continue
                break
        if panel.get("type") == "row":
            if panel.get("targets"):
                failures.add(at, "a row with queries")
            continue
        if not is_prometheus_datasource(panel.get("datasource")):
            failures.add(at, "its datasource is not the ${datasource} Prometheus variable")
        targets = panel.get("targets") or []
        if not targets:
            failures.add(at, "no targets")
        ref_ids = set()
        for target in targets:
            ref = target.get("refId")
            if not ref or ref in ref_ids:
                failures.add(at, f"refId {ref!r} missing or not unique")
            ref_ids.add(ref)
            if not is_prometheus_datasource(target.get("datasource")):
                failures.add(f"{at} {ref}", "its datasource is not the ${datasource} Prometheus variable")
            expr = target.get("expr")
            if not expr:
                failures.add(f"{at} {ref}", "no expr")
            else:
                queries.append((f"{at} {ref}", expr))
    for name in ("job", "instance"):
        query = variables.get(name, {}).get("definition", "")
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        if match:
            queries.append((f"{where} variable {name}", match.group(1)))
        else:
            failures.add(f"{where} variable {name}", f"not a label_values(...) query: {query!r}")
    failures.report(f"dashboard: {len(panels)} panels and {len(queries)} queries, well formed")
    return queries


def check_queries_parse(promtool, queries, failures):
    """Every query goes into one recording-rules file that promtool parses."""
    rules = [
        {"record": f"collab_dashboard_query_{i}", "expr": substitute(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    with tempfile.TemporaryDirectory(prefix="collab-dashboard-") as tmp:
        path = Path(tmp) / "dashboard-queries.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        result = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            failures.add(DASHBOARD, "promtool cannot parse its queries:\n" + result.stdout + result.stderr)
            for i, (where, _) in enumerate(queries):
                if f'"collab_dashboard_query_{i}"' in result.stdout + result.stderr:
                    failures.add(where, "this query does not parse")
    failures.report(f"dashboard: promtool parses all {len(queries)} queries")


# === metric names ===


def metric_names(expr, where, failures):
    try:
        tree = promql_parser.parse(substitute(expr))
    except ValueError as e:
        failures.add(where, f"does not parse: {e}")
        return set()
    names = set()

    def visit(node):
        if type(node).__name__ == "VectorSelector":
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
        return True

    promql_parser.walk(tree, visit)
    return names


def check_metric_names(rules, queries, write, failures):
    used = set()
    for _, _, rule in rules:
        used |= metric_names(rule["expr"], f"{ALERTS} {rule['alert']}", failures)
    for where, expr in queries:
        used |= metric_names(expr, where, failures)
    text = METRICS_USED_HEADER + "".join(f"{name}\n" for name in sorted(used))
    if write:
        METRICS_USED.write_text(text)
        print(f"metric names: wrote {len(used)} to {METRICS_USED}")
        return
    listed = {
        line.strip()
        for line in METRICS_USED.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    } if METRICS_USED.exists() else set()
    if listed != used:
        failures.add(
            METRICS_USED,
            f"differs from what the alerts and dashboard use: missing {sorted(used - listed)}, "
            f"not used {sorted(listed - used)}; rewrite it with scripts/monitoring-check.sh --write-metrics",
        )
    failures.report(f"metric names: the alerts and dashboard use {len(used)}, as listed in {METRICS_USED}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promtool", required=True)
    parser.add_argument("--write-metrics", action="store_true")
    args = parser.parse_args()
    failures = Failures()
    doc, rules = load_alerts(failures)
    check_alerts(rules, failures)
    check_alert_tests(args.promtool, doc, rules, failures)
    queries = check_dashboard(failures)
    check_queries_parse(args.promtool, queries, failures)
    check_metric_names(rules, queries, args.write_metrics, failures)
    if failures.messages:
        print(f"\n{len(failures.messages)} problem(s):", file=sys.stderr)
        for message in failures.messages:
            print(f"  {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
