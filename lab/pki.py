"""Certificates for `--auth pubkey`: a lab CA and a key and certificate per identity.

Made with strongSwan's own `pki` tool into the run directory. ECDSA P-256 keys keep it fast.
"""

import subprocess
from pathlib import Path

from .render import Credentials
from .topology import CLUSTER_ID, Plan


def _pki(*args: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["pki", *args], input=stdin, capture_output=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"pki {args[0]}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def make_credentials(plan: Plan, rundir: Path, cluster_key: bytes) -> Credentials:
    """PSK credentials, or (with --auth pubkey) a fresh CA and certificates in `rundir/pki`."""
    if plan.spec.auth != "pubkey":
        return Credentials("psk", cluster_key)
    pki_dir = Path(rundir) / "pki"
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = pki_dir / "ca.key", pki_dir / "ca.crt"
    ca_key.write_bytes(_pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    ca_cert.write_bytes(_pki("--self", "--ca", "--lifetime", "30", "--in", str(ca_key),
                             "--type", "ecdsa", "--dn", "CN=ikelab CA", "--outform", "pem"))
    certs = {}
    for identity in [CLUSTER_ID] + [p.identity for p in plan.peers]:
        key, cert = pki_dir / f"{identity}.key", pki_dir / f"{identity}.crt"
        key.write_bytes(_pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
        public = _pki("--pub", "--in", str(key), "--type", "ecdsa")
        cert.write_bytes(_pki("--issue", "--cacert", str(ca_cert), "--cakey", str(ca_key),
                              "--type", "pub", "--dn", f"CN={identity}", "--san", identity,
                              "--lifetime", "30", "--outform", "pem", stdin=public))
        certs[identity] = (key, cert)
    return Credentials("pubkey", cluster_key, pki_dir, ca_cert, certs)
