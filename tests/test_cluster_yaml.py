"""cluster.yaml: a config Ray's cluster launcher accepts, for a cluster that stays closed.

Offline and fast: the YAML is parsed and checked the way ``ray up`` checks it before it calls AWS
(Ray's AWS defaults filled in, then Ray's shipped schema); nothing is launched.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

TEXT = (Path(__file__).resolve().parents[1] / "cluster.yaml").read_text()
CONFIG = yaml.safe_load(TEXT)
HEAD = CONFIG["head_node_type"]
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
ALL_COMMANDS = [cmd for key in COMMAND_KEYS for cmd in CONFIG.get(key, [])]
START_COMMANDS = CONFIG["head_start_ray_commands"] + CONFIG["worker_start_ray_commands"]


def validate(config: dict) -> None:
    """What ``ray up`` does first (ray/autoscaler/_private/commands.py, _bootstrap_config)."""
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_accepts_the_config():
    validate(CONFIG)


@pytest.mark.parametrize("breakage", [
    lambda c: c.update(max_worker=8),                                       # misspelt key
    lambda c: c.update(max_workers="many"),
    lambda c: c["available_node_types"][HEAD].update(resources={"GPU": -1}),
    lambda c: c["provider"]["security_group"].update(Rules=[]),             # not a security_group field
    lambda c: c.update(head_node_type="no-such-type"),
])
def test_ray_rejects_a_broken_copy(breakage):
    """The same check fails on a broken copy, so the test above can fail too."""
    broken = copy.deepcopy(CONFIG)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(broken)


def test_only_ssh_from_an_address_range_gets_in():
    rules = CONFIG["provider"]["security_group"]["IpPermissions"]
    for rule in rules:
        cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])] + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
        assert not {"0.0.0.0/0", "::/0"} & set(cidrs), rule
        if cidrs:  # the one kind of rule open to addresses outside the cluster
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
    assert rules, "without rules of its own, a group Ray creates is open to SSH from anywhere"


def test_services_listen_on_loopback():
    assert not any("0.0.0.0" in cmd for cmd in START_COMMANDS)
    [head_start] = [cmd for cmd in CONFIG["head_start_ray_commands"] if "ray start" in cmd]
    assert "--dashboard-host=127.0.0.1" in head_start
    [mlflow] = [cmd for cmd in ALL_COMMANDS if "mlflow server" in cmd]
    assert re.findall(r"--host[ =](\S+)", mlflow) == ["127.0.0.1"]
    assert "--backend-store-uri \"postgresql" in mlflow and "--artifacts-destination \"s3://" in mlflow


def test_head_and_workers_start_with_one_token():
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in CONFIG[key] if "ray start" in cmd]
        assert starts and all("RAY_AUTH_MODE=token" in cmd for cmd in starts), key
    # Generated on the head, copied from the head to each worker before its `ray start`.
    assert any("ray get-auth-token --generate" in cmd for cmd in CONFIG["head_setup_commands"])
    assert "~/.ray/auth_token" in CONFIG["cluster_synced_files"]


def test_trials_asking_for_gpus_run_on_the_gpu_workers():
    types = CONFIG["available_node_types"]
    assert types[HEAD]["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != HEAD]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] > t.get("min_workers", 0)
                           for t in workers)  # GPU workers scale with the trials
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())  # credentials from the role


def test_every_node_installs_the_checkout():
    [remote] = [remote for remote, local in CONFIG["file_mounts"].items() if local == "."]
    assert any(re.search(rf"pip install .*-e {re.escape(remote)}\b", cmd) for cmd in CONFIG["setup_commands"])


@pytest.mark.parametrize("pattern", [
    r"AKIA[0-9A-Z]{16}",
    r"aws_secret_access_key",
    r"password\s*[:=]\s*\S+",
    r"token\s*[:=]\s*\S+",
])
def test_no_credentials_in_the_file(pattern):
    assert not re.search(pattern, TEXT, re.IGNORECASE)
