"""TLS probes against a MariaDB with its own certificates; one context per configuration."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from services.prober.probe import probe, tls_context
from shared.inventory import Credential
from shared.schema import TLS, Instance
from shared.settings import Secret


def make_certs(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 / db.test, with the openssl CLI."""
    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Vigil CA",
         "-keyout", "ca.key", "-out", "ca.pem")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=db.test", "-keyout",
         "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:db.test,IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return {n: d / f"{n}.pem" for n in ("ca", "server")} | {"key": d / "server.key"}


@pytest.fixture
def tls_db(mariadb_factory, tmp_path):
    certs = make_certs(tmp_path)
    db = mariadb_factory(extra_args=(f"--ssl-ca={certs['ca']}", f"--ssl-cert={certs['server']}",
                                     f"--ssl-key={certs['key']}"))
    return db, certs


def test_tls_probes_verify_the_server(tls_db):
    db, certs = tls_db
    cred = Credential(db.user, Secret(db.password))
    ca = str(certs["ca"])

    def run(tls: TLS) -> tuple[bool, str | None]:
        out = probe(Instance(id="t", host=db.host, port=db.port, tls=tls), cred,
                    time.monotonic() + 3)
        return out.ok, out.reason

    assert run(TLS(ca=ca)) == (True, None)  # verified against 127.0.0.1 in the SAN
    assert run(TLS(ca=ca, server_name="db.test")) == (True, None)
    assert run(TLS(ca=ca, server_name="other.test")) == (False, "tls")
    assert run(TLS(verify=True)) == (False, "tls")  # system CAs do not know our CA
    assert run(TLS(verify=False)) == (True, None)
    with db.root() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
        row = cur.fetchone()
    assert row is not None and int(row[1]) >= 3


def test_tls_required_by_the_probe_but_not_offered_is_a_tls_failure(mariadb):
    out = probe(Instance(id="t", host=mariadb.host, port=mariadb.port, tls=TLS(verify=False)),
                Credential(mariadb.user, Secret(mariadb.password)), time.monotonic() + 3)
    assert (out.ok, out.reason) == (False, "tls")


def test_one_context_per_configuration():
    a, b = TLS(verify=False, server_name="x"), TLS(verify=False, server_name="x")
    assert tls_context(a) is tls_context(b)
    assert tls_context(a) is not tls_context(TLS(verify=False, server_name="y"))


def test_unusable_tls_files_are_a_tls_failure_naming_the_file(tls_db, tmp_path):
    """A CA, certificate or key file the prober cannot load: reason tls, and which file."""
    db, certs = tls_db
    cred = Credential(db.user, Secret(db.password))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = {
        TLS(ca=str(tmp_path / "missing.pem")): f"tls.ca {tmp_path / 'missing.pem'}",
        TLS(ca=str(not_pem)): f"tls.ca {not_pem}",
        TLS(ca=str(certs["ca"]), cert=str(certs["server"]), key=str(not_pem)):
            f"tls.cert/tls.key {certs['server']}, {not_pem}",
    }
    for tls, named in cases.items():
        out = probe(Instance(id="t", host=db.host, port=db.port, tls=tls), cred,
                    time.monotonic() + 3)
        assert (out.ok, out.reason) == (False, "tls"), (tls, out)
        assert out.message is not None and named in out.message, (tls, out.message)
