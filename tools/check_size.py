"""Size limits of the project's code: no module over 500 lines (``lamda_ext/``, ``python/``, ``csrc/``) and no
Python function over 60 lines of code (``lamda_ext/``, ``python/``); with ``--cxx-functions`` also no C++/CUDA
function over 60 lines of code (``csrc/``).

A Python function's lines of code are the lines of its span (from ``def`` or its first decorator to its last line,
nested functions and classes included) that hold code: blank lines, comment-only lines and docstring lines do not
count (found with ``ast`` and ``tokenize``). A C++/CUDA function is a brace block that follows a parameter list
``(...)`` outside any other function (lambdas and macro bodies such as ``TORCH_LIBRARY(...) {`` included); its lines
of code are the lines from its name to the closing brace that hold something besides comments and whitespace. A module's size is its number of physical lines.

Usage: ``python tools/check_size.py [--cxx-functions] [ROOT]`` (ROOT: the repository, default the folder above this
file). Prints one line per offender and exits 1 when there is any, 0 otherwise.
"""
from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path
from typing import Iterator, List, Set, Tuple

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MODULE_DIRS = ("lamda_ext", "python", "csrc")
FUNCTION_DIRS = ("lamda_ext", "python")
CXX_FUNCTION_DIRS = ("csrc",)
CXX_SUFFIXES = {".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh"}
SOURCE_SUFFIXES = {".py"} | CXX_SUFFIXES
# words before a parenthesis that open a statement block, not a function body
CXX_CONTROL = {"if", "for", "while", "switch", "catch", "else", "do", "return", "sizeof", "decltype", "alignas",
               "static_assert"}
SKIP_PARTS = {"__pycache__", "build", ".eggs"}


def source_files(root: Path, dirs, suffixes) -> Iterator[Path]:
    """Files under ``root/<dir>`` with one of ``suffixes``, in sorted order, build outputs skipped."""
    for d in dirs:
        base = root / d
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in suffixes and not SKIP_PARTS & set(path.relative_to(root).parts):
                yield path


def docstring_lines(tree: ast.AST) -> Set[int]:
    """Line numbers taken by docstrings (of the module, classes and functions)."""
    lines: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(source: str) -> Set[int]:
    """Line numbers that hold a token other than a comment, a newline or indentation."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: Set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> List[Tuple[str, int, int]]:
    """``(qualified name, first line, lines of code)`` of the functions in ``path`` over ``limit``."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, str(path))
    counted = code_lines(source) - docstring_lines(tree)
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                n = len([ln for ln in range(start, child.end_lineno + 1) if ln in counted])
                if n > limit:
                    out.append((name, child.lineno, n))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)
    visit(tree, "")
    return out


def _cxx_code(source: str) -> str:
    """``source`` with comments, string and character literals and preprocessor lines blanked (newlines kept)."""
    out, i, n = [], 0, len(source)
    at_line_start = True
    while i < n:
        c = source[i]
        if at_line_start and source[i:].lstrip(" \t").startswith("#"):   # a directive, with its continuations
            j = i
            while j < n and (source[j] != "\n" or source[j - 1] == "\\"):
                j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in source[i:j]))
            i = j
            continue
        if source.startswith("//", i):
            j = source.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif source.startswith("/*", i):
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in source[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and source[j] != c:
                j += 2 if source[j] == "\\" else 1
            out.append(c + " " * (min(j, n) - i - 1) + (c if j < n else ""))
            i = j + 1
        else:
            out.append(c)
            i += 1
        at_line_start = c == "\n" or (at_line_start and c in " \t")
    return "".join(out)


def _function_name_at(code: str, brace: int) -> int:
    """Where the name of the function whose body the ``{`` at ``brace`` opens starts, or -1 when it opens no function
    body: the text before it must end with a parameter list (then optional qualifiers or a trailing return type)
    that does not belong to a control statement."""
    head = code[:brace].rstrip()
    for _ in range(8):   # strip trailing qualifiers: const, noexcept, override, mutable, -> type, ...
        word = len(head)
        while word > 0 and (head[word - 1].isalnum() or head[word - 1] in "_:<>*&"):
            word -= 1
        if word == len(head) or head.endswith(")"):
            break
        head = head[:word].rstrip()
        if head.endswith("->"):
            head = head[:-2].rstrip()
    if not head.endswith(")"):
        return -1
    depth, j = 0, len(head) - 1
    while j >= 0:
        depth += {")": 1, "(": -1}.get(head[j], 0)
        if depth == 0:
            break
        j -= 1
    k = j
    while k > 0 and (head[k - 1].isalnum() or head[k - 1] == "_"):
        k -= 1
    return -1 if head[k:j].strip() in CXX_CONTROL else k


def long_cxx_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> List[Tuple[str, int, int]]:
    """``(name, first line, lines of code)`` of the C++/CUDA functions in ``path`` over ``limit`` (counted from the
    line of the name to the closing brace)."""
    code = _cxx_code(path.read_text(encoding="utf-8"))
    lines = code.split("\n")
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln) + 1)
    line_of = lambda pos: next(k for k in range(len(starts) - 1) if starts[k + 1] > pos) + 1   # noqa: E731
    out, i = [], 0
    while True:
        i = code.find("{", i)
        if i < 0:
            return out
        name = _function_name_at(code, i)
        if name < 0:
            i += 1
            continue
        depth, j = 0, i
        while j < len(code):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            if depth == 0:
                break
            j += 1
        first, last = line_of(name), line_of(min(j, len(code) - 1))
        n = sum(1 for ln in lines[first - 1:last] if ln.strip())
        if n > limit:
            head = code[name:code.find("(", name)].strip()
            out.append((head or "<lambda>", first, n))
        i = j + 1


def offenders(root: Path, cxx_functions: bool = False) -> List[str]:
    """One message per module over :data:`MAX_MODULE_LINES` and per function over :data:`MAX_FUNCTION_LINES`
    (C++/CUDA functions only when ``cxx_functions``)."""
    msgs = []
    for path in source_files(root, MODULE_DIRS, SOURCE_SUFFIXES):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            msgs.append(f"{path.relative_to(root)}: module of {n} lines (limit {MAX_MODULE_LINES})")
    for path in source_files(root, FUNCTION_DIRS, {".py"}):
        for name, line, n in long_functions(path):
            msgs.append(f"{path.relative_to(root)}:{line}: function {name} has {n} lines of code "
                        f"(limit {MAX_FUNCTION_LINES})")
    for path in source_files(root, CXX_FUNCTION_DIRS if cxx_functions else (), CXX_SUFFIXES):
        for head, line, n in long_cxx_functions(path):
            msgs.append(f"{path.relative_to(root)}:{line}: function {head} has {n} lines of code "
                        f"(limit {MAX_FUNCTION_LINES})")
    return msgs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]),
                        help="the repository root (default: the folder above tools/)")
    parser.add_argument("--cxx-functions", action="store_true",
                        help="also check the length of the C++/CUDA functions in csrc/")
    args = parser.parse_args(argv)
    msgs = offenders(Path(args.root), args.cxx_functions)
    for m in msgs:
        print(m)
    print(f"check_size: {len(msgs)} offender(s)", file=sys.stderr)
    return 1 if msgs else 0


if __name__ == "__main__":
    sys.exit(main())
