"""Certificates and kubeconfigs for the dev control plane, made with the ``openssl`` CLI.

One throw-away CA signs everything: the API server's serving certificate (SANs 127.0.0.1,
localhost and the in-cluster names) and one client certificate per identity. A second CA, the
front proxy's, signs the client certificate the API server shows aggregated API servers (and
lets the controller-manager and scheduler read the requestheader config they look for). The
service account token signing key is a separate RSA key pair. Nothing here is for production.

The openssl CLI is used instead of the ``cryptography`` package so the project needs no
extra Python dependency; every machine this project runs on has ``openssl``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = {sans}
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""

# Identities that get a client certificate: file stem -> subject (O = groups, CN = user).
CLIENT_IDENTITIES = {
    "admin": "/O=system:masters/CN=nodesysctl-admin",
    "kube-controller-manager": "/CN=system:kube-controller-manager",
    "kube-scheduler": "/CN=system:kube-scheduler",
    # What the API server shows a (real) kubelet for logs, exec and port-forward.
    "kube-apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
}

DAYS = "3650"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: KeyPair
    apiserver: KeyPair
    service_account_key: Path  # private, signs tokens (apiserver) and legacy tokens (kcm)
    service_account_pub: Path  # public, verifies tokens
    clients: dict[str, KeyPair]
    front_proxy_ca: KeyPair  # signs the API server's client cert towards aggregated APIs
    front_proxy_client: KeyPair


class OpenSSLError(RuntimeError):
    pass


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise OpenSSLError("the openssl command is needed to make the dev cluster's certificates")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OpenSSLError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path),
        cwd=path.parent,
    )  # fmt: skip


def _ca(directory: Path, stem: str, subject: str) -> KeyPair:
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _ec_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-subj", subject,
        "-config", str(directory / "openssl.cnf"), "-extensions", "ca", "-days", DAYS,
        "-sha256", "-out", str(pair.cert), cwd=directory,
    )  # fmt: skip
    return pair


def _signed(directory: Path, stem: str, subject: str, section: str, ca: KeyPair) -> KeyPair:
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    csr = directory / f"{stem}.csr"
    config = directory / "openssl.cnf"
    _ec_key(pair.key)
    _openssl(
        "req", "-new", "-key", str(pair.key), "-subj", subject, "-config", str(config),
        "-out", str(csr), cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(secrets.randbits(63)), "-days", DAYS, "-sha256",
        "-extfile", str(config), "-extensions", section, "-out", str(pair.cert), cwd=directory,
    )  # fmt: skip
    csr.unlink()
    return pair


def make_pki(directory: Path, *, extra_sans: tuple[str, ...] = ("IP:10.0.0.1",)) -> Pki:
    """Create the CA, the serving and client certificates and the service account keys."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    sans = [
        "IP:127.0.0.1",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        *extra_sans,
    ]
    (directory / "openssl.cnf").write_text(_OPENSSL_CONFIG.format(sans=",".join(sans)))

    ca = _ca(directory, "ca", "/CN=nodesysctl-devcluster-ca")
    front_proxy_ca = _ca(directory, "front-proxy-ca", "/CN=nodesysctl-devcluster-front-proxy-ca")
    front_proxy_client = _signed(
        directory, "front-proxy-client", "/CN=front-proxy-client", "client", front_proxy_ca
    )
    apiserver = _signed(directory, "apiserver", "/CN=kube-apiserver", "server", ca)
    clients = {
        stem: _signed(directory, stem, subject, "client", ca)
        for stem, subject in CLIENT_IDENTITIES.items()
    }
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key),
        cwd=directory,
    )  # fmt: skip
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=directory)
    return Pki(
        directory, ca, apiserver, sa_key, sa_pub, clients, front_proxy_ca, front_proxy_client
    )


def node_client_cert(pki: Pki, node: str, directory: Path) -> KeyPair:
    """A kubelet's client certificate, ``/O=system:nodes/CN=system:node:<node>``: the Node
    authorizer and NodeRestriction give it its own Node, its pods and their objects only."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pki.directory / "openssl.cnf", directory / "openssl.cnf")
    return _signed(directory, "kubelet-client", f"/O=system:nodes/CN=system:node:{node}",
                   "client", pki.ca)  # fmt: skip


def write_kubeconfig(path: Path, *, server: str, ca: Path, client: KeyPair, user: str) -> Path:
    """A kubeconfig with one cluster/user/context, pointing at the files by absolute path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "devcluster", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "devcluster", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
