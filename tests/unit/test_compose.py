"""compose/: what a deployer runs. The compose file is valid against the Compose Specification's JSON schema
(tests/data/compose-spec.json) after interpolation with compose/.env.example, and it gives the services what they
need: every KEFU_* variable it names is a Kefu setting, .env reaches every Kefu process, the HTTP and AudioSocket
ports are published, no service connects as the PostgreSQL superuser, every worker has its own Celery node name,
and both images can decode WeChat voice messages (ffmpeg)."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from channels import registry
from models.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

_VARIABLE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def env_example() -> dict[str, str]:
    """compose/.env.example's assignments (commented-out ones excluded), quotes removed as compose does."""
    values = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[name.strip()] = value
    return values


def interpolate(text: str, env: dict[str, str], used: set[str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt} and $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        braced = _BRACED.fullmatch(match.group(2)) if match.group(2) is not None else None
        if match.group(2) is not None and braced is None:
            raise ValueError(f"bad interpolation {match.group(0)!r}")
        name, op, arg = braced.groups() if braced else (match.group(3), None, None)
        used.add(name)
        value = env.get(name)
        present = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return value if present and value is not None else arg or ""
        if op in (":?", "?"):
            if not present or value is None:
                raise ValueError(f"{name} is required: {arg}")
            return value
        if op in (":+", "+"):
            return arg or "" if present else ""
        return value or ""

    return _VARIABLE.sub(one, text)


def interpolated(node: Any, env: dict[str, str], used: set[str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, used)
    if isinstance(node, list):
        return [interpolated(item, env, used) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env, used) for key, value in node.items()}
    return node


def compose_raw() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())  # resolves anchors and << merges
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = interpolated(compose_raw(), env_example(), set())
    assert isinstance(result, dict)
    return result


def kefu_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The services that run a Kefu image (the others are PostgreSQL, Redis and monitoring)."""
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("kefu:"):
            yield name, service


def command(service: dict[str, Any]) -> list[str]:
    given = service.get("command", [])
    return shlex.split(given) if isinstance(given, str) else [str(part) for part in given]


def known_settings() -> set[str]:
    names = set(Settings.model_fields)
    for channel in registry.channels():
        if channel.section is not None:
            names |= set(channel.section.model_fields)
    return names


def setting_of(variable: str, known: set[str]) -> str | None:
    """The setting a KEFU_* variable sets (KEFU_X_FILE sets x from a file), or None."""
    name = variable.removeprefix("KEFU_").lower()
    if name in known:
        return name
    if name.endswith("_file") and name.removesuffix("_file") in known:
        return name.removesuffix("_file")
    return None


# --- the Compose Specification -------------------------------------------------------------------------------------


def test_the_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    import json

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_mistake(compose: dict[str, Any]) -> None:
    import copy
    import json

    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["env_files"] = [".env"]  # a typo compose would refuse
    assert list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(broken))


def test_every_variable_the_compose_file_interpolates_is_in_env_example() -> None:
    used: set[str] = set()
    interpolated(compose_raw(), env_example(), used)
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (COMPOSE / ".env.example").read_text(), re.MULTILINE))
    assert used - documented == set(), "variables compose reads that .env.example does not document"
    assert "LLM_SLOTS" in used


# --- what the deployer needs ---------------------------------------------------------------------------------------


def test_env_file_reaches_every_kefu_service(compose: dict[str, Any]) -> None:
    services = dict(kefu_services(compose))
    assert {"migrate", "gateway", "worker-llm", "worker-llm-cpu", "worker-io", "beat"} <= set(services)
    for name, service in services.items():
        files = [f if isinstance(f, str) else f["path"] for f in service.get("env_file", [])]
        assert ".env" in files, f"{name}: KEFU_* settings in .env (channels, FAQ) would never reach it"


def test_files_that_settings_name_by_path_are_mounted(compose: dict[str, Any]) -> None:
    for name, service in kefu_services(compose):
        assert "./config:/etc/kefu:ro" in service.get("volumes", []), name
    assert (COMPOSE / "config" / "README.md").is_file()
    for variable in ("KEFU_MODERATION_FILE", "KEFU_LOCAL_ASR_MODEL_DIR"):
        assert f"#{variable}=/etc/kefu/" in (COMPOSE / ".env.example").read_text()


def test_every_kefu_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = known_settings()
    named = {var for _, service in kefu_services(compose) for var in service.get("environment", {})}
    named |= set(re.findall(r"^#?\s*(KEFU_[A-Z0-9_]+)=", (COMPOSE / ".env.example").read_text(), re.MULTILINE))
    assert {"KEFU_WECHAT_ACCOUNTS", "KEFU_FAQ", "KEFU_DATABASE_URL_FILE"} <= named
    assert sorted(var for var in named if setting_of(var, known) is None) == []


def test_secrets_come_from_compose_secrets(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    for name, service in kefu_services(compose):
        env = service["environment"]
        assert "KEFU_DATABASE_URL" not in env and "KEFU_SECRET_KEY" not in env
        for variable, value in env.items():
            if variable.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in service["secrets"] and secret in declared, f"{name}: {variable}"
    for variable, value in env_example().items():
        assert variable not in ("KEFU_DATABASE_URL", "KEFU_SECRET_KEY", "POSTGRES_PASSWORD"), variable


def test_http_and_audiosocket_ports_are_published(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    published = {str(port).rsplit(":", 1)[-1]: str(port) for port in gateway["ports"]}
    assert published.keys() == {"8000", "9092"}
    assert published["8000"] == "127.0.0.1:8000:8000" and published["9092"] == "127.0.0.1:9092:9092"
    # the listener binds KEFU_HOST (the default 127.0.0.1 would be unreachable through the published port)
    assert gateway["environment"]["KEFU_AUDIOSOCKET_PORT"] == "9092"
    assert gateway["environment"]["KEFU_HOST"] == "0.0.0.0"


def test_no_service_connects_as_the_postgresql_superuser(compose: dict[str, Any], tmp_path: Path) -> None:
    postgres = compose["services"]["postgres"]
    assert "POSTGRES_USER" not in postgres["environment"]  # the superuser keeps its own name, postgres
    assert "./postgres:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    assert compose["services"]["postgres-exporter"]["environment"]["DATA_SOURCE_USER"] == "kefu_app"
    owners = [name for name, service in kefu_services(compose)
              if "KEFU_MIGRATION_DATABASE_URL_FILE" in service["environment"]]
    assert owners == ["migrate"]
    assert compose["services"]["migrate"]["environment"]["KEFU_DATABASE_APP_ROLE"] == "kefu_app"
    for _, service in kefu_services(compose):
        assert service["environment"]["KEFU_DATABASE_URL_FILE"] == "/run/secrets/kefu_database_url"
    urls = make_secrets(tmp_path)
    assert urls["kefu_database_url"].startswith("postgresql+psycopg://kefu_app:")
    assert urls["kefu_migration_database_url"].startswith("postgresql+psycopg://kefu_owner:")
    assert f"kefu_app:{urls['kefu_app_password']}@postgres:5432/kefu" in urls["kefu_database_url"]


def make_secrets(where: Path) -> dict[str, str]:
    script = where / "make-secrets.sh"
    script.write_bytes((COMPOSE / "make-secrets.sh").read_bytes())
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=30)
    return {path.name: path.read_text().rstrip("\n") for path in (where / "secrets").iterdir()}


def test_make_secrets_writes_private_files_once(tmp_path: Path) -> None:
    first = make_secrets(tmp_path)
    assert set(first) == set(compose_raw()["secrets"])
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert {stat.S_IMODE((tmp_path / "secrets" / name).stat().st_mode) for name in first} == {0o644}
    assert len(set(first.values())) == len(first)  # every value its own
    assert make_secrets(tmp_path) == first  # never overwrites


def node_names(compose: dict[str, Any]) -> dict[str, str]:
    names = {}
    for name, service in kefu_services(compose):
        argv = command(service)
        if argv[:1] == ["worker"]:
            assert "-n" in argv, f"{name} has no node name of its own"
            names[name] = argv[argv.index("-n") + 1]
    return names


def test_every_worker_has_its_own_node_name(compose: dict[str, Any]) -> None:
    names = node_names(compose)
    assert names == {"worker-llm": "llm@%h", "worker-llm-cpu": "llm@%h", "worker-io": "io@%h", "beat": "sweeper@%h"}
    for service, node in names.items():  # the health check pings that node
        test = " ".join(compose["services"][service]["healthcheck"]["test"])
        assert f'-d "{node.replace("%h", "$HOSTNAME")}"' in test, service


def test_the_llm_worker_runs_the_batched_engine_on_threads(compose: dict[str, Any]) -> None:
    for service in ("worker-llm", "worker-llm-cpu"):
        argv = command(compose["services"][service])
        assert argv[argv.index("--pool") + 1] == "threads"
        assert compose["services"][service]["environment"]["KEFU_N_SLOTS"] == env_example()["LLM_SLOTS"]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of each Celery worker `kefu worker` would start (nothing is started)."""
    from workers import celery_app

    argvs: list[list[str]] = []

    class Captured:
        def worker_main(self, argv: list[str]) -> None:
            argvs.append(argv)

    monkeypatch.setattr(celery_app, "create_app", lambda *_, **__: Captured())
    return argvs


def node_flags(argvs: list[list[str]]) -> list[str]:
    return [next(a for a in argv if a.startswith("--hostname=")) for argv in argvs]


def test_the_readme_production_lines_run(tmp_path: Path, started: list[list[str]]) -> None:
    """Each `kefu worker` line of the README's production block parses, passes the pool check, and names its node."""
    from workers import cli

    lines = [line.split("#")[0].split() for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("kefu worker ")]
    assert len(lines) == 3
    for words in lines:
        args = cli.build_parser().parse_args(words[1:])
        cli.cmd_worker(Settings(data_dir=tmp_path, engine="batched"), args)
    assert node_flags(started) == ["--hostname=llm@%h", "--hostname=io@%h", "--hostname=sweeper@%h"]


def test_default_node_names_differ_by_kind(tmp_path: Path, started: list[list[str]]) -> None:
    from workers import cli

    for words in (["--queues", "llm"], ["--queues", "io"], ["--queues", "io", "--beat"], ["--queues", "llm", "-n", "x@%h"]):
        cli.cmd_worker(Settings(data_dir=tmp_path), cli.build_parser().parse_args(["worker", *words]))
    assert node_flags(started) == ["--hostname=llm@%h", "--hostname=io@%h", "--hostname=sweeper@%h", "--hostname=x@%h"]


# --- the images ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_both_images_can_decode_voice_messages(dockerfile: str) -> None:
    text = (COMPOSE / dockerfile).read_text()
    runtime = text[text.rindex("\nFROM "):]  # the stage that ships
    installs = " ".join(re.findall(r"apt-get install[^&]*", runtime.replace("\\\n", " ")))
    assert "ffmpeg" in installs.split() and "espeak-ng" in installs.split()


def test_the_vendored_schema_says_where_it_comes_from() -> None:
    readme = (SCHEMA.parent / "README.md").read_text()
    assert "compose-spec/compose-spec" in readme and "Apache-2.0" in readme
    assert re.search(r"\b[0-9a-f]{40}\b", readme)
    assert os.path.getsize(SCHEMA) > 10_000


def test_the_gateway_reads_the_admin_token_from_a_secret_the_script_makes(compose: dict[str, Any], tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin API's bearer token is a compose secret like the others, given only to the gateway (the process that
    serves the admin API), and the one make-secrets.sh writes is one the gateway accepts (at least 16 characters)."""
    gateway = compose["services"]["gateway"]
    assert gateway["environment"]["KEFU_ADMIN_TOKEN_FILE"] == "/run/secrets/kefu_admin_token"
    assert "kefu_admin_token" in gateway["secrets"] and "kefu_admin_token" in compose["secrets"]
    others = [name for name, service in kefu_services(compose) if name != "gateway"
              and ("kefu_admin_token" in service.get("secrets", []) or "KEFU_ADMIN_TOKEN_FILE" in service["environment"])]
    assert others == []
    assert "KEFU_ADMIN_TOKEN" not in env_example()
    token_file = tmp_path / "secrets" / "kefu_admin_token"
    token = make_secrets(tmp_path)["kefu_admin_token"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEFU_ADMIN_TOKEN_FILE", str(token_file))
    admin_token = Settings().admin_token
    assert admin_token is not None and admin_token.get_secret_value() == token and len(token) >= 32
