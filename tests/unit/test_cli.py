"""The CLI's pure commands work from a clean checkout, with no cluster and no database."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kubetune.cli import main
from kubetune.crd import crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_crd_to_stdout_matches_generator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd", "--out", "-"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_crd_writes_the_file(tmp_path: Path) -> None:
    assert main(["crd", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "kubetune.io_tuningstudies.yaml").read_text() == crd_yaml()


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_plan_shows_space_proposals_and_job(
    example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(ROOT / "examples" / example), "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out
    assert "Search space" in out
    assert "kind: Job" in out
    assert "KUBETUNE_PARAMS" in out
    assert "backoffLimit: 0" in out


def test_plan_on_a_bad_manifest_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "examples" / "quickstart.yaml").read_text().replace("low: 1.0e-4", "low: 5.0")
    )
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "low (5.0) must be less than high" in err
    assert "Traceback" not in err


def test_run_refuses_gp_without_torch_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gp = tmp_path / "gp.yaml"
    gp.write_text(
        (ROOT / "examples" / "quickstart.yaml")
        .read_text()
        .replace("sampler: {type: TPE, seed: 7, nStartupTrials: 6}", "sampler: {type: GP}")
    )
    monkeypatch.setitem(sys.modules, "torch", None)  # as `import torch` sees a missing torch
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(gp)]) == 2
    err = capsys.readouterr().err
    assert "the GP sampler needs PyTorch in this Python environment" in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*.db"))  # refused before any storage was opened
