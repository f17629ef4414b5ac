"""pixi cannot run here: parse pixi.toml and check it agrees with pyproject.toml; check the README's
two commands are what CI and the Makefile run."""
import re
import tomllib

from packaging.requirements import Requirement

from conftest import ROOT


def _pyproject_deps():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    reqs += [Requirement(r) for r in data["project"]["optional-dependencies"]["test"]]
    return {r.name: r for r in reqs}


def test_pixi_parses_and_has_cpu_and_cuda_environments_and_tasks():
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    assert {"cpu", "cuda"} <= set(pixi["environments"])
    assert {"demo", "test"} <= set(pixi["tasks"])
    assert "flows/int8.py --demo" in pixi["tasks"]["demo"]
    assert "pytest" in pixi["tasks"]["test"]
    assert pixi["feature"]["cpu"]["pypi-dependencies"]["torch"]["version"] == "==2.13.0"
    assert "cuda" in pixi["feature"]["cuda"]["system-requirements"]


def test_pixi_pypi_dependencies_agree_with_pyproject():
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())["pypi-dependencies"]
    py = _pyproject_deps()
    pixi_names = {k for k in pixi if k != "yolo-lowbit"}
    assert pixi_names == set(py), f"only in pixi: {pixi_names - set(py)}, only in pyproject: {set(py) - pixi_names}"
    for name, req in py.items():
        spec = pixi[name]
        version = spec if isinstance(spec, str) else spec["version"]
        extras = set() if isinstance(spec, str) else set(spec.get("extras", []))
        assert str(req.specifier) == str(Requirement(f"x{version}").specifier), name
        assert extras == set(req.extras), name


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    mk = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in mk  # a CPU machine must never pull a CUDA torch build


def test_prefect_yaml_points_at_the_flows():
    import yaml

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    eps = {d["name"]: d["entrypoint"] for d in doc["deployments"]}
    assert eps.pop("demo-sweep") == "flows/sweep.py:sweep_flow"
    assert eps and all(e == "flows/int8_flow.py:int8_flow" for e in eps.values())
    from flows.int8_flow import int8_flow
    from flows.sweep import sweep_flow
    from tasks.sweep import SweepConfig, child_configs

    assert int8_flow.name == "yolo-int8" and sweep_flow.name == "yolo-sweep"
    # the demo sweep's children are valid runs, each with a run folder of its own under the sweep's root
    sweep = next(d for d in doc["deployments"] if d["name"] == "demo-sweep")["parameters"]["sweep"]
    children = child_configs(SweepConfig.model_validate(sweep), "s1")
    assert len(children) >= 2 and len({c["run_id"] for c in children.values()}) == len(children)


def test_every_package_folder_is_installed():
    """A subpackage missing from pyproject's list works from the checkout and is absent when installed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("tasks", "flows")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lowercase, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_a_front_page_and_every_link_of_the_docs_resolves():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 300, "the README is a front page: move detail to docs/"
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    linked = set()
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]+\.md)?(?:#([^)\s]+))?\)", page.read_text()):
            dest = (page.parent / target).resolve() if target else page
            assert dest.is_file(), f"{page.name} links to {target}, which does not exist"
            linked.add(dest)
            if anchor:
                heads = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
                assert anchor in heads, f"{page.name} links to {target or page.name}#{anchor}: no such heading"
    orphans = [p.name for p in pages[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages no page links to: {orphans}"
