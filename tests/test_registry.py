"""ssm_profile.base.registry: one registry for criteria, mixer families, sweeps and commands: a taken name
is an error, lazy entries import on first use, other packages add entries through entry points."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

from ssm_profile.base.errors import SSMProfileError
from ssm_profile.base.registry import NameClashError, Registry


def test_a_name_is_taken_once():
    things: Registry[int] = Registry("thing")
    things.add("a", 1)
    with pytest.raises(NameClashError, match="thing 'a' is registered twice"):
        things.add("a", 2)
    things.add_lazy("b", "json:dumps")
    with pytest.raises(NameClashError):
        things.add_lazy("b", "json:loads")
    with pytest.raises(NameClashError):
        things.add("b", 3)
    assert things.get("a") == 1 and things.names() == ["a", "b"]


def test_a_criterion_that_takes_a_builtin_name_is_refused():
    from ssm_profile.criteria import Criterion, register

    class Impostor(Criterion):
        name = "magnitude"

    with pytest.raises(NameClashError, match="criterion 'magnitude'"):
        register(Impostor)


def test_lazy_entries_import_on_first_use_and_name_what_is_missing(monkeypatch):
    module = types.ModuleType("ssm_profile_test_plugin")
    module.VALUE = 42
    things: Registry[int] = Registry("thing", missing_dependency=lambda name, err: f"{name} needs {err.name}")
    things.add_lazy("answer", "ssm_profile_test_plugin:VALUE")
    things.add_lazy("absent", "ssm_profile_no_such_module:X")
    assert "answer" in things and "ssm_profile_test_plugin" not in sys.modules  # not imported by listing
    monkeypatch.setitem(sys.modules, "ssm_profile_test_plugin", module)
    assert things.get("answer") == 42
    with pytest.raises(SSMProfileError, match="^absent needs ssm_profile_no_such_module$"):
        things.get("absent")


def test_an_unknown_name_is_one_line_with_the_choices():
    from ssm_profile.criteria import get
    from ssm_profile.profiling.record import ProfileSettings

    with pytest.raises(SSMProfileError, match=r"^unknown criterion 'magnitud'; choose from captum, fisher, "):
        get("magnitud")
    with pytest.raises(SSMProfileError, match=r"^unknown sweep 'gird'; choose from adaptive, grid$"):
        ProfileSettings(sweep="gird").validate()


def test_other_packages_add_entries_through_entry_points(monkeypatch):
    module = types.ModuleType("ssm_profile_test_scores")

    class Plugin:
        name = "plugin_score"

    module.Plugin = Plugin
    monkeypatch.setitem(sys.modules, "ssm_profile_test_scores", module)
    points = [EntryPoint("plugin_score", "ssm_profile_test_scores:Plugin", "ssm_profile.criteria")]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: points if group == "ssm_profile.criteria" else [])
    criteria: Registry[type] = Registry("criterion", "ssm_profile.criteria")
    criteria.add("magnitude", object)
    assert criteria.names() == ["magnitude", "plugin_score"] and criteria.get("plugin_score") is Plugin

    clashing = [EntryPoint("magnitude", "ssm_profile_test_scores:Plugin", "ssm_profile.criteria")]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: clashing)
    again: Registry[type] = Registry("criterion", "ssm_profile.criteria")
    again.add("magnitude", object)
    with pytest.raises(SSMProfileError, match="takes a name ssm-profile already has"):
        again.names()


def test_the_projects_registries_hold_what_they_should():
    from ssm_profile.cli.main import COMMANDS
    from ssm_profile.criteria.base import CRITERIA
    from ssm_profile.mixers import FAMILIES
    from ssm_profile.model.stock import ARCHES
    from ssm_profile.profiling.sweeps import SWEEPS

    assert COMMANDS.names()[:3] == ["analyze", "profile", "plan"] and "env" in COMMANDS
    assert {"magnitude", "wanda", "obs", "captum"} <= set(CRITERIA.names())
    assert FAMILIES.names() == ["selective_scan", "ssd", "gated_delta"] and SWEEPS.names() == ["adaptive", "grid"]
    assert {"mamba", "falcon_mamba", "mamba2", "zamba2", "qwen3_next", "kimi_linear"} <= set(ARCHES.names())


def test_an_architecture_claimed_twice_is_an_error_and_an_unknown_one_gets_the_generic_adapter():
    from ssm_profile.model.stock import MambaArch, StockArch, register_arch, stock_arch

    class Impostor(StockArch):
        model_types = ("an_unused_type", "mamba")

    with pytest.raises(NameClashError, match="architecture 'mamba' is registered twice"):
        register_arch(Impostor())
    assert type(stock_arch("mamba")) is MambaArch  # the first adapter stays
    assert type(stock_arch("an_unused_type")) is StockArch  # and none of the impostor's types was taken
    assert type(stock_arch("no_such_model_type")) is StockArch and type(stock_arch(None)) is StockArch


def test_importing_a_lazy_entrys_module_directly_registers_that_entry_not_a_clash():
    """``import ssm_profile.criteria.captum_attr`` before anyone asked for 'captum' is no second entry."""
    import subprocess

    code = ("import ssm_profile.criteria.captum_attr as m; from ssm_profile.criteria.base import CRITERIA; "
            "assert CRITERIA.get('captum') is m.CaptumChannelAttribution")
    subprocess.run([sys.executable, "-c", code], check=True)
    things: Registry[type] = Registry("thing")
    things.add_lazy("impostor", "json:JSONDecoder")

    class JSONDecoder:  # same attribute name, another module: still a clash
        pass

    with pytest.raises(NameClashError):
        things.add("impostor", JSONDecoder)
