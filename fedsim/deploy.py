"""A local deployment on Flower's deployment engine: one SuperLink and N SuperNodes.

Everything lives under one directory (default `.deploy/`):

    certs/       ca.crt, ca.key, server.crt, server.key (SANs: --host, --san, and
                 127.0.0.1 and localhost for the SuperLink's own SuperExec)
    keys/        supernode-I (OpenSSH EC P-384 private key), supernode-I.pub
    flwr_home/   FLWR_HOME: Flower's config.toml with the SuperLink connection
    logs/        superlink.log, supernode-I.log
    pids/        superlink.pid, supernode-I.pid (each a process-group leader)
    deploy.json  ports, addresses, security mode

Security is on by default: the SuperLink serves TLS with a certificate signed by a
CA generated here, SuperNodes verify it with the CA's root certificate, SuperNode
authentication is enabled and each SuperNode's public key is registered with
`flwr supernode register` before the SuperNode starts. `insecure=True` turns all of
that off (plain HTTP, no authentication) and warns.

Flower's configuration is only ever read from `flwr_home/` (FLWR_HOME is set for
every Flower process started here), never from the user's ~/.flwr.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedsim.results import RunFailed

DEFAULT_ROOT = Path(".deploy")
SUPERNODE = "fedsim.runtime.supernode"
CONNECTION = "fedsim-local"  # the SuperLink connection name written to FLWR_HOME
STATE = "deploy.json"
INSECURE_WARNING = (
    "insecure deployment: plain HTTP, no TLS and no SuperNode authentication; "
    "anyone who can reach the SuperLink can join or submit runs"
)


class DeployError(RunFailed):
    """A deployment that cannot start, or is not running."""


# -- paths and state ---------------------------------------------------------------------


@dataclass
class Layout:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    certs = property(lambda s: s.root / "certs")
    keys = property(lambda s: s.root / "keys")
    flwr_home = property(lambda s: s.root / "flwr_home")
    logs = property(lambda s: s.root / "logs")
    pids = property(lambda s: s.root / "pids")
    ca_cert = property(lambda s: s.certs / "ca.crt")
    ca_key = property(lambda s: s.certs / "ca.key")
    server_cert = property(lambda s: s.certs / "server.crt")
    server_key = property(lambda s: s.certs / "server.key")

    def node_key(self, i: int) -> Path:
        return self.keys / f"supernode-{i}"

    def node_pub(self, i: int) -> Path:
        return self.keys / f"supernode-{i}.pub"


@dataclass
class Deployment:
    root: str
    host: str
    port: int
    insecure: bool
    connection: str = CONNECTION
    supernodes: list[dict] = field(default_factory=list)  # {"index", "port", "partition"}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def save(self) -> None:
        Path(self.root, STATE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path | str) -> Deployment:
        path = Path(root).resolve() / STATE
        if not path.is_file():
            raise DeployError(f"{path.parent}: no deployment here (no {STATE})")
        return cls(**json.loads(path.read_text()))


# -- certificates and keys ---------------------------------------------------------------


def generate_tls(certs: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
    """A self-signed CA and a server certificate it signs, valid for `hosts` (SANs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    certs.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    valid = {"not_valid_before": now - dt.timedelta(minutes=5)}
    valid["not_valid_after"] = now + dt.timedelta(days=365)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsim"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("fedsim deployment CA"))
        .issuer_name(name("fedsim deployment CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    sans: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    key_fmt = (serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(certs / "ca.key", ca_key.private_bytes(pem, *key_fmt))
    _write_private(certs / "server.key", server_key.private_bytes(pem, *key_fmt))
    (certs / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    (certs / "server.crt").write_bytes(server_cert.public_bytes(pem))


def generate_node_key(private: Path, public: Path) -> None:
    """A SuperNode's EC P-384 key pair in OpenSSH format (what Flower 1.41 reads)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private.parent.mkdir(parents=True, exist_ok=True)
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


# -- Flower configuration ----------------------------------------------------------------


def write_flower_config(
    flwr_home: Path,
    name: str,
    address: str,
    root_certificates: Path | None,
    insecure: bool,
) -> Path:
    """Add (or replace) the SuperLink connection `name` in FLWR_HOME/config.toml and
    make it the default; other connections in the file are kept."""
    import tomli_w

    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover  (Python < 3.11)
        import tomli as tomllib

    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    cfg = tomllib.loads(path.read_text()) if path.is_file() else {}
    superlink = cfg.setdefault("superlink", {})
    conn: dict[str, object] = {"address": address}
    if insecure:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(Path(root_certificates).resolve())
    superlink[name] = conn
    superlink["default"] = name
    path.write_text(tomli_w.dumps(cfg))
    return path


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for every Flower process: project-local FLWR_HOME, the venv's
    bin first on PATH (Flower spawns `flower-superexec`, `flwr-serverapp` by name), and
    no runtime dependency installation (Flower would otherwise `uv sync` the app)."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def flower_bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


# -- processes ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_process(
    cmd: list[str], log: Path, pid_file: Path, env: dict[str, str]
) -> subprocess.Popen:
    """Start `cmd` as the leader of a new process group, output to `log`, pid to
    `pid_file`. Its children (SuperExec, ServerApp/ClientApp processes) are found and
    stopped through the process tree, see `stop_process`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (children re-parented to init are missed, which is
    why each Flower process is also a process-group leader)."""
    try:
        import psutil

        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except Exception:  # noqa: BLE001  (gone, or psutil missing)
        return [pid]


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001
        return True


def stop_process(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM the process, its group and every descendant's group; SIGKILL what is
    left after `grace_s`."""
    pids = _tree(pid)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    pids = list(dict.fromkeys(pids + [q for p in pids if _alive(p) for q in _tree(p)]))
    _signal_all(pids, signal.SIGKILL)
    for p in pids:  # reap our own children (no zombies left behind)
        with contextlib.suppress(ChildProcessError):
            for _ in range(20):
                if os.waitpid(p, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)


def stop_pid_file(pid_file: Path, grace_s: float = 5.0) -> bool:
    if not pid_file.is_file():
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        pid_file.unlink()
        return False
    stop_process(pid, grace_s)
    pid_file.unlink(missing_ok=True)
    return True


def wait_for_port(host: str, port: int, timeout_s: float, proc=None, log=None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text()[-2000:] if log else ""
            raise DeployError(f"process exited ({proc.returncode}) before listening:\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DeployError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


# -- the deployment ----------------------------------------------------------------------


def flwr_cli(args: list[str], flwr_home: Path, timeout_s: float = 60.0, check: bool = True):
    """Run the `flwr` CLI with the project-local FLWR_HOME."""
    res = subprocess.run(
        [flower_bin("flwr"), *args],
        env=flower_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise DeployError(
            f"flwr {' '.join(args)} failed ({res.returncode}):\n"
            f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        )
    return res


def start_superlink(
    root: Path | str = DEFAULT_ROOT,
    host: str = "127.0.0.1",
    port: int | None = None,
    insecure: bool = False,
    extra_hosts: tuple[str, ...] = (),
    timeout_s: float = 60.0,
) -> Deployment:
    """Generate certificates (unless insecure), write FLWR_HOME's config and start the
    SuperLink; returns the saved deployment state."""
    lay = Layout(root)
    if (lay.pids / "superlink.pid").is_file():
        raise DeployError(f"{lay.root}: a deployment is already up (`fedsim deploy down`)")
    for d in (lay.logs, lay.pids):
        d.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    bind = "0.0.0.0" if host not in ("127.0.0.1", "localhost") else host
    cmd = [
        flower_bin("flower-superlink"),
        "--host",
        bind,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if insecure:
        warnings.warn(INSECURE_WARNING, stacklevel=2)
        print(f"fedsim: warning: {INSECURE_WARNING}", file=sys.stderr)
        cmd.append("--insecure")
    else:
        if not lay.ca_cert.is_file():  # named for the address SuperNodes dial, and for
            # loopback, which the SuperLink's own SuperExec dials to start ServerApps
            generate_tls(lay.certs, (host, *extra_hosts, "127.0.0.1", "localhost"))
        cmd += [
            "--ssl-ca-certfile",
            str(lay.ca_cert),
            "--ssl-certfile",
            str(lay.server_cert),
            "--ssl-keyfile",
            str(lay.server_key),
            "--enable-supernode-auth",
        ]
    write_flower_config(lay.flwr_home, CONNECTION, f"{host}:{port}", lay.ca_cert, insecure)
    dep = Deployment(root=str(lay.root), host=host, port=port, insecure=insecure)
    dep.save()
    log = lay.logs / "superlink.log"
    proc = start_process(cmd, log, lay.pids / "superlink.pid", flower_env(lay.flwr_home))
    try:
        wait_for_port(host if bind != "0.0.0.0" else "127.0.0.1", port, timeout_s, proc, log)
        _wait_control_api(lay, timeout_s)
    except BaseException:
        stop_pid_file(lay.pids / "superlink.pid")
        raise
    return dep


def _wait_control_api(lay: Layout, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        res = flwr_cli(["supernode", "ls", CONNECTION], lay.flwr_home, check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def register_supernode(root: Path | str, public_key: Path, name: str | None = None) -> str:
    """Register a SuperNode's public key with the running SuperLink (Control API)."""
    lay = Layout(root)
    args = ["supernode", "register", str(public_key), CONNECTION, "--format", "json"]
    if name:
        args += ["--name", name]
    res = flwr_cli(args, lay.flwr_home)
    return res.stdout


def start_supernode(
    root: Path | str,
    index: int,
    num_partitions: int,
    partition: int | None = None,
    register: bool = True,
    root_certificates: Path | None | bool = True,
    private_key: Path | None = None,
    port: int | None = None,
    max_wait_s: float | None = None,
    stock: bool = False,
    threads: int | None = None,
) -> subprocess.Popen:
    """Start SuperNode `index` (partition `partition`, default `index`) against the
    deployment in `root`: fedsim's SuperNode (`fedsim.runtime.supernode`: a long-lived
    ClientApp process, short polls), or with `stock` Flower's own `flower-supernode` (a
    fresh `flwr-clientapp` process per message). Secure deployments: a key pair is
    generated (or `private_key` used) and, with `register`, its public key registered
    first; `root_certificates=True` means the deployment's CA, `None` passes none.
    `threads` caps the node's torch threads (OMP_NUM_THREADS)."""
    lay = Layout(root)
    dep = Deployment.load(lay.root)
    partition = index if partition is None else partition
    port = port or free_port()
    node = [flower_bin("flower-supernode")] if stock else [sys.executable, "-m", SUPERNODE]
    cmd = [
        *node,
        "--superlink",
        dep.address,
        "--port",
        str(port),
        "--node-config",
        f"partition-id={partition} num-partitions={num_partitions}",
    ]
    if max_wait_s is not None:
        cmd += ["--max-wait-time", str(max_wait_s)]
    if dep.insecure:
        cmd.append("--insecure")
    else:
        if root_certificates is True:
            root_certificates = lay.ca_cert
        if root_certificates:
            cmd += ["--root-certificates", str(root_certificates)]
        if private_key is None:
            private_key = lay.node_key(index)
            if not private_key.is_file():
                generate_node_key(private_key, lay.node_pub(index))
            if register:
                register_supernode(lay.root, lay.node_pub(index), name=f"supernode-{index}")
        cmd += ["--auth-supernode-private-key", str(private_key)]
    env = flower_env(lay.flwr_home)
    if threads is not None:  # SuperNodes sharing this machine share its cores
        env["OMP_NUM_THREADS"] = str(threads)
    proc = start_process(
        cmd, lay.logs / f"supernode-{index}.log", lay.pids / f"supernode-{index}.pid", env
    )
    dep.supernodes = [s for s in dep.supernodes if s["index"] != index]
    dep.supernodes.append({"index": index, "port": port, "partition": partition})
    dep.save()
    return proc


def up(
    num_supernodes: int,
    root: Path | str = DEFAULT_ROOT,
    host: str = "127.0.0.1",
    port: int | None = None,
    insecure: bool = False,
    wait_s: float = 60.0,
    extra_hosts: tuple[str, ...] = (),
    stock: bool = False,
) -> Deployment:
    """One SuperLink and `num_supernodes` SuperNodes (partition-id 0..N-1) on this
    machine, each with its share of the cores for torch (more threads than cores make
    torch's OpenMP workers spin against each other: a client step 10-100x slower); waits
    until every SuperNode is online. On failure everything is stopped."""
    threads = max(1, (os.cpu_count() or 1) // max(1, num_supernodes))
    start_superlink(root, host, port, insecure, extra_hosts)
    try:
        for i in range(num_supernodes):
            start_supernode(root, i, num_supernodes, stock=stock, threads=threads)
        wait_online(root, num_supernodes, wait_s)
    except BaseException:
        down(root)
        raise
    return Deployment.load(root)


def online_nodes(root: Path | str) -> int | None:
    """SuperNodes the SuperLink reports online (None if the CLI cannot say)."""
    lay = Layout(root)
    res = flwr_cli(["supernode", "ls", CONNECTION, "--format", "json"], lay.flwr_home, check=False)
    try:
        nodes = json.loads(res.stdout).get("nodes", [])
    except (json.JSONDecodeError, AttributeError):
        return None
    return sum(1 for n in nodes if str(n.get("status", "")).lower() == "online")


def wait_online(root: Path | str, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = online_nodes(root)
        if seen is not None and seen >= n:
            return
        time.sleep(0.5)
    raise DeployError(f"{n} SuperNodes expected online, the SuperLink reports {seen}")


def down(root: Path | str = DEFAULT_ROOT, grace_s: float = 5.0) -> list[str]:
    """Stop every process of the deployment in `root` (SuperNodes first); returns the
    names stopped. Certificates, keys, FLWR_HOME and logs stay."""
    lay = Layout(root)
    stopped = []
    if lay.pids.is_dir():
        files = sorted(lay.pids.glob("*.pid"), key=lambda p: p.name == "superlink.pid")
        for pid_file in files:
            if stop_pid_file(pid_file, grace_s):
                stopped.append(pid_file.stem)
    return stopped


# -- `flwr run` --------------------------------------------------------------------------


def app_dir() -> Path:
    """The Flower App directory (pyproject.toml with [tool.flwr.app]) fedsim runs."""
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file() and "[tool.flwr.app" in (
        here / "pyproject.toml"
    ).read_text():
        return here
    raise DeployError("the deployment runtime needs fedsim's source tree (its pyproject.toml)")


def flwr_run(
    run_config: dict, federation: str, flwr_home: Path | str, lines: Callable[[str], bool]
) -> int:
    """Submit fedsim's app to the SuperLink named `federation` in FLWR_HOME's config
    (`flwr run APP NAME --run-config FILE --stream`); its output goes to stdout, each line
    first offered to `lines` (a line it returns True for is not shown). Returns the exit
    code of `flwr run`."""
    import tempfile

    import tomli_w

    flwr_home = Path(flwr_home).resolve()
    if not (flwr_home / "config.toml").is_file():
        raise DeployError(
            f"FLWR_HOME {flwr_home} has no config.toml (start one with `fedsim deploy up`, "
            "or set FLWR_HOME to a Flower home with the SuperLink connection)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp) / "run_config.toml"
        overrides.write_text(tomli_w.dumps(run_config))
        cmd = [flower_bin("flwr"), "run", str(app_dir()), federation]
        cmd += ["--run-config", str(overrides), "--stream"]
        with subprocess.Popen(
            cmd,
            env=flower_env(flwr_home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            for line in proc.stdout:
                if not lines(line):
                    sys.stdout.write(line)
            return proc.wait()
