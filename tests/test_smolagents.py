"""smolagents' CodeAgent on the sandbox (issue 16): a real agent driven by a scripted model
(canned replies, no network) through WasmPythonExecutor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from smolagents import CodeAgent, tool
    from smolagents.models import ChatMessage, MessageRole, Model
except ImportError:  # CI installs the smolagents extra: there it must run
    if os.environ.get("CI"):
        raise
    pytest.skip("smolagents is not installed (pip install 'wasm-exec[smolagents]')",
                allow_module_level=True)

from wasm_exec.integrations.smolagents import (
    SandboxExecutionError,
    WasmPythonExecutor,
    authorized_imports,
)

from .readme_blocks import README, python_blocks


class ScriptedModel(Model):
    """Answers each step with the next canned code block; keeps what it was shown."""

    def __init__(self, *steps: str) -> None:
        super().__init__(model_id="scripted")
        self.steps = list(steps)
        self.prompts: list[str] = []

    def generate(self, messages, stop_sequences=None, response_format=None,
                 tools_to_call_from=None, **kwargs):
        content = messages[-1].content
        self.prompts.append(content if isinstance(content, str) else
                            "\n".join(part.get("text", "") for part in content))
        code = self.steps.pop(0)
        return ChatMessage(role=MessageRole.ASSISTANT,
                           content=f"Thought: next step.\n<code>\n{code}\n</code>")


calls: list[str] = []


@tool
def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city's name
    """
    calls.append(city)
    if city == "Atlantis":
        raise ValueError("no such city")
    return f"sunny in {city}"


def observations(agent) -> list[str]:
    """What the model was shown after each action step (the observation or the error)."""
    out = []
    for step in agent.memory.steps:
        if type(step).__name__ == "ActionStep":
            out.append(str(step.error) if step.error else step.observations)
    return out


def test_code_agent_steps_tools_imports_and_final_answer():
    calls.clear()
    model = ScriptedModel(
        "w = get_weather('Paris')\nprint('got', w)\nlen(w)",
        "import os",
        "try:\n    get_weather('Atlantis')\nexcept ToolError as e:\n    print('tool said', e)",
        "import math\nimport json\nprint(json.dumps(numbers))\n"
        "final_answer({'w': w, 'root': math.sqrt(16), 'n': sum(numbers)})\n"
        "print('not reached')",
    )
    with WasmPythonExecutor(additional_authorized_imports=["json"]) as ex:
        agent = CodeAgent(tools=[get_weather], model=model, executor=ex,
                          additional_authorized_imports=["json"], max_steps=6)
        answer = agent.run("What is the weather?", additional_args={"numbers": [1, 2, 3]})
        assert answer == {"w": "sunny in Paris", "root": 4.0, "n": 6}
        assert calls == ["Paris", "Atlantis"]
        obs = observations(agent)
        assert len(obs) == 4
        # print output in the logs, the last line's value as the step's output
        assert obs[0] == ("Execution logs:\ngot sunny in Paris\n"
                          "Last output from code snippet:\n14")
        # an import off the allow-list fails the step, the agent goes on
        assert "Import of 'os' is not allowed" in obs[1]
        assert "Allowed imports: ['collections', 'datetime'" in obs[1]
        # a tool's exception comes back as ToolError in the sandbox
        assert "tool said get_weather: ValueError: no such city" in obs[2]
        # final_answer ends the step: what follows it did not run
        assert "[1, 2, 3]" in obs[3] and "not reached" not in obs[3]
        # the model saw each observation in its next prompt
        assert "got sunny in Paris" in model.prompts[1]
        assert "Import of 'os' is not allowed" in model.prompts[2]


def test_state_persists_across_runs_and_limits_roll_back():
    model = ScriptedModel(
        "total = 10\nprint(total)",
        "total += 5\nwhile True:\n    pass",
        "final_answer(total)",
        "final_answer(total * 2)",
    )
    with WasmPythonExecutor(timeout_seconds=2, fuel=None) as ex:
        agent = CodeAgent(tools=[], model=model, executor=ex, max_steps=4)
        assert agent.run("count") == 10
        obs = observations(agent)
        assert "stopped by the timeout limit" in obs[1] and "rolled back" in obs[1]
        # a second run, same sandbox: the variables are still there
        assert agent.run("again", reset=False) == 20


def test_final_answer_is_robust():
    with WasmPythonExecutor() as ex:
        agent = CodeAgent(tools=[], model=ScriptedModel(), executor=ex)
        ex.send_tools({**agent.tools})
        # `except Exception` does not swallow it
        out = ex("try:\n    final_answer('a')\nexcept Exception:\n    pass\nx = 1")
        assert out.is_final_answer and out.output == "a"
        # a value that is not JSON data arrives as its str()
        out = ex("final_answer({1, 2})")
        assert out.is_final_answer and out.output == "{1, 2}"
        # lost interpreter: the host tool still records the answer, the wrapper comes back
        ex.executor.reset()
        out = ex("print('fresh')\nfinal_answer(3)\nprint('after')")
        assert out.is_final_answer and out.output == 3
        out = ex("final_answer(4)\nprint('after')")
        assert out.is_final_answer and out.output == 4 and "after" not in out.logs
        out = ex("y = 2\ny * 21")
        assert not out.is_final_answer and out.output == 42


def test_outputs_and_errors_as_smolagents_expects():
    with WasmPythonExecutor(additional_authorized_imports=["fractions", "sys"]) as ex:
        ex.send_tools({})
        out = ex("from fractions import Fraction\nFraction(1, 3)  # a comment")
        assert out.output == "Fraction(1, 3)" and out.logs == ""
        out = ex("x = 'é'; x * 2")  # same line, non-ASCII before the expression
        assert out.output == "éé"
        out = ex("print('a')\nimport sys\nprint('b', file=sys.stderr)")
        assert out.logs == "a\nb\n" and out.output is None
        with pytest.raises(SandboxExecutionError) as e:
            ex("print('before')\n1 / 0")
        text = str(e.value)
        assert text.startswith("before\nCode execution failed: ZeroDivisionError")
        assert 'line 2' in text
        with pytest.raises(SandboxExecutionError, match="SyntaxError"):
            ex("def broken(:")
    with WasmPythonExecutor(max_print_outputs_length=100) as ex:
        ex.send_tools({})
        out = ex("print('x' * 1000)")
        assert len(out.logs) < 200 and "truncated" in out.logs


def test_authorized_imports_map_to_the_allow_list():
    assert authorized_imports(["numpy.*", "json", "math"])[-2:] == ["numpy", "json"]
    with pytest.raises(ValueError, match="cannot be honoured"):
        WasmPythonExecutor(additional_authorized_imports=["*"])
    with pytest.raises(ValueError, match="did you mean"):
        WasmPythonExecutor(additional_authorized_imports="json")
    with pytest.raises(ValueError, match="sets whitelisted_imports itself"):
        WasmPythonExecutor(whitelisted_imports=["os"])
    with WasmPythonExecutor(additional_authorized_imports=["xml.*"]) as ex:
        ex.send_tools({})
        assert ex("import xml.etree.ElementTree as ET\nET.fromstring('<a/>').tag").output == "a"


def test_bad_tools_and_variables_are_refused_clearly():
    with WasmPythonExecutor() as ex:
        with pytest.raises(ValueError, match="builtin 'print'"):
            ex.send_tools({"print": lambda s: s})
        with pytest.raises(ValueError, match="JSON data"):
            ex.send_variables({"blob": object()})
        ex.send_tools({})
        ex.send_variables({"a": 1})
        assert ex("a + 1").output == 2  # still usable


@pytest.mark.parametrize("index", range(len(python_blocks(smolagents=True))))
def test_readme_smolagents_blocks_run(index, tmp_path):
    # (from a file: smolagents' @tool reads the function's source)
    script = tmp_path / "block.py"
    script.write_text(python_blocks(smolagents=True)[index])
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=Path(README).parent)
    assert proc.returncode == 0, proc.stderr
