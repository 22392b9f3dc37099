"""The package as users install it: the wheel built from this source tree, its metadata and extras, the example
DAGs it carries, and what must keep working without the ``testing`` extra (the pytest plugin, which every pytest
run loads wherever the provider is installed).

The wheel is built with uv (the Makefile installs it into .venv) or, failing that, pip; the build backend,
hatchling, comes from uv's cache or the package index. With no build tool at all the wheel tests are skipped and
say so; every other test here runs anyway.
"""

from __future__ import annotations

import ast
import configparser
import email.parser
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import xnat_provider
from xnat_provider.examples import copy_to, dag_files

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "xnat_provider"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIST = "airflow-provider-xnat"
INSTALL_HINT = "pip install 'airflow-provider-xnat[testing]'"

# Files the emulator reads at run time (not Python modules, so easy to lose from a wheel).
EMULATOR_DATA = ("xnat_provider/testing/schemas/xnat.xsd", "xnat_provider/testing/schemas/xdat.xsd",
                 "xnat_provider/testing/xnat-routes.txt")


def locked_version(name: str) -> Version:
    m = re.search(rf"^{re.escape(name)}==([^\s;]+)", (REPO / "requirements-dev.lock").read_text(), re.M)
    assert m, f"{name} is not in requirements-dev.lock"
    return Version(m[1])


# --- building the wheel ---

def build_command(source: Path, out: Path) -> list[str] | None:
    uv = Path(sys.executable).with_name("uv")
    uv_cmd = str(uv) if uv.exists() else shutil.which("uv")
    if uv_cmd:
        return [uv_cmd, "build", "--wheel", "--out-dir", str(out), str(source)]
    if importlib.util.find_spec("pip") is None:
        return None
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        return [*pip, "--no-build-isolation", str(source)]
    return [*pip, str(source)]  # pip fetches hatchling from the index into an isolated build environment


def build_wheel(source: Path, out: Path) -> Path:
    cmd = build_command(source, out)
    if cmd is None:
        pytest.skip("no tool to build a wheel with: neither uv (next to this Python or on PATH) nor pip is installed")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(REPO, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {name: z.read(name) for name in z.namelist()}


def dist_info(files: dict[str, bytes], name: str) -> str:
    (path,) = [p for p in files if re.fullmatch(rf"airflow_provider_xnat-[^/]+\.dist-info/{name}", p)]
    return files[path].decode()


def source_files() -> dict[str, Path]:
    return {p.relative_to(REPO).as_posix(): p for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


# --- the wheel's contents ---

def test_the_wheel_holds_the_package_its_data_and_the_typing_marker(wheel: Path, wheel_files: dict[str, bytes]) -> None:
    assert wheel.name == f"airflow_provider_xnat-{xnat_provider.__version__}-py3-none-any.whl"
    assert "xnat_provider/py.typed" in wheel_files
    for name in EMULATOR_DATA:
        assert wheel_files.get(name), f"{name} missing or empty in the wheel"
    missing = set(source_files()) - set(wheel_files)
    assert not missing, f"files of the package left out of the wheel: {sorted(missing)}"
    for name, path in source_files().items():
        assert wheel_files[name] == path.read_bytes(), name
    stray = [n for n in wheel_files if not n.startswith(("xnat_provider/", "airflow_provider_xnat-"))
             or "__pycache__" in n or n.endswith(".pyc")]
    assert not stray, f"the wheel holds files outside the package: {stray}"


def test_the_wheel_carries_the_example_dags_where_airflow_does_not_load_them(wheel_files: dict[str, bytes]) -> None:
    dags = sorted((REPO / "dags").glob("*.py"))
    assert {p.name for p in dags} >= {"xnat_prearchive_autoarchive.py", "xnat_scan_pipeline.py",
                                      "xnat_scheduled_ingest.py"}
    for dag in dags:
        assert wheel_files.get(f"xnat_provider/examples/{dag.name}") == dag.read_bytes(), dag.name
    # With load_examples on, Airflow 3.3 adds an installed provider's <package>/example_dags folder as a DAG bundle.
    assert not [n for n in wheel_files if "/example_dags/" in n]


def test_the_wheel_metadata_declares_the_dependencies_and_extras(wheel_files: dict[str, bytes]) -> None:
    meta = email.parser.Parser().parsestr(dist_info(wheel_files, "METADATA"))
    assert meta["Name"] == DIST and meta["Version"] == xnat_provider.__version__
    assert meta["Requires-Python"] == ">=3.11"
    assert set(meta.get_all("Provides-Extra")) >= {"testing", "examples", "celery", "dev"}
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]

    def under(extra: str) -> dict[str, Requirement]:
        return {r.name: r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})}

    runtime = {r.name: r for r in reqs if r.marker is None}
    assert set(runtime) == {"apache-airflow", "requests", "httpx", "tenacity", "pydicom", "lxml"}
    assert runtime["apache-airflow"].specifier.contains("3.3.2") and not runtime["apache-airflow"].specifier.contains(
        "4.0.0")
    assert runtime["httpx"].specifier.contains(locked_version("httpx"))  # what Airflow 3.3 installs

    # python-multipart (the emulator's multipart parser) only with the testing extra
    multipart = [r for r in reqs if r.name == "python-multipart"]
    assert multipart and all(r.marker is not None for r in multipart)
    assert all(r.marker.evaluate({"extra": "testing"}) for r in multipart)
    for extra in set(meta.get_all("Provides-Extra")) - {"testing"}:
        assert "python-multipart" not in under(extra), extra
    assert under("testing")["python-multipart"].specifier.contains(locked_version("python-multipart"))

    assert "numpy" in under("examples")
    celery = under("celery")
    assert {"celery", "postgres", "fab"} <= celery["apache-airflow"].extras
    assert celery["apache-airflow"].specifier == runtime["apache-airflow"].specifier
    # celery 5.7.0 breaks apache-airflow-providers-celery 3.26.0 (the scheduler exits on an ImportError)
    assert not celery["celery"].specifier.contains("5.7.0")
    assert celery["celery"].specifier.contains(locked_version("celery"))


def test_the_wheel_entry_points(wheel_files: dict[str, bytes]) -> None:
    ep = configparser.ConfigParser(delimiters=("=",))
    ep.optionxform = str  # type: ignore[assignment,method-assign]
    ep.read_string(dist_info(wheel_files, "entry_points.txt"))
    expected = {
        ("apache_airflow_provider", "provider_info"): "xnat_provider.get_provider_info:get_provider_info",
        ("pytest11", "xnat_emulator"): "xnat_provider.testing.pytest_plugin",
        ("console_scripts", "xnat-emulator"): "xnat_provider.testing.cli:main",
    }
    for (group, name), target in expected.items():
        assert ep.get(group, name, fallback=None) == target, (group, name)
        module, _, attr = target.partition(":")
        loaded = importlib.import_module(module)
        if attr:
            assert callable(getattr(loaded, attr)), target


def test_the_dockerfile_copies_what_the_wheel_build_needs(tmp_path: Path) -> None:
    from tests.test_docker import copies, dockerfile_instructions

    (source_dir,) = {dest.rstrip("/") for srcs, dest in copies() if "pyproject.toml" in srcs}
    src = tmp_path / "src"
    src.mkdir()
    for srcs, dest in copies():
        dest = dest.rstrip("/")
        for s in srcs:
            if dest == source_dir:
                shutil.copy(REPO / s, src / Path(s).name)
            elif dest.startswith(source_dir + "/"):
                shutil.copytree(REPO / s, src / dest.removeprefix(source_dir + "/"),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    with zipfile.ZipFile(build_wheel(src, tmp_path / "out")) as z:
        names = set(z.namelist())
    assert {"xnat_provider/py.typed", *EMULATOR_DATA} <= names
    assert {f"xnat_provider/examples/{p.name}" for p in (REPO / "dags").glob("*.py")} <= names
    (install,) = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN" and "pip install" in rest]
    extras = re.search(re.escape(source_dir) + r"\[([\w,-]+)\]", install)
    assert extras and {"testing", "examples", "celery"} <= set(extras[1].split(","))


# --- the example DAGs, from the wheel and from the source tree ---

def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def test_examples_copy_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # a pure-Python wheel installs by unpacking
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = run([sys.executable, "-m", "xnat_provider.examples"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    listed = [Path(line) for line in r.stdout.splitlines()]
    assert listed and all(p.parent == site / "xnat_provider" / "examples" for p in listed), listed
    target = tmp_path / "airflow" / "dags"
    r = run([sys.executable, "-m", "xnat_provider.examples", "--copy-to", str(target)], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {
        p.name: p.read_bytes() for p in (REPO / "dags").glob("*.py")}


def test_examples_copy_from_the_source_tree(tmp_path: Path) -> None:
    assert {p.name for p in dag_files()} == {p.name for p in (REPO / "dags").glob("*.py")}
    target = tmp_path / "dags"
    r = run([sys.executable, "-m", "xnat_provider.examples", "--copy-to", str(target)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("copied: ") == len(dag_files())
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {p.name: p.read_bytes() for p in dag_files()}


def test_examples_copy_never_replaces_a_changed_file_unasked(tmp_path: Path) -> None:
    first = dag_files()[0]
    copy_to(tmp_path)
    assert set(copy_to(tmp_path).values()) == {"unchanged"}
    (tmp_path / first.name).write_text("# edited\n")
    with pytest.raises(FileExistsError, match=re.escape(first.name)):
        copy_to(tmp_path)
    assert (tmp_path / first.name).read_text() == "# edited\n"
    assert copy_to(tmp_path, overwrite=True)[tmp_path / first.name] == "replaced"
    assert (tmp_path / first.name).read_bytes() == first.read_bytes()


# --- declared dependencies against what the code imports ---

# Imported directly, guaranteed by a declared dependency: (import name) -> (the distribution that requires it).
THROUGH = {"urllib3": "requests", "cryptography": "apache-airflow-core"}


def third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "xnat_provider"}


def test_every_import_is_a_declared_dependency() -> None:
    project = PYPROJECT["project"]
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    testing = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["testing"]}
    dists = {m: {canonicalize_name(d) for d in ds} for m, ds in packages_distributions().items()}
    for module, parent in THROUGH.items():
        assert any(Requirement(r).name == module for r in requires(parent) or []), (module, parent)
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        allowed = runtime | (testing if rel.startswith("xnat_provider/testing/") else set())
        if rel == "xnat_provider/testing/pytest_plugin.py":
            allowed = allowed | {"pytest"}  # only ever loaded by pytest
        for module in third_party_imports(path):
            provided_by = {"apache-airflow"} if module == "airflow" else dists.get(module, {module})
            if not provided_by & allowed and module not in THROUGH:
                problems.append(f"{rel}: imports {module} ({', '.join(sorted(provided_by))}), not declared")
    assert not problems, "\n".join(problems)


# --- the pytest plugin and the emulator without the `testing` extra ---

def test_loading_the_pytest_plugin_imports_nothing_heavy() -> None:
    code = (
        "import json, sys, time\n"
        "import pytest\n"  # pytest has already imported itself when it loads plugins
        "before = set(sys.modules)\n"
        "t = time.perf_counter()\n"
        "import xnat_provider.testing.pytest_plugin\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'new': sorted(set(sys.modules) - before)}))\n"
    )
    r = run([sys.executable, "-c", code], cwd=REPO)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    heavy = [m for m in result["new"] if m.partition(".")[0] in {
        "airflow", "pydicom", "lxml", "python_multipart", "multipart", "numpy", "requests", "httpx"}
        or m.startswith("xnat_provider.testing.emulator")]
    assert not heavy, heavy
    assert result["new"] == ["xnat_provider", "xnat_provider.testing", "xnat_provider.testing.pytest_plugin"]


@pytest.fixture
def without_multipart(tmp_path: Path) -> dict[str, str]:
    """An environment in which python-multipart cannot be imported, as without the ``testing`` extra."""
    shadow = tmp_path / "shadow" / "python_multipart"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'python_multipart\'", name="python_multipart")\n')
    return {**os.environ, "PYTHONPATH": str(shadow.parent)}


def test_the_emulator_without_the_testing_extra_says_what_to_install(without_multipart: dict[str, str]) -> None:
    code = (
        "import xnat_provider.testing, xnat_provider.testing.pytest_plugin\n"
        "from xnat_provider.testing import FaultRule\n"  # needs no extra
        "try:\n"
        "    from xnat_provider.testing import XnatEmulator\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(type(exc).__name__, exc.name, str(exc), sep='|')\n"
        "else:\n"
        "    print('imported')\n"
    )
    r = run([sys.executable, "-c", code], env=without_multipart, cwd=REPO)
    assert r.returncode == 0, r.stderr
    kind, name, message = r.stdout.strip().split("|")
    assert (kind, name) == ("MissingTestingExtraError", "python_multipart")
    assert "python-multipart" in message and INSTALL_HINT in message


def test_the_console_script_without_the_testing_extra_says_what_to_install(
        without_multipart: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("xnat-emulator")
    if not script.exists():
        pytest.skip(f"the xnat-emulator console script is not installed next to {sys.executable}")
    r = run([str(script), "--port", "0"], env=without_multipart)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and INSTALL_HINT in r.stderr and "python-multipart" in r.stderr
    assert r.stdout == ""  # nothing started


def test_pytest_runs_without_the_testing_extra_and_the_fixture_says_what_to_install(
        tmp_path: Path, without_multipart: dict[str, str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    (project / "test_user.py").write_text(
        "def test_unrelated():\n    assert True\n\n"
        "def test_with_the_emulator(xnat_emulator):\n    raise AssertionError('unreachable')\n")
    r = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rE", str(project)],
            env=without_multipart, cwd=project)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # tests ran, one errored: not a usage error or an internal error
    assert re.search(r"\b1 passed, 1 error\b", out), out
    assert INSTALL_HINT in out and "MissingTestingExtraError" in out
