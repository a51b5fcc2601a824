"""`pip install edgetl` on a Pi (no repo checkout) still knows `--device rpi4`: the wheel carries
devices/ as edgetl.devices, and bench finds the profiles there. Builds a wheel (pip, a few seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_device_profiles(tmp_path):
    src = tmp_path / "src"  # a clean copy: no build/ folder left over from other builds of the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    for name in ("edgetl", "devices"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "whl"), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("edgetl-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    repo_profiles = sorted(p.name for p in (REPO / "devices").glob("*.toml"))
    assert sorted(p.name for p in (tmp_path / "site" / "edgetl" / "devices").glob("*.toml")) == repo_profiles
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from edgetl.bench import devices; "
            "print(devices.available_devices()); print(devices.load_device('rpi4')['file'])")
    env = {k: v for k, v in os.environ.items() if k != "EDGETL_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    names, rpi4 = out.stdout.strip().splitlines()
    assert names == str([Path(n).stem for n in repo_profiles])
    assert Path(rpi4).resolve() == (tmp_path / "site" / "edgetl" / "devices" / "rpi4.toml").resolve()
