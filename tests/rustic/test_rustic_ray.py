"""The seed's guild on Rustic AI's RayExecutionEngine: an agent whose actor process is killed
comes back with its state, from the state store.

A local Ray cluster (a head and two worker nodes started by the test), Redis messaging and
a Redis state store (a redis-server started by the test), everything on loopback; wasm_exec
reaches the workers through the job's runtime environment (``tests/rustic/ray_support.py``).
Needs ``rusticai-ray`` and ``rusticai-redis`` (``.ci/rustic.sh`` installs them).
"""

from __future__ import annotations

import os

import pytest

# before Ray is imported (it reads this once): every node on 127.0.0.1, bound there
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

pytest.importorskip("rustic_ai")
pytest.importorskip("rustic_ai.ray")
pytest.importorskip("rustic_ai.redis")

import signal  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402

from tests.redis_support import needs_redis  # noqa: E402
from tests.rustic.ray_support import KEY_ENV, ORG, RayGuild, ray_guild, wait_for  # noqa: E402
from wasm_exec import RedisStateStore  # noqa: E402
from wasm_exec.state_store import state_name  # noqa: E402

GUILD = "wasm_exec_ray_guild"


def _properties(store_url: str) -> dict[str, Any]:
    return {"whitelisted_imports": ["math"], "default_imports": {"m": "math"},
            "timeout_seconds": 10, "state_store": store_url,
            "state_store_key_env": KEY_ENV}


def _actor_pid(guild: RayGuild, agent_id: str) -> int | None:
    """The pid of the process the agent's actor runs in now (None while it is being
    restarted)."""
    actor = ray.get_actor(agent_id, namespace=f"{ORG}_{GUILD}")
    try:
        return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=60)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None  # (ActorUnavailableError is one: the actor is restarting)


@pytest.mark.slow
@pytest.mark.redis
@needs_redis
def test_agent_state_survives_the_death_of_its_actor() -> None:
    with ray_guild(["coder_a", "coder_b"], _properties, guild_id=GUILD) as g:
        first = g.ask("coder_a", "counter = 41\ngreeting = 'hello'\noutput = m.sqrt(16)")
        assert first["status"] == "success" and first["output"] == 4.0
        assert first["state_reset"] is False
        # the worker imported wasm_exec from the job's runtime environment
        assert "runtime_resources" in first["wasm_exec"]
        other = g.ask("coder_b", "mine = 'b'\noutput = 'counter' in globals()")
        assert other["status"] == "success" and other["output"] is False  # isolated
        assert other["node"] != first["node"]  # one agent per worker node

        store = RedisStateStore(g.redis_url)
        name = state_name(("coder_a", GUILD, ORG))  # (agent_id, guild_id, org_id)
        most = 1 << 30
        after_first = wait_for(lambda: store.get(name, most), 60, "the first call's image")
        second = g.ask("coder_a", "counter += 1\noutput = counter")
        assert second["status"] == "success" and second["output"] == 42
        assert second["pid"] == first["pid"]
        # the image of the second answered call is saved after its reply, in the
        # background: wait for it before the kill
        wait_for(lambda: store.get(name, most) not in (None, after_first), 60,
                 "the second call's image")

        # kill the actor's process between two requests
        pid = second["pid"]
        assert _actor_pid(g, "coder_a") == pid
        os.kill(pid, signal.SIGKILL)
        # Ray restarts the actor in a new process, without starting its agent (it is not
        # subscribed to its topic): recreate the agent through the guild's own API
        new_pid = wait_for(lambda: (p := _actor_pid(g, "coder_a")) not in (None, pid) and p,
                           120, "the actor's restart")
        # (seen with Ray 2.60: is_agent_running is False here, the agent is relaunched)
        if not g.guild.is_agent_running("coder_a"):
            g.guild.launch_agent(g.specs["coder_a"])
        g.wait_running("coder_a")

        # the second request sees the variables of the first ones: the state came back
        # from the store (the new process never ran them)
        third = g.ask("coder_a", "counter += 1\noutput = [counter, greeting, m.pi > 3]")
        assert third["status"] == "success", third
        assert third["output"] == [43, "hello", True]
        assert third["state_reset"] is False
        assert third["pid"] == new_pid != pid
        # the other agent was not touched
        again = g.ask("coder_b", "output = mine")
        assert again["output"] == "b" and again["pid"] == other["pid"]
        store.close()
