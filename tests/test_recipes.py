"""Recipes are validated with errors that name the file, the key and what is allowed; the
Buildroot external tree and the Dockerfile are complete as far as can be checked offline."""

import re

import pytest
import yaml

from duo_builder.image import recipe
from duo_builder.paths import REPO


def test_shipped_recipes_load():
    names = recipe.available()
    assert {"duo-64m", "duo-64m-remaster", "qemu-virt-64m"} <= set(names)
    for name in names:
        r = recipe.load(name)
        assert r.name == name
    duo = recipe.load("duo-64m")
    assert duo.base.kind == "sdk" and duo.ion_mb == 0 and len(duo.base.commit) == 40
    assert recipe.load("qemu-virt-64m").base.kind == "debian"


def broken(tmp_path, edit) -> str:
    data = yaml.safe_load((recipe.RECIPES / "qemu-virt-64m.yaml").read_text())
    edit(data)
    path = tmp_path / "qemu-virt-64m.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(str(path))
    assert str(path) in str(e.value) or "qemu-virt-64m.yaml" in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda d: d.update(audio="hdmi"), "audio: 'hdmi' is not one of usb, none"),
        (lambda d: d.pop("board"), "missing key 'board'"),
        (lambda d: d["memory"].update(ion_mb="none"), "memory: ion_mb: expected int"),
        (lambda d: d["memory"].update(ion_mb=99), "ion_mb: 99 is not in 0..64"),
        (lambda d: d["model"].update(sha256="abc"), "model: sha256: 'abc' is not a sha256"),
        (lambda d: d["engine"].update(target="x86"), "engine: target: 'x86' is not one of"),
        (lambda d: d.update(colour="red"), "unknown key(s) colour"),
        (lambda d: d["base"].update(kind="sdk"), "base: missing key 'repo'"),
        (lambda d: d.update(name="other"), "must match the file name"),
        (lambda d: d["voice"].update(speed=10), "speed: 10 is not in 80..450"),
        (lambda d: d.update(board="milkv-duo"), "kind 'debian' builds only for board qemu-virt"),
        # only sid: the guest's libraries must be those the sid toolchain linked against
        (lambda d: d["base"].update(suite="trixie"), "base: suite: 'trixie' is not one of sid"),
    ],
)
def test_broken_recipes_name_file_key_and_allowed_values(tmp_path, edit, expected):
    assert expected in broken(tmp_path, edit)


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(recipe.RecipeError, match="available: duo-64m"):
        recipe.load("no-such-recipe")
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\n  board: [unclosed\n")
    with pytest.raises(recipe.RecipeError, match="not valid YAML"):
        recipe.load(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(recipe.RecipeError, match="expected a mapping"):
        recipe.load(str(bad))


EXTERNAL = REPO / "buildroot-external"


def test_buildroot_external_tree_follows_conventions():
    desc = (EXTERNAL / "external.desc").read_text()
    name = re.search(r"^name: (\w+)$", desc, re.M).group(1)
    assert name == "DUO_STORYTELLER"
    sourced = re.findall(
        r'source "\$BR2_EXTERNAL_DUO_STORYTELLER_PATH/(.+)"', (EXTERNAL / "Config.in").read_text()
    )
    packages = sorted(p.name for p in (EXTERNAL / "package").iterdir())
    assert sorted(s.split("/")[1] for s in sourced) == packages
    for pkg in packages:
        d = EXTERNAL / "package" / pkg
        var = pkg.upper().replace("-", "_")
        mk = (d / f"{pkg}.mk").read_text()
        assert f"config BR2_PACKAGE_{var}\n" in (d / "Config.in").read_text()
        assert re.search(rf"^{var}_VERSION = ", mk, re.M), f"{pkg}.mk sets no version"
        assert re.search(r"\$\(eval \$\((generic|cmake|autotools)-package\)\)", mk)
        if "SITE_METHOD = local" not in mk:  # downloaded: pinned by a hash
            version = re.search(rf"^{var}_VERSION = (\S+)", mk, re.M).group(1)
            source = re.search(rf"^{var}_SOURCE = (\S+)", mk, re.M)
            tarball = (
                source.group(1).replace(f"$({var}_VERSION)", version)
                if source
                else f"{pkg}-{version}.tar"
            )
            assert re.search(
                rf"^sha256  [0-9a-f]{{64}}  {re.escape(tarball)}",
                (d / f"{pkg}.hash").read_text(),
                re.M,
            )
    fragment = (EXTERNAL / "configs" / "duo-storyteller.fragment").read_text()
    for pkg in packages:
        assert f"BR2_PACKAGE_{pkg.upper().replace('-', '_')}=y" in fragment


def test_dockerfile_is_pinned_and_complete():
    lines = [
        ln
        for ln in (REPO / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0].startswith("ARG BASE_IMAGE=") and lines[1] == "FROM ${BASE_IMAGE} AS offline"
    assert ":latest" not in "\n".join(lines)
    text = "\n".join(lines)
    offline, sdk = text.split("FROM offline AS sdk")
    for tool in ("linux-source-6.12", "gcc-riscv64-linux-gnu", "mmdebstrap", "e2fsprogs"):
        assert re.search(rf"\b{tool}\b", offline), f"the offline stage lacks {tool}"
    for tool in ("git", "genimage", "u-boot-tools", "python3", "cpio", "rsync"):
        assert re.search(rf"\b{tool}\b", sdk), f"the sdk stage lacks {tool}"
    assert "FORCE_UNSAFE_CONFIGURE=1" in text
