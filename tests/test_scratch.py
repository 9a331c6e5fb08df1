"""Scratch folders: what a killed process left behind goes when the next folder is made."""

import subprocess
import sys

from scoring.sandbox import scratch


def test_a_dead_owners_folders_go_and_a_live_owners_stay(tmp_path):
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    living = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = tmp_path / f"dropscore-chunk-{killed.pid}-abc"
        kept = tmp_path / f"dropscore-chunk-{living.pid}-def"
        other_kind = tmp_path / f"dropscore-zygote-{killed.pid}-ghi"
        for folder in (left, kept, other_kind):
            folder.mkdir()
            (folder / "chunk-0.arrow").write_bytes(b"rows")
        killed.kill()
        killed.wait()

        with scratch.folder("chunk", str(tmp_path)) as mine:
            assert mine.is_dir() and mine.parent == tmp_path
            assert not left.exists()
            assert kept.exists() and other_kind.exists()
        assert not mine.exists()
    finally:
        living.kill()
        living.wait()
