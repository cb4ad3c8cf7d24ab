"""Reading a local file leaves little of it resident (seq2seq_es.heap.return_freed_memory): the
check holds the file several times over (bytes, lines, text, parsed rows) and datasets' readers
allocate through Arrow's pool; once freed, glibc and Arrow's allocator kept most of it for the
rest of the run, on every rank (a scale audit saw 600 MB stay after a 290 MB file; a 110 MB
JSON-lines file left 250 MB, 30 MB since). Measured in a child process, whose heap holds only
the reading."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest

from engine_runs import REPO, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/status; malloc_trim is glibc's")

CHILD = textwrap.dedent("""
    import sys
    from seq2seq_es.tasks import load_examples

    def anonymous_mib():  # the heap, not the files datasets maps in
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) for line in status
                        if line.startswith("RssAnon")) / 1024

    path, warm, cache = sys.argv[1:4]
    load_examples("mlsum", "validation", data_files={"validation": warm}, cache_dir=cache + "0")
    before = anonymous_mib()
    examples, _ = load_examples("mlsum", "train", data_files={"train": path}, cache_dir=cache)
    assert len(examples) == 15000
    print(anonymous_mib() - before)
""")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_read_file_leaves_little_of_its_size_resident(tmp_path, suffix):
    words = ["casa", "niño", "acción", "política", "gobierno", "mercado", "ciudad", "año"]
    pick = random.Random(0).choice
    lines = []
    for i in range(15000):
        text, summary = (" ".join(pick(words) for _ in range(n)) for n in (600, 30))
        lines.append(json.dumps({"text": text, "summary": summary, "url": f"u{i}"},
                                ensure_ascii=False) if suffix == ".jsonl"
                     else f"{text},{summary},u{i}")
    header = "" if suffix == ".jsonl" else "text,summary,url\n"
    path, warm = tmp_path / f"train{suffix}", tmp_path / f"warm{suffix}"
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    warm.write_text(header + "\n".join(lines[:5]) + "\n", encoding="utf-8")
    size = path.stat().st_size / 2**20
    child = subprocess.run([sys.executable, "-c", CHILD, str(path), str(warm),
                            str(tmp_path / "cache")], cwd=REPO, env=subprocess_env(),
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    grown = float(child.stdout.split()[-1])
    assert grown < 0.5 * size, f"{grown:.0f} MiB stayed after reading {size:.0f} MiB"
