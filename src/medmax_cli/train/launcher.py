"""Start N processes per node through torch.distributed.run (torchrun): no hand-made process management.

`medmax finetune ... --gpus 8` re-executes itself as
`python -m torch.distributed.run --nproc-per-node 8 ... -m medmax_cli finetune ...`; torchrun sets
RANK / WORLD_SIZE / LOCAL_RANK in each worker, which then trains. Several nodes: the same command
on every node with --nodes / --node-rank / --master-addr, or those read from SLURM's environment.
On a machine without CUDA, --gpus N means N CPU processes (gloo), which the tests use.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from medmax_cli.train.config import TrainConfig


def in_worker(env: Mapping[str, str] | None = None) -> bool:
    """True inside a process started by torchrun (it sets LOCAL_RANK and WORLD_SIZE)."""
    env = os.environ if env is None else env
    return "LOCAL_RANK" in env and "WORLD_SIZE" in env


def needs_launch(cfg: TrainConfig, env: Mapping[str, str] | None = None) -> bool:
    return cfg.world_size > 1 and not in_worker(env)


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,09],cpu1' -> 'gpu03'."""
    m = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """nodes / node_rank / master_addr from a SLURM job's environment ({} outside SLURM)."""
    env = os.environ if env is None else env
    if "SLURM_NNODES" not in env or "SLURM_JOB_NODELIST" not in env:
        return {}
    return {
        "nodes": int(env["SLURM_NNODES"]),
        "node_rank": int(env.get("SLURM_NODEID", "0")),
        "master_addr": first_host(env["SLURM_JOB_NODELIST"]),
    }


def torchrun_command(cfg: TrainConfig, argv: Sequence[str]) -> list[str]:
    """The command line that re-runs `medmax <argv>` in cfg.gpus processes on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(cfg.gpus)]
    if cfg.nodes == 1:
        cmd += ["--standalone"]  # local rendezvous on a free port: several runs may share a machine
    else:
        cmd += [
            "--nnodes",
            str(cfg.nodes),
            "--node-rank",
            str(cfg.node_rank),
            "--master-addr",
            cfg.master_addr,
            "--master-port",
            str(cfg.master_port),
        ]
    return [*cmd, "-m", "medmax_cli", *argv]


def relaunch(cfg: TrainConfig, argv: Sequence[str]) -> None:
    """Replace this process by torchrun running the same command (does not return)."""
    cmd = torchrun_command(cfg, argv)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)
