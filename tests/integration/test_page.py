"""A kept run's page in a real browser: Debian's Chromium, headless, loads report.html with no
console error, takes a screenshot, and every image and link in the page resolves inside the
run directory."""

import shutil
import subprocess
from pathlib import Path

import pytest

from lab.show.page import PAGE, resources

from .helpers import ikelab, ikelab_json

pytestmark = pytest.mark.root


def test_a_captured_runs_page_loads_in_headless_chromium_and_everything_in_it_resolves(
        kept, tmp_path):
    code, report = ikelab_json("--hash", "split", "--peers", "2", "--capture")
    assert code == 0, [t["problems"] for t in report["tunnels"]]
    run_dir = Path(report["run_dir"])
    opened = ikelab("open", run_dir.name)
    assert opened.returncode == 0 and opened.stdout.strip() == str(run_dir / PAGE)
    page = run_dir / PAGE
    text = page.read_text()
    for part in ("all is well", "IKE of p2", "ANNOUNCE", "keys/esp_sa", "captures/sync.pcap",
                 "ownership table"):
        assert part in text, part
    refs = resources(page)
    assert refs and all(ref.startswith("data:") or (run_dir / ref).is_file() for ref in refs)
    assert not [ref for ref in refs if "://" in ref]  # nothing fetched from elsewhere
    chromium = shutil.which("chromium")
    assert chromium, "setup.sh installs chromium"
    shot = tmp_path / "page.png"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE(" in line]
    assert not console, console
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 20000
