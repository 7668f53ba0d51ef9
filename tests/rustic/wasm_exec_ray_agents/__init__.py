"""The agents of the guild the Ray tests run (shipped to Ray's workers as a module of the
job's runtime environment, so that the actors can import them by class name)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel
from rustic_ai.core.guild import agent
from rustic_ai.core.guild.agent import Agent, ProcessContext
from rustic_ai.core.guild.agent_ext.depends.code_execution.stateful import (
    CodeExecutor,
    CodeSnippet,
)


class CodeRequest(BaseModel):
    """What the probe sends to a code-execution agent."""

    code: str
    input_data: Any = None


class CodeExecutionAgent(Agent):
    """Runs the code of each request with its injected ``code_executor`` (as the seed's
    guild does), and says where it ran: the process, the Ray node, the wasm_exec package."""

    @agent.processor(clz=CodeRequest, depends_on=["code_executor"])
    def run_code(self, ctx: ProcessContext[CodeRequest], code_executor: CodeExecutor) -> None:
        import ray

        import wasm_exec

        request = ctx.payload
        where: dict[str, Any] = {"pid": os.getpid(),
                                 "node": ray.get_runtime_context().get_node_id(),
                                 "wasm_exec": wasm_exec.__file__}
        if not hasattr(code_executor, "execute"):  # (Rustic's own executor: the yardstick)
            ran = code_executor.run(CodeSnippet(language="python", code=request.code))
            ctx.send_dict({"status": "success" if ran.exit_code == 0 else "error",
                           "output": None, **where})
            return
        result = code_executor.execute(
            code=request.code, globals_dict={"input_data": request.input_data},
            return_globals=["output"])
        where["state_reset"] = result.state_reset
        if result.success:
            ctx.send_dict({"status": "success", "output": result.globals.get("output"),
                           **where})
        else:
            ctx.send_dict({"status": "error", "error": result.error, **where})
