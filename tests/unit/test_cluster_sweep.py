"""Clusters placed elsewhere (as root, under /var/lib/studio-pg) go once what they served is
gone: a deleted temporary folder must not leave its cluster on the disk for good."""

from __future__ import annotations

from pathlib import Path

from db.local_postgres import OWNER_FILE, _sweep_orphans


def _placed(base: Path, name: str, served: Path, *, running: bool = False) -> Path:
    home = base / name
    (home / "data").mkdir(parents=True)
    (home / OWNER_FILE).write_text(str(served))
    if running:
        (home / "data" / "postmaster.pid").write_text("4242\n")
    return home


def test_a_cluster_whose_data_directory_link_is_gone_is_swept(tmp_path: Path) -> None:
    base, kept_dir = tmp_path / "placed", tmp_path / "kept"
    kept_dir.mkdir()
    (kept_dir / "data").symlink_to(base / "kept" / "data")
    orphan = _placed(base, "orphan", tmp_path / "deleted" / "data")
    kept = _placed(base, "kept", kept_dir / "data")
    running = _placed(base, "running", tmp_path / "deleted-too" / "data", running=True)
    foreign = base / "not-ours"
    foreign.mkdir()

    _sweep_orphans(base)

    assert not orphan.exists()
    assert kept.exists()
    assert running.exists()
    assert foreign.exists()
