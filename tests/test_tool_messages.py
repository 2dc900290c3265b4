"""Tools that say what they did: help lines from the same place as the options, whole column names in the
console table, no run folder named by a dry run that keeps none, audit output beside the manifest."""

import csv
import json
import re

import pytest
from conftest import bad_label_manifest

from pipeline.cli import main as train_main
from pipeline.commands import COMMANDS, describe, usage
from pipeline.commands import main as graystem
from pipeline.results.report import format_table
from pipeline.tools import audit
from pipeline.vocab import TABLE_METRICS


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_each_command_with_its_parsers_own_description(capsys):
    listing = usage("graystem")
    for name, module in COMMANDS.items():
        line = next(ln for ln in listing.splitlines() if ln.startswith(f"  {name} "))
        assert line.split(None, 1)[1] == describe(module) != ""
        with pytest.raises(SystemExit) as stop:
            graystem([name, "--help"])
        assert stop.value.code == 0
        # argparse wraps the description: compare word by word
        assert _flat(describe(module)) in _flat(capsys.readouterr().out), name


def test_export_is_described_by_its_default_format(capsys):
    assert "ONNX by default" in describe(COMMANDS["export"])
    assert "TorchScript" not in describe(COMMANDS["export"])
    with pytest.raises(SystemExit):
        graystem(["export", "--help"])
    assert "else onnx" in _flat(capsys.readouterr().out)  # the --format help says the same default


def test_console_table_keeps_whole_column_names_aligned():
    metrics = {k: 0.5 + i / 100 for i, k in enumerate(TABLE_METRICS)}
    summary = {"folds": [{"fold": 0, "metrics": metrics}, {"fold": 1, "metrics": {**metrics, "brier": None}}],
               "mean": metrics, "std": metrics, "oof": metrics, "test": None}
    lines = format_table(summary).splitlines()
    assert lines[0].split() == ["fold", *TABLE_METRICS]  # `balanced_accuracy`, not `balanced_`
    ends = [m.end() for m in re.finditer(r"\S+", lines[0])]
    for line in lines[1:]:
        assert [m.end() for m in re.finditer(r"\S+", line)] == ends, line  # right-aligned under each name
    assert lines[2].split()[-1] == "n/a" and lines[1].split()[3] == "0.520"


def _bad_manifest(small_chest, folder):
    return bad_label_manifest(small_chest, folder)


def test_a_dry_run_names_no_folder_it_does_not_keep(capsys, tmp_path, small_chest):
    runs = tmp_path / "runs"
    base = ["--config", "smoke", "--set", f"output.dir={runs}", "--dry-run"]
    assert train_main([*base, "--set", f"data.manifest={small_chest}"]) == 0
    out = capsys.readouterr()
    assert "run folder" not in out.out + out.err and str(runs) not in out.out + out.err
    assert "nothing kept" in out.out and not any(runs.iterdir())
    # a failing dry run: one line naming the row, and no path of a folder that never stays
    assert train_main([*base, "--set", f"data.manifest={_bad_manifest(small_chest, tmp_path)}"]) == 2
    out = capsys.readouterr()
    assert "row 5" in out.err and str(runs) not in out.out + out.err and not any(runs.iterdir())
    # kept on request, and then named
    kept = tmp_path / "kept"
    assert train_main([*base, "--set", f"data.manifest={small_chest}", "--output-dir", str(kept)]) == 0
    out = capsys.readouterr().out
    assert f"kept in {kept}" in out and (kept / "splits.json").is_file()


def test_audit_writes_beside_the_manifest_not_into_the_working_directory(capsys, tmp_path, small_chest,
                                                                         monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc = audit.main(["--config", "smoke", "--set", f"data.manifest={small_chest}"])
    assert rc in (0, 1)
    folder = small_chest.parent / "audit-smoke"
    report = json.loads((folder / "audit.json").read_text())
    assert report["n_samples"] == len(list(csv.DictReader(small_chest.open())))
    assert list(cwd.iterdir()) == []
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"audited {report['n_samples']} samples of {report['n_patients']} patients; "
                    f"written to {folder} (audit.md, audit.json)")

