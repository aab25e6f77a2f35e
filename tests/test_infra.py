"""infra/ manifests parse, run commands that exist in this project, and use only the project's image."""

from __future__ import annotations

import re
import shlex
import tomllib

import click
import pytest
import yaml

from conftest import REPO
from lake.cli.main import cli

INFRA = REPO / "infra"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"llm-lake:{VERSION}"


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _walk(node, key):
    """Every value stored under ``key`` anywhere in a parsed YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def assert_lake_command_exists(argv: list[str]) -> None:
    assert argv[0] == "lake", argv
    command: click.Command = cli
    rest = argv[1:]
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    assert not isinstance(command, click.Group), f"{argv}: no such lake command"
    known = {opt for p in command.params for opt in p.opts}
    for token in rest:
        if token.startswith("--"):
            assert token.split("=")[0] in known, f"{argv}: lake {command.name} has no option {token}"


def test_dockerfile_builds_the_project_image():
    text = (INFRA / "docker/Dockerfile").read_text()
    assert 'org.opencontainers.image.title="llm-lake"' in text
    for copied in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert (REPO / copied).exists(), f"Dockerfile copies missing {copied}"


@pytest.mark.parametrize(
    "path", sorted((INFRA / "k8s").glob("*.yaml")) + [INFRA / "ray/cluster.yaml"], ids=lambda p: p.name
)
def test_manifests_use_only_the_project_image(path):
    images = [i for doc in _docs(path) for i in _walk(doc, "image")]
    assert images, f"{path.name} names no image"
    assert set(images) == {IMAGE}


def test_rayjob_entrypoint_is_a_real_lake_command():
    (job,) = _docs(INFRA / "k8s/rayjob.yaml")
    assert job["kind"] == "RayJob"
    assert_lake_command_exists(shlex.split(job["spec"]["entrypoint"]))


def test_raycluster_config_points_at_catalog_warehouse_and_tracking():
    docs = {d["kind"]: d for d in _docs(INFRA / "k8s/raycluster.yaml")}
    assert docs["RayCluster"]["spec"]["rayVersion"] == __import__("ray").__version__
    data = docs["ConfigMap"]["data"]
    from lake.config import ENV_VARS

    assert {"LAKE_CATALOG_URI", "LAKE_WAREHOUSE", "MLFLOW_TRACKING_URI"} <= set(data) <= set(ENV_VARS)


def test_every_ray_cluster_of_the_manifests_requires_token_authentication():
    docs = {d["kind"]: d for d in _docs(INFRA / "k8s/raycluster.yaml")}
    assert docs["RayCluster"]["spec"]["authOptions"]["mode"] == "token"
    (job,) = _docs(INFRA / "k8s/rayjob.yaml")
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    # `ray up`: every container runs in token mode and reads a token that the config copies to each node
    cfg = yaml.safe_load((INFRA / "ray/cluster.yaml").read_text())
    options = " ".join(cfg["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in options, options
    token_path = re.search(r"-e RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert token_path in cfg["file_mounts"], cfg.get("file_mounts")
    # and nothing under infra/ turns it off (the image, the ConfigMap jobs read, comments that show a setting)
    modes = [m for path in sorted(INFRA.rglob("*")) if path.is_file()
             for m in re.findall(r"RAY_AUTH_MODE\W+(\w+)", path.read_text())]  # fmt: skip
    assert modes and set(modes) == {"token"}, modes


def test_ray_up_config_and_mlflow_server_commands():
    cfg = yaml.safe_load((INFRA / "ray/cluster.yaml").read_text())
    assert cfg["provider"]["type"] == "local"
    for command in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert shlex.split(command)[0] == "ray"
    (deploy, _service) = _docs(INFRA / "k8s/mlflow.yaml")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    argv = container["command"]
    assert argv[:2] == ["mlflow", "server"]
    import mlflow.cli

    server_opts = {opt for p in mlflow.cli.server.params for opt in p.opts}
    assert {a for a in argv if a.startswith("--")} <= server_opts
    settings = tomllib.loads((INFRA / "mlflow/server.toml").read_text())["server"]
    assert settings["backend_store_uri"].startswith("postgresql") and settings["serve_artifacts"] is True
