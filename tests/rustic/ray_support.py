"""A guild of wasm-exec code agents on Rustic AI's RayExecutionEngine, with Redis messaging,
on a local Ray cluster (a head and two worker nodes), everything on the loopback
interface: for the failover test and the Ray benchmark (``bench_ray.py``).

Ray is told to stay on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes every
node use 127.0.0.1 and bind there), and the nodes are started with Ray's own
``ray.cluster_utils.Cluster`` (its ``ray start`` command refuses worker nodes in that
mode). wasm_exec reaches the workers through the job's runtime environment
(``py_modules``: a copy of the package as a wheel would hold it); the agents' module is
the job's working directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# before Ray is imported (it reads this once): every node on 127.0.0.1, bound there
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from rustic_ai.core.agents.testutils.probe_agent import ProbeAgent  # noqa: E402
from rustic_ai.core.guild.builders import AgentBuilder, GuildBuilder  # noqa: E402
from rustic_ai.core.guild.dsl import AgentSpec, DependencySpec  # noqa: E402
from rustic_ai.core.guild.guild import Guild  # noqa: E402

import wasm_exec  # noqa: E402
from tests.redis_support import redis_server  # noqa: E402
from tests.rustic.probe_support import attach_probe  # noqa: E402

if ray_constants.ENABLE_RAY_CLUSTER:
    raise ImportError("Ray was imported before tests/rustic/ray_support.py could keep it on "
                      "loopback: import this module first")

AGENTS_MODULE = Path(__file__).resolve().parent / "wasm_exec_ray_agents"
# (imported by its top-level name, as the workers import it from the runtime environment)
if str(AGENTS_MODULE.parent) not in sys.path:
    sys.path.insert(0, str(AGENTS_MODULE.parent))
from wasm_exec_ray_agents import CodeExecutionAgent, CodeRequest  # noqa: E402

RESOLVER = "wasm_exec.integrations.rustic.WasmExecExecutorResolver"
RUSTIC_EXECUTOR = ("rustic_ai.core.guild.agent_ext.depends.code_execution.stateful."
                   "python_exec_executor.PythonExecExecutorResolver")
ORG = "wasm_exec_org"
KEY_ENV = "WASM_EXEC_RAY_STATE_KEY"

# what every process of the cluster (and the driver) runs with
CLUSTER_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only (see the module docstring)
    "RAY_USAGE_STATS_ENABLED": "0",
    "OTEL_SDK_DISABLED": "true",  # else span export to no collector stalls replies ~15 s
    "RUSTIC_NUM_CPUS_PER_AGENT": "1",  # one agent per worker node (each has one CPU)
}


def shipped_package(into: Path) -> Path:
    """A copy of the installed wasm_exec package as a wheel lays it out (its guest runner
    and pins under ``wasm_exec/_spec``), for a runtime environment's ``py_modules``."""
    source = Path(wasm_exec.__file__).resolve().parent
    target = into / "wasm_exec"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source, target, ignore=ignore)
    spec = source.parent / "runtime" / "spec"
    if spec.is_dir():  # (a source checkout: the wheel maps runtime/spec to _spec)
        shutil.copytree(spec, target / "_spec", ignore=ignore, dirs_exist_ok=True)
    return target


@dataclass
class RayGuild:
    guild: Guild
    probe: ProbeAgent
    redis_url: str
    specs: dict[str, AgentSpec] = field(default_factory=dict)

    def ask(self, topic: str, code: str, input_data: Any = None,
            timeout: float = 120.0) -> dict[str, Any]:
        """Send one request and wait for its reply."""
        self.probe.clear_messages()
        self.probe.publish(topic=topic, payload=CodeRequest(code=code, input_data=input_data))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = [m for m in self.probe.get_messages() if "status" in m.payload]
            if replies:
                return replies[0].payload
            time.sleep(0.005)
        raise AssertionError(f"no reply on {topic} within {timeout} s")

    def wait_running(self, agent_id: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.guild.is_agent_running(agent_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"{agent_id} is not running after {timeout} s")
            time.sleep(0.2)


@contextlib.contextmanager
def cluster_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in CLUSTER_ENV}
    os.environ.update(CLUSTER_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_guild(agent_ids: list[str], resolver_properties: Callable[[str], dict[str, Any]],
              resolver_class: str = RESOLVER, state_key: str = "k" * 32,
              guild_id: str = "wasm_exec_ray_guild") -> Iterator[RayGuild]:
    """Redis on loopback, a Ray cluster of a head and two worker nodes, and a guild whose
    agents (``agent_ids``, listening on topics of the same names) run as Ray actors with
    the ``code_executor`` dependency resolved by ``resolver_class`` with
    ``resolver_properties(redis_url)`` (a URL of the same Redis server, database 1)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(cluster_env())
        os.environ[KEY_ENV] = state_key
        stack.callback(os.environ.pop, KEY_ENV, None)
        host, port = stack.enter_context(redis_server())
        work = Path(tempfile.mkdtemp(prefix="wxr-", dir="/tmp"))  # (short: socket paths)
        stack.callback(shutil.rmtree, work, True)
        (work / "ray").mkdir()
        saved_tmp = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = str(work)  # (Ray's files, its address file too, go here)
        stack.callback(lambda: os.environ.pop("RAY_TMPDIR") if saved_tmp is None
                       else os.environ.__setitem__("RAY_TMPDIR", saved_tmp))
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, node_ip_address="127.0.0.1", include_dashboard=False,
            object_store_memory=80 << 20))
        stack.callback(cluster.shutdown)
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                             object_store_memory=80 << 20)
        cluster.wait_for_nodes()
        # the job's own code (the agents' module) is its working directory (without one,
        # Ray would put the driver's current directory on the workers' path); wasm_exec
        # is a module of the runtime environment
        job = work / "job"
        shutil.copytree(AGENTS_MODULE, job / AGENTS_MODULE.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
        runtime_env = {
            "working_dir": str(job),
            "py_modules": [str(shipped_package(work / "pkg"))],
            "env_vars": {**CLUSTER_ENV, KEY_ENV: state_key},
        }
        ray.init(address=cluster.address, runtime_env=runtime_env, log_to_driver=False)
        stack.callback(ray.shutdown)

        messaging = {"redis_client": {"host": host, "port": port}}
        store_url = f"redis://{host}:{port}/1"
        builder = (GuildBuilder(guild_id, "wasm-exec on Ray", "code agents on Ray actors")
                   .set_execution_engine("rustic_ai.ray.RayExecutionEngine")
                   .set_messaging("rustic_ai.redis.messaging.backend",
                                  "RedisMessagingBackend", messaging)
                   .add_dependency_resolver(
                       "code_executor",
                       DependencySpec(class_name=resolver_class,
                                      properties=resolver_properties(store_url))))
        specs = {}
        for agent_id in agent_ids:
            spec = (AgentBuilder(CodeExecutionAgent).set_id(agent_id).set_name(agent_id)
                    .set_description("runs agent-written Python")
                    .listen_to_default_topic(False).add_additional_topic(agent_id)
                    .build_spec())
            specs[agent_id] = spec
            builder.add_agent_spec(spec)
        guild = builder.launch(organization_id=ORG)
        stack.callback(guild.shutdown)
        probe = attach_probe(guild, agent_ids)
        ray_guild = RayGuild(guild, probe, store_url, specs)
        for agent_id in agent_ids:
            ray_guild.wait_running(agent_id)
        yield ray_guild


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
