"""The payload: one description of what every image holds, whatever its base. The three
recipes (QEMU/Debian, the vendor SDK, the remastered release image) declare the same
files with the same modes; their contents follow the recipe (engine target, model)."""

import os
from pathlib import Path

import pytest

from duo_builder.build import engine
from duo_builder.image import payload, recipe

RECIPES = ("qemu-virt-64m", "duo-64m", "duo-64m-remaster")


def recipe_payload(name: str, tmp_path: Path) -> payload.Payload:
    """The recipe's payload as gather() declares it, with stand-ins for what a build or a
    download would provide (the engine for the recipe's target, the model)."""
    r = recipe.load(name)
    built = tmp_path / r.engine_target
    built.mkdir(exist_ok=True)
    for program in ("llama2", "storyteller"):
        (built / program).write_bytes(f"{program} for {r.engine_target}".encode())
    for stand_in in (f"{name}-model.bin", f"{name}-tokenizer.bin"):
        (tmp_path / stand_in).write_bytes(stand_in.encode())
    assert "storyteller" in engine.target(r.engine_target).programs
    products = payload.Products(
        llama2=built / "llama2",
        storyteller=built / "storyteller",
        model=tmp_path / f"{name}-model.bin",
        tokenizer=tmp_path / f"{name}-tokenizer.bin",
        data=stand_in_data(tmp_path),
    )
    return payload.declare(payload.settings(r), products)


def stand_in_data(tmp_path: Path) -> Path:
    """A data tree laid out like payload_libs' (tests/test_static_payload.py has the real)."""
    data = tmp_path / "data"
    for rel in ("espeak-ng-data/en_dict", "en-us/mdef", "alsa/alsa.conf"):
        f = data / "usr/share/storyteller" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(rel.encode())
    return data


def test_every_recipe_declares_the_same_payload(tmp_path):
    listings = {name: recipe_payload(name, tmp_path).listing() for name in RECIPES}
    print("\n".join(f"{mode:o} {path}" for path, mode in listings["qemu-virt-64m"]))
    assert listings["duo-64m"] == listings["qemu-virt-64m"]
    assert listings["duo-64m-remaster"] == listings["qemu-virt-64m"]
    assert dict(listings["qemu-virt-64m"]) == {
        "/usr/share/storyteller/espeak-ng-data/en_dict": 0o644,
        "/usr/share/storyteller/en-us/mdef": 0o644,
        "/usr/share/storyteller/alsa/alsa.conf": 0o644,
        "/usr/bin/llama2": 0o755,
        "/usr/bin/storyteller": 0o755,
        "/usr/share/storyteller/model.bin": 0o644,
        "/usr/share/storyteller/tokenizer.bin": 0o644,
        "/usr/share/storyteller/story.dict": 0o644,
        "/etc/storyteller.conf": 0o644,
        "/etc/default/storyteller": 0o644,
        "/etc/init.d/S99storyteller": 0o755,
        "/etc/asound.conf": 0o644,
    }


def test_contents_follow_the_recipe(tmp_path):
    qemu, duo = (recipe_payload(name, tmp_path) for name in ("qemu-virt-64m", "duo-64m"))
    data = {p: {f.path: f.source for f in x.files} for p, x in (("qemu", qemu), ("duo", duo))}
    assert data["qemu"]["/usr/bin/llama2"].parent.name == "rv64gcv"
    assert data["duo"]["/usr/bin/llama2"].parent.name == "c906"
    assert data["qemu"]["/etc/default/storyteller"].startswith(b"STORYTELLER_MODE=story\n")
    assert data["duo"]["/etc/default/storyteller"].startswith(b"STORYTELLER_MODE=listen\n")
    assert data["qemu"]["/etc/asound.conf"].name == "asound.conf.none"
    assert data["duo"]["/etc/asound.conf"].name == "asound.conf.usb"


def test_staged_payload_is_laid_out_like_the_image(tmp_path):
    """What the SDK base hands to Buildroot's post-build script (copied as it is)."""
    files = recipe_payload("duo-64m", tmp_path)
    files.stage(tmp_path / "stage")
    staged = {
        "/" + str(p.relative_to(tmp_path / "stage")): p
        for p in (tmp_path / "stage").rglob("*")
        if p.is_file()
    }
    assert sorted(staged) == [f.path for f in files.present()]
    for f in files.present():
        assert staged[f.path].read_bytes() == payload.read(f)
        assert os.stat(staged[f.path]).st_mode & 0o7777 == f.mode
    # the manifest lists what was installed, and says what was left out and why
    assert [e["path"] for e in files.manifest()] == sorted(staged)
    assert set(files.absent()) == set(dict(files.listing())) - set(staged)


def test_a_missing_source_is_named(tmp_path):
    files = recipe_payload("qemu-virt-64m", tmp_path)
    (tmp_path / "rv64gcv" / "llama2").unlink()
    with pytest.raises(payload.PayloadError, match="/usr/bin/llama2: .*llama2 does not exist"):
        files.stage(tmp_path / "stage")
