"""deploy/kuberay/ against KubeRay's CRD schemas (release v1.7.0, vendored in tests/data/kuberay/).

The RayJob and RayCluster manifests are validated with `jsonschema` against the `openAPIV3Schema`
of the CRDs' served version v1, read the way the Kubernetes API server reads a structural
schema: unknown fields are errors (what `kubectl apply` reports under its default
`--validate=strict`), `nullable`, `x-kubernetes-int-or-string`, int32/int64 bounds and list-map
key uniqueness are honoured. CEL rules (`x-kubernetes-validations`) cannot be evaluated here; a
test checks that the manifests set none of the fields carrying one. The rest checks what the
schema cannot: the GPU worker group, credentials only from a Secret, the entrypoint being the job
files' `ntt-batch run --config ...`, image and Ray versions matching the pinned Ray, and the checks
of KubeRay's operator (validation.go at v1.7.0) that apply to these manifests.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import re
import shlex
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kuberay"
VENDORED = REPO / "tests" / "data" / "kuberay"
MANIFESTS = {"RayJob": DEPLOY / "rayjob.yaml", "RayCluster": DEPLOY / "raycluster.yaml"}
SECRET = DEPLOY / "secret.example.yaml"

_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")


# ----------------------------------------------------------------------------- the vendored schemas


@functools.cache
def _vendor_module():
    spec = importlib.util.spec_from_file_location("vendor_crds", VENDORED / "vendor_crds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _vendored() -> dict:
    return json.loads((VENDORED / "crd-schemas.json").read_text())


@functools.cache
def upstream_schema(kind: str) -> dict:
    """The CRD's openAPIV3Schema exactly as KubeRay ships it (the vendored `$ref`s inlined)."""
    data = _vendored()
    return _vendor_module().inline(data["schemas"][kind], data["$defs"])


def to_jsonschema(node: dict, _memo: dict | None = None) -> dict:
    """A Kubernetes structural schema node as a JSON Schema (draft 4) node with the API server's meaning.

    - an object with `properties` accepts no other field (no `x-kubernetes-preserve-unknown-fields`
      in these CRDs; an object without `properties` and `additionalProperties` is left open:
      the top-level `metadata`, checked by the API server itself);
    - `nullable: true` also accepts null; `x-kubernetes-int-or-string` is integer or string;
    - `format: int32/int64` integers are bounded like Go's;
    - `x-kubernetes-list-type` is checked by the validator's keyword of that name (`_list_type`).
    """
    memo = {} if _memo is None else _memo
    if id(node) in memo:
        return memo[id(node)]
    out = dict(node)
    memo[id(node)] = out
    if "properties" in out:
        out["properties"] = {k: to_jsonschema(v, memo) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(out["additionalProperties"], memo)
    if isinstance(out.get("items"), dict):
        out["items"] = to_jsonschema(out["items"], memo)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [to_jsonschema(v, memo) for v in out[key]]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("type") == "integer" and out.get("format") in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[out["format"]]
        out.setdefault("minimum", lo)
        out.setdefault("maximum", hi)
    return out


def _list_type(validator, list_type, instance, schema):
    """`x-kubernetes-list-type`: `map` entries are unique by `x-kubernetes-list-map-keys`, `set` items unique."""
    if not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        if list_type == "map" and isinstance(item, dict):
            key = tuple(
                (k, json.dumps(item.get(k), sort_keys=True)) for k in schema.get("x-kubernetes-list-map-keys", [])
            )
        elif list_type == "set":
            key = json.dumps(item, sort_keys=True)
        else:
            continue
        if key in seen:
            yield jsonschema.ValidationError(
                f"duplicate entry {dict(key) if list_type == 'map' else key} in a list-{list_type}"
            )
        seen.add(key)


K8sValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type})


@functools.cache
def validator(kind: str):
    schema = to_jsonschema(upstream_schema(kind))
    K8sValidator.check_schema(schema)
    return K8sValidator(schema)


def schema_errors(kind: str, obj: dict) -> list[str]:
    """Every error of `obj` against the CRD, as 'spec.path.to.field: message'."""
    errors = sorted(validator(kind).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [".".join(map(str, e.absolute_path)) + ": " + e.message for e in errors]


# ----------------------------------------------------------------------------- the manifests


def _load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path}: one object per file"
    return docs[0]


def _cluster_spec(kind: str) -> dict:
    obj = _load(MANIFESTS[kind])
    return obj["spec"]["rayClusterSpec"] if kind == "RayJob" else obj["spec"]


def _pod_specs(kind: str):
    """(group name, pod spec) of the head and every worker group."""
    spec = _cluster_spec(kind)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def _containers(kind: str):
    for group, pod in _pod_specs(kind):
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield group, container


def _job_file_name() -> str:
    args = shlex.split(_load(MANIFESTS["RayJob"])["spec"]["entrypoint"])
    return PurePosixPath(args[-1]).name


# ----------------------------------------------------------------------------- tests: the vendored data


def test_vendored_schemas_are_kuberays_release_unchanged():
    source = _vendored()["source"]
    assert source["repository"] == "https://github.com/ray-project/kuberay"
    assert source["release"] == "v1.7.0" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["license"] == "Apache-2.0"
    assert (VENDORED / "LICENSE").read_text().lstrip().startswith("Apache License")
    notes = (VENDORED / "README.md").read_text()
    assert source["release"] in notes and source["commit"] in notes and "Apache-2.0" in notes
    for kind in MANIFESTS:
        crd = source["crds"][kind]
        assert (crd["group"], crd["version"], crd["kind"]) == ("ray.io", "v1", kind)
        assert crd["path"] in notes
        # The file stores repeated subtrees once ($defs); inlined, it is byte for byte the upstream schema.
        text = json.dumps(upstream_schema(kind), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(text.encode()).hexdigest() == crd["openAPIV3Schema_sha256"]
        assert "$ref" not in text


def test_factoring_round_trips():
    """vendor_crds.factor/inline on a schema-like document with repeated parts: smaller, and lossless."""
    vendor = _vendor_module()
    container = upstream_schema("RayCluster")["properties"]["spec"]["properties"]["headGroupSpec"]
    doc = {"schemas": {"a": container, "b": {"type": "object", "properties": {"x": container, "y": container}}}}
    factored = vendor.factor(copy.deepcopy(doc))
    assert factored["$defs"] and len(json.dumps(factored)) < len(json.dumps(doc)) / 2
    assert {k: vendor.inline(v, factored["$defs"]) for k, v in factored["schemas"].items()} == doc["schemas"]


# ----------------------------------------------------------------------------- tests: schema validation


@pytest.mark.parametrize("kind", MANIFESTS)
def test_manifest_validates_against_the_crd(kind):
    obj = _load(MANIFESTS[kind])
    crd = _vendored()["source"]["crds"][kind]
    assert obj["apiVersion"] == f"{crd['group']}/{crd['version']}" and obj["kind"] == crd["kind"]
    assert schema_errors(kind, obj) == []


def _set(obj: dict, path: str, value) -> dict:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return obj


_DELETE = object()
_CS = "spec.rayClusterSpec"
_WORKER = f"{_CS}.workerGroupSpecs.0"


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (f"{_WORKER}.replicas", "two", "workerGroupSpecs.0.replicas: 'two' is not of type 'integer'"),
        (f"{_WORKER}.maxReplicas", 2**31, "workerGroupSpecs.0.maxReplicas: 2147483648 is greater than the maximum"),
        (f"{_CS}.headGroupSpec.rayStartParam", {"num-cpus": "0"}, "('rayStartParam' was unexpected)"),
        (f"{_CS}.headGroupSpec.rayStartParams.num-cpus", 0, "rayStartParams.num-cpus: 0 is not of type 'string'"),
        (f"{_WORKER}.template.spec.containers", _DELETE, "'containers' is a required property"),
        (f"{_WORKER}.groupName", _DELETE, "workerGroupSpecs.0: 'groupName' is a required property"),
        (
            f"{_WORKER}.template.spec.containers.0.resources.limits.memory",
            "26 GiB",
            "resources.limits.memory: '26 GiB' does not match",
        ),
        (f"{_WORKER}.template.spec.containers.0.resources.limits.memory", 26.5, "26.5 is not valid under any of"),
        ("spec.shutdownAfterJobFinishes", "yes", "spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'"),
        ("spec.entrypont", "ntt-batch run", "('entrypont' was unexpected)"),
        (f"{_WORKER}.template.spec.containers.0.envFrom.0.secretRef.nam", "x", "('nam' was unexpected)"),
    ],
)
def test_the_validator_rejects_a_broken_manifest(path, value, expected):
    broken = _set(_load(MANIFESTS["RayJob"]), path, value)
    errors = schema_errors("RayJob", broken)
    assert any(expected in e for e in errors), errors


def test_the_validator_checks_list_map_keys():
    obj = _load(MANIFESTS["RayJob"])
    containers = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    broken = _set(obj, f"{_WORKER}.template.spec.containers", containers + [copy.deepcopy(containers[0])])
    assert any("duplicate entry {'name': '\"ray-worker\"'}" in e for e in schema_errors("RayJob", broken))


def _cel_fields(schema: dict, instance, path: str = ""):
    """Paths in `instance` whose schema node carries a CEL rule (x-kubernetes-validations)."""
    if "x-kubernetes-validations" in schema:
        yield path
    if isinstance(instance, dict):
        for key, value in instance.items():
            sub = schema.get("properties", {}).get(key) or (
                schema["additionalProperties"] if isinstance(schema.get("additionalProperties"), dict) else None
            )
            if sub is not None:
                yield from _cel_fields(sub, value, f"{path}.{key}".lstrip("."))
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            yield from _cel_fields(schema["items"], value, f"{path}.{i}")


@pytest.mark.parametrize("kind", MANIFESTS)
def test_no_field_with_a_cel_rule_is_set(kind):
    """CEL rules are checked by the API server only; the manifests stay clear of the fields that have them."""
    schema = upstream_schema(kind)
    assert list(_cel_fields(schema, {"spec": {"managedBy": "x"}})) == ["spec.managedBy"]  # the walk finds them
    assert list(_cel_fields(schema, _load(MANIFESTS[kind]))) == []


@pytest.mark.parametrize("kind", MANIFESTS)
def test_what_kuberays_operator_checks(kind):
    """The parts of ray-operator/controllers/ray/utils/validation.go (v1.7.0) these manifests touch."""
    obj = _load(MANIFESTS[kind])
    name = obj["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), f"{name}: not a DNS-1035 label"
    assert len(name) <= {"RayCluster": 53, "RayJob": 47}[kind]
    spec = _cluster_spec(kind)
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in [spec["headGroupSpec"], *groups]:
        start = group.get("rayStartParams", {})
        assert not ({"num-cpus", "num-gpus", "memory", "resources"} & set(start) and group.get("resources"))
        assert "labels" not in start
    for g in groups:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", g["groupName"])
        assert g["template"]["spec"]["containers"]
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
    if kind == "RayJob":
        assert obj["spec"]["ttlSecondsAfterFinished"] >= 0


# ----------------------------------------------------------------------------- tests: what the schema cannot say


def _gpus(container: dict, which: str = "limits") -> int:
    return int(container.get("resources", {}).get(which, {}).get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("kind", MANIFESTS)
def test_gpu_workers_and_a_cpu_head(kind):
    from ntt_batch.pipeline.job_files import job_config_from_file

    spec = _cluster_spec(kind)
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no tasks or actors on the head, as in cluster.yaml
    assert all(_gpus(c) == 0 for c in head["template"]["spec"]["containers"])
    assert spec["enableInTreeAutoscaling"] is True
    num_actors = job_config_from_file(REPO / "jobs" / _job_file_name()).num_actors
    for group in spec["workerGroupSpecs"]:
        ray_container = group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first
        gpus = _gpus(ray_container)
        assert gpus >= 1, f"worker group {group['groupName']} requests no GPU"
        assert ray_container["resources"]["requests"] == ray_container["resources"]["limits"]  # Guaranteed QoS
        # A job decides at start whether its actors ask for a GPU: one GPU worker is always up.
        assert group["minReplicas"] >= 1
        # Each segment actor takes one GPU: the group can hold all of the job's actors.
        assert group["maxReplicas"] * gpus >= num_actors
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in tolerations)


@pytest.mark.parametrize("kind", MANIFESTS)
def test_credentials_come_only_from_the_secret(kind):
    secret = _load(SECRET)
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    containers = list(_containers(kind))
    assert containers
    for group, container in containers:
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == [secret["metadata"]["name"]], f"{group}/{container['name']}: envFrom {refs}"
        for env in container.get("env", []):
            if any(w in env["name"].lower() for w in _CREDENTIAL_WORDS):
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), env["name"]


def test_no_literal_credentials_anywhere_in_deploy():
    secret = _load(SECRET)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    for key, value in secret["stringData"].items():
        if any(w in key.lower() for w in _CREDENTIAL_WORDS):
            assert value == "REPLACE-ME", key
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text), f"{path}: an AWS access key id"
            assert not re.search(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text), (
                f"{path}: a secret-like string"
            )


def test_rayjob_runs_the_job_files_entrypoint_on_a_mounted_job_file(tmp_path):
    from click.testing import CliRunner

    from ntt_batch.cli import main

    obj = _load(MANIFESTS["RayJob"])
    args = shlex.split(obj["spec"]["entrypoint"])
    assert args[:3] == ["ntt-batch", "run", "--config"] and len(args) == 4
    config = PurePosixPath(args[3])
    job_file = REPO / "jobs" / config.name
    assert job_file.is_file(), f"{config.name} is not in jobs/"
    # The job files' own instructions submit exactly this command (the path is the mounted copy).
    assert f"ray job submit --working-dir . -- ntt-batch run --config jobs/{config.name}" in job_file.read_text()
    # The driver runs on the head: the file is there, from the ConfigMap the README makes from jobs/.
    head = obj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent]
    assert mount.get("readOnly") is True
    configmap = volumes[mount["name"]]["configMap"]["name"]
    made = f"kubectl create configmap {configmap} --from-file=jobs/"
    assert made in (DEPLOY / "README.md").read_text() and made in MANIFESTS["RayJob"].read_text()
    assert "items" not in volumes[mount["name"]]["configMap"]  # every job file, under its own name
    # `kubectl create configmap --from-file=jobs/` keys each file by its name; keys are [-._a-zA-Z0-9]+.
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", p.name) for p in (REPO / "jobs").glob("*.yaml"))
    # and the arguments are ones `ntt-batch run` takes: once its YOUR-BUCKET placeholders are replaced (as its
    # instructions say), the file is a valid job config; as shipped, `config check` refuses the placeholders.
    shipped = CliRunner().invoke(main, ["config", "check", str(job_file)])
    assert shipped.exit_code == 2 and "placeholder" in shipped.output, shipped.output
    filled = tmp_path / config.name
    filled.write_text(job_file.read_text().replace("YOUR-BUCKET", "my-team-bucket"))
    res = CliRunner().invoke(main, ["config", "check", str(filled)])
    assert res.exit_code == 0 and "valid job config" in res.output, res.output


def test_raycluster_is_submitted_to_like_cluster_yaml():
    command = f"ray job submit --working-dir . -- ntt-batch run --config jobs/{_job_file_name()}"
    for text in (MANIFESTS["RayCluster"].read_text(), (DEPLOY / "README.md").read_text()):
        assert command in text
    name = _load(MANIFESTS["RayCluster"])["metadata"]["name"]
    # KubeRay names the head's Service <cluster>-head-svc.
    assert f"kubectl port-forward svc/{name}-head-svc 8265:8265" in (DEPLOY / "README.md").read_text()


def test_rayjob_cleans_up_after_itself():
    spec = _load(MANIFESTS["RayJob"])["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and 0 < spec["ttlSecondsAfterFinished"] <= 3600
    assert "clusterSelector" not in spec  # its own cluster, not a shared one


def test_rayjob_and_raycluster_describe_the_same_cluster():
    job, cluster = _cluster_spec("RayJob"), _cluster_spec("RayCluster")
    assert job["workerGroupSpecs"] == cluster["workerGroupSpecs"]
    for key in ("rayVersion", "enableInTreeAutoscaling", "autoscalerOptions"):
        assert job[key] == cluster[key]
    job_head, cluster_head = job["headGroupSpec"], cluster["headGroupSpec"]
    assert job_head["rayStartParams"] == cluster_head["rayStartParams"]

    def strip(container: dict) -> dict:  # all but the job-file mount
        return {k: v for k, v in container.items() if k != "volumeMounts"}

    assert strip(job_head["template"]["spec"]["containers"][0]) == strip(
        cluster_head["template"]["spec"]["containers"][0]
    )


def _dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_images_are_built_on_the_pinned_ray():
    import ray

    import ntt_batch

    cluster_image = yaml.safe_load((REPO / "cluster.yaml").read_text())["docker"]["image"]
    python_tag = re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-(py\d+)-gpu", cluster_image).group(1)
    (base,) = re.findall(r"^FROM\s+(\S+)", _dockerfile(), flags=re.M)
    assert base == cluster_image == f"rayproject/ray:{ray.__version__}-{python_tag}-gpu"
    tag = f"ntt-batch:{ntt_batch.__version__}-ray{ray.__version__}-{python_tag}-gpu"
    assert f"-t REGISTRY/{tag} ." in _dockerfile()
    for kind in MANIFESTS:
        assert _cluster_spec(kind)["rayVersion"] == ray.__version__
        images = {c["image"] for _, c in _containers(kind)}
        assert images == {f"YOUR-REGISTRY/{tag}"}, images


def test_dockerfile_installs_like_the_cluster_and_holds_the_jobs_models():
    from ntt_batch.pipeline.job_files import job_config_from_file

    text = _dockerfile()
    assert re.search(r"^RUN bash scripts/install\.sh$", text, flags=re.M)  # the pins and their install order
    assert re.search(r"^ENV NTT_CACHE_DIR=/\S+$", text, flags=re.M)
    (download,) = re.findall(r"^RUN ntt-batch checkpoints download --model (.+)$", text, flags=re.M)
    models = set(download.split())
    for path in (REPO / "jobs").glob("*.yaml"):
        cfg = job_config_from_file(path)
        assert {cfg.sam2, cfg.references.encoder} <= models, path.name
    # The build context filter keeps what the install needs (pyproject names README.md as its readme).
    patterns = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.strip()]
    patterns = [p for p in patterns if not p.startswith("#")]

    def ignored(rel: str) -> bool:
        return any(fnmatch(rel, p) or rel.startswith(p.rstrip("/") + "/") for p in patterns)

    for needed in (
        "pyproject.toml",
        "README.md",
        "scripts/install.sh",
        "scripts/pip_check.py",
        "ntt_batch/cli/__init__.py",
    ):
        assert (REPO / needed).exists() and not ignored(needed), needed
    for unwanted in (".git", "checkpoints", "runs"):
        assert ignored(unwanted), unwanted
