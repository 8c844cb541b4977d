"""`invoke image` end to end: the offline recipe gives an image, its sha256 and a manifest;
the Duo recipes stop at once, saying what is missing and which recipe works offline."""

import json
import subprocess
import sys

import pytest

from duo_builder.image import pipeline as image
from duo_builder.paths import REPO


def invoke(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_sdk_recipe_without_engine_says_what_is_missing(tmp_path):
    r = invoke(
        "image",
        "--recipe",
        "duo-64m",
        env_extra={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"},
    )
    assert r.returncode == 1
    message = r.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "Docker or Podman engine" in message and "no-engine.sock" in message
    assert "invoke image --recipe qemu-virt-64m" in message


def test_offline_recipe_in_the_container_without_engine_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(image.ImageError, match=r"needs a Docker or Podman engine \(none answers"):
        image.build("qemu-virt-64m", out_dir=tmp_path, where="container")


def test_remaster_recipe_without_base_image_says_how():
    r = invoke("image", "--recipe", "duo-64m-remaster")
    assert r.returncode == 1
    assert "sha256 is empty" in r.stderr and "duo-64m-remaster.yaml" in r.stderr
    assert "--base-image PATH" in r.stderr


def test_unknown_recipe():
    r = invoke("image", "--recipe", "toaster")
    assert r.returncode == 1 and "available: duo-64m" in r.stderr


@pytest.mark.slow
def test_offline_recipe_builds_image_sha_and_manifest(tmp_path, monkeypatch, capsys):
    # no engine answers: built on this host by the same steps, saying so in one line
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    built = image.build("qemu-virt-64m", out_dir=tmp_path)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "no container engine" in ln]
    assert len(said) == 1 and "building on this host by the same steps" in said[0]
    assert built.image == tmp_path / "qemu-virt-64m.img"
    sha_line = (tmp_path / "qemu-virt-64m.img.sha256").read_text()
    assert sha_line == f"{built.sha256}  qemu-virt-64m.img\n"
    m = json.loads(built.manifest.read_text())
    assert m["image"]["sha256"] == built.sha256
    assert m["builder"]["commit"] and m["memory"] == {"ion_mb": 0} and m["audio"] == "none"
    assert m["built_in"]["kind"] == "host"
    assert m["model"]["sha256"].startswith("b0a507e7")
    assert m["toolchain"]["packages"] and m["packages"]["busybox"]
    paths = {f["path"] for f in m["files"]}
    assert {
        "/usr/bin/llama2",
        "/usr/bin/storyteller",
        "/usr/share/storyteller/model.bin",
        "/etc/storyteller.conf",
        "/etc/asound.conf",
        "/etc/init.d/S99storyteller",
        "/etc/default/storyteller",
    } <= paths
    again = image.build("qemu-virt-64m", out_dir=tmp_path / "again")
    assert again.sha256 == built.sha256, "same inputs, same image"
