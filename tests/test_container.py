"""`invoke image` in the builder container, through a real Podman service (Debian's podman
behind a Docker-compatible socket, started by duo_builder.image.podman; installed if missing).

The offline recipe built in the Dockerfile's `offline` stage must give the very bytes a
build on this host gives. Both share build/ through the bind mount: the riscv64 toolchain
chroot and the engine it compiled, the kernel and the sid rootfs caches. So what the
comparison checks is the part that runs in two different environments: extracting the
packages (the container's Debian Python 3.11.2 against the host's), the payload, and
mke2fs/debugfs (the container's e2fsprogs against the host's), with the epoch and the
manifest's inputs. (Building from nothing in the container, toolchain, kernel and rootfs
included, was tried by hand and gave the same sha256; too slow for CI.) Slow: the first
run makes the base and builder images (1-2.5 min here); then a container build takes
seconds."""

import json

import pytest

from duo_builder.image import pipeline as image
from duo_builder.image.podman import podman_service
from duo_builder.paths import BUILD

pytestmark = pytest.mark.slow

RECIPE = "qemu-virt-64m"


@pytest.fixture(scope="module")
def podman():
    # its own directory: `invoke podman` may be serving build/podman/ meanwhile
    with podman_service(BUILD / "podman-test") as service:
        yield service


@pytest.fixture
def engine_url(podman, monkeypatch) -> str:
    """DOCKER_HOST at the private Podman service, for this test only."""
    monkeypatch.setenv("DOCKER_HOST", podman.url)
    return podman.url


@pytest.fixture(scope="module")
def host_built(tmp_path_factory) -> image.Built:
    return image.build(RECIPE, out_dir=tmp_path_factory.mktemp("host"), where="here")


def test_offline_image_built_in_the_container_equals_the_host_build(
    engine_url, host_built, tmp_path
):
    import docker

    built = image.build(RECIPE, out_dir=tmp_path)  # auto: an engine answers, so the container
    m = json.loads(built.manifest.read_text())
    where = m["built_in"]
    assert where["kind"] == "container", where
    assert where["stage"] == "offline" and where["engine"].startswith("Podman")
    client = docker.DockerClient(base_url=engine_url)
    assert where["image_id"] == client.images.get(where["image"]).id
    assert where["base_image_id"] == client.images.get("localhost/duo-builder-base:bookworm").id

    host = json.loads(host_built.manifest.read_text())
    assert host["built_in"]["kind"] == "host"
    assert built.sha256 == host_built.sha256, "the same inputs, in or out of the container"
    assert (tmp_path / f"{RECIPE}.img.sha256").read_text() == f"{built.sha256}  {RECIPE}.img\n"
    for key in ("files", "packages", "kernel", "model", "source_date_epoch", "recipe_sha256"):
        assert m[key] == host[key], key
    assert m["builder"]["commit"] == host["builder"]["commit"]
    assert built.kernel is not None and built.kernel.exists()
    # nothing left behind in the engine
    ours = [c.name for c in client.containers.list(all=True) if c.image.id == where["image_id"]]
    assert ours == []


def test_podman_service_stops_and_cleans_up(tmp_path, podman):
    import os

    from duo_builder.image.podman import PodmanError

    with pytest.raises(PodmanError, match="already answers"):  # never two on one socket
        with podman_service(podman.socket.parent):
            pass
    with podman_service(tmp_path / "p") as service:
        assert service.socket.exists()
        os.kill(service.pid, 0)  # running
    assert not service.socket.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(service.pid, 0)
