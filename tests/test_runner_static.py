"""Static checks of the guest runner's code (no runtime needed)."""

from __future__ import annotations

import dis
import types

from wasm_exec.runtime import runner_source

# functions that run only while the interpreter boots, before any agent code exists
BOOT_ONLY = {"read_exact", "read_frame", "_Ctx", "ToolError", "_Bound",
             "install_hook", "<dictcomp>", "<genexpr>", "<listcomp>", "<setcomp>"}


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


def test_tool_functions_reach_nothing_of_the_runner():
    # the agent reaches tool_call (a stub's closure) and what its tuple holds: they must
    # close over no cell of the runner's (cells are writable) and name no global
    codes = {c.co_name: c for c in _nested(_boot_code())}
    for name in ("tool_call", "tool_plain", "tool_default"):
        code = codes[name]
        assert code.co_freevars == (), name
        assert not {i.argval for i in dis.get_instructions(code)
                    if i.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF")}, name


def test_the_guard_and_its_steps_reach_nothing_of_the_runner():
    # the guard is reachable (its tuple T); it and its steps close over no cell and name no
    # global, and guard_impl calls each step through a constant of its code, bound at boot:
    # no variable of its frame (which agent code can read and write) holds a step
    codes = {c.co_name: c for c in _boot_code().co_consts if isinstance(c, types.CodeType)}
    steps = sorted(n for n in codes if n.startswith("guard_") and n not in (
        "guard_impl", "guard_call", "guard_import_module", "guard_create_builtin",
        "guard_exec_builtin"))
    assert steps == ["guard_answer", "guard_arguments", "guard_relative_name",
                     "guard_verdicts"]
    impl = codes["guard_impl"]
    for name in ["guard_impl", *steps]:
        code = codes[name]
        assert code.co_freevars == (), name
        assert not {i.argval for i in dis.get_instructions(code)
                    if i.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF")}, name
    marks = {"<" + name + ">" for name in steps}
    assert marks <= set(impl.co_consts)
    for name in steps:
        assert name not in impl.co_varnames + impl.co_names, name
    # each step constant is called where it is loaded, never stored on the way
    ops = list(dis.get_instructions(impl))
    for i, op in enumerate(ops):
        if op.opname == "LOAD_CONST" and op.argval in marks:
            j = i + 1
            while not ops[j].opname.startswith("CALL"):
                assert not ops[j].opname.startswith("STORE"), (op.argval, ops[j])
                j += 1


def test_the_frames_the_attack_tests_rewrite_keep_their_variables():
    # tests/test_adversarial.py (and test_review_round.py) find the runner's live frames by
    # the names of their variables, and rewrite them: a rename would let those attacks
    # pass without biting
    codes = {c.co_name: c for c in _nested(_boot_code())}
    for name, variables in (("guard_impl", {"verdicts", "box"}), ("run_call", {"cell_no", "req"}),
                            ("step", {"box", "req"}), ("turn_step", {"source", "number"})):
        assert variables <= set(codes[name].co_varnames), name


def test_hook_and_guard_exist():
    names = {c.co_name for c in _nested(_boot_code())}
    assert {"hook", "check", "serve", "guard_impl", "guard_call", "main", "run_call"} <= names


def test_hook_shares_no_closure_cell_with_other_functions():
    # closure cells are writable from Python: the hook's functions must read only their own
    # (install_hook's) variables, never a variable of the boot function other code shares
    import ast

    tree = ast.parse(runner_source())
    boot = next(n for n in tree.body
                if isinstance(n, ast.FunctionDef) and n.name == "_wasm_exec_boot")
    boot_names: set[str] = set()
    for n in ast.walk(boot):
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            boot_names.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            boot_names.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            boot_names.update((a.asname or a.name).split(".")[0] for a in n.names)
    hook = next(n for n in ast.walk(boot)
                if isinstance(n, ast.FunctionDef) and n.name == "install_hook")
    own = {a.arg for a in hook.args.args}
    for n in ast.walk(hook):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            own.add(n.id)
        elif isinstance(n, ast.FunctionDef):
            own.add(n.name)
            own.update(a.arg for a in n.args.args)
    read = {m.id for f in ast.walk(hook) if isinstance(f, ast.FunctionDef) and f is not hook
            for m in ast.walk(f) if isinstance(m, ast.Name) and isinstance(m.ctx, ast.Load)}
    assert (read & boot_names) - own == set()


def test_the_guards_tuple_is_unpacked_whole_wherever_it_is_read():
    # T's fields carry meaning by position; every reader names them all by unpacking, so
    # a field added at boot without updating a reader fails here, not in the sandbox
    import ast

    tree = ast.parse(runner_source())
    built = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "T" for t in n.targets)]
    assert len(built) == 1 and isinstance(built[0].value, ast.Tuple)
    size = len(built[0].value.elts)
    readers = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name in (
                "guard_impl", "guard_call", "guard_import_module"):
            for n in ast.walk(fn):
                if (isinstance(n, ast.Assign) and isinstance(n.value, ast.Name)
                        and n.value.id == "T" and isinstance(n.targets[0], ast.Tuple)):
                    elts = n.targets[0].elts
                    starred = [e for e in elts if isinstance(e, ast.Starred)]
                    readers[fn.name] = (len(elts), bool(starred))
                elif isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) \
                        and n.value.id == "T":
                    readers[fn.name + " (indexed)"] = None
    assert readers["guard_impl"] == (size, False)
    assert readers["guard_import_module"] == (size, False)
    assert readers["guard_call"][1]  # (*_fields, impl, import_name_op): named from the end
    assert not any(k.endswith("(indexed)") for k in readers), readers
