"""tools/check_size.py on a small synthetic tree: what counts as a line of code, which files are checked, the exit
status."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "check_size.py"


def _function(name: str, code_lines: int, docstring_lines: int = 0, comments: int = 0) -> str:
    doc = ['    """'] + ["    text"] * docstring_lines + ['    """'] if docstring_lines else []
    body = [f"    x{i} = {i}" for i in range(code_lines - 1)]
    return "\n".join([f"def {name}():"] + doc + ["    # a comment"] * comments + [""] * 3 + body) + "\n"


def _cxx_function(name: str, code_lines: int) -> str:
    body = [f"  int a{i} = {i};  // comment" for i in range(code_lines - 2)]
    return "\n".join([f"int {name}(int n) {{", "  /* a block", "     comment */"] + body + ["}"]) + "\n"


def _run(root: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *flags, str(root)], capture_output=True, text=True,
                          timeout=120)


def test_counts_code_lines_only(tmp_path):
    pkg = tmp_path / "lamda_ext"
    pkg.mkdir()
    (pkg / "ok.py").write_text(_function("short", 60, docstring_lines=30, comments=10))
    (pkg / "long.py").write_text(_function("too_long", 61) + "\n\nclass C:\n" +
                                 "\n".join("    " + ln for ln in _function("method", 70).splitlines()) + "\n")
    (tmp_path / "python").mkdir()
    (tmp_path / "python" / "big.py").write_text("x = 1\n" * 501)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "ignored.py").write_text(_function("not_checked", 200) + "x = 1\n" * 600)
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "k.cpp").write_text("#include <x>\n" + _cxx_function("small", 60) + _cxx_function("large", 61) +
                                "struct S {\n  int v;\n};\n" + "// c\n" * 300)
    proc = _run(tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("lamda_ext/long.py:1: function too_long has 61 lines") for ln in lines), lines
    assert any("function C.method has 70 lines" in ln for ln in lines), lines
    assert any(ln.startswith("python/big.py: module of 501 lines") for ln in lines), lines
    assert not any("short" in ln or "tests/" in ln or "k.cpp" in ln for ln in lines), lines
    assert len(lines) == 3
    cxx = _run(tmp_path, "--cxx-functions").stdout.splitlines()
    assert [ln for ln in cxx if "k.cpp" in ln] == [
        "csrc/k.cpp:" + str(2 + 62) + ": function large has 61 lines of code (limit 60)"], cxx


def test_clean_tree_passes(tmp_path):
    (tmp_path / "lamda_ext").mkdir()
    (tmp_path / "lamda_ext" / "a.py").write_text(_function("f", 60))
    proc = _run(tmp_path, "--cxx-functions")
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout
