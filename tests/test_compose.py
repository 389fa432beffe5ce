"""Static checks of docker-compose.yml, the Dockerfile and .dockerignore.

No Docker engine and no network are needed: the compose file is parsed with PyYAML, compose's
`${VAR...}` interpolation is reproduced for the forms the file uses, every app command is run
through the real `imagingctl` argument parser, and the resulting environment is fed to the real
`Settings.from_env()` with ENVIRONMENT=production.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import yaml

from contracts import settings as settings_module
from contracts.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

INFRA = {"postgres": "pg_isready", "rabbitmq": "rabbitmq-diagnostics", "redis": "redis-cli"}
DOMAINS = ("users", "patients", "imaging", "system")
WORKERS = {f"worker-{domain}": ["worker", domain] for domain in DOMAINS}
ONE_SHOT = {"migrate": ["migrate"], "seed-admin": ["seed-admin"]}
SERVERS = {"edge": (["edge"], 5000), "relay": (["relay"], 5006)}
LONG_RUNNING = {**{name: args for name, (args, _) in SERVERS.items()}, **WORKERS}
APP = {**ONE_SHOT, **LONG_RUNNING}

REQUIRED_SECRETS = ("JWT_SECRET", "SIGNING_KEY_PEPPER", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD")
SECRET_NAME = re.compile(r"SECRET|PEPPER|PASSWORD|PASS$|TOKEN|API_KEY|PRIVATE_KEY")
# Variables the app reads outside Settings (BLOB_DIR is reserved for the blob store).
NON_SETTINGS_ENV = {"BLOB_DIR", "ADMIN_EMAIL", "ADMIN_PASSWORD"}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation for ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+x} and $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env
        filled = present and env[name] != ""
        if op is None:
            return env.get(name, "")
        if op == ":-":
            return env[name] if filled else arg
        if op == "-":
            return env[name] if present else arg
        if op == ":?":
            if not filled:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        if op == "?":
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return arg if filled else ""  # ":+"

    parts = value.split("$$")
    out = []
    for part in parts:
        expanded = _VAR.sub(replace, part)
        assert "$" not in expanded, f"unsupported interpolation in {value!r}"
        out.append(expanded)
    return "$".join(out)


SECRETS_ENV = {
    "JWT_SECRET": "j" * 48,
    "SIGNING_KEY_PEPPER": "p" * 48,
    "POSTGRES_PASSWORD": "pg0123456789abcdef",
    "RABBITMQ_PASSWORD": "mq0123456789abcdef",
}
RESOLVED: dict[str, Any] = interpolate(COMPOSE, SECRETS_ENV)


def environment(service: str) -> dict[str, str]:
    env = RESOLVED["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command(service: str) -> list[str]:
    cmd = SERVICES[service].get("command")
    assert isinstance(cmd, list), f"{service}: command must be exec form (a list), got {cmd!r}"
    return [str(item) for item in cmd]


def depends_on(service: str) -> dict[str, str]:
    deps = SERVICES[service].get("depends_on") or {}
    assert isinstance(deps, dict), f"{service}: depends_on must be the long form with conditions"
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# --- services -----------------------------------------------------------------------------------


def test_every_expected_service_exists() -> None:
    assert set(INFRA) | set(APP) <= set(SERVICES)


def test_infrastructure_images() -> None:
    assert SERVICES["postgres"]["image"] == "postgres:15"
    assert SERVICES["rabbitmq"]["image"] == "rabbitmq:3.10-management"
    assert SERVICES["redis"]["image"] == "redis:7"
    rabbit_ports = {str(port).rsplit(":", 1)[-1] for port in SERVICES["rabbitmq"].get("ports", [])}
    assert {"5672", "15672"} <= rabbit_ports


@pytest.mark.parametrize("service", sorted(INFRA))
def test_infrastructure_has_a_healthcheck(service: str) -> None:
    check = SERVICES[service].get("healthcheck") or {}
    assert not check.get("disable"), service
    test = check.get("test")
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, f"{service}: {test!r}"
    assert INFRA[service] in " ".join(test[1:])
    assert "ping" in " ".join(test) or service == "postgres"


@pytest.mark.parametrize("service", sorted(INFRA))
def test_infrastructure_keeps_its_data_on_a_named_volume(service: str) -> None:
    volumes = SERVICES[service].get("volumes") or []
    names = {str(volume).split(":", 1)[0] for volume in volumes}
    assert names & set(COMPOSE.get("volumes") or {}), f"{service} keeps no data on a named volume"


def test_every_app_service_uses_the_one_image_built_from_the_dockerfile() -> None:
    images = {SERVICES[name].get("image") for name in APP}
    assert len(images) == 1 and None not in images, images
    for name in APP:
        build = SERVICES[name].get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context == ".", f"{name}: build context {context!r}"
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert dockerfile == "Dockerfile"


@pytest.mark.parametrize("service", sorted(APP))
def test_app_service_runs_the_expected_imagingctl_command(service: str) -> None:
    assert "entrypoint" not in SERVICES[service], f"{service} must keep the image's imagingctl entrypoint"
    assert command(service) == APP[service]


# --- commands through the real argument parser --------------------------------------------------


def _accepted_by_imagingctl(args: list[str]) -> tuple[bool, str]:
    """Whether `imagingctl <args>` gets past argument parsing, without running anything."""
    from workers import cli

    build_parser = getattr(cli, "build_parser", None)
    if build_parser is not None:  # in-process, exact (required options included)
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            return exc.code == 0, f"exit {exc.code}"
        return True, ""
    # No parser factory yet: `--help` exits 0 right after the subcommand and its positionals have
    # been parsed (an unknown subcommand or a bad choice exits 2), before any settings are read.
    proc = subprocess.run([sys.executable, "-m", "workers.cli", *args, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode == 0, proc.stderr.strip()


@pytest.mark.parametrize("service", sorted(APP))
def test_app_command_is_a_real_imagingctl_subcommand(service: str) -> None:
    ok, detail = _accepted_by_imagingctl(command(service))
    assert ok, f"{service}: imagingctl {' '.join(command(service))} is refused: {detail}"


@pytest.mark.parametrize("args", [["serve"], ["worker", "billing"]])
def test_the_command_check_rejects_what_imagingctl_rejects(args: list[str]) -> None:
    ok, _ = _accepted_by_imagingctl(args)
    assert not ok


# --- ordering and health ------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(LONG_RUNNING))
def test_long_running_services_wait_for_healthy_infrastructure_and_migrations(service: str) -> None:
    deps = depends_on(service)
    for infra in INFRA:
        assert deps.get(infra) == "service_healthy", f"{service} -> {infra}: {deps.get(infra)}"
    assert deps.get("migrate") == "service_completed_successfully"


@pytest.mark.parametrize("service", sorted(ONE_SHOT))
def test_one_shot_jobs(service: str) -> None:
    spec = SERVICES[service]
    assert str(spec.get("restart", "no")) == "no", f"{service} must not be restarted after it completes"
    deps = depends_on(service)
    assert deps.get("postgres") == "service_healthy"
    if service != "migrate":
        assert deps.get("migrate") == "service_completed_successfully"
    assert "healthcheck" not in spec


@pytest.mark.parametrize("service", sorted(SERVERS))
def test_servers_publish_their_port_and_check_health_with_python(service: str) -> None:
    _, port = SERVERS[service]
    assert any(str(item).endswith(f":{port}") for item in SERVICES[service].get("ports", []))
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", "the slim image has no curl"
    script = " ".join(test[2:])
    assert re.search(rf"http://(localhost|127\.0\.0\.1):{port}/health\b", script), script
    compile(test[-1], "<healthcheck>", "exec")  # the one-liner is valid Python


@pytest.mark.parametrize("service", sorted(WORKERS))
def test_workers_are_scalable(service: str) -> None:
    spec = SERVICES[service]
    for key in ("container_name", "ports", "hostname"):
        assert key not in spec, f"{service} has {key}: it could not be scaled with --scale"


def test_no_app_service_has_a_fixed_container_name() -> None:
    assert not [name for name in APP if "container_name" in SERVICES[name]]


# --- environment and secrets --------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(APP))
def test_app_environment_is_production_and_points_at_the_compose_services(service: str) -> None:
    env = environment(service)
    assert env["ENVIRONMENT"] == "production"
    database = urlsplit(env["DATABASE_URL"])
    assert (database.scheme, database.hostname, database.password) == ("postgresql", "postgres",
                                                                     SECRETS_ENV["POSTGRES_PASSWORD"])
    amqp = urlsplit(env["AMQP_URL"])
    assert (amqp.scheme, amqp.hostname, amqp.password) == ("amqp", "rabbitmq", SECRETS_ENV["RABBITMQ_PASSWORD"])
    assert urlsplit(env["REDIS_URL"])[:2] == ("redis", "redis:6379")
    assert env["JWT_SECRET"] == SECRETS_ENV["JWT_SECRET"]
    assert env["SIGNING_KEY_PEPPER"] == SECRETS_ENV["SIGNING_KEY_PEPPER"]
    assert env["BLOB_DIR"].startswith("/")


def test_the_rabbitmq_and_postgres_credentials_match_the_app_urls() -> None:
    app = environment("edge")
    rabbit = environment("rabbitmq")
    amqp = urlsplit(app["AMQP_URL"])
    assert (amqp.username, amqp.password) == (rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"])
    assert amqp.username != "guest", "RabbitMQ's guest user may only connect from localhost"
    postgres = environment("postgres")
    database = urlsplit(app["DATABASE_URL"])
    assert (database.username, database.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])


@pytest.mark.parametrize("service", sorted(APP))
def test_app_environment_is_accepted_by_the_real_settings(service: str) -> None:
    env = environment(service)
    fields = {field.name.upper() for field in msgspec.structs.fields(Settings)}
    unknown = set(env) - fields - NON_SETTINGS_ENV
    assert not unknown, f"{service}: variables no setting reads (typo?): {sorted(unknown)}"
    settings = Settings.from_env(env)  # raises SettingsError on anything production refuses
    assert not settings.is_development


@pytest.mark.parametrize("service", sorted(LONG_RUNNING))
def test_blob_dir_is_on_the_shared_named_volume(service: str) -> None:
    blob_dir = environment(service)["BLOB_DIR"]
    mounts = dict(str(volume).split(":", 1)[::-1] for volume in SERVICES[service].get("volumes") or [])
    volume = mounts.get(blob_dir)
    assert volume in (COMPOSE.get("volumes") or {}), f"{service}: BLOB_DIR {blob_dir} is not on a named volume"


@pytest.mark.parametrize("name", REQUIRED_SECRETS)
def test_required_secrets_are_required(name: str) -> None:
    uses = [match for match in _VAR.finditer(COMPOSE_TEXT) if match["name"] == name]
    assert uses, f"{name} is never used"
    for match in uses:
        assert match["op"] in {":?", "?"}, f"{match[0]} must fail when {name} is unset, never default"
    missing = {key: value for key, value in SECRETS_ENV.items() if key != name}
    with pytest.raises(MissingVariable, match=name):
        interpolate(COMPOSE, missing)
    with pytest.raises(MissingVariable, match=name):
        interpolate(COMPOSE, {**missing, name: ""})


def test_no_secret_has_a_literal_value_or_a_default() -> None:
    for match in _VAR.finditer(COMPOSE_TEXT):
        if SECRET_NAME.search(match["name"]) and match["op"] in {":-", "-"}:
            assert match["arg"] == "", f"{match[0]}: a secret must not have a default value"
    for service, spec in SERVICES.items():
        env = spec.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert isinstance(value, str) and _VAR.fullmatch(value.strip()), f"{service}: {key}={value!r}"
    for dev_value in (settings_module.DEV_JWT_SECRET, settings_module.DEV_SIGNING_KEY_PEPPER):
        assert dev_value not in COMPOSE_TEXT


# --- Dockerfile and .dockerignore ---------------------------------------------------------------


def _dockerfile_lines() -> list[str]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _final_stage() -> list[str]:
    lines: list[str] = []
    for line in _dockerfile_lines():
        if line.upper().startswith("FROM "):
            lines = []
        lines.append(line)
    return lines


def _instruction(lines: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[0].upper() == name]


def test_dockerfile_entrypoint_is_imagingctl() -> None:
    entrypoints = _instruction(_final_stage(), "ENTRYPOINT")
    assert entrypoints, "the final stage has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["imagingctl"]


def test_dockerfile_is_multi_stage_on_python_311_slim_and_installs_non_editable() -> None:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert len(froms) >= 2, "builder + runtime stages"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE, re.MULTILINE)
    bases = {base[1] if base and item == "${PYTHON_IMAGE}" else item for item in froms}
    assert bases == {"python:3.11-slim"}, bases
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", DOCKERFILE)
    assert not re.search(r"pip install[^\n]*(\s-e\s|--editable)", DOCKERFILE)
    assert _instruction(_final_stage(), "COPY") and all(
        "--from=" in item for item in _instruction(_final_stage(), "COPY")
    ), "the runtime stage copies only the built venv"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = _instruction(_final_stage(), "USER")
    assert users, "the final stage runs as root"
    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}


def test_dockerfile_copies_every_package_pyproject_builds() -> None:
    copied = {item.split()[0].rstrip("/") for item in _instruction(_dockerfile_lines(), "COPY")
              if not item.startswith("--")}
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*").rstrip(".") for pattern in include}
    assert packages <= copied, f"not copied into the builder: {sorted(packages - copied)}"
    assert PYPROJECT["project"]["readme"] in copied  # setuptools reads it while building


def _dockerignore_excludes(path: str) -> bool:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((line.lstrip("!").strip("/"), negated))
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern, negated in rules:
        patterns = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(candidate, item) for candidate in candidates for item in patterns):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("path", [
    "pyproject.toml", "README.md", "contracts/settings.py", "edge/app.py", "workers/cli.py",
    "workers/users/common_passwords.txt", "migrations/env.py", "migrations/script.py.mako",
    "migrations/versions/0001_foundation.py",
])
def test_dockerignore_keeps_what_the_build_needs(path: str) -> None:
    assert (ROOT / path).exists()
    assert not _dockerignore_excludes(path)


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", ".env", "tests/conftest.py", "imaging_backend.egg-info/PKG-INFO",
    "workers/__pycache__/cli.cpython-311.pyc", "__pycache__/x.pyc", "bench/roundtrip.py",
])
def test_dockerignore_leaves_out_the_rest(path: str) -> None:
    assert _dockerignore_excludes(path)


def test_package_data_covers_every_non_module_file() -> None:
    """What `pip install .` in the image leaves out (migrations, common_passwords.txt) fails at runtime."""
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    roots = [pattern.rstrip("*").rstrip(".") for pattern in
             PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    missing = []
    for root in roots:
        for file in (ROOT / root).rglob("*"):
            if not file.is_file() or "__pycache__" in file.parts or file.suffix in {".pyc", ".pyo"}:
                continue
            if file.suffix == ".py" and (file.parent / "__init__.py").exists():
                continue  # a module of a package: always in the wheel
            package = file.parent
            while not (package / "__init__.py").exists():
                assert package != ROOT, f"{file} is outside every package"
                package = package.parent
            name = ".".join(package.relative_to(ROOT).parts)
            relative = file.relative_to(package).as_posix()
            if not any(fnmatch.fnmatchcase(relative, pattern) for pattern in package_data.get(name, [])):
                missing.append(file.relative_to(ROOT).as_posix())
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
