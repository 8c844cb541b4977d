"""The project's own promises: README's set-up commands, CI running exactly the README's
test command, ruff-clean Python, the C engine's own tests (under ASan + UBSan too)."""

import subprocess
import sys

import pytest

from duo_builder.build import engine
from duo_builder.paths import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_image_and_test_commands():
    main, test = readme_commands()
    assert main.endswith("invoke image --recipe qemu-virt-64m")
    assert test.endswith("invoke test")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in [line.strip() for line in ci]


def test_python_is_ruff_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        p = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True
        )
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("program", ["test_engine", "test_faithful", "test_softmax"])
def test_c_unit_tests_under_sanitizers(asan_engine, program):
    p = subprocess.run([str(engine.binary("asan", program))], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().endswith(" 0 failed")


def test_engine_build_failure_is_reported(tmp_path):
    bad = engine.Target("bad", cc="definitely-not-a-compiler")
    engine.TARGETS["bad"] = bad
    try:
        engine.build("bad")
    except engine.EngineError as e:
        assert "definitely-not-a-compiler" in str(e)
    else:
        raise AssertionError("a missing compiler must raise EngineError")
    finally:
        del engine.TARGETS["bad"]


def test_recipe_cflags_reach_the_compiler():
    """A recipe's engine.cflags go after the target's, into a build directory of their own."""
    import hashlib
    import shutil

    flag = "-fno-such-flag-from-a-recipe"
    variant = f"host-{hashlib.sha256(flag.encode()).hexdigest()[:8]}"
    try:
        engine.build("host", cflags=flag)
    except engine.EngineError as e:
        assert flag in str(e) and repr(variant) in str(e)
    else:
        raise AssertionError("gcc must refuse the unknown flag")
    finally:
        shutil.rmtree(engine.build_dir(variant), ignore_errors=True)


def import_graph(package: str = "duo_builder") -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top or inside functions. Imports
    under `if __name__ == "__main__":` are a script's entry point, not the library's graph
    (run as __main__, a module is not the one its importers see)."""
    import ast

    root = REPO / package
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        main_blocks = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.If) and "__name__" in ast.unparse(n.test)
            and "__main__" in ast.unparse(n.test)
        ]  # fmt: skip
        skipped = {id(n) for block in main_blocks for n in ast.walk(block)}
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in modules else node.module for t in names]  # module or name
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (as the list of modules around it), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return []

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return []


def test_python_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "duo_builder.image.pipeline" in graph  # the whole package
    assert "duo_builder.image.container" in graph["duo_builder.image.pipeline"]
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
