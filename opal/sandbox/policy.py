"""Compile policy: what source text an algorithm may contain (issue #3, layer 1).

RestrictedPython rewrites attribute access, item access, writes and iteration
into calls to guard functions (``_getattr_`` ...) and rejects names starting
with an underscore. On top of that this policy rejects class definitions,
``with``, ``match``, ``try/except*``, ``global`` and every import that is not
one of the allowlisted facades (``numpy``, ``pandas``, ``math``,
``statistics``, ``opal``), and requires the entrypoint to be a plain top-level
function. RestrictedPython itself is not a sandbox; the runtime guards and the
process isolation stand behind this layer.
"""

from __future__ import annotations

import ast
import functools
from types import CodeType
from typing import Any

from RestrictedPython.compile import compile_restricted_exec
from RestrictedPython.transformer import RestrictingNodeTransformer

from opal.errors import PolicyViolation
from opal.sandbox._allowlist import FACADES

__all__ = ["check_source", "compile_algorithm"]

MAX_SOURCE_BYTES = 1_000_000
# Called first in every except/finally block (opal.sandbox._guards supplies it).
CAUGHT_GUARD = "_caught_"


# Builtins that reach objects, names or code the guards cannot see; they are
# absent at run time too, this only makes the rejection clear and static.
FORBIDDEN_NAMES = frozenset(
    {
        "getattr", "setattr", "delattr", "hasattr", "vars", "dir", "globals", "locals",
        "id", "hash", "type", "super", "memoryview", "bytearray", "open",
        "exec", "eval", "compile", "breakpoint", "input", "help", "classmethod",
        "staticmethod", "property", "iter", "aiter", "anext", "issubclass", "format",
        "exit", "quit", "copyright", "credits", "license",
    }
)


class _OpalPolicy(RestrictingNodeTransformer):
    """RestrictedPython's transformer plus OPAL's stricter statement rules."""

    bound_names: frozenset[str] = frozenset()

    def visit_Name(self, node: ast.Name) -> Any:
        # A forbidden builtin is only an error when the algorithm did not bind
        # the name itself (``for id in ids`` is fine; ``id(x)`` is not).
        if (
            isinstance(node.ctx, ast.Load)
            and node.id in FORBIDDEN_NAMES
            and node.id not in self.bound_names
        ):
            self.error(node, f"name '{node.id}' is not allowed")
        return super().visit_Name(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        # Classes bring metaclasses, descriptors and __init_subclass__ hooks.
        self.error(node, "class definitions are not allowed")
        return node

    def visit_With(self, node: ast.With) -> Any:
        # Context managers run __enter__/__exit__ of library objects unguarded.
        self.error(node, "'with' statements are not allowed")
        return node

    def visit_Global(self, node: ast.Global) -> Any:
        self.error(node, "'global' statements are not allowed")
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> Any:
        # A handler first hands the exception to the guards: a MemoryError or
        # a sandbox denial ends the run whatever the handler does next.
        visited = super().visit_ExceptHandler(node)
        if isinstance(visited, ast.ExceptHandler):
            visited.body.insert(0, _caught_call(visited, in_finally=False))
        return visited

    def visit_Try(self, node: ast.Try) -> Any:
        # `finally: return x` swallows an exception without any handler
        visited = super().visit_Try(node)
        if isinstance(visited, ast.Try) and visited.finalbody:
            visited.finalbody.insert(0, _caught_call(visited.finalbody[0], in_finally=True))
        return visited

    def visit_TryStar(self, node: ast.AST) -> Any:
        # except* hands out ExceptionGroup objects built outside the guards.
        self.error(node, "'try/except*' is not allowed")
        return node

    def visit_Import(self, node: ast.Import) -> Any:
        for alias in node.names:
            if alias.name not in FACADES:
                self.error(node, _import_message(alias.name))
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        module = node.module or ""
        if node.level or module not in FACADES:
            self.error(node, _import_message("." * node.level + module))
        else:
            for alias in node.names:
                if alias.name not in FACADES[module]:
                    self.error(
                        node, f"'{alias.name}' is not an allowed member of the {module} facade"
                    )
        return super().visit_ImportFrom(node)


def _caught_call(where: ast.AST, *, in_finally: bool) -> ast.stmt:
    call = ast.Expr(
        ast.Call(
            func=ast.Name(id=CAUGHT_GUARD, ctx=ast.Load()),
            args=[ast.Constant(value=in_finally)],
            keywords=[],
        )
    )
    return ast.fix_missing_locations(ast.copy_location(call, where))


def _import_message(name: str) -> str:
    allowed = ", ".join(sorted(FACADES))
    return f"import of '{name}' is not allowed; only {allowed} may be imported (no submodules)"


def _error_line(message: str) -> tuple[int | None, str]:
    # RestrictedPython formats errors as "Line N: text".
    if message.startswith("Line "):
        head, _, text = message.partition(": ")
        number = head[5:]
        if number.isdigit():
            return int(number), text.strip()
    return None, message.strip()


def compile_algorithm(
    source: str, *, filename: str = "algorithm.py", entrypoint: str = "contributions"
) -> CodeType:
    """Compile ``source`` under the OPAL policy and return the code object.

    Raises:
        PolicyViolation: the source is not allowed; the message names the
            first rule hit as ``filename:line: rule``.
    """
    if not isinstance(source, str):
        raise PolicyViolation(f"{filename}: source must be text")
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise PolicyViolation(f"{filename}: source is larger than {MAX_SOURCE_BYTES} bytes")
    if not entrypoint.isidentifier() or entrypoint.startswith("_"):
        raise PolicyViolation(f"{filename}: entrypoint '{entrypoint}' is not a public function name")
    try:
        tree = ast.parse(source, filename=filename)
        _check_entrypoint(tree, filename=filename, entrypoint=entrypoint)
        policy = type("_BoundPolicy", (_OpalPolicy,), {"bound_names": _bound_names(tree)})
        result = compile_restricted_exec(tree, filename=filename, policy=policy)
    except SyntaxError as exc:
        raise PolicyViolation(f"{filename}:{exc.lineno}: syntax error: {exc.msg}") from None
    except (RecursionError, MemoryError):
        # hostile nesting must not take down the trusted process that checks it
        raise PolicyViolation(f"{filename}: source is nested too deeply to compile") from None
    except ValueError as exc:
        raise PolicyViolation(f"{filename}: source cannot be compiled ({type(exc).__name__})") from None
    if result.errors or result.code is None:
        line, text = _error_line(result.errors[0] if result.errors else "compilation failed")
        where = f"{filename}:{line}" if line is not None else filename
        raise PolicyViolation(f"{where}: {text}")
    code: CodeType = result.code
    return code


def _bound_names(tree: ast.Module) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return frozenset(names)


def _check_entrypoint(tree: ast.Module, *, filename: str, entrypoint: str) -> None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entrypoint:
            args = node.args
            positional = len(args.posonlyargs) + len(args.args)
            if positional != 2 or args.vararg or args.kwarg or args.kwonlyargs:
                raise PolicyViolation(
                    f"{filename}:{node.lineno}: entrypoint '{entrypoint}' must take exactly "
                    "(data, params)"
                )
            return
    raise PolicyViolation(
        f"{filename}: entrypoint '{entrypoint}' is not defined as a top-level function; "
        f"add 'def {entrypoint}(data, params):'"
    )


def check_source(
    source: str, *, filename: str = "algorithm.py", entrypoint: str = "contributions"
) -> None:
    """Run the static part of the sandbox policy (compile + rules) without data.

    A source that passed is remembered (every run of a bundle checks the same
    text again); a refusal is not, so it is always re-derived and re-named.

    Raises:
        PolicyViolation: the source breaks a rule; the message says which and where.
    """
    if not isinstance(source, str):
        compile_algorithm(source, filename=filename, entrypoint=entrypoint)  # names what is wrong
    _passed(source, filename, entrypoint)


@functools.lru_cache(maxsize=32)
def _passed(source: str, filename: str, entrypoint: str) -> bool:
    compile_algorithm(source, filename=filename, entrypoint=entrypoint)
    return True
