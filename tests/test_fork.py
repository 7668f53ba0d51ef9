"""executor.fork() (issue 15): a copy of an agent as of its last answered call, isolated
from it, with its own random numbers; on both runtimes."""

from __future__ import annotations

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import ExecutorClosedError, PythonExecExecutor, PythonExecExecutorResolver

SEED = {
    "minimal": dict(whitelisted_imports=["random", "uuid"]),
    "scientific": dict(runtime="scientific", whitelisted_imports=["random", "uuid", "numpy"],
                       default_imports={"np": "numpy"}),
}
DRAW = {
    "minimal": "import random, uuid\ndraw = [random.random(), uuid.uuid4().hex]",
    "scientific": "import random, uuid\n"
                  "draw = [random.random(), uuid.uuid4().hex, float(np.random.rand())]",
}


@pytest.fixture(params=["minimal", pytest.param("scientific", marks=[pytest.mark.scientific,
                                                                      needs_scientific])])
def rt(request):
    return request.param


def test_a_fork_continues_from_the_last_answered_call_and_stays_apart(rt):
    with PythonExecExecutor(timeout_seconds=20, **SEED[rt]) as ex:
        ex.execute("plan = ['a']\nwith open('/tmp/notes.txt', 'w') as f:\n    f.write('a')")
        r = ex.execute("plan.append('stopped')\nwhile True: pass", limits={"fuel": 20_000_000})
        assert r.rolled_back
        with ex.fork() as branch:
            r = branch.execute("plan.append('b')\nwith open('/tmp/notes.txt', 'a') as f:\n"
                               "    f.write('b')\nnotes = open('/tmp/notes.txt').read()",
                               return_globals=["plan", "notes"])
            assert not r.state_reset and r.globals == {"plan": ["a", "b"], "notes": "ab"}
            r = ex.execute("notes = open('/tmp/notes.txt').read()",
                           return_globals=["plan", "notes"])
            assert r.globals == {"plan": ["a"], "notes": "a"}
            ex.execute("plan.append('main')")
            assert branch.execute("", return_globals=["plan"]).globals == {
                "plan": ["a", "b"]}
        # the branch closed: the agent goes on
        assert ex.execute("", return_globals=["plan"]).globals == {"plan": ["a", "main"]}


def test_each_copy_draws_its_own_random_numbers(rt):
    with PythonExecExecutor(timeout_seconds=20, **SEED[rt]) as ex:
        ex.execute("import random\nrandom.seed(7)")
        one, two = ex.fork(), ex.fork()
        try:
            draws = [e.execute(DRAW[rt], return_globals=["draw"]).globals["draw"]
                     for e in (ex, one, two)]
        finally:
            one.close()
            two.close()
        for i in range(len(draws[0])):
            assert len({d[i] for d in draws}) == 3, (i, draws)
        # the agent itself is not reseeded: its seeded sequence goes on
        again = PythonExecExecutor(timeout_seconds=20, **SEED[rt])
        with again:
            again.execute("import random\nrandom.seed(7)")
            r = again.execute(DRAW[rt], return_globals=["draw"])
            assert r.globals["draw"][0] == draws[0][0]


def test_a_fork_of_a_parked_agent():
    with PythonExecExecutorResolver(max_agents=1, idle_timeout_seconds=None) as res:
        res.resolve("a").execute("me = 'a'")
        res.resolve("b").execute("me = 'b'")   # parks a
        assert res.resolve("a").parked
        with res.resolve("a").fork() as copy:
            r = copy.execute("me += '!'", return_globals=["me"])
            assert r.globals == {"me": "a!"} and not r.state_reset
        assert res.resolve("a").execute("", return_globals=["me"]).globals == {"me": "a"}
        assert res.resolve("b").execute("", return_globals=["me"]).globals == {"me": "b"}


def test_a_closed_executor_cannot_fork():
    ex = PythonExecExecutor()
    ex.close()
    with pytest.raises(ExecutorClosedError):
        ex.fork()
