"""Static checks of the guest runner's code (no runtime needed)."""

from __future__ import annotations

import dis
import types

from wasm_exec.runtime import runner_source

# functions that run only while the interpreter boots, before any agent code exists
BOOT_ONLY = {"read_exact", "read_frame", "_Ctx", "_Bound", "install_hook", "<dictcomp>",
             "<genexpr>", "<listcomp>", "<setcomp>"}


def _boot_code() -> types.CodeType:
    module = compile(runner_source(), "<wasm-exec-runner>", "exec")
    return next(c for c in module.co_consts
                if isinstance(c, types.CodeType) and c.co_name == "_wasm_exec_boot")


def _nested(code: types.CodeType):
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from _nested(const)


def test_runner_functions_look_up_no_global_or_builtin_names():
    # agent code can rebind names in the runner's module dict and in builtins; functions
    # that run after boot must therefore use only locals, arguments and closure variables
    offenders = {}
    for code in _nested(_boot_code()):
        if code.co_name in BOOT_ONLY:
            continue
        names = {i.argval for i in dis.get_instructions(code)
                 if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
        if names:
            offenders[code.co_name] = sorted(names)
    assert offenders == {}


def test_hook_and_guard_exist():
    names = {c.co_name for c in _nested(_boot_code())}
    assert {"hook", "check", "serve", "guard_impl", "guard_call", "main", "run_call"} <= names
