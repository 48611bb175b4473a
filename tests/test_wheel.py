"""The package as a user installs it: a wheel in a fresh virtual environment, no repository beside it.

The environment's own site-packages holds only posterlens (from the wheel); its dependencies
are reached through a ``.pth`` line pointing at this environment's site-packages (installing
torch again would take minutes), whose own ``.pth`` files (the editable install) are not read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with the wheel built from this checkout installed; returns its bin/."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work),
                    str(REPO)], check=True, capture_output=True)
    [wheel] = work.glob("posterlens-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    return venv / "bin"


def _run(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([*args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    done = _run(installed, str(installed / "python"), "-c", "import posterlens; print(posterlens.__file__)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(installed.parent) in done.stdout and str(REPO) not in done.stdout


def test_an_installed_wheel_predicts_one_poster_with_the_released_model(installed, tmp_path):
    code = "from posterlens.paths import SAMPLE_DIR; print(sorted((SAMPLE_DIR / 'images').glob('*.jpg'))[0])"
    poster = _run(installed, str(installed / "python"), "-c", code, cwd=tmp_path).stdout.strip()
    assert str(installed.parent) in poster
    done = _run(installed, str(installed / "posterlens"), "predict", poster, "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 poster predicted" in done.stderr
    assert (tmp_path / "out" / "predictions_final.csv").is_file()
    assert "Traceback" not in done.stderr


def test_an_installed_wheel_finds_its_int8_calibration_posters_or_says_why_not(installed, tmp_path):
    code = ("from posterlens.features import engines, int8; "
            "print(engines.resolve_engine('auto', posters=1000)); print(engines.int8_unavailable()); "
            "print(int8.CALIBRATION_DIR); print(len(list(int8.CALIBRATION_DIR.glob('*.jpg'))))")
    done = _run(installed, str(installed / "python"), "-c", code, cwd=tmp_path)
    engine, reason, folder, posters = done.stdout.strip().splitlines()
    assert str(installed.parent) in folder and int(posters) >= 64
    assert (engine, reason) == ("openvino-int8", "None") or (engine != "openvino-int8" and reason != "None")


def _posterlens(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = _run(installed, str(installed / "posterlens"), *args, cwd=cwd)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def test_an_installed_wheel_runs_every_command_without_the_repository(installed, tmp_path):
    sample = _run(installed, str(installed / "python"), "-c",
                  "from posterlens.paths import SAMPLE_DIR; print(SAMPLE_DIR)", cwd=tmp_path).stdout.strip()
    poster = f"{sample}/images/tt0085154.jpg"
    assert _posterlens(installed, "demo", "--help", cwd=tmp_path).returncode == 0
    explained = _posterlens(installed, "explain", "-i", poster, "-o", str(tmp_path / "maps"), cwd=tmp_path)
    assert explained.returncode == 0 and list((tmp_path / "maps").glob("*.png")), explained.stderr
    embedded = _posterlens(installed, "embed", "-c", f"{sample}/MovieGenre.csv", "--engine", "openvino-int8",
                           "--backbone", "efficientnet_lite0", cwd=tmp_path)
    assert embedded.returncode == 0, embedded.stderr
    demo = _posterlens(installed, "demo", "-o", str(tmp_path / "demo"), cwd=tmp_path)
    assert demo.returncode == 0 and (tmp_path / "demo" / "report" / "report.html").is_file(), demo.stderr


def test_an_installed_wheel_serves(installed, tmp_path):
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen([str(installed / "posterlens"), "serve", "-p", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert health is not None and health.status_code == 200, server.poll()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output
