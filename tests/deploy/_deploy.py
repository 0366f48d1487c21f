"""Readers shared by the deployment tests: repository paths, YAML documents, a small Dockerfile parser,
constraints.txt pins, a .dockerignore matcher and the secret / port checks applied to compose files.

Plain functions without pytest, so each checker can also be fed a bad example (the tests do) to show it fails.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
COMPOSE_GPU = REPO / "docker" / "compose.gpu.yaml"
CONSTRAINTS = REPO / "constraints.txt"
CLUSTER_YAML = REPO / "cluster" / "ray-cluster-gpu.yaml"
KUBERAY = REPO / "cluster" / "kuberay"
CONFIGS = REPO / "configs"

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
REQUIRED_VAR = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")
URI_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://([^/@\s]+)@", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------ YAML
def load_yaml_documents(path: Path) -> list[Any]:
    """Every document of a (possibly multi-document) YAML file, empty documents dropped (a fresh copy on each
    call: files are parsed once per session, callers may change what they get)."""
    return copy.deepcopy(_parsed(Path(path), Path(path).stat().st_mtime_ns))


@functools.lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int) -> list[Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as handle:
        return [doc for doc in yaml.load_all(handle, Loader=loader) if doc is not None]


def kuberay_documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_yaml_documents(path)]


def documents_of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in kuberay_documents() if doc.get("kind") == kind]


# --------------------------------------------------------------------------------------------- constraints
def normalize(name: str) -> str:
    """PEP 503 name normalisation: `PyYAML`, `pyyaml` and `py_yaml` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements / constraints file → {normalised name: version}."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if match is None:
            raise ValueError(f"{path.name}: not an exact pin: {raw!r}")
        pins[normalize(match.group(1))] = match.group(3)
    return pins


# ------------------------------------------------------------------------------------------------ Dockerfile
@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (enough for these checks)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    if pending:
        logical.append(pending)
    instructions: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def dockerfile_instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def shell_commands(run_args: str) -> Iterator[list[str]]:
    """The simple commands of a RUN line (split on && ; ||), each as argv."""
    for part in re.split(r"&&|\|\||;", run_args):
        part = part.strip()
        if part:
            yield shlex.split(part)


def pip_install_commands(instructions: list[Instruction]) -> list[list[str]]:
    commands = []
    for inst in instructions:
        if inst.keyword != "RUN":
            continue
        for argv in shell_commands(inst.args):
            words = [w for w in argv if not re.fullmatch(r"[A-Z_]+=.*", w)]  # drop VAR=value prefixes
            if "install" in words and any(w in ("pip", "pip3") or w.endswith("/pip") for w in words[:3]):
                commands.append(words)
            elif words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]) and "install" in words:
                commands.append(words)
    return commands


def inline_pins(argv: list[str]) -> dict[str, str]:
    pins = {}
    for word in argv:
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", word)
        if match:
            pins[normalize(match.group(1))] = match.group(3)
    return pins


def final_user(instructions: list[Instruction]) -> str | None:
    last_stage = max(inst.stage for inst in instructions)
    users = [inst.args for inst in instructions if inst.keyword == "USER" and inst.stage == last_stage]
    return users[-1] if users else None


def is_root_user(user: str | None) -> bool:
    """No USER line, or one naming root / uid 0 (with or without a group), runs as root."""
    if user is None:
        return True
    name = user.split(":", 1)[0].strip()
    return name in ("root", "0", "")


# ------------------------------------------------------------------------------------------------ .dockerignore
def dockerignore_patterns(path: Path) -> list[str]:
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            patterns.append(line.rstrip("/"))
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(relpath: str, patterns: list[str]) -> bool:
    """Docker's rule for patterns without `!`: a path is excluded when it or one of its parent directories
    matches a pattern (patterns are anchored at the context root; `**` spans directories)."""
    if any(p.startswith("!") for p in patterns):
        raise ValueError("exception patterns (!) are not supported by this matcher")
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_pattern_regex(p.lstrip("/")).fullmatch(prefix) for p in patterns for prefix in prefixes)


# ------------------------------------------------------------------------------------------------ compose
def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _mask_variables(value: str) -> str:
    """`${VAR:?...}` → REQUIRED_VAR, any other `${...}` → OTHER_VAR, so URIs built from them can be parsed."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:\?)?[^}]*\}",
                  lambda m: "REQUIRED_VAR" if m.group(1) else "OTHER_VAR", value)


def _uri_passwords(value: str) -> list[str]:
    passwords = []
    for userinfo in URI_USERINFO.findall(_mask_variables(value)):
        _, sep, password = userinfo.partition(":")
        if sep:
            passwords.append(password)
    return passwords


def literal_secrets(services: dict[str, dict]) -> list[str]:
    """Environment entries that carry a credential written into the file rather than taken from the
    environment: a secret-named variable whose value is not exactly `${VAR:?...}`, or a URI whose userinfo
    (user:password@) holds anything but a `${VAR:?...}` password."""
    problems = []
    for name, service in services.items():
        for key, value in compose_env(service).items():
            if SECRET_NAME.search(key) and not REQUIRED_VAR.fullmatch(value):
                problems.append(f"{name}.{key}")
            if any(p != "REQUIRED_VAR" for p in _uri_passwords(value)):
                problems.append(f"{name}.{key} (password in URI)")
        if any(p != "REQUIRED_VAR" for word in _command_words(service) for p in _uri_passwords(word)):
            problems.append(f"{name}.command (password in URI)")
    return problems


def _command_words(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def published_ports(service: dict) -> list[str]:
    """Published ports as `host_ip:published:target` strings (short and long syntax)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append(f"{port.get('host_ip', '')}:{port.get('published', '')}:{port.get('target', '')}")
        else:
            out.append(str(port))
    return out


def non_loopback_ports(services: dict[str, dict]) -> list[str]:
    return [f"{name}: {port}" for name, service in services.items() for port in published_ports(service)
            if not port.startswith("127.0.0.1:")]


def command_words(service: dict) -> list[str]:
    return _command_words(service)
