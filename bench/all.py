"""Run every benchmark and put each one's new table into bench/README.md.

    .venv/bin/python bench/all.py                  # everything, about 45 minutes
    .venv/bin/python bench/all.py cache auth       # some of them

Each script runs as it would alone (its own references, measured in the same run); its report
replaces the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in the README.
The prose around the tables was written from the run recorded with it: reread it when the new
numbers tell a different story. A script that fails leaves its old table in place, and this
command exits with status 1 after running the others.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
OUT = HERE / "out"
# In the README's order; each writes its report to bench/out/NAME.md or prints it.
SCRIPTS = ("segment", "storage", "cache", "catalog", "auth", "ingest", "players")


def replace_block(text: str, name: str, report: str) -> str:
    """``text`` with the block of ``name`` holding ``report``; ValueError without the markers."""
    pattern = re.compile(
        rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S
    )
    if not pattern.search(text):
        raise ValueError(f"bench/README.md has no <!-- bench:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + report.strip() + "\n" + m.group(2), text, count=1)


def run(name: str) -> str | None:
    """The script's report, or None when it failed."""
    out_file = OUT / f"{name}.md"
    out_file.unlink(missing_ok=True)
    started = time.monotonic()
    print(f"== bench/{name}.py", flush=True)
    done = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py")], stdout=subprocess.PIPE, text=True
    )
    minutes = (time.monotonic() - started) / 60
    if done.returncode != 0:
        print(f"bench/{name}.py failed (status {done.returncode}) after {minutes:.1f} min")
        return None
    print(f"bench/{name}.py done in {minutes:.1f} min", flush=True)
    return out_file.read_text() if out_file.exists() else done.stdout


def main(argv: list[str]) -> int:
    chosen = argv or list(SCRIPTS)
    unknown = sorted(set(chosen) - set(SCRIPTS))
    if unknown:
        print(f"unknown benchmarks: {', '.join(unknown)} (known: {', '.join(SCRIPTS)})")
        return 2
    failed = []
    for name in chosen:
        report = run(name)
        if report is None:
            failed.append(name)
            continue
        README.write_text(replace_block(README.read_text(), name, report))
    if failed:
        print(f"failed: {', '.join(failed)}; their old tables were kept")
        return 1
    print(f"bench/README.md updated: {', '.join(chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
