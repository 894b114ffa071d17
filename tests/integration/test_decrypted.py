"""Decrypted captures: a --capture run's key tables (charon's own keys, `lab.show.keytables`) let
tshark read what IKE_AUTH carries and the LAN pings inside ESP, for IKEv2 and IKEv1; the tables
and the logs they come from are root's alone."""

import stat
import subprocess
from pathlib import Path

import pytest

from .helpers import ikelab, ikelab_json

pytestmark = pytest.mark.root

# What tshark -V names only when it could decrypt: IKE_AUTH's (IKEv2) or Main Mode's and
# Quick Mode's (IKEv1) payloads. Without the keys an IKEv2 SK payload ("Encrypted and
# Authenticated") shows only its IV and its encrypted data.
PAYLOADS = {"2": ["Payload: Identification - Initiator", "Payload: Identification - Responder",
                  "Payload: Authentication", "Payload: Traffic Selector - Initiator",
                  "Payload: Traffic Selector - Responder"],
            "1": ["Payload: Identification", "Payload: Hash", "Payload: Nonce"]}


def tshark(command: str, *options: str) -> str:
    result = subprocess.run(f"{command} {' '.join(options)}", shell=True, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("ike", ["2", "1"])
def test_tshark_decrypts_ike_auth_and_the_pings_inside_esp_of_a_captured_run(kept, ike):
    code, report = ikelab_json("--hash", "split", "--peers", "1", "--ike", ike, "--capture")
    assert code == 0, [t["problems"] for t in report["tunnels"]]
    run_dir = Path(report["run_dir"])
    for path in [*(run_dir / "keys").iterdir(), *run_dir.glob("charon_*.log")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    [tunnel] = report["tunnels"]
    owner = tunnel["owner"]
    listed = ikelab("wireshark", run_dir.name)
    assert listed.returncode == 0, listed.stderr
    commands = listed.stdout.splitlines()
    assert len(commands) == len(report["agents"]) + 1  # every member's port, and sync
    details = "".join(tshark(command, "-V", "-Y", "isakmp") for command in commands)
    for payload in PAYLOADS[ike]:
        assert payload in details, payload
    # The owner's port: its IKE answers are decrypted there, and the ESP it sends the peer
    # carries the LAN pings.
    [command] = ikelab("wireshark", run_dir.name, owner).stdout.splitlines()
    assert "Payload: Identification" in tshark(command, "-V", "-Y", "isakmp")
    pings = tshark(command, "-Y", "'esp && icmp'")
    assert "Echo (ping)" in pings, pings


def test_a_run_without_capture_has_no_key_tables_and_wireshark_says_so_in_one_line(kept):
    code, report = ikelab_json("--peers", "1", "--keep")
    assert code == 0
    result = ikelab("wireshark", Path(report["run_dir"]).name)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "ikelab run --capture" in result.stderr
    assert not list(Path(report["run_dir"]).glob("keys"))
    # the keys are logged in --capture runs only
    log = next(Path(report["run_dir"]).glob("charon_m1.log")).read_text()
    assert "Sk_ei secret" not in log
