"""A small test PKI made with the openssl command line, and TLS client helpers
for the gatehouse TLS integration tests.

Every key is ECDSA P-256. Leaves are signed by an intermediate CA that is
signed by a root CA; a leaf's .pem file holds the leaf and the intermediate
(a "fullchain"), so a client that trusts only the root can verify it only
when the server sends the whole chain.
"""
import os
import re
import secrets
import socket
import ssl
import subprocess
import time
from pathlib import Path

from harness import Conn, Deadline, Nginx

OPENSSL = "/usr/bin/openssl"


class OpenSSLError(Exception):
    pass


def openssl(*args, cwd=None, input=None, timeout=30):
    """Runs the openssl command line; returns stdout (text). Raises on failure."""
    p = subprocess.run([OPENSSL] + [str(a) for a in args], cwd=cwd, input=input,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise OpenSSLError(f"openssl {' '.join(str(a) for a in args)} failed "
                           f"({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def new_key(path, kind="ec"):
    """A new private key: ECDSA P-256, or kind="rsa" for RSA 2048 (only for
    checking that RSA key transport is refused, which an ECDSA-only server
    could not offer anyway)."""
    if kind == "rsa":
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
    else:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-pkeyopt", "ec_param_enc:named_curve", "-out", path)
    os.chmod(path, 0o600)
    return Path(path)


def _san(names):
    out = []
    for n in names:
        if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:]*", n):
            out.append(f"IP:{n}")
        else:
            out.append(f"DNS:{n}")
    return ",".join(out)


class Cert:
    """One certificate: key, the leaf alone, and the file a server loads
    (leaf plus the chain up to, not including, the root)."""

    def __init__(self, name, key, leaf, chain_file, subject_cn, serial):
        self.name = name
        self.key = Path(key)
        self.leaf = Path(leaf)
        self.pem = Path(chain_file)
        self.subject_cn = subject_cn
        self.serial = serial

    def __repr__(self):
        return f"<Cert {self.name} CN={self.subject_cn} serial={self.serial}>"


class PKI:
    """Root CA, intermediate CA and leaves in directory d."""

    def __init__(self, d, label="Gatehouse Test"):
        self.d = Path(d)
        self.d.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.root_key = new_key(self.d / "root.key")
        self.root = self.d / "root.pem"
        openssl("req", "-x509", "-new", "-key", self.root_key, "-out", self.root,
                "-days", "3650", "-subj", f"/O={label}/CN={label} Root CA",
                "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-addext", "subjectKeyIdentifier=hash")
        self.inter_key = new_key(self.d / "inter.key")
        self.inter = self.d / "inter.pem"
        csr = self.d / "inter.csr"
        openssl("req", "-new", "-key", self.inter_key, "-out", csr,
                "-subj", f"/O={label}/CN={label} Intermediate CA")
        ext = self.d / "inter.ext"
        ext.write_text("[v3]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n"
                       "keyUsage=critical,keyCertSign,cRLSign\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
        openssl("x509", "-req", "-in", csr, "-CA", self.root, "-CAkey", self.root_key,
                "-set_serial", self._next_serial(), "-days", "3650", "-sha256",
                "-extfile", ext, "-extensions", "v3", "-out", self.inter)

    def _next_serial(self):
        """A random positive 128-bit serial (as decimal text): as much entropy
        as public CAs use, so scanners have nothing to say about it."""
        return str(int("1" + secrets.token_hex(15), 16))

    def _leaf_ext(self, names, kind="ec"):
        usage = "digitalSignature,keyEncipherment" if kind == "rsa" else "digitalSignature"
        return ("[v3]\nbasicConstraints=critical,CA:FALSE\n"
                f"keyUsage=critical,{usage}\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
                # Revocation pointers (never fetched: the tests have no
                # network) so testssl judges the server, not a bare cert.
                "crlDistributionPoints=URI:http://crl.example.test/inter.crl\n"
                "authorityInfoAccess=OCSP;URI:http://ocsp.example.test/\n"
                f"subjectAltName={_san(names)}\n")

    def leaf(self, name, cn, sans, days=365, key=None, chain=True, kind="ec"):
        """A leaf signed by the intermediate, valid from now for `days`.
        key: reuse that key file (else a new one of kind). chain: write leaf
        plus intermediate into NAME.pem (else the leaf alone)."""
        key = Path(key) if key else new_key(self.d / f"{name}.key", kind)
        csr = self.d / f"{name}.csr"
        openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
        ext = self.d / f"{name}.ext"
        ext.write_text(self._leaf_ext(sans, kind))
        leaf = self.d / f"{name}.leaf.pem"
        serial = self._next_serial()
        openssl("x509", "-req", "-in", csr, "-CA", self.inter, "-CAkey", self.inter_key,
                "-set_serial", serial, "-days", str(days), "-sha256",
                "-extfile", ext, "-extensions", "v3", "-out", leaf)
        return self._finish(name, key, leaf, cn, serial, chain)

    def leaf_dated(self, name, cn, sans, start, end):
        """A leaf valid from start to end (YYYYMMDDHHMMSSZ), made with
        `openssl ca` because OpenSSL 3.0's `x509 -req` has no start date."""
        key = new_key(self.d / f"{name}.key")
        csr = self.d / f"{name}.csr"
        openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
        cadir = self.d / f"ca-{name}"
        cadir.mkdir()
        (cadir / "index.txt").write_text("")
        serial = self._next_serial()
        hexs = f"{int(serial):X}"
        (cadir / "serial").write_text(("0" * (len(hexs) % 2)) + hexs + "\n")
        cnf = cadir / "ca.cnf"
        cnf.write_text(
            "[ca]\ndefault_ca=test_ca\n"
            "[test_ca]\n"
            f"dir={cadir}\n"
            "database=$dir/index.txt\nserial=$dir/serial\nnew_certs_dir=$dir\n"
            f"certificate={self.inter}\nprivate_key={self.inter_key}\n"
            "default_md=sha256\npolicy=policy_any\nunique_subject=no\n"
            "copy_extensions=none\nemail_in_dn=no\n"
            "[policy_any]\ncommonName=supplied\n"
            + self._leaf_ext(sans))
        leaf = self.d / f"{name}.leaf.pem"
        openssl("ca", "-batch", "-config", cnf, "-in", csr, "-out", leaf, "-notext",
                "-startdate", start, "-enddate", end, "-extensions", "v3")
        return self._finish(name, key, leaf, cn, str(int(serial)), True)

    def _finish(self, name, key, leaf, cn, serial, chain):
        pem = self.d / f"{name}.pem"
        text = Path(leaf).read_text()
        if chain:
            text += self.inter.read_text()
        pem.write_text(text)
        return Cert(name, key, leaf, pem, cn, serial)


# ---------------------------------------------------------------- clients

def client_context(cafile, check_hostname=True, alpn=("http/1.1",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(cafile))
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TlsConn(Conn):
    """harness.Conn over TLS: the same request/response helpers."""

    def __init__(self, port, ctx, sni, host="127.0.0.1", timeout=10.0):
        super().__init__(port, host=host, timeout=timeout)
        raw = self.sock
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        except Exception:
            raw.close()
            raise
        self.sock.settimeout(timeout)

    def _fill(self, dl, size=262144):
        try:
            return super()._fill(dl, size)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self.eof = True
            return False

    def peer_cert_der(self):
        return self.sock.getpeercert(binary_form=True)

    def peer_subject_serial(self):
        return cert_subject_serial(self.peer_cert_der())


def cert_subject_serial(der_or_pem):
    """(subject CN, serial as a decimal string) of a certificate."""
    if isinstance(der_or_pem, (bytes, bytearray)):
        pem = ssl.DER_cert_to_PEM_cert(bytes(der_or_pem))
    else:
        pem = der_or_pem
    out = openssl("x509", "-noout", "-subject", "-serial", "-nameopt", "RFC2253", input=pem)
    cn = re.search(r"subject=.*?CN=([^,\n]+)", out)
    ser = re.search(r"serial=([0-9A-Fa-f]+)", out)
    return (cn.group(1) if cn else None, str(int(ser.group(1), 16)) if ser else None)


def s_client(port, *args, servername=None, timeout=15, stdin=b"Q\n"):
    """openssl s_client against 127.0.0.1:port; returns (rc, stdout+stderr).
    stdin "Q" makes it quit right after the handshake."""
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}"]
    if servername:
        argv += ["-servername", servername]
    else:
        argv += ["-noservername"]
    argv += list(args)
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return 124, out.decode(errors="replace")
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def handshake_ok(out):
    """True when s_client's output shows a completed handshake."""
    m = re.search(r"^\s*(?:New|Reused), (TLSv[\d.]+|\(NONE\)), Cipher is (\S+)", out, re.M)
    return bool(m) and m.group(2) != "(NONE)" and "(NONE)" not in m.group(1)


def negotiated(out):
    m = re.search(r"^\s*(?:New|Reused), (TLSv[\d.]+), Cipher is (\S+)", out, re.M)
    return (m.group(1), m.group(2)) if m else (None, None)


def pem_blocks(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


def tls_ready(port, seconds=10):
    """Polls until a TLS handshake (no verification) completes on port."""
    dl = Deadline(seconds)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    last = None
    for _ in range(1000):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                with ctx.wrap_socket(s, server_hostname=None):
                    return True
        except (OSError, ssl.SSLError) as e:
            last = e
        if dl.expired():
            break
        time.sleep(0.05)
    raise AssertionError(f"no TLS handshake on port {port} within {seconds}s: {last!r}")


# ---------------------------------------------------------------- nginx over TLS

class NginxTLS(Nginx):
    """nginx serving root over TLS (cert, key) on 127.0.0.1 with its own
    prefix in workdir. /sni answers the SNI name the client sent, /conn the
    connection number and how many requests it has carried."""

    def __init__(self, root, workdir, cert, key, binary="/usr/sbin/nginx"):
        super().__init__(root, workdir, binary)
        self.cert = Path(cert)
        self.key = Path(key)

    def _conf(self, port):
        w = self.workdir
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format tls '$remote_addr "$request" $status sni="$ssl_server_name" '
                   '$ssl_protocol conn=$connection reqs=$connection_requests';
    access_log {w}/access.log tls;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {self.root};
        location = /sni {{ default_type text/plain; return 200 "sni=$ssl_server_name\\n"; }}
        location = /conn {{ default_type text/plain; return 200 "$connection $connection_requests\\n"; }}
        location / {{ }}
    }}
}}
"""

    def access_log(self):
        try:
            return (self.workdir / "access.log").read_text(errors="replace")
        except OSError:
            return ""

