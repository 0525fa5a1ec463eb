"""How long `ship validate` takes, and how much memory, on files that once hung it or ran it
out of memory: a 50 MB file, a billion-laughs file, 10,000-deep nesting and a file just under
the size limit holding 300,000 nodes, beside the root pipelines.yaml. Each runs in its own
process; prints wall time, peak RSS and the exit code.

    .venv/bin/python bench/config_hostile.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hostile_files(folder: Path) -> dict[str, Path]:
    valid = (ROOT / "pipelines.yaml").read_text()
    laughs = "".join([f"x-l0: &l0 [{', '.join(['lol'] * 10)}]\n"] + [
        f"x-l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]\n" for n in range(1, 9)])
    texts = {
        "valid": valid,
        "billion laughs": laughs + valid,
        "10,000-deep nesting": "x-deep: " + "[" * 10_000 + "]" * 10_000 + "\n" + valid,
        "1 MB of 300k nodes": valid + "x-many: [" + "1, " * 300_000 + "]\n",
        "50 MB": valid + "x-big:\n" + "  - 0123456789abcdef0123456789abcdef\n" * 1_450_000,
    }
    paths = {}
    for i, (name, text) in enumerate(texts.items()):
        paths[name] = folder / f"case{i}.yaml"
        paths[name].write_text(text)
    return paths


def validate(path: Path) -> tuple[float, float, int, str]:
    """Seconds, peak RSS in MB of the `ship validate` process, exit code, last stderr line."""
    began = time.perf_counter()
    # A fresh process per case, so RUSAGE_CHILDREN's peak is this case's own.
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
            "capture_output=True, text=True); sys.stderr.write(r.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "orchestrator.cli",
                             "validate", str(path)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    seconds = time.perf_counter() - began
    line = (result.stderr.strip().splitlines() or ["ok"])[0]
    return seconds, int(result.stdout.split()[-1]) / 1024, result.returncode, line[:110]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = hostile_files(Path(folder))
        print(f"{'case':<22}{'size':>10}{'seconds':>9}{'peak MB':>9}{'exit':>6}  first line")
        for name, path in paths.items():
            seconds, peak, code, line = validate(path)
            size = f"{path.stat().st_size / 1e6:.2f} MB"
            print(f"{name:<22}{size:>10}{seconds:>9.2f}{peak:>9.0f}{code:>6}  {line}")
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
