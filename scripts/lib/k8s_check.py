"""The Python half of scripts/k8s-check.sh: schema preparation and the
checks of the rendered chart that no generic tool knows to make.

    k8s_check.py kube-schemas WHEEL OUT VERSION...   Kubernetes JSON schemas from the
                                                     kubernetes-validate wheel, for kubeconform
    k8s_check.py crd-schemas OUT CRD_FILE...         JSON schemas from CRDs' openAPIV3Schema
    k8s_check.py values-schema SCHEMA TOML           values.schema.json's `config` = config/collab.toml
    k8s_check.py rendered FILE                       what the chart must never lose
    k8s_check.py server-config BIN FILE              the rendered settings load in the server
    k8s_check.py dockerfile DOCKERFILE WORKSPACE_TOML CHART_VALUES
                                                     the Dockerfile agrees with the workspace and chart

Each command prints what it checked and exits 1 with one line per problem.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml


def fail(problems, what):
    if problems:
        for problem in problems:
            print(f"  FAIL {problem}", file=sys.stderr)
        sys.exit(f"k8s-check: {what}: {len(problems)} problem(s)")


# --- schemas -------------------------------------------------------------

def kube_schemas(wheel, out, versions):
    """Writes OUT/vVERSION/*.json: the wheel's strict schemas with their
    `$ref`s made relative (they name /api/_definitions.json, and an `$id`
    on a URL that kubeconform would try to load over the network)."""
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        for version in versions:
            prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
            members = [n for n in names if n.startswith(prefix) and n.endswith(".json")]
            if not members:
                sys.exit(f"k8s-check: {wheel} has no schemas for Kubernetes {version}")
            target = Path(out) / f"v{version}"
            target.mkdir(parents=True, exist_ok=True)
            for name in members:
                text = whl.read(name).decode()
                text = text.replace('"/api/_definitions.json#', '"_definitions.json#')
                schema = json.loads(text)
                schema.pop("$id", None)
                (target / Path(name).name).write_text(json.dumps(schema))
            print(f"  Kubernetes {version}: {len(members)} schemas")


def crd_to_jsonschema(node):
    """An openAPIV3Schema as a JSON schema kubeconform's -strict can use:
    closed objects unless the CRD keeps unknown fields, `nullable` as a
    null type, and the Kubernetes extensions dropped."""
    if isinstance(node, list):
        return [crd_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: crd_to_jsonschema(sub) for name, sub in value.items()}
        else:
            out[key] = crd_to_jsonschema(value)
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
    open_object = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-embedded-resource")
    if "properties" in out and "additionalProperties" not in out and not open_object:
        out["additionalProperties"] = False
    return out


def crd_schemas(out, files):
    """Writes OUT/GROUP/KIND_VERSION.json for every served version of every
    CRD in FILES (kubeconform's {{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}})."""
    count = 0
    for file in files:
        for doc in yaml.safe_load_all(Path(file).read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            group, kind = spec["group"], spec["names"]["kind"].lower()
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = crd_to_jsonschema(version["schema"]["openAPIV3Schema"])
                target = Path(out) / group / f"{kind}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema))
                print(f"  {group}/{version['name']} {spec['names']['kind']}")
                count += 1
    if not count:
        sys.exit(f"k8s-check: no CustomResourceDefinition in {' '.join(files)}")


# --- values.schema.json against config/collab.toml -------------------------

# Settings the chart sets itself (from dedicated values), or that mean
# nothing in a cluster: not part of `config` in values.yaml.
CHART_SET = {
    "listen", "metrics_listen", "data_dir", "store", "jwt_secret", "redis",
    "cluster.nats_url", "cluster.node_id",
    # `collab gateway` names its connections after its node id.
    "gateway.gateway_id",
    # A list with secrets, only in a config file: the `webhooks` values
    # mount one from a Secret.
    "webhooks",
}


def toml_keys(table, prefix=""):
    keys = set()
    for key, value in table.items():
        if isinstance(value, dict):
            keys |= toml_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def schema_keys(schema, prefix=""):
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            keys |= schema_keys(sub, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def values_schema(schema_file, toml_file):
    schema = json.loads(Path(schema_file).read_text())
    config = schema["properties"]["config"]
    settings = toml_keys(tomllib.loads(Path(toml_file).read_text()))
    expected = settings - CHART_SET
    declared = schema_keys(config)
    problems = [f"config.{k} is in config/collab.toml but not in values.schema.json"
                for k in sorted(expected - declared)]
    problems += [f"config.{k} is in values.schema.json but is no setting of config/collab.toml"
                 for k in sorted(declared - expected)]
    fail(problems, "values.schema.json against config/collab.toml")
    print(f"  values.schema.json's config: the {len(declared)} settings of config/collab.toml "
          f"the chart does not set itself")


# --- the rendered chart ----------------------------------------------------

def load(file):
    return [d for d in yaml.safe_load_all(Path(file).read_text()) if d]


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def role(obj):
    return obj["metadata"]["labels"].get("app.kubernetes.io/component", "?")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_pod(obj, problems):
    name = f"{obj['kind']} {obj['metadata']['name']}"
    pod = obj["spec"]["template"]["spec"]
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken is not false")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{name}: {key} is on")
    for volume in pod.get("volumes", []):
        # Scratch space, or read-only settings (the gateways' JWKS, the room
        # nodes' webhooks file): no host paths, no claims.
        if set(volume) - {"name", "emptyDir", "configMap", "secret"}:
            problems.append(f"{name}: volume {volume['name']} is neither an emptyDir, a ConfigMap nor a Secret")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    for container in pod.get("initContainers", []) + pod["containers"]:
        cname = f"{name} container {container['name']}"
        sc = container.get("securityContext", {})
        expect = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                  "readOnlyRootFilesystem": True}
        for key, value in expect.items():
            if sc.get(key) is not value:
                problems.append(f"{cname}: securityContext.{key} is not {value}")
        if sc.get("privileged"):
            problems.append(f"{cname}: privileged")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            problems.append(f"{cname}: runs as root or as the image's user id")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or caps.get("add"):
            problems.append(f"{cname}: capabilities are not `drop: [ALL]` with nothing added")
        if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") != "RuntimeDefault":
            problems.append(f"{cname}: seccompProfile is not RuntimeDefault")
        if not container.get("resources", {}).get("requests"):
            problems.append(f"{cname}: no resource requests")


def grace_and_drain(obj, problems):
    name = f"{obj['kind']} {obj['metadata']['name']}"
    pod = obj["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    drain = int(env.get("COLLAB_DRAIN_GRACE_SECS", {}).get("value", 10))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= drain:
        problems.append(f"{name}: terminationGracePeriodSeconds {grace} does not exceed "
                        f"the drain grace {drain}")
    return drain, grace


def rendered(file):
    objects = load(file)
    problems = []
    kinds = sorted({o["kind"] for o in objects})
    by_role = {role(o): o for o in workloads(objects)}
    if set(by_role) != {"gateway", "room-node"}:
        problems.append(f"expected a gateway and a room-node workload, got {sorted(by_role)}")
        fail(problems, file)
    gateway, room_node = by_role["gateway"], by_role["room-node"]
    for obj in workloads(objects):
        check_pod(obj, problems)
    for obj in objects:
        if obj["kind"] == "ServiceAccount" and obj.get("automountServiceAccountToken") is not False:
            problems.append(f"ServiceAccount {obj['metadata']['name']} mounts its token")

    # Room nodes: a StatefulSet named by pod, rolled one at a time, given
    # time to hand rooms off, unready from SIGTERM on.
    if room_node["kind"] != "StatefulSet":
        problems.append("room nodes are not a StatefulSet")
    rn_spec = room_node["spec"]
    rn_pod = rn_spec["template"]["spec"]
    rn_container = rn_pod["containers"][0]
    rn_env = env_of(rn_container)
    node_id = rn_env.get("COLLAB_CLUSTER__NODE_ID", {})
    if node_id.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problems.append("room nodes: COLLAB_CLUSTER__NODE_ID is not the pod name")
    strategy = rn_spec.get("updateStrategy", {})
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or \
            strategy.get("rollingUpdate", {}).get("maxUnavailable", 1) != 1:
        problems.append("room nodes: the update does not roll one pod at a time")
    if rn_container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("room nodes: readiness is not /readyz")
    if "COLLAB_JWT_SECRET" in rn_env:
        problems.append("room nodes are given the JWT secret, which they do not need")
    drain, grace = grace_and_drain(room_node, problems)
    grace_and_drain(gateway, problems)

    # Gateways: metrics on their own port, never on the public one.
    gw_pod = gateway["spec"]["template"]["spec"]
    gw_container = gw_pod["containers"][0]
    gw_env = env_of(gw_container)
    listen = gw_env.get("COLLAB_LISTEN", {}).get("value", "")
    metrics_listen = gw_env.get("COLLAB_METRICS_LISTEN", {}).get("value", "")
    if not metrics_listen or metrics_listen.rsplit(":", 1)[-1] == listen.rsplit(":", 1)[-1]:
        problems.append(f"gateways: metrics_listen {metrics_listen!r} is not a port of "
                        f"its own beside listen {listen!r}")
    if gw_container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("gateways: readiness is not /readyz")
    if "COLLAB_JWT_SECRET" in gw_env and "valueFrom" not in gw_env["COLLAB_JWT_SECRET"]:
        problems.append("gateways: COLLAB_JWT_SECRET does not come from a Secret")
    if "COLLAB_JWT_SECRET" not in gw_env and "COLLAB_AUTH__JWKS" not in gw_env:
        problems.append("gateways: neither a JWT secret nor a JWKS to check tokens with")

    # The metrics port is on headless ClusterIP Services only.
    metrics_ports = set()
    for obj in workloads(objects):
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for port in container.get("ports", []):
                if port.get("name") == "metrics":
                    metrics_ports.add(port["containerPort"])
    for svc in (o for o in objects if o["kind"] == "Service"):
        spec = svc["spec"]
        for port in spec.get("ports", []):
            target = port.get("targetPort", port["port"])
            if target == "metrics" or target in metrics_ports:
                if spec.get("type", "ClusterIP") != "ClusterIP" or spec.get("clusterIP") != "None":
                    problems.append(f"Service {svc['metadata']['name']} exposes the metrics port "
                                    f"beyond a headless ClusterIP Service")
    for obj in objects:
        if obj["kind"] == "Ingress":
            for rule in obj["spec"].get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    port = path["backend"]["service"]["port"]
                    if port.get("name") == "metrics" or port.get("number") in metrics_ports:
                        problems.append(f"Ingress {obj['metadata']['name']} routes to the metrics port")

    # Every role: a PDB, and a NetworkPolicy that closes both directions,
    # opens the metrics port to named peers only and egress to named peers only.
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        name = f"{workload['kind']} {workload['metadata']['name']}"
        budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"
                   and selects(o["spec"]["selector"], labels)]
        if not budgets:
            problems.append(f"{name}: no PodDisruptionBudget")
        for budget in budgets:
            if ("minAvailable" in budget["spec"]) == ("maxUnavailable" in budget["spec"]):
                problems.append(f"PodDisruptionBudget {budget['metadata']['name']}: needs one of "
                                f"minAvailable and maxUnavailable (the API server refuses both)")
        policies = [o for o in objects if o["kind"] == "NetworkPolicy"
                    and selects(o["spec"]["podSelector"], labels)]
        if not policies:
            problems.append(f"{name}: no NetworkPolicy")
        for policy in policies:
            pname = f"NetworkPolicy {policy['metadata']['name']}"
            if set(policy["spec"].get("policyTypes", [])) != {"Ingress", "Egress"}:
                problems.append(f"{pname}: does not restrict both ingress and egress")
            for rule in policy["spec"].get("ingress") or []:
                ports = {p.get("port") for p in rule.get("ports", [])}
                if not ports:
                    problems.append(f"{pname}: an ingress rule opens every port")
                if ports & ({"metrics"} | metrics_ports) and not rule.get("from"):
                    problems.append(f"{pname}: the metrics port is open to anyone")
            for rule in policy["spec"].get("egress") or []:
                if not rule.get("to") or not rule.get("ports"):
                    problems.append(f"{pname}: an egress rule opens every peer or port")

    # Monitoring objects, when rendered: the job names the rules expect.
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            jobs = {r.get("replacement") for e in obj["spec"]["endpoints"]
                    for r in e.get("relabelings", []) if r.get("targetLabel") == "job"}
            if jobs not in ({"collab-gateway"}, {"collab-room-node"}):
                problems.append(f"ServiceMonitor {obj['metadata']['name']}: job is {jobs}, "
                                f"not collab-gateway or collab-room-node")
        if obj["kind"] == "PrometheusRule" and not obj["spec"].get("groups"):
            problems.append(f"PrometheusRule {obj['metadata']['name']} has no groups")

    fail(problems, f"the rendered chart ({file})")
    print(f"  {Path(file).stem}: {len(objects)} objects ({', '.join(kinds)}): secure pods, no token, "
          f"metrics port internal, room nodes' grace {grace} s > drain {drain} s, "
          f"PDBs and NetworkPolicies for both roles")


def server_config(binary, file):
    """Loads each role's rendered settings in the real server: `collab token`
    reads the whole configuration (and refuses a bad one with exit 64)
    before it mints a token."""
    problems = []
    for obj in workloads(load(file)):
        pod_name = f"{obj['metadata']['name']}-0"
        for container in obj["spec"]["template"]["spec"]["containers"]:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            for name, entry in env_of(container).items():
                if "value" in entry:
                    env[name] = entry["value"]
                elif entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                    env[name] = pod_name
                elif "secretKeyRef" in entry.get("valueFrom", {}):
                    env[name] = "a secret for the chart's check, long enough to sign"
            # The room node holds no secret; it is only needed here to mint.
            env.setdefault("COLLAB_JWT_SECRET", "a secret for the chart's check, long enough to sign")
            if "COLLAB_CONFIG" in env:
                # The mounted file (webhooks) comes from a Secret: an example.
                example = Path(os.environ.get("TMPDIR", "/tmp")) / "k8s-check-webhooks.toml"
                example.write_text('[[webhooks]]\nid = "backend"\n'
                                   'url = "https://api.example.com/collab/webhooks"\n'
                                   'secret = "an example secret of enough length"\n'
                                   'events = ["op.committed"]\n')
                env["COLLAB_CONFIG"] = str(example)
            run = subprocess.run([binary, "token", "--user", "chart-check"], env=env,
                                 capture_output=True, text=True, timeout=30)
            if run.returncode != 0 or run.stdout.count(".") != 2:
                problems.append(f"{obj['kind']} {obj['metadata']['name']}: the server refuses "
                                f"its settings (exit {run.returncode}): {run.stderr.strip()}")
            else:
                settings = sorted(n for n in env if n.startswith("COLLAB_"))
                print(f"  {Path(file).stem}: {obj['kind']} {obj['metadata']['name']}: "
                      f"its {len(settings)} COLLAB_* settings load in the server")
    fail(problems, f"the server's configuration loader ({file})")


# --- the Dockerfile --------------------------------------------------------

BUILD = "cargo build --release --locked -p collab --bin collab"


def dockerfile(docker_file, workspace_toml, chart_values):
    text = Path(docker_file).read_text()
    problems = []
    if BUILD not in text:
        problems.append(f"the build step is not `{BUILD}`")
    if "target/release/collab" not in text:
        problems.append("the binary is not taken from target/release/collab")
    rust = re.search(r"^ARG RUST_VERSION=(\d+)\.(\d+)", text, re.M)
    workspace = tomllib.loads(Path(workspace_toml).read_text())
    msrv = workspace["workspace"]["package"]["rust-version"]
    if not rust:
        problems.append("no ARG RUST_VERSION=MAJOR.MINOR")
    elif tuple(map(int, rust.groups())) < tuple(map(int, msrv.split(".")[:2])):
        problems.append(f"RUST_VERSION {rust.group(1)}.{rust.group(2)} is below the "
                        f"workspace's rust-version {msrv}")
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if len(stages) < 2:
        problems.append("not a multi-stage build")
    user = re.findall(r"^USER\s+(\d+)(?::(\d+))?", text, re.M)
    values = yaml.safe_load(Path(chart_values).read_text())["securityContext"]
    if not user or user[-1][0] == "0":
        problems.append("the runtime stage does not run as a non-root user id")
    elif (int(user[-1][0]), int(user[-1][1] or user[-1][0])) != \
            (values["runAsUser"], values["runAsGroup"]):
        problems.append(f"USER {user[-1]} differs from the chart's securityContext {values}")
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    if not entry or not entry.group(1).endswith("/collab"):
        problems.append("the entrypoint is not the collab binary (the chart passes only "
                        "`gateway` or `room-node` as arguments)")
    fail(problems, docker_file)
    print(f"  {Path(docker_file).name}: `{BUILD}` with Rust {rust.group(1)}.{rust.group(2)} "
          f"(workspace needs {msrv}), {len(stages)} stages, runs as {user[-1][0]}, "
          f"entrypoint {entry.group(1)}")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    command, args = argv[1], argv[2:]
    if command == "kube-schemas":
        kube_schemas(args[0], args[1], args[2:])
    elif command == "crd-schemas":
        crd_schemas(args[0], args[1:])
    elif command == "values-schema":
        values_schema(*args)
    elif command == "rendered":
        rendered(*args)
    elif command == "server-config":
        server_config(*args)
    elif command == "dockerfile":
        dockerfile(*args)
    else:
        sys.exit(f"unknown command {command}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
