"""A probe agent in a launched guild: it sends code to agents and collects their replies
(shared by the Rustic AI tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rustic_ai.core.agents.testutils.probe_agent import ProbeAgent
from rustic_ai.core.guild.builders import AgentBuilder
from rustic_ai.core.guild.guild import Guild


def attach_probe(guild: Guild, topics: Iterable[str], *, probe_id: str = "probe",
                 description: str = "sends code, collects replies") -> ProbeAgent:
    """A ProbeAgent added to ``guild`` in this process, listening on ``topics``."""
    builder = (AgentBuilder(ProbeAgent).set_id(probe_id).set_name("Probe")
               .set_description(description))
    for topic in topics:
        builder.add_additional_topic(topic)
    spec: Any = builder.build_spec()
    probe: ProbeAgent = guild._add_local_agent(spec)  # type: ignore[assignment]
    return probe
