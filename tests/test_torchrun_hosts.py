"""Data-parallel training across two hosts through torchrun's c10d rendezvous: node 0 on one network
namespace, node 1 on another (tests/netns_hosts.py), gloo between them over their veth link, one process
per node. The two-node run reaches the weights of one process on the same global batch and seed.

What a real cluster needs is what the test passes: on every node the same command with
``--nnodes 2 --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID``, the node
hosting the rendezvous store told so (``--rdzv-conf is_host=1``, where torchrun cannot tell from the
endpoint's name), each node's reachable address (``--local-addr``) and, where a host has several
interfaces, the one gloo uses (``GLOO_SOCKET_IFNAME``), and an output directory every node sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.netns_hosts import Hosts, why_not

REASON = why_not()
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}"),
              pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")]
CLASSIFIER = ["-m", "core.cli", "train", "classifier", "--dataset", "digits", "--limit", "64", "--batch-size",
              "16", "--width", "4", "--feature-dim", "8", "--augment", "--device", "cpu", "--seed", "3",
              "--epochs", "2"]  # fmt: skip


def test_two_nodes_through_torchrun_rendezvous_train_like_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    alone = subprocess.run([sys.executable, *CLASSIFIER, "--out", str(tmp_path / "one")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    hosts = Hosts(workers=1).create()
    try:
        server, worker = hosts.server_address(0), hosts.worker_address(0)
        nodes, logs = [], [tmp_path / "node0.log", tmp_path / "node1.log"]
        for log, (namespace, address, is_host, interface) in zip(logs, (
            (hosts.server, server, 1, hosts.link(0, server_side=True)),
            (hosts.workers[0], worker, 0, hosts.link(0, server_side=False)),
        ), strict=True):
            with log.open("wb") as out:
                nodes.append(subprocess.Popen(
                    ["ip", "netns", "exec", namespace, TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1",
                     "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{server}:29400", "--rdzv-id", "cdp-test",
                     "--rdzv-conf", f"is_host={is_host}", "--local-addr", address,
                     *CLASSIFIER, "--out", str(tmp_path / "two")],
                    env={**env, "GLOO_SOCKET_IFNAME": interface}, stdout=out, stderr=subprocess.STDOUT))
        codes = [node.wait(timeout=300) for node in nodes]
        assert codes == [0, 0], "".join(log.read_text(errors="replace")[-2000:] for log in logs)
        for k, log in enumerate(logs):  # one group of two ranks, one on each host, not two runs of one
            assert f"joined process group: rank {k} of 2" in log.read_text(errors="replace")
    finally:
        hosts.destroy()
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["model"]
    assert one.keys() == two.keys()
    worst = max(float((one[k].double() - two[k].double()).abs().max()) for k in one)
    assert worst <= 1e-6, f"largest weight difference {worst:.3g}"
