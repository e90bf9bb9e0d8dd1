"""Plugin discovery through real entry points, validation errors that name the plugin, and isolation of
broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import Backend, hookimpl, load_registry
from harness.cli import main
from harness.registry.manager import PLUGINS_ENV

EXAMPLE_PLUGIN = Path(__file__).parent / "example_plugin"


def make_distribution(root: Path, dist: str, version: str | None, entry_points: dict[str, str],
                      modules: dict[str, str], *, name_in_metadata: bool = True, metadata_file: bool = True,
                      group: str = "attnbench.plugins"):
    """Install a fake distribution (dist-info + modules) under ``root``; importlib.metadata finds it on sys.path.

    ``version=None`` leaves ``Version:`` out of METADATA, ``name_in_metadata=False`` leaves ``Name:`` out and
    ``metadata_file=False`` writes no METADATA at all (broken installs seen in the wild).
    """
    info = root / f"{dist.replace('-', '_')}-{version or '0'}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1"] + ([f"Name: {dist}"] if name_in_metadata else []) + \
        ([f"Version: {version}"] if version is not None else [])
    if metadata_file:
        (info / "METADATA").write_text("\n".join(lines) + "\n")
    lines = [f"[{group}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


GOOD = """
    from harness import Backend, Param, hookimpl

    class Doubler(Backend):
        name = "fake-backend"
        description = "a test backend"
        params = (Param("k", int, 4, "keys", min=1),)

    @hookimpl
    def register_backends(register):
        register(Doubler)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    return root


def test_a_plugin_declared_in_the_older_entry_point_group_still_loads(site):
    make_distribution(site, "attnbench-old", "0.1", {"old": "old_good"}, {"old_good": GOOD}, group="attnbench.backends")
    entry = load_registry().backends["fake-backend"]
    assert (entry.plugin.name, entry.plugin.dist) == ("old", "attnbench-old")


def test_builtins_are_the_entry_points_of_attnbench_itself():
    """Adding a built-in is a module in plugins/ and a line in pyproject.toml: nothing in the harness names them."""
    import tomllib

    from harness.registry.manager import DEFAULT_PLUGINS

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert sorted(DEFAULT_PLUGINS) == sorted(declared["project"]["entry-points"]["attnbench.plugins"].values())
    registry = load_registry()
    assert {"dense", "topk", "fbgemm-int8", "dynamic-quant"} <= set(registry.backends)
    assert registry.backends["dense"].plugin.dist == "attnbench"


def test_third_party_backend_is_found_through_its_entry_point(site):
    make_distribution(site, "attnbench-fake", "0.3", {"fake": "fake_good"}, {"fake_good": GOOD})
    registry = load_registry()
    entry = registry.backends["fake-backend"]
    assert (entry.plugin.name, entry.plugin.dist, entry.plugin.version) == ("fake", "attnbench-fake", "0.3")
    backend = registry.resolve("fake-backend:k=9")
    assert backend.spec == "fake-backend:k=9" and backend.plugin_version == "0.3"
    assert "dense" in registry.backends and not registry.failures


def test_plugin_that_fails_to_import_is_reported_and_others_work(site):
    make_distribution(site, "attnbench-broken", "1.0", {"broken": "fake_broken"},
                      {"fake_broken": "raise ImportError('needs libfoo')"})
    make_distribution(site, "attnbench-fake", "0.3", {"fake": "fake_good"}, {"fake_good": GOOD})
    registry = load_registry()
    (failure,) = registry.failures
    assert failure.plugin == "broken" and "attnbench-broken 1.0" in failure.dist and "needs libfoo" in failure.error
    assert {"dense", "fake-backend"} <= set(registry.backends)


def test_plugin_that_raises_while_registering_adds_nothing(site):
    make_distribution(site, "attnbench-half", "0.1", {"half": "fake_half"}, {"fake_half": """
        from harness import Backend, hookimpl

        class First(Backend):
            name = "first-ok"

        @hookimpl
        def register_backends(register):
            register(First)
            raise RuntimeError("boom after the first")
    """})
    registry = load_registry()
    assert "first-ok" not in registry.backends
    (failure,) = registry.failures
    assert failure.plugin == "half" and "boom after the first" in failure.error


@pytest.mark.parametrize("body, message", [
    ("register(Dup)", "backend name 'dense' is already registered by plugin 'plugins.dense'"),
    ("register(Dup())", "register() takes a subclass of harness.Backend"),
    ("register(BadParam)", "bad parameter spec: parameter 'k': default is invalid"),
    ("register(BadName)", "has name 'Bad Name'"),
])
def test_validation_errors_name_the_plugin(site, body, message):
    module = f"fake_bad_{abs(hash(body))}"  # a fresh module per case: sys.modules caches imports
    make_distribution(site, "attnbench-bad", "2.0", {"bad": module}, {module: f"""
        from harness import Backend, Param, hookimpl

        class Dup(Backend):
            name = "dense"

        class BadParam(Backend):
            name = "bad-param"
            params = (Param("k", int, 0, min=1),)

        class BadName(Backend):
            name = "Bad Name"

        @hookimpl
        def register_backends(register):
            {body}
    """})
    registry = load_registry()
    (failure,) = registry.failures
    assert failure.plugin == "bad" and message in failure.error and "plugin 'bad'" in failure.error
    assert registry.backends["dense"].plugin.name == "plugins.dense"


def test_misspelled_hook_is_reported(site):
    make_distribution(site, "attnbench-typo", "0.1", {"typo": "fake_typo"}, {"fake_typo": """
        from harness import hookimpl

        @hookimpl
        def register_backend(register):
            pass
    """})
    registry = load_registry()
    (failure,) = registry.failures
    assert failure.plugin == "typo" and "register_backend" in failure.error


def test_environment_variable_pins_the_plugins_that_load(site):
    make_distribution(site, "attnbench-fake", "0.3", {"fake": "fake_good"}, {"fake_good": GOOD})
    assert "fake-backend" not in load_registry(env={PLUGINS_ENV: ""}).backends
    assert "fake-backend" in load_registry(env={PLUGINS_ENV: "fake"}).backends
    registry = load_registry(env={PLUGINS_ENV: "fake,missing"})
    (failure,) = registry.failures
    assert failure.plugin == "missing" and "no installed distribution" in failure.error


def test_backends_command_lists_plugin_version_params_and_failures(site, capsys):
    make_distribution(site, "attnbench-fake", "0.3", {"fake": "fake_good"}, {"fake_good": GOOD})
    make_distribution(site, "attnbench-broken", "1.0", {"broken": "fake_broken"},
                      {"fake_broken": "raise ImportError('needs libfoo')"})
    assert main(["backends", "--json", "--check"]) == 0
    listing = json.loads(capsys.readouterr().out)
    fake = next(b for b in listing["backends"] if b["name"] == "fake-backend")
    assert (fake["plugin"], fake["distribution"], fake["version"], fake["available"]) == \
        ("fake", "attnbench-fake", "0.3", True)
    assert fake["params"][0]["summary"] == "k: int = 4 [1..]"
    assert listing["failed_plugins"][0]["plugin"] == "broken"
    assert main(["backends", "--check"]) == 0
    text = capsys.readouterr().out
    assert "fake-backend" in text and "plugin fake (attnbench-fake 0.3); available" in text
    assert "failed plugin broken (attnbench-broken 1.0): ImportError: needs libfoo" in text


def test_unavailable_backend_is_listed_with_its_reason(registry):
    class NeedsHardware(Backend):
        name = "needs-hw"

        @classmethod
        def unavailable_reason(cls):
            return "CPU lacks AMX"

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register(NeedsHardware)

    registry = load_registry(entry_points=False, extra_plugins=(Plugin(),))
    assert registry.resolve("needs-hw").unavailable_reason() == "needs-hw: CPU lacks AMX"


def test_example_package_installs_and_is_listed(tmp_path):
    """The example plugin package, really installed (pip, into a target directory), shows up in `backends`."""
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE_PLUGIN)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(Path(__file__).parents[1])])}
    env.pop(PLUGINS_ENV, None)
    out = subprocess.run([sys.executable, "-m", "harness", "backends", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    entry = next(b for b in json.loads(out)["backends"] if b["name"] == "bf16-sdpa")
    assert (entry["plugin"], entry["distribution"], entry["version"]) == ("bf16", "attnbench-example", "0.2.0")


@pytest.mark.parametrize("kind", ["no-version", "no-name", "no-metadata"])
def test_plugin_with_missing_metadata_is_recorded_as_unknown(site, kind):
    """A dist-info without Version (or Name, or METADATA) loads; the gaps read "unknown"."""
    make_distribution(site, "attnbench-fake", None if kind != "no-name" else "0.3", {"fake": "fake_good"},
                      {"fake_good": GOOD}, name_in_metadata=kind != "no-name", metadata_file=kind != "no-metadata")
    registry = load_registry()
    assert not registry.failures
    entry = registry.backends["fake-backend"]
    expected = {"no-version": ("attnbench-fake", "unknown"), "no-name": ("unknown", "0.3"),
                "no-metadata": ("unknown", "unknown")}[kind]
    assert (entry.plugin.dist, entry.plugin.version) == expected
    backend = registry.resolve("fake-backend")
    assert (backend.plugin_dist, backend.plugin_version) == expected


def test_plugin_info_never_holds_none():
    from harness import PluginInfo

    info = PluginInfo("probe", None, "")
    assert (info.dist, info.version) == ("unknown", "unknown")


PROBE = """
    from harness import Backend, hookimpl

    class Probe(Backend):
        name = "{name}"

    @hookimpl
    def register_backends(register):
        register(Probe)
"""


def test_two_distributions_declaring_one_entry_point_name_is_a_reported_clash(site, capsys):
    """Neither loads, and the failure names both distributions."""
    make_distribution(site, "attnbench-probe-one", "1.0", {"probe": "probe_one"},
                      {"probe_one": PROBE.format(name="probe-one")})
    make_distribution(site, "attnbench-probe-two", "2.0", {"probe": "probe_two"},
                      {"probe_two": PROBE.format(name="probe-two")})
    make_distribution(site, "attnbench-fake", "0.3", {"fake": "fake_good"}, {"fake_good": GOOD})
    registry = load_registry()
    (failure,) = registry.failures
    assert failure.plugin == "probe"
    assert "attnbench-probe-one 1.0" in failure.dist and "attnbench-probe-two 2.0" in failure.dist
    assert "declared by 2 distributions" in failure.error and "probe_one" in failure.error \
        and "probe_two" in failure.error and "neither is loaded" in failure.error
    assert not {"probe-one", "probe-two"} & set(registry.backends)
    assert {"dense", "fake-backend"} <= set(registry.backends)  # everything else still works
    assert main(["backends", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [f["plugin"] for f in listing["failed_plugins"]] == ["probe"]
    assert main(["backends"]) == 0
    assert "failed plugin probe (attnbench-probe-one 1.0 and attnbench-probe-two 2.0)" in capsys.readouterr().out


def _quick_run(store, model_dir, backends):
    from harness import RunSpec, run

    spec = RunSpec(backends=backends, tasks=["sst2"], model=[str(model_dir)], limit=8, eval_batch_size=4,
                   batch_size=1, seq_len=8, repeats=1, warmup=0, fidelity_examples=4, store=store, progress=False)
    return run(spec, log=lambda m: None)


def test_run_with_a_versionless_plugin_measures_it_and_records_unknown(site, tmp_path, tiny_model_dir):
    """Every cell of the plugin used to fail (eval) or crash the run (speed) on the None version."""
    from harness import read_results

    make_distribution(site, "attnbench-fake", None, {"fake": "fake_good"}, {"fake_good": GOOD})
    result = _quick_run(tmp_path / "store", tiny_model_dir, ["dense", "fake-backend"])
    assert result.failures == {}
    stored = read_results(tmp_path / "store")
    fake = stored[stored["backend"] == "fake-backend"]
    assert set(fake["category"]) >= {"speed", "memory", "quality", "agreement"}
    assert set(fake["plugin_version"]) == {"unknown"} and set(fake["plugin_dist"]) == {"attnbench-fake"}


def test_a_failing_speed_cell_is_recorded_and_the_others_are_stored(tmp_path, tiny_model_dir):
    """One backend that raises in its speed cell fails alone, with its reason, like an eval cell."""
    from harness import read_results

    class Broken(Backend):
        name = "broken-attn"

        def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            raise RuntimeError("kernel exploded")

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register(Broken)

    from harness import RunSpec, run

    registry = load_registry(entry_points=False, extra_plugins=(Plugin(),))
    spec = RunSpec(backends=["dense", "broken-attn"], tasks=["sst2"], model=[str(tiny_model_dir)], limit=8,
                   eval_batch_size=4, batch_size=1, seq_len=8, repeats=1, warmup=0, fidelity_examples=4,
                   store=tmp_path / "store", progress=False)
    result = run(spec, registry, log=lambda m: None)
    assert set(result.failures) == {"speed/1x8/t%d/broken-attn" % result.rows["threads"].iloc[0],
                                    "eval/sst2/broken-attn"}
    assert all("RuntimeError: kernel exploded" in reason for reason in result.failures.values())
    stored = read_results(tmp_path / "store")
    assert set(stored["backend"]) == {"dense"}
    assert {"latency_forward", "latency_attention_core", "accuracy"} <= set(stored["metric"])
