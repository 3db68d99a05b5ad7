"""A bad inventory is refused whole, before anything starts, with every problem placed."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.inventory import load_inventory
from tests.support.procs import REPO_ROOT, service_env

BAD = """
[defaults]
interval = 5.0
colour = "red"

[[instance]]
id = "a"
host = "db1"
port = 70000

[[instance]]
id = "a"
host = "db2"

[[instance]]
id = "slow"
host = "db3"
timeout = 5.0
interval = 2.0
favourite = true

[[instance]]
host = "db4"
rise = 0
"""


def run_state(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.state"], cwd=REPO_ROOT,
                          env=service_env(env), capture_output=True, text=True, timeout=30)


def test_every_problem_is_listed_with_its_place(tmp_path: Path):
    path = tmp_path / "inv.toml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as exc:
        load_inventory(str(path))
    problems = exc.value.problems
    expected = [
        f"{path}:defaults.colour: unknown key",
        f"{path}:instance[a].port: must be an integer from 1 to 65535",
        f"{path}:instance[a].id: duplicate id 'a'",
        f"{path}:instance[slow].favourite: unknown key",
        f"{path}:instance[slow].timeout: must be less than interval",
        f"{path}:instance[3].id: missing",
        f"{path}:instance[3].rise: must be an integer from 1 to 1000",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
    assert len(problems) == len(expected), problems


@pytest.mark.parametrize("body, place", [
    ('[[instance]]\nid = "x"\nhost = "h"\nport = "3306"\n', "instance[x].port"),
    ('[[instance]]\nid = "bad id!"\nhost = "h"\n', "instance[bad id!].id"),
    ('[[instance]]\nid = "x"\n', "instance[x].host"),
    ('[[instance]]\nid = "x"\nhost = "h"\ntls = { verify = "yes" }\n', "instance[x].tls.verify"),
    ('[[instance]]\nid = "x"\nhost = "h"\ntags = "prod"\n', "instance[x].tags"),
    ("[[instance]\n", "not valid TOML"),
    ("", "no [[instance]]"),
    ("[defaults]\ninterval = 5.0\n", "no [[instance]]"),
])
def test_single_problems_name_their_field(tmp_path: Path, body: str, place: str):
    path = tmp_path / "inv.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_inventory(str(path))
    assert any(place in p for p in exc.value.problems), exc.value.problems


def test_state_service_exits_2_listing_every_problem(tmp_path: Path):
    path = tmp_path / "inv.toml"
    path.write_text(BAD)
    out = run_state({"VIGIL_INVENTORY": str(path), "VIGIL_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.count(str(path)) == 7, out.stderr
    assert "instance[slow].timeout" in out.stderr


def test_missing_inventory_file_exits_2(tmp_path: Path):
    out = run_state({"VIGIL_INVENTORY": str(tmp_path / "nope.toml"),
                     "VIGIL_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode == 2
    assert f"{tmp_path / 'nope.toml'}: cannot read inventory" in out.stderr


def test_unset_inventory_exits_2():
    out = run_state({"VIGIL_INVENTORY": "", "VIGIL_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode == 2
    assert "VIGIL_INVENTORY" in out.stderr


@pytest.mark.parametrize("module", ["services.prober", "services.state", "services.gateway"])
def test_bad_environment_exits_2_naming_the_variable(module: str):
    out = subprocess.run([sys.executable, "-m", module], cwd=REPO_ROOT,
                         env=service_env({"VIGIL_GATEWAY_PORT": "eighty",
                                          "VIGIL_LOG_FORMAT": "xml"}),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "VIGIL_GATEWAY_PORT: expected an integer" in out.stderr
    assert "VIGIL_LOG_FORMAT" in out.stderr


def test_gateway_refuses_a_public_address_without_a_token():
    out = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO_ROOT,
                         env=service_env({"VIGIL_GATEWAY_HOST": "0.0.0.0",
                                          "VIGIL_API_TOKEN": ""}),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "VIGIL_API_TOKEN" in out.stderr


def test_gateway_port_in_use_exits_1_with_a_clear_message():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO_ROOT,
                             env=service_env({"VIGIL_GATEWAY_PORT": str(port),
                                              "VIGIL_REDIS_URL": "redis://127.0.0.1:1/0"}),
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("module", ["services.prober", "services.state"])
def test_a_metrics_port_in_use_exits_2_naming_the_variable(module: str, tmp_path: Path):
    inventory = tmp_path / "inv.toml"
    inventory.write_text('[[instance]]\nid = "x"\nhost = "127.0.0.1"\n')
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", module], cwd=REPO_ROOT,
                             env=service_env({"VIGIL_METRICS_PORT": str(port),
                                              "VIGIL_INVENTORY": str(inventory),
                                              "VIGIL_REDIS_URL": "redis://127.0.0.1:1/0"}),
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert f"VIGIL_METRICS_PORT: cannot listen on 0.0.0.0:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_credentials_file_says_where_but_never_quotes_it(tmp_path: Path):
    creds = tmp_path / "creds.toml"
    creds.write_text('[ops]\nuser = "ops"\npassword = "s3cr3t-\x01-pw"\n')  # a raw control char
    out = subprocess.run([sys.executable, "-m", "services.prober"], cwd=REPO_ROOT,
                         env=service_env({"VIGIL_CREDENTIALS": str(creds),
                                          "VIGIL_REDIS_URL": "redis://127.0.0.1:1/0"}),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert f"{creds}: not valid TOML (at line 3, column" in out.stderr, out.stderr
    assert "s3cr3t" not in out.stderr


@pytest.mark.parametrize("module", ["services.prober", "services.state", "services.gateway"])
def test_help_is_answered_and_arguments_are_refused(module: str):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                              env=service_env({}), capture_output=True, text=True, timeout=30)

    out = run("--help")  # not started: it would run until killed
    assert out.returncode == 0 and "VIGIL_*" in out.stdout, out
    out = run("--port", "80")
    assert out.returncode == 2 and "takes no arguments" in out.stderr, out
