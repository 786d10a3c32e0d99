"""Shard processes on this machine: the gateway starts one per (shard, replica), restarts any that
exits, and stops them with itself.

Each child is this same program with ``role = "shard"``, its own port on loopback and its own
data directory (``<data_dir>/shard-<s>/replica-<r>``); replica 0 leads, the others follow it.
Children get the gateway's engine settings through the environment and stop when the gateway
is gone (``gateway_pid``: they watch their parent), so a ``kill -9`` of the gateway leaves no
orphans.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

from lakestack_common.config import env_prefix
from lakestack_common.topology import free_ports
from lakestack_vector_core.settings import VectorCoreSettings

log = logging.getLogger("lakestack.vector_core.supervisor")

RESTART_DELAY_S = 0.5
STOP_GRACE_S = 5.0
# What a shard process inherits from the gateway's settings.
ENGINE_FIELDS = (
    "metric",
    "namespace_metrics",
    "exact_threshold",
    "ann_index",
    "ivf_nprobe",
    "target_recall",
    "hnsw_m",
    "hnsw_ef_construction",
    "hnsw_ef_search",
    "rebuild_dead_fraction",
    "max_top_k",
    "snapshot_wal_bytes",
    "wal_retain_bytes",
    "max_message_bytes",
    "log_level",
    "log_format",
)


class ShardProcesses:
    def __init__(self, settings: VectorCoreSettings) -> None:
        self.settings = settings
        count = settings.shards * settings.replicas
        ports = free_ports(count)
        self.addresses = [
            [f"127.0.0.1:{ports[s * settings.replicas + r]}" for r in range(settings.replicas)]
            for s in range(settings.shards)
        ]
        self.processes: dict[tuple[int, int], asyncio.subprocess.Process] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    def _environment(self, shard: int, replica: int) -> dict[str, str]:
        settings = self.settings
        prefix = env_prefix(settings.service.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)}
        values = settings.model_dump(mode="json", include=set(ENGINE_FIELDS))
        for name, value in values.items():
            env[prefix + name.upper()] = json.dumps(value) if isinstance(value, dict | list) else str(value)
        processes = settings.shards * settings.replicas
        env.update(
            {
                prefix + "ROLE": "shard",
                prefix + "HOST": "127.0.0.1",
                prefix + "PORT": self.addresses[shard][replica].rsplit(":", 1)[1],
                prefix + "DATA_DIR": str(settings.data_dir / f"shard-{shard}" / f"replica-{replica}"),
                prefix + "SHARD_INDEX": str(shard),
                prefix + "REPLICA_INDEX": str(replica),
                prefix + "LEADER_ADDRESS": self.addresses[shard][0] if replica else "",
                # Share the cores between the shard processes instead of each claiming all.
                prefix + "WORKERS": str(max(1, settings.pool_workers // processes)),
                prefix + "FAISS_THREADS": "1",
                prefix + "AUTH_TOKENS": "{}",
                prefix + "GATEWAY_PID": str(os.getpid()),
            }
        )
        return env

    async def _spawn(self, shard: int, replica: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lakestack_vector_core",
            env=self._environment(shard, replica),
        )
        self.processes[(shard, replica)] = process
        log.info(
            "started shard %d replica %d (pid %d) on %s",
            shard,
            replica,
            process.pid,
            self.addresses[shard][replica],
        )
        return process

    async def start(self) -> None:
        for shard in range(self.settings.shards):
            for replica in range(self.settings.replicas):
                await self._spawn(shard, replica)
                self._watchers.append(asyncio.create_task(self._watch(shard, replica)))

    async def _watch(self, shard: int, replica: int) -> None:
        while not self._stopping:
            code = await self.processes[(shard, replica)].wait()
            if self._stopping:
                return
            log.warning("shard %d replica %d exited with %s; restarting it", shard, replica, code)
            await asyncio.sleep(RESTART_DELAY_S)
            if not self._stopping:
                await self._spawn(shard, replica)

    async def stop(self) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                process.kill()
                await process.wait()
