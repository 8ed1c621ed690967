"""The container images and skaffold, read statically: the Dockerfile passes hadolint (the real
binary, from PyPI); its three targets are the images the operator and the chart refer to, each
non-root by default with a pinned base; skaffold builds exactly those targets and deploys them
with the chart. Building and running the images on a real engine: tests/images/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
IMAGES = {
    "api": "ghcr.io/putplace/putplace-api",
    "agent": "ghcr.io/putplace/putplace-agent",
    "operator": "ghcr.io/putplace/putplace-operator",
}


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_each_image_has_its_target_its_own_dependencies_and_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    stages = {name: base for base, name in re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)}
    assert {"api", "agent", "operator"} <= set(stages) and stages["api"] == "runtime"
    base = re.search(r"^ARG PYTHON=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "base image pinned to a release"
    assert re.search(r"^USER 65532:65532$", text, re.M)  # in the runtime stage every image starts from
    for target in IMAGES:
        assert f'pip install ".[{target}]"' in text  # only its dependency group
        assert f"COPY --from=build /opt/{target} /opt/{target}" in text


def test_the_images_are_the_ones_the_operator_and_the_chart_use() -> None:
    operator = ROOT / "operator" / "putplace_operator" / "manifests"
    assert IMAGES["api"] in (operator / "api.py").read_text()
    assert IMAGES["agent"] in (operator / "agent.py").read_text()
    values = yaml.safe_load((ROOT / "charts" / "putplace" / "values.yaml").read_text())
    assert values["operator"]["image"]["repository"] == IMAGES["operator"]


def test_skaffold_builds_the_targets_and_deploys_the_chart() -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    built = {a["image"]: a["docker"]["target"] for a in config["build"]["artifacts"]}
    assert built == {image: target for target, image in IMAGES.items()}
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    templates = " ".join(str(v) for v in release["setValueTemplates"].values())
    for image in IMAGES.values():
        key = re.sub(r"[^A-Za-z0-9]", "_", image)
        assert f"IMAGE_REPO_{key}" in templates and f"IMAGE_TAG_{key}" in templates
