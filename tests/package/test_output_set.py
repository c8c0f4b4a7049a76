"""Output sets (hessian_spectra.io / output_set, #14): one set or the previous one, never a mix; stages
cleaned on signals and after kill -9; user files kept; the user's umask; paths checked before work."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hessian_spectra import output_set
from hessian_spectra.errors import Interrupted, OutputError
from hessian_spectra.io import atomic_write_text, check_output_dir, check_output_file, staged_directory
from hessian_spectra.output_set import MANIFEST, STAGE_PREFIX, read_manifest


def write_set(final: Path, files: dict[str, str]) -> None:
    with staged_directory(final) as stage:
        for rel, text in files.items():
            atomic_write_text(stage / rel, text)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) -> its text."""
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_stage(folder: Path) -> bool:
    return not list(folder.glob(f"{STAGE_PREFIX}*")) and not list(folder.parent.glob(".*.staging"))


def test_set_replaces_previous_outputs_and_keeps_user_files(tmp_path):
    final = tmp_path / "out"
    write_set(final, {"a.json": "1", "esd/x.png": "1", "esd/y.png": "1", "b.md": "1"})
    (final / "notes.txt").write_text("mine")
    (final / "esd" / "mine.txt").write_text("mine too")
    write_set(final, {"a.json": "2", "c.html": "2"})
    files = snapshot(final)
    assert files.pop(MANIFEST)
    assert files == {"a.json": "2", "c.html": "2", "notes.txt": "mine", "esd/mine.txt": "mine too"}
    assert read_manifest(final) == ["a.json", "c.html"]
    write_set(final, {"a.json": "3"})
    (final / "esd" / "mine.txt").unlink()
    write_set(final, {"a.json": "4", "esd/z.png": "4"})
    write_set(final, {"a.json": "5"})
    assert not (final / "esd").exists()  # the tool's own folder, emptied by the tool, goes too
    assert no_stage(final)


def test_error_inside_block_changes_nothing_and_removes_created_folder(tmp_path):
    final = tmp_path / "new" / "out"
    with pytest.raises(KeyError), staged_directory(final) as stage:
        atomic_write_text(stage / "a.json", "x")
        raise KeyError("boom")
    assert not (tmp_path / "new").exists()
    write_set(final, {"a.json": "1"})
    before = snapshot(final)
    with pytest.raises(KeyError), staged_directory(final) as stage:
        atomic_write_text(stage / "a.json", "2")
        raise KeyError("boom")
    assert snapshot(final) == before and no_stage(final)


@pytest.mark.parametrize("fail_at", range(1, 9))
def test_failure_mid_rename_leaves_previous_set(tmp_path, monkeypatch, fail_at):
    """The k-th move of the commit fails (4 backups of the previous set, then 4 new files, manifest
    last): OutputError, and the folder holds exactly the previous set again."""
    final = tmp_path / "out"
    write_set(final, {"a.json": "1", "b.md": "1", "old-only.txt": "1"})
    (final / "user.txt").write_text("mine")
    before = snapshot(final)
    real = os.replace
    moves = []

    def flaky(src, dst):
        inside = [STAGE_PREFIX in str(p) for p in (src, dst)]
        if inside[0] != inside[1] and len(moves) < fail_at:  # a commit move (rollback moves not counted)
            moves.append((src, dst))
            if len(moves) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    with pytest.raises(OutputError, match="previous ones are unchanged"), staged_directory(final) as stage:
        for rel in ("a.json", "b.md", "c.html"):
            atomic_write_text(stage / rel, "2")
        monkeypatch.setattr(output_set.os, "replace", flaky)
    monkeypatch.undo()
    assert len(moves) == fail_at
    assert snapshot(final) == before and no_stage(final)
    write_set(final, {"a.json": "3"})  # and the folder is usable afterwards
    assert (final / "a.json").read_text() == "3" and not (final / "b.md").exists()


def test_write_error_inside_stage_names_the_final_file(tmp_path, monkeypatch):
    from hessian_spectra import io

    final = tmp_path / "out"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as exc, staged_directory(final) as stage:
        monkeypatch.setattr(io.os, "fsync", full)
        atomic_write_text(stage / "weights.json", "x")
    monkeypatch.undo()
    assert str(exc.value).startswith(str(final / "weights.json") + ": cannot write (No space left on device)")
    assert not final.exists()
    monkeypatch.setattr(io.tempfile, "mkstemp", lambda **kw: full(None))
    with pytest.raises(OutputError, match=r"^\S+/out: cannot write \(No space"), staged_directory(final):
        pass  # failing already while staging: the message names the folder, not the private stage
    monkeypatch.undo()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_files_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_set(tmp_path / "out", {"a.json": "1", "sub/b.png": "1"})
        atomic_write_text(tmp_path / "single.json", "1")
    finally:
        os.umask(old)
    for path in (tmp_path / "out" / "a.json", tmp_path / "out" / "sub" / "b.png", tmp_path / "single.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o777 & ~umask


def test_hostile_manifest_never_reaches_outside(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.txt").write_text("keep")
    (final / "link").symlink_to(tmp_path / "elsewhere")
    names = ["../precious.txt", str(outside), "link/x.txt", "./a", "", "a/../../precious.txt"]
    (final / MANIFEST).write_text(json.dumps({"schema": "hessian-spectra/outputs/1", "files": names}))
    write_set(final, {"a.json": "1"})
    assert outside.read_text() == "keep" and (tmp_path / "elsewhere" / "x.txt").read_text() == "keep"


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from hessian_spectra.io import atomic_write_text, staged_directory
    final, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if mode == "commit-kill":  # die by SIGKILL after the first new file is in place
        from hessian_spectra import output_set
        real, moved = os.replace, []
        def replace(src, dst):
            real(src, dst)
            if Path(src).parent.name == "new" and ".spectra-stage." not in str(dst):
                moved.append(dst)
                if len(moved) == 1:
                    os.kill(os.getpid(), 9)
        output_set.os.replace = replace
    with staged_directory(final) as stage:
        for name in ("a.json", "b.md", "c.html"):
            atomic_write_text(stage / name, "new")
        ready.write_text("ready")
        if mode != "commit-kill":
            time.sleep(60)
    """
)


def _start(tmp_path: Path, final: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / f"ready-{mode}"
    script = tmp_path / "stage_script.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(final), str(ready), mode], stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return proc, ready


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_while_staged_cleans_the_stage(tmp_path, sig):
    final = tmp_path / "out"
    write_set(final, {"a.json": "old", "old-only.txt": "old"})
    before = snapshot(final)
    proc, ready = _start(tmp_path, final, "sleep")
    assert ready.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no ready file"
    assert list(final.glob(f"{STAGE_PREFIX}*"))  # staged, not yet committed
    proc.send_signal(sig)
    proc.wait(30)
    assert proc.returncode != 0
    assert snapshot(final) == before and no_stage(final)


def test_sigkill_leaves_a_stage_that_the_next_run_removes(tmp_path):
    final = tmp_path / "out"
    write_set(final, {"a.json": "old"})
    proc, ready = _start(tmp_path, final, "sleep")
    assert ready.exists()
    proc.kill()
    proc.wait(30)
    stale = list(final.glob(f"{STAGE_PREFIX}*"))
    assert len(stale) == 1 and str(proc.pid) in stale[0].name  # kill -9 cannot be caught ...
    write_set(final, {"a.json": "next"})  # ... the next run into the folder sees the owner is gone
    assert no_stage(final) and (final / "a.json").read_text() == "next"


def test_sigkill_mid_commit_is_rolled_back_by_the_next_run(tmp_path):
    final = tmp_path / "out"
    write_set(final, {"a.json": "old", "b.md": "old", "old-only.txt": "old"})
    (final / "user.txt").write_text("mine")
    before = snapshot(final)
    proc, _ = _start(tmp_path, final, "commit-kill")
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    assert (final / "a.json").read_text() == "new" and not (final / "b.md").exists()  # a half-done swap
    assert output_set.recover_stale_stages(final)
    assert snapshot(final) == before and no_stage(final)  # back to the previous set


def test_live_stage_of_another_process_is_left_alone(tmp_path):
    final = tmp_path / "out"
    proc, ready = _start(tmp_path, final, "sleep")
    try:
        assert ready.exists()
        assert output_set.recover_stale_stages(final) == []
        assert list(final.glob(f"{STAGE_PREFIX}*"))
    finally:
        proc.kill()
        proc.wait(30)


def test_concurrent_runs_never_mix(tmp_path):
    final = tmp_path / "out"
    code = textwrap.dedent(
        """
        import sys
        from hessian_spectra.io import atomic_write_text, staged_directory
        tag = sys.argv[2]
        for _ in range(5):
            with staged_directory(sys.argv[1]) as stage:
                for name in ("a.json", "b.md", "c.html", f"only-{tag}.txt"):
                    atomic_write_text(stage / name, tag)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(final), str(i)]) for i in range(4)]
    assert all(p.wait(120) == 0 for p in procs)
    files = snapshot(final)
    manifest = json.loads(files.pop(MANIFEST))["files"]
    assert sorted(files) == sorted(manifest) and len(files) == 4
    assert len(set(files.values())) == 1  # every file from the same run
    assert no_stage(final)


def test_interrupted_is_a_base_exception():
    assert not issubclass(Interrupted, Exception) and Interrupted(15).name == "SIGTERM"


def test_output_checks_before_any_work(tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(OutputError, match="names a file, not a folder"):
        check_output_dir(afile)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(afile / "sub" / "deeper")
    with pytest.raises(OutputError, match="names a folder, not a file"):
        check_output_file(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="broken symbolic link"):
        check_output_dir(tmp_path / "dangling" / "out")
    fresh = tmp_path / "a" / "b" / "c"
    assert check_output_dir(fresh) == fresh and not (tmp_path / "a").exists()  # probed, then removed
    assert sorted(tmp_path.iterdir()) == sorted([afile, tmp_path / "dangling"])  # nothing left behind


def test_unwritable_and_full_output_folders_fail_the_check(tmp_path, monkeypatch):
    from hessian_spectra import io

    def refuse(folder):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io, "_probe_write", refuse)
    with pytest.raises(OutputError, match=r"not writable \(Read-only file system\)"):
        check_output_dir(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(OutputError, match="not writable"):
            check_output_dir(ro / "out")
