"""``tk run``'s settings: typed, and validated in one place (``RunSettings``), before any work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import TINY
from toolkit.cli import main
from toolkit.errors import TkError
from toolkit.run import job
from toolkit.run.settings import RunSettings, RunSummary


def _bad_options(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """Each option no run can take, with the start of the one line that refuses it."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return {
        "missing weights": ({"weights": str(tmp_path / "nope.h5")}, "--weights "),
        "unknown precision": ({"precision": "int4"}, "--precision int4: unknown precision"),
        "unknown engine": ({"engine": "spark"}, "--engine spark: unknown engine"),
        "unknown source": ({"source": "slides"}, "unknown source 'slides'"),
        "invalid patient regex": ({"patient_from": "patient_("}, "--patient-from 'patient_(' is not a valid"),
        "no batch": ({"batch_size": 0}, "--batch-size 0: give 1 or more"),
        "negative actor CPUs": ({"ray_cpus_per_actor": -1.0}, "--ray-cpus-per-actor -1.0: give 0 or more"),
        "zero timeout": ({"analysis_timeout": 0.0}, "--analysis-timeout 0.0"),
        "out is a file": ({"out": a_file}, f"--out {a_file} is a file"),
        "reference without a method": ({"stain_reference": a_file}, "--stain-reference needs a method"),
        "stain on ray": ({"engine": "ray", "stain": "macenko"}, "--stain macenko is not supported with --engine ray"),
    }


@pytest.mark.parametrize("case", ["missing weights", "unknown precision", "unknown engine", "unknown source",
                                  "invalid patient regex", "no batch", "negative actor CPUs", "zero timeout",
                                  "out is a file", "reference without a method", "stain on ray"])
def test_every_bad_option_is_one_line_when_the_settings_are_made(tmp_path, case):
    options, message = _bad_options(tmp_path)[case]
    with pytest.raises(TkError) as raised:
        RunSettings(**options)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_settings_stay_valid_after_construction(tmp_path):
    settings = RunSettings(backbones=["tiny"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.precision = "int4"  # type: ignore[misc]
    with pytest.raises(TkError, match="unknown precision"):
        dataclasses.replace(settings, precision="int4")


def test_a_comma_string_is_not_a_list_of_names():
    with pytest.raises(TypeError, match="give a list of names or 'all'"):
        RunSettings(backbones="tiny,other")  # type: ignore[arg-type]
    assert RunSettings(backbones="all", analyses=[], exports=None).analyses == []


def test_an_out_folder_that_is_a_file_is_fine_when_nothing_is_exported(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert RunSettings(out=tmp_path / "a_file", exports=[]).exports == []


def test_the_cli_hands_over_typed_settings(tmp_path, monkeypatch):
    """Lists arrive as lists, NAME=KIND pairs as a dict, and the run gets them as given."""
    handed: list[RunSettings] = []

    def fake_run(settings: RunSettings) -> RunSummary:
        handed.append(settings)
        return RunSummary("r1", "ok", 0, 0, [], [])

    monkeypatch.setattr(job, "execute_run", fake_run)
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path), "--backbone", "tiny, other,", "--analysis", "none", "--export", "html,tflite",
              "--clinical-type", "age=numeric", "--clinical-type", "grade=categorical", "--set", "probe.c=0.5",
              "--store", str(tmp_path / "s.duckdb"), "--plugin", str(TINY)])
    assert exited.value.code == 0
    [settings] = handed
    assert settings.backbones == ["tiny", "other"]
    assert settings.analyses == [] and settings.exports == ["html", "tflite"]
    assert settings.clinical_types == {"age": "numeric", "grade": "categorical"}
    assert settings.analysis_settings == ["probe.c=0.5"]
    assert settings.plugins == [str(TINY)] and settings.store == tmp_path / "s.duckdb"
    assert settings.data == tmp_path and isinstance(settings.data, Path)


def test_the_cli_defaults_select_everything(tmp_path, monkeypatch):
    handed: list[RunSettings] = []
    monkeypatch.setattr(job, "execute_run", lambda settings: handed.append(settings) or RunSummary("r", "ok", 0, 0, [], []))
    with pytest.raises(SystemExit):
        main(["run", "--store", str(tmp_path / "s.duckdb")])
    [settings] = handed
    assert (settings.backbones, settings.analyses, settings.exports) == ("all", "all", None)
    assert settings == RunSettings(store=tmp_path / "s.duckdb")
