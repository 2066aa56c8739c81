"""The simulation on an existing Ray cluster (a head and a worker on loopback, started and stopped by PID),
and the client resources (CPU / GPU share) handed to Flower's Ray backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from flwr.supercore.utils import simulation_config_from_json

from atmflow.processes import LOCAL_RAY, flwr_env, free_port, processes_with_env
from atmflow.sim.flwr_local import check_ray_address, federation_config, run_simulation
from atmflow.sim.ray_cluster import (
    active_nodes,
    cluster_processes,
    cpu_usage,
    local_ray_cluster,
    nodes_that_ran,
    ray_status,
    still_running,
)

ROOT = Path(__file__).resolve().parents[2]

STATUS = """======== Autoscaler status: 2026-11-26 13:27:44.715616 ========
Node status
---------------------------------------------------------------
Active:
 1 node_5924bb25a85ea7f874d1471b5e048db0b57855d84f68866481e3ea5c
 1 node_2a32f71a512f3572b684b2fe4bc178682505a5461626bfa39e9cca9a
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 2.0/2.0 CPU
 0B/32.56GiB memory
"""


def test_federation_config_gives_each_client_a_gpu_share() -> None:
    text = federation_config(8, num_cpus_per_client=4, num_gpus_per_client=0.25)
    assert text == "num-supernodes=8 client-resources-num-cpus=4 client-resources-num-gpus=0.25"
    # flwr 1.42 turns it into its SimulationConfig exactly as `flwr run --federation-config` does
    parsed = {k.replace("-", "_"): v for k, v in parse_config_args([text]).items()}
    sim = simulation_config_from_json(parsed)
    assert (sim.num_supernodes, sim.client_resources_num_cpus, sim.client_resources_num_gpus) == (8, 4, 0.25)
    assert federation_config(4, 1, 2).endswith("client-resources-num-gpus=2.0")
    with pytest.raises(ValueError, match="num-gpus-per-client.*1.5"):
        federation_config(4, 1, 1.5)
    with pytest.raises(ValueError, match="num-cpus-per-client.*0"):
        federation_config(4, 0)


def test_ray_address_is_checked_before_anything_starts(tmp_path: Path) -> None:
    assert flwr_env(tmp_path)["RAY_ADDRESS"] == LOCAL_RAY  # a private Ray, never a cluster found by chance
    assert flwr_env(tmp_path, "10.0.0.1:6379")["RAY_ADDRESS"] == "10.0.0.1:6379"
    with pytest.raises(ValueError, match="host:port.*'head-node'"):
        check_ray_address("head-node")
    with pytest.raises(ValueError, match=r"\(ray://\) are not supported"):
        check_ray_address("ray://10.0.0.1:10001")
    port = free_port()
    with pytest.raises(RuntimeError, match=f"no Ray cluster answers at 127.0.0.1:{port}.*ray start --head"):
        check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(RuntimeError, match="no Ray cluster answers"):
        run_simulation(ROOT, tmp_path / "flwr-home", ray_address=f"127.0.0.1:{port}")
    assert not (tmp_path / "flwr-home").exists()  # nothing was started


def test_cuda_clients_need_a_gpu_share(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device='cuda' needs --num-gpus-per-client > 0"):
        run_simulation(ROOT, tmp_path / "flwr-home", "device='cuda'")


def test_ray_status_parsing() -> None:
    assert active_nodes(STATUS) == 2
    assert cpu_usage(STATUS) == (2.0, 2.0)
    assert active_nodes("no report") == 0


def released_status(address: str, timeout_s: float = 60.0) -> str:
    """``ray status`` once no CPU is in use any more (the cluster frees a finished job's actors within
    seconds), or the last report after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while cpu_usage(status := ray_status(address))[0] > 0 and time.monotonic() < deadline:
        time.sleep(1.0)
    return status


@pytest.mark.process
def test_simulation_attaches_to_an_existing_ray_cluster(tmp_path: Path) -> None:
    """A head and a worker node (one CPU each), then a real ``flwr run`` attached to them: each of the two
    ClientApp actors runs on its own node, which a private Ray instance could not do."""
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "outputs"
    overrides = (f"output-dir='{out}' run-name='cluster' train-size=100 test-size=20 image-size=32 "
                 "rounds=1 individual=false tasks='digits,mnist'")
    with local_ray_cluster(num_workers=1, num_cpus=1) as cluster:
        running = cluster_processes(cluster.root)
        try:
            code = run_simulation(ROOT, flwr_home, overrides, timeout_s=600, ray_address=cluster.address)
            ran_on = nodes_that_ran(cluster, "ClientAppActor")
            status = released_status(cluster.address)
        finally:
            leftovers = processes_with_env("FLWR_HOME", str(flwr_home))
    assert len(running) >= 6, "expected the GCS, two raylets and their agents"
    assert still_running(running) == set() and cluster_processes(cluster.root) == set(), "Ray processes left"
    assert not cluster.root.exists()
    assert leftovers == [], f"processes left running: {leftovers}"
    assert code == 0
    assert ran_on == list(cluster.node_dirs), f"ClientApp actors ran only on {ran_on}"
    assert active_nodes(status) == 2
    assert cpu_usage(status) == (0.0, 2.0), "the finished run still holds cluster CPUs"
    results = json.loads((out / "cluster" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1]
    assert sorted(results["rounds"][-1]["tasks"]) == ["digits", "mnist"]
