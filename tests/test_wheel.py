"""The built wheel carries its runtime data: installed outside the checkout, a request runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*")


def test_wheel_installs_and_runs_a_request_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
    )
    (wheel,) = wheels.glob("anygpt-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # the dependencies come from the test environment; anygpt itself only from the wheel
    site = Path(
        subprocess.check_output(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            text=True,
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    drop = ("ANYGPT_HOME", "ANYGPT_MODEL", "PYTHONPATH")  # only the wheel may provide anygpt
    env = {k: v for k, v in os.environ.items() if k not in drop}
    py = str(venv / "bin" / "python")
    where = subprocess.check_output(
        [
            py,
            "-c",
            "import anygpt, anygpt.paths as p; print(anygpt.__file__); print(p.tokenizers_dir())",
        ],
        cwd=work,
        env=env,
        text=True,
    ).split()
    assert str(site) in where[0] and str(site) in where[1]
    static = site / "anygpt" / "serve" / "static"  # the chat page `anygpt serve` shows at /
    assert {p.name for p in static.iterdir()} >= {"index.html", "app.js", "style.css"}
    run = [py, "-m", "anygpt"]
    subprocess.run([*run, "debug-bundle", "B"], cwd=work, env=env, check=True, capture_output=True)
    out = subprocess.run(
        [*run, "base", "--model", "B", "--seed", "1", "--max-new-tokens", "8", "text|speech|hi"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "saved:" in out.stdout
