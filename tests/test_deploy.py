"""deploy/: the Helm chart and the Dockerfiles, checked with real tools (helm v4, kubernetes-validate,
hadolint), and a contract test that runs exactly the commands the chart renders."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ROOT
from helm_tool import helm_binary
from server_util import free_port

CHART = ROOT / "deploy" / "helm" / "armor-serve"
VALUES = sorted((CHART / "ci").glob("*.yaml")) + [CHART / "values-cpu.yaml"]
K8S_VERSIONS = ["1.25.0", "1.30.0", "1.35.0", "1.37.0"]
CRDS = {"ScaledObject", "ServiceMonitor"}  # no schema for these offline: checked by the assertions below


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary(ROOT / ".cache" / "tools")


def render(helm: Path, *args: str) -> list[dict]:
    proc = subprocess.run([str(helm), "template", "armor", str(CHART), "--namespace", "llm", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def values_args(path: Path) -> list[str]:
    return ["-f", str(path)]


def test_helm_is_v4(helm):
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("v4."), out


@pytest.mark.parametrize("values", [None, *VALUES], ids=lambda v: v.name if v else "defaults")
def test_lint_strict(helm, values):
    proc = subprocess.run([str(helm), "lint", "--strict", str(CHART), *(values_args(values) if values else [])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES, ids=lambda v: v.name)
def test_rendered_manifests_validate_against_kubernetes_schemas(helm, values, tmp_path):
    docs = render(helm, *values_args(values))
    core = [d for d in docs if d["kind"] not in CRDS]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    for version in K8S_VERSIONS:
        proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(manifest)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"k8s {version}: {proc.stdout}{proc.stderr}"
        assert "ERROR" not in proc.stdout and "WARN" not in proc.stdout, proc.stdout


def test_defaults_make_a_hardened_gpu_pod(helm):
    docs = render(helm)
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim",
                                         "PodDisruptionBudget", "Pod"}
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["command"] == ["armor", "serve"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # model load + compile budget
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1 == server["resources"]["requests"]["nvidia.com/gpu"]
    assert server["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == by_kind(docs, "PersistentVolumeClaim")["metadata"]["name"]
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert {"/dev/shm", "/models", "/cache", "/tmp"} <= mounts  # the writable places on a read-only root
    assert pod["terminationGracePeriodSeconds"] > int(server["args"][server["args"].index("--drain-timeout") + 1])
    # the Service selects the server pods only, never the `helm test` pod
    service = by_kind(docs, "Service")
    test_pod = by_kind(docs, "Pod")
    assert not set(service["spec"]["selector"].items()) <= set(test_pod["metadata"]["labels"].items())
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


def test_gpu_profile_places_the_pod_and_keeps_the_key_out_of_args(helm):
    docs = render(helm, *values_args(CHART / "ci" / "gpu-values.yaml"))
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["runtimeClassName"] == "nvidia" and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    key_env = [e for e in server["env"] if e["name"] == "ARMOR_API_KEY"]
    assert key_env[0]["valueFrom"]["secretKeyRef"] == {"name": "armor-api-key", "key": "api-key"}
    assert "--api-key" not in server["args"]
    assert server["args"][-2:] == ["--max-queue", "64"]


def test_cpu_profile_requests_no_gpu(helm):
    server = by_kind(render(helm, *values_args(CHART / "values-cpu.yaml")), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert not any("gpu" in k for section in server["resources"].values() for k in section)
    assert server["args"][server["args"].index("--dtype") + 1] == "float32"
    assert server["image"].endswith("-cpu")


def test_model_sources(helm):
    pvc = by_kind(render(helm, *values_args(CHART / "ci" / "pvc-values.yaml")), "Deployment")["spec"]["template"]["spec"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "llm-checkpoints"}} in pvc["volumes"]
    assert "initContainers" not in pvc

    docs = render(helm, *values_args(CHART / "ci" / "init-compress-values.yaml"))
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    importer, compressor = pod["initContainers"]
    assert importer["command"] == ["armor", "model", "import", "smollm2", "--out", "/models/smollm2-dense"]
    assert compressor["command"][:6] == ["armor", "compress", "--model", "/models/smollm2-dense", "--out", "/models/smollm2-armor"]
    assert compressor["resources"]["requests"]["cpu"] == "8"
    assert by_kind(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast-ssd"

    pod = by_kind(render(helm, *values_args(CHART / "ci" / "copy-values.yaml")), "Deployment")["spec"]["template"]["spec"]
    (copier,) = pod["initContainers"]
    assert {"name": "source", "mountPath": "/source", "readOnly": True} in copier["volumeMounts"]
    assert {"name": "source", "persistentVolumeClaim": {"claimName": "shared-checkpoints", "readOnly": True}} in pod["volumes"]
    assert pod["volumes"][0] == {"name": "models", "emptyDir": {"sizeLimit": "40Gi"}}


def test_scaling_and_monitoring_objects(helm):
    docs = render(helm, *values_args(CHART / "ci" / "hpa-values.yaml"))
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == by_kind(docs, "Deployment")["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "armor_requests_waiting"  # a series we export
    assert "replicas" not in by_kind(docs, "Deployment")["spec"]  # the autoscaler owns it

    docs = render(helm, *values_args(CHART / "ci" / "keda-values.yaml"))
    trigger = by_kind(docs, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == 'sum(armor_requests_waiting{model_name="armor-armor-serve"})'

    docs = render(helm, *values_args(CHART / "ci" / "monitoring-ingress-values.yaml"))
    endpoint = by_kind(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert by_kind(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"] == by_kind(docs, "Service")["spec"]["selector"]
    backend = by_kind(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "armor-armor-serve", "port": {"name": "http"}}


def test_notes_say_how_to_call_the_endpoint(helm):
    proc = subprocess.run([str(helm), "install", "smol", str(CHART), "--dry-run=client", "--namespace", "llm",
                           "--set", "apiKey.existingSecret=armor-key"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl port-forward -n llm svc/smol-armor-serve 8000:80" in notes
    assert '"model": "smol-armor-serve"' in notes and 'Authorization: Bearer $ARMOR_API_KEY' in notes
    assert "helm test -n llm smol" in notes


@pytest.mark.parametrize("bad, message", [
    (["--set", "engnie=vllm"], "additional properties 'engnie' not allowed"),
    (["--set", "model.prepare.mode=compres"], "value must be one of"),
    (["--set", "gpu.count=-1"], "minimum"),
    (["--set", "autoscaling.enabled=true", "--set", "keda.enabled=true"], "enable one of them"),
    (["--set", "model.volume.type=existingClaim"], "model.volume.existingClaim is required"),
])
def test_bad_values_are_refused_with_a_reason(helm, bad, message):
    proc = subprocess.run([str(helm), "template", "armor", str(CHART), *bad], capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_dockerfiles_pass_hadolint():
    dockerfiles = sorted((ROOT / "deploy" / "docker").glob("Dockerfile*"))
    assert len(dockerfiles) == 2
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    proc = subprocess.run([hadolint, *map(str, dockerfiles)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- the contract: what the chart renders is what runs ----

def rendered_env(container: dict, secrets: dict[str, str]) -> dict[str, str]:
    env = {}
    for e in container.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else secrets[e["valueFrom"]["secretKeyRef"]["name"]]
    return env


def process_env(container: dict, secrets: dict) -> dict[str, str]:
    """What the container's process sees here: its rendered env, with the package's console scripts on PATH."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **rendered_env(container, secrets)}


def run_rendered(container: dict, secrets: dict, cwd: Path, **kw) -> subprocess.CompletedProcess:
    """A container's command + args + env, run on this machine."""
    return subprocess.run(container["command"] + container.get("args", []), env=process_env(container, secrets),
                          cwd=cwd, **kw)


def test_copy_init_container_copies_once(helm, tmp_path):
    source = tmp_path / "source" / "ckpt"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    dest = tmp_path / "models" / "ckpt"
    dest.parent.mkdir()
    docs = render(helm, *values_args(CHART / "ci" / "copy-values.yaml"), "--set", f"model.dir={dest}",
                  "--set", f"model.prepare.source.path={source}", "--set", f"cache.mountPath={tmp_path}/cache")
    (copier,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    for expected in ("", "model already in"):
        proc = run_rendered(copier, {}, tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0 and expected in proc.stdout, proc.stderr
        assert (dest / "config.json").read_text() == "{}" and not dest.with_suffix(".partial").exists()


def test_contract_cpu_profile_with_init_compress(helm, tmp_path):
    """Render the CPU profile with the init-compress source, run its init containers, start the server with the
    rendered command/args/env/port, pass the rendered probes, run the rendered `helm test` command, drain on SIGTERM."""
    models, cache = tmp_path / "models", tmp_path / "cache"
    (cache / "tmp").mkdir(parents=True)
    port = free_port()
    docs = render(helm, *values_args(CHART / "values-cpu.yaml"), *values_args(CHART / "ci" / "init-compress-values.yaml"),
                  "--set", f"model.volume.mountPath={models}", "--set", f"model.dir={models}/smollm2-armor",
                  "--set", f"model.prepare.source.path={models}/smollm2-dense", "--set", f"cache.mountPath={cache}",
                  "--set", f"server.port={port}", "--set", "apiKey.existingSecret=armor-key",
                  # small settings so the test takes minutes; the structure is the production one
                  "--set", "model.prepare.compress.iters=2", "--set", "model.prepare.compress.calibSamples=6",
                  "--set", "model.prepare.compress.seqLen=128", "--set", "server.maxModelLen=1024",
                  "--set-json", "server.memoryFraction=0.2", "--set", "env[0].name=VLLM_CPU_KVCACHE_SPACE",
                  "--set-string", "env[0].value=1")
    secrets = {"armor-key": "contract-key"}
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    for init in pod["initContainers"]:
        proc = run_rendered(init, secrets, tmp_path, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (models / "smollm2-armor" / "config.json").exists()

    server = pod["containers"][0]
    assert server["ports"][0]["containerPort"] == port
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(server["command"] + server["args"], env=process_env(server, secrets), cwd=tmp_path,
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        startup = server["startupProbe"]
        deadline = time.time() + startup["periodSeconds"] * startup["failureThreshold"]
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "startup probe budget exceeded"
            try:
                if httpx.get(base + startup["httpGet"]["path"], timeout=startup["timeoutSeconds"]).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        for probe in ("readinessProbe", "livenessProbe"):
            assert httpx.get(base + server[probe]["httpGet"]["path"], timeout=server[probe]["timeoutSeconds"]).status_code == 200
        assert httpx.post(base + "/v1/chat/completions", json={}).status_code == 401  # the Secret's key is enforced

        test_pod = by_kind(docs, "Pod")["spec"]["containers"][0]
        for e in test_pod["env"]:  # the one substitution: the Service's DNS name is this loopback port
            if e["name"] == "ARMOR_URL":
                e["value"] = base
        out = run_rendered(test_pod, secrets, tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "chat completion OK" in out.stdout, out.stdout + out.stderr
        metrics = httpx.get(base + "/metrics").text
        assert any(line.startswith("armor_requests_total{") and 'endpoint="/v1/chat/completions"' in line
                   and 'status="200"' in line for line in metrics.splitlines()), metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=pod["terminationGracePeriodSeconds"])
        log.close()
    assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
