"""Certificates for `--auth pubkey`: a lab CA, and a key and certificate per identity; with
`--chain N`, N intermediate CAs between them.

Made with strongSwan's own `pki` tool into the run directory. ECDSA P-256 keys keep it fast.
The intermediates make IKE_AUTH bigger (with IKE fragmentation off, big enough to cross the
wire as IP fragments), but only if they are sent: charon leaves out an intermediate that the
other side asked for by name (CERTREQ), and it asks for every CA it knows. So the cluster's
certificate and the peers' hang from two chains of their own, each node knows only its own
side's intermediates (untrusted, to build its chain from; the lab CA alone is trusted), and
each side must send its intermediates for the other to verify it.
"""

import subprocess
from pathlib import Path

from ..plan.topology import CLUSTER_ID, Plan
from .render import Credentials


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
    ca_key.write_bytes(_key())
    ca_cert.write_bytes(_pki("--self", "--ca", "--lifetime", "30", "--in", str(ca_key),
                             "--type", "ecdsa", "--dn", "CN=ikelab CA", "--outform", "pem"))
    issuers = {side: _intermediates(pki_dir, side, (ca_cert, ca_key), plan.spec.chain)
               for side in ("cluster", "peers")}
    certs = {}
    for identity in [CLUSTER_ID] + [p.identity for p in plan.peers]:
        chain, issuer = issuers["cluster" if identity == CLUSTER_ID else "peers"]
        key, cert = pki_dir / f"{identity}.key", pki_dir / f"{identity}.crt"
        key.write_bytes(_key())
        cert.write_bytes(_issue(issuer, key, f"CN={identity}", san=identity))
        certs[identity] = (key, cert, chain)
    if plan.crowd:
        chain, issuer = issuers["peers"]
        certs.update(_crowd_certs(plan, pki_dir, issuer, chain))
    return Credentials("pubkey", cluster_key, pki_dir, ca_cert, certs)


def _crowd_certs(plan: Plan, pki_dir: Path, issuer: tuple[Path, Path],
                 chain: tuple[Path, ...]) -> dict:
    """A key and certificate per crowd site, issued like a peer's. In process, with the
    cryptography package: `pki` costs three processes per identity, minutes for 10,000 sites."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate(issuer[0].read_bytes())
    ca_key = serialization.load_pem_private_key(issuer[1].read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    sites_dir = pki_dir / "crowd"
    sites_dir.mkdir(exist_ok=True)
    certs = {}
    for site in plan.sites():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            site.identity)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(site.identity)]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        key_path, cert_path = sites_dir / f"{site.identity}.key", sites_dir / f"{site.identity}.crt"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        certs[site.identity] = (key_path, cert_path, chain)
    return certs


def _intermediates(pki_dir: Path, side: str, root: tuple[Path, Path],
                   depth: int) -> tuple[tuple[Path, ...], tuple[Path, Path]]:
    """`depth` CAs below `root`, each issuing the next: their certificates, and the
    (certificate, key) that issues `side`'s end-entity certificates."""
    chain, issuer = [], root
    for n in range(1, depth + 1):
        key, cert = pki_dir / f"{side}-ca{n}.key", pki_dir / f"{side}-ca{n}.crt"
        key.write_bytes(_key())
        cert.write_bytes(_issue(issuer, key, f"CN=ikelab {side} CA {n}", ca=True))
        chain.append(cert)
        issuer = (cert, key)
    return tuple(chain), issuer


def _key() -> bytes:
    return _pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem")


def _issue(issuer: tuple[Path, Path], key: Path, dn: str, san: str | None = None,
           ca: bool = False) -> bytes:
    """A certificate for `key`'s public key, signed by `issuer` (certificate, key)."""
    public = _pki("--pub", "--in", str(key), "--type", "ecdsa")
    return _pki("--issue", "--cacert", str(issuer[0]), "--cakey", str(issuer[1]), "--type",
                "pub", "--dn", dn, *(["--san", san] if san else []), *(["--ca"] if ca else []),
                "--lifetime", "30", "--outform", "pem", stdin=public)
