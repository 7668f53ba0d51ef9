"""Parking (issue 15): a resolver out of room parks idle agents as images of the pages
their interpreter changed, and their next call continues from them, on both runtimes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import ConfigurationError, PythonExecExecutorResolver

SEED = {
    "minimal": dict(whitelisted_imports=["collections"], default_imports={"co": "collections"}),
    "scientific": dict(runtime="scientific", whitelisted_imports=["pandas"],
                       default_imports={"pd": "pandas"}),
}
STATE = {
    "minimal": "me = {i}\nbag = co.Counter('ab' * {i})\ndef f(x):\n    return x + me\n",
    "scientific": "me = {i}\nbag = pd.Series([1] * {i})\ndef f(x):\n    return x + me\n",
}
CHECK = {
    "minimal": "c = globals().get('c', 0) + 1\nout = [me, bag['a'], f(1), c]",
    "scientific": "c = globals().get('c', 0) + 1\nout = [me, int(bag.sum()), f(1), c]",
}


@pytest.fixture(params=["minimal", pytest.param("scientific", marks=[pytest.mark.scientific,
                                                                      needs_scientific])])
def rt(request):
    return request.param


def resolver(rt: str, **kw) -> PythonExecExecutorResolver:
    return PythonExecExecutorResolver(**{**SEED[rt], "idle_timeout_seconds": None,
                                         "timeout_seconds": 20, **kw})


def round_robin(res: PythonExecExecutorResolver, rt: str, agents: int, rounds: int) -> None:
    for i in range(agents):
        r = res.resolve(f"a{i}").execute(STATE[rt].format(i=i))
        assert r.success, r.error
    for rnd in range(1, rounds + 1):
        for i in range(agents):
            r = res.resolve(f"a{i}").execute(CHECK[rt], return_globals=["out"])
            assert r.success, r.error
            assert not r.state_reset, (i, rnd, r.reset_reason)
            assert r.globals == {"out": [i, i, i + 1, rnd]}, (i, rnd)


def test_agents_keep_their_state_through_a_resolver_smaller_than_them(rt):
    with resolver(rt, max_agents=2) as res:
        round_robin(res, rt, agents=5, rounds=2)
        assert len(res.live_agents()) <= 2
        assert len(res.parked_agents()) >= 3
        assert res.parked_bytes > 0


def test_parked_images_in_a_directory(tmp_path):
    with resolver("minimal", max_agents=1, park_dir=tmp_path / "parked") as res:
        round_robin(res, "minimal", agents=3, rounds=2)
        files = os.listdir(tmp_path / "parked")
        assert len(files) == len(res.parked_agents()) == 2
        assert res.parked_bytes >= sum(os.path.getsize(tmp_path / "parked" / f)
                                       for f in files)
        res.forget("a0")
        res.forget("a1")
        assert len(os.listdir(tmp_path / "parked")) <= 1
    assert os.listdir(tmp_path / "parked") == []  # closed: every image is freed


def test_images_of_closed_agents_are_freed():
    with resolver("minimal", max_agents=1) as res:
        round_robin(res, "minimal", agents=3, rounds=1)
        parked = res.parked_agents()
        assert len(parked) == 2 and res.parked_bytes > 0
        for key in parked:
            res.forget(*key)
        assert res.parked_agents() == [] and res.parked_bytes == 0
        res.resolve("a2").execute("x = 1")
        res.resolve("a3").execute("x = 1")  # parks a2
        assert res.parked_bytes > 0
    assert res.parked_bytes == 0


def test_a_parked_image_dropped_past_the_budget_is_said_in_the_next_result():
    # a budget that holds one parked agent of this size, not two
    with resolver("minimal", max_agents=1) as probe:
        probe.resolve("a").execute(STATE["minimal"].format(i=1))
        probe.resolve("b").execute("x = 1")
        one = probe.parked_bytes
    with resolver("minimal", max_agents=1, park_budget_bytes=int(one * 1.5)) as res:
        res.resolve("a").execute(STATE["minimal"].format(i=1))
        res.resolve("b").execute(STATE["minimal"].format(i=2))   # parks a
        res.resolve("c").execute(STATE["minimal"].format(i=3))   # parks b: a is dropped
        assert res.parked_agents() == [("b",)]
        r = res.resolve("b").execute("", return_globals=["me"])   # parks c, b restored
        assert not r.state_reset and r.globals == {"me": 2}
        r = res.resolve("a").execute("", return_globals=["me"])
        assert r.state_reset and r.reset_reason == "park_dropped"
        assert "me" in r.globals_errors


def test_refuse_parks_no_more_past_the_budget():
    with resolver("minimal", max_agents=1, park_budget_bytes=100,
                  park_overflow="refuse") as res:
        res.resolve("a").execute("me = 1")
        res.resolve("b").execute("me = 2")   # a does not fit: reset
        assert res.parked_agents() == []
        r = res.resolve("a").execute("", return_globals=["me"])
        assert r.state_reset and r.reset_reason == "park_dropped"


def test_a_changed_parked_file_is_refused(tmp_path):
    with resolver("minimal", max_agents=1, park_dir=tmp_path) as res:
        res.resolve("a").execute("me = 1")
        res.resolve("b").execute("me = 2")   # parks a
        [name] = os.listdir(tmp_path)
        data = bytearray((tmp_path / name).read_bytes())
        data[-40] ^= 1
        (tmp_path / name).write_bytes(bytes(data))
        r = res.resolve("a").execute("", return_globals=["me"])
        assert r.state_reset and r.reset_reason == "park_failed"
        assert "me" in r.globals_errors
        assert res.resolve("a").execute("me = 3", return_globals=["me"]).globals == {"me": 3}


def test_idle_agents_are_parked_and_come_back():
    with resolver("minimal", max_agents=4, idle_timeout_seconds=0.3) as res:
        ex = res.resolve("a")
        ex.execute("me = 41")
        deadline = time.monotonic() + 10
        while not ex.parked and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex.parked and not ex.has_interpreter
        r = ex.execute("me += 1", return_globals=["me"])
        assert not r.state_reset and r.globals == {"me": 42}


def test_a_stop_right_after_unparking_rolls_back_to_the_parked_state():
    with resolver("minimal", max_agents=1) as res:
        res.resolve("a").execute("me = 1")
        res.resolve("b").execute("me = 2")   # parks a
        r = res.resolve("a").execute("me = 99\nwhile True: pass", limits={"fuel": 20_000_000})
        assert r.limit == "fuel" and r.rolled_back and not r.state_reset
        r = res.resolve("a").execute("", return_globals=["me"])
        assert not r.state_reset and r.globals == {"me": 1}


def test_reset_of_a_parked_agent_frees_its_image():
    with resolver("minimal", max_agents=1) as res:
        res.resolve("a").execute("me = 1")
        res.resolve("b").execute("me = 2")   # parks a
        assert res.parked_bytes > 0
        res.resolve("a").reset()
        assert res.parked_agents() == [("b",)] or res.parked_agents() == []
        r = res.resolve("a").execute("", return_globals=["me"])
        assert r.state_reset and r.reset_reason == "reset" and "me" in r.globals_errors


def test_without_parking_an_evicted_agent_is_reset():
    with resolver("minimal", max_agents=1, park=False) as res:
        res.resolve("a").execute("me = 1")
        res.resolve("b").execute("me = 2")
        r = res.resolve("a").execute("", return_globals=["me"])
        assert r.state_reset and r.reset_reason == "evicted"
        assert res.parked_agents() == [] and res.parked_bytes == 0


def test_agents_stay_apart_under_concurrent_round_robin():
    """Several threads drive agents through a resolver with fewer interpreters: an
    interpreter freed by parking one agent is taken over by another; none ever sees
    another's variables or loses its own."""
    failures: list[str] = []
    with resolver("minimal", max_agents=3) as res:
        def work(t: int) -> None:
            for rnd in range(1, 4):
                for i in range(t * 3, t * 3 + 3):
                    ex = res.resolve(f"a{i}")
                    r = ex.execute(f"mine = globals().get('mine', []) + [{i}]",
                                   return_globals=["mine"])
                    if r.globals.get("mine") != [i] * rnd or r.state_reset:
                        failures.append(f"a{i} round {rnd}: {r.globals} {r.reset_reason}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert failures == []


def test_bad_parking_options():
    with pytest.raises(ConfigurationError):
        PythonExecExecutorResolver(park_budget_bytes=-1)
    with pytest.raises(ConfigurationError):
        PythonExecExecutorResolver(park_overflow="sometimes")  # type: ignore[arg-type]
