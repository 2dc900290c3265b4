"""The wheel on its own: built from the sources, installed into a fresh virtual environment outside the checkout,
every console entry point answers --help and `graystem train --dry-run` validates a built-in config on demo data
that the installed package generates under the working directory.

Offline: the wheel is built with the running interpreter's setuptools (--no-build-isolation) and installed with
--no-deps into a fresh venv that sees the running interpreter's site-packages (torch, timm, ...) through a .pth.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="venv layout differs on Windows")
# the offline build uses the running interpreter's setuptools (a bare 3.12 venv has none)
pytest.importorskip("setuptools", minversion="68", reason="building the wheel offline needs setuptools>=68")


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    work = tmp_path_factory.mktemp("packaging")
    # build from a copy: an in-tree build would leave build/ in the checkout, and stale files there end up in
    # later wheels
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "pipeline", src / "pipeline", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    wheels = work / "wheels"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src],
                work, env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = wheels.glob("graystem-*.whl")

    venv = work / "venv"
    proc = _run([sys.executable, "-m", "venv", venv], work, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bin_dir = venv / "bin"
    # the dependencies (torch, timm, ...) from the interpreter running the tests, which may itself be a venv:
    # `venv --system-site-packages` would inherit the BASE interpreter's packages, not this one's. A .pth line
    # appends each directory after the new venv's own site-packages and runs none of their .pth files, so the
    # checkout's editable install stays out and the wheel is what imports.
    import site

    proc = _run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, env)
    (Path(proc.stdout.strip()) / "_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: a graystem in the system site-packages (an editable checkout) is neither reused nor
    # touched
    proc = _run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", wheel], work, env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return bin_dir, env


def test_wheel_contents_and_import_location(venv, tmp_path):
    bin_dir, env = venv
    code = ("import pipeline, pipeline.config as c; print(pipeline.__file__); print(c.PROJECT_ROOT); "
            "print(sorted(p.name for p in c.CONFIG_DIR.glob('*.yaml')))")
    proc = _run([bin_dir / "python", "-c", code], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, root, configs = proc.stdout.splitlines()
    assert Path(where).resolve().is_relative_to((bin_dir.parent).resolve()), where  # not the checkout
    assert root == "None"  # no checkout around an installed package
    shipped = sorted(p.name for p in (ROOT / "pipeline" / "configs").glob("*.yaml"))
    assert configs == str(shipped) and "chest_xray.yaml" in shipped  # every built-in config is in the wheel


# every subcommand's --help in one interpreter: a process per command would import torch nine times
_HELP_ALL = """
import contextlib, io, json
from pipeline.commands import COMMANDS, main
out = {}
for name in COMMANDS:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            rc = main([name, "--help"])
        except SystemExit as exc:
            rc = exc.code
    out[name] = [rc, buf.getvalue()]
print(json.dumps(out))
"""


def test_every_entry_point_answers_help(venv, tmp_path):
    bin_dir, env = venv
    proc = _run([bin_dir / "graystem", "--help"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in COMMANDS:
        assert f"  {name} " in proc.stdout, name
    proc = _run([bin_dir / "graystem", "predict", "--help"], tmp_path, env)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: graystem predict"), proc.stderr[-2000:]
    proc = _run([bin_dir / "python", "-c", _HELP_ALL], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, (rc, text) in json.loads(proc.stdout).items():
        assert rc == 0 and text.startswith(f"usage: graystem {name}"), (name, rc, text[:200])
    proc = _run([bin_dir / "graystem-train", "--help"], tmp_path, env)
    assert proc.returncode == 0 and "--dry-run" in proc.stdout, proc.stderr[-2000:]
    proc = _run([bin_dir / "python", "-m", "pipeline", "--help"], tmp_path, env)
    assert proc.returncode == 0 and "check-stem" in proc.stdout, proc.stderr[-2000:]
    proc = _run([bin_dir / "graystem", "nonsense"], tmp_path, env)
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def test_installed_dry_run_generates_demo_data_in_the_working_directory(venv, tmp_path):
    bin_dir, env = venv
    out = tmp_path / "run"
    proc = _run([bin_dir / "graystem", "train", "--config", "chest_xray", "--dry-run", "--output-dir", out], tmp_path,
                env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "config and data are valid" in proc.stdout, proc.stdout[-2000:]
    demo = tmp_path / "data" / "demo" / "chest_xray"
    assert (demo / "labels.csv").is_file() and (demo / ".complete").is_file()
    assert (out / "splits.json").is_file() and (out / "config.yaml").is_file()

    proc = _run([bin_dir / "graystem", "train", "--config", "no_such_config", "--dry-run"], tmp_path, env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --config no_such_config")
    assert "Traceback" not in proc.stderr and "chest_xray" in proc.stderr


def test_installed_plan_validates_and_trains_dry_run(venv, small_chest, tmp_path):
    """`graystem plan` from the wheel writes a config that the installed trainer accepts, and `--config auto`
    plans, validates and records RUN/plan.json in one command."""
    bin_dir, env = venv
    planned = tmp_path / "planned.yaml"
    proc = _run([bin_dir / "graystem", "plan", small_chest, "--budget", "3m", "--threads", "1", "--out", planned],
                tmp_path, env, timeout=600)
    assert proc.returncode == 0 and planned.read_text().startswith("# Planned by `graystem plan`"), proc.stderr[-2000:]
    # the synthetic demo's patients are renders of one template: near copies by hash, so warn only (as smoke.yaml)
    proc = _run([bin_dir / "graystem", "train", "--config", planned, "--set", "data.near_duplicates=warn",
                 "--dry-run", "--output-dir", tmp_path / "from_yaml"], tmp_path, env, timeout=600)
    assert proc.returncode == 0 and "config and data are valid" in proc.stdout, proc.stderr[-2000:]
    proc = _run([bin_dir / "graystem", "train", "--config", "auto", "--budget", "3m", "--set",
                 f"data.manifest={small_chest}", "--set", "train.threads=1", "--set", "data.near_duplicates=warn",
                 "--dry-run", "--output-dir", tmp_path / "auto"], tmp_path, env, timeout=600)
    assert proc.returncode == 0 and "config and data are valid" in proc.stdout, proc.stderr[-2000:]
    record = json.loads((tmp_path / "auto" / "plan.json").read_text())
    assert record["budget_s"] == 180 and record["keys"]["data.image_size"]["reason"]
