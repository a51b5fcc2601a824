"""Output folders: --overwrite replaces only an empty folder or an edgetl output of the same kind, never DATA
or --from; the new folder is swapped in whole (a kill at any moment leaves the old folder intact or the
new one complete); leftovers of killed processes are removed by the next write; files and folders follow
the umask."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import factory
from edgetl.core import outdir, rundir
from edgetl.core.errors import EdgetlError

RUN_META = factory.RUN_META
edgetl_run = factory.fake_run


def tag_of(path: Path) -> str:
    return json.loads((path / "edgetl.json").read_text())["tag"]


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- atomic_dir ------------------------------------------------------------------------------------------
def test_atomic_dir_moves_a_complete_folder_into_place(tmp_path):
    out = tmp_path / "runs" / "a"
    with outdir.atomic_dir(out) as tmp:
        (tmp / "edgetl.json").write_text(json.dumps(RUN_META))
        assert not out.exists() and tmp.parent == out.parent and tmp.name.startswith(".a.partial-")
    assert json.loads((out / "edgetl.json").read_text()) == RUN_META
    with pytest.raises(EdgetlError, match="already exists; pass --overwrite"):
        with outdir.atomic_dir(out):
            pass
    with outdir.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "g").write_text("2")
    assert [f.name for f in out.iterdir()] == ["g"]
    assert [f.name for f in out.parent.iterdir()] == ["a"]  # no hidden partial or old folders


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_dir_failure_keeps_the_old_run(tmp_path, exc):
    out = edgetl_run(tmp_path / "run")
    with pytest.raises(type(exc)):
        with outdir.atomic_dir(out, overwrite=True) as tmp:
            (tmp / "model.keras").write_text("new")
            raise exc
    assert [f.name for f in tmp_path.iterdir()] == ["run"] and (out / "model.keras").read_text() == "old"


def test_without_an_atomic_exchange_the_two_renames_still_replace(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)
    out = edgetl_run(tmp_path / "run")
    with outdir.atomic_dir(out, overwrite=True) as tmp:
        edgetl_run(tmp, "new")
    assert tag_of(out) == "new" and [f.name for f in tmp_path.iterdir()] == ["run"]


def test_atomic_dir_refuses_a_file_and_a_folder_edgetl_did_not_write(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(EdgetlError, match="exists and is not a folder|is not a folder"):
        with outdir.atomic_dir(tmp_path / "f", overwrite=True):
            pass
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(EdgetlError, match="holds 1 file .thesis.tex. and is not an edgetl run"):
        with outdir.atomic_dir(mine, overwrite=True):
            pass
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_folder_that_changes_during_the_work_is_not_replaced(tmp_path):
    """The check runs again right before the swap: files the user put there meanwhile are never lost."""
    out = edgetl_run(tmp_path / "run")
    with pytest.raises(EdgetlError, match="is not an edgetl run"):
        with outdir.atomic_dir(out, overwrite=True) as tmp:
            edgetl_run(tmp, "new")
            (out / "edgetl.json").unlink()
            (out / "notes.txt").write_text("mine")
    assert (out / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


# ---- check_out -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,ok", [
    ({}, True),  # empty folder
    ({"edgetl.json": json.dumps(RUN_META), "bench/x.json": "{}"}, True),
    ({"edgetl.json": "{not json"}, False),
    ({"edgetl.json": json.dumps({"classes": ["a"]})}, False),  # not edgetl's keys
    ({"compare.json": json.dumps({"edgetl_version": "0", "results": [], "fractions": []})}, False),
    ({"photo.jpg": "x", "sub/a.jpg": "y"}, False),
])
def test_overwrite_replaces_only_an_edgetl_run_or_an_empty_folder(tmp_path, content, ok):
    out = tmp_path / "out"
    out.mkdir()
    for name, text in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    if ok:
        outdir.check_out(out, True)
        return
    with pytest.raises(EdgetlError) as e:
        outdir.check_out(out, True)
    msg = one_line(e)
    assert msg.startswith(f"--out {out} holds ") and "is not an edgetl run (edgetl.json)" in msg
    assert all(Path(n).parts[0] in msg for n in content)


def test_compare_replaces_only_a_compare_output(tmp_path):
    out = edgetl_run(tmp_path / "run")
    with pytest.raises(EdgetlError, match=r"is not an edgetl compare output \(compare.json\)"):
        outdir.check_out(out, True, outdir.COMPARE_FILE)
    (out / "compare.json").write_text(json.dumps({"edgetl_version": "0", "results": [], "fractions": [0.5]}))
    outdir.check_out(out, True, outdir.COMPARE_FILE)


@pytest.mark.parametrize("where,word", [("data", "is"), ("data/train/cats", "sits inside"), (".", "contains")])
def test_overwrite_never_touches_data(tmp_path, where, word):
    data = factory.image_folder(tmp_path / "data")
    (data / "edgetl.json").write_text(json.dumps(RUN_META))  # even a folder that looks like a run
    (data / "train" / "cats" / "edgetl.json").write_text(json.dumps(RUN_META))
    (tmp_path / "edgetl.json").write_text(json.dumps(RUN_META))
    out = tmp_path / where
    with pytest.raises(EdgetlError) as e:
        outdir.check_out(out, True, protect={"DATA": data})
    assert f"--out {out} {word} DATA {data}" in one_line(e)


def test_overwrite_never_touches_data_through_a_symlink(tmp_path):
    data = factory.image_folder(tmp_path / "data")
    (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    with pytest.raises(EdgetlError, match="contains DATA"):
        outdir.check_out(tmp_path, True, protect={"DATA": tmp_path / "alias" / "train"})
    with pytest.raises(EdgetlError, match="is a symlink"):  # the link itself is never replaced
        outdir.check_out(tmp_path / "alias", True)


def test_from_run_is_protected_too(tmp_path):
    src = edgetl_run(tmp_path / "src")
    with pytest.raises(EdgetlError, match=f"is --from {src}: --overwrite would delete your source run"):
        outdir.check_out(src, True, protect={"DATA": tmp_path / "d", "--from": src})


def test_without_overwrite_an_existing_folder_is_refused(tmp_path):
    with pytest.raises(EdgetlError, match="already exists; pass --overwrite"):
        outdir.check_out(tmp_path, False)
    outdir.check_out(tmp_path / "new" / "deeper", False)  # a new folder under a writable one: fine


def test_an_unwritable_parent_is_refused_before_any_work():
    """Checked by an ordinary user's process (root may write anywhere)."""
    python, user = factory.as_other_user(stdlib_only=True)
    top = Path(tempfile.mkdtemp(prefix="edgetl-perm-"))
    try:
        os.chmod(top, 0o555)  # anyone may enter, nobody may write
        code = ("import sys; from edgetl.core.outdir import check_out\n"
                "try:\n check_out(sys.argv[1], False)\nexcept Exception as e: print(e)\n")
        r = subprocess.run([python, "-c", code, str(top / "runs" / "a")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(outdir.__file__).parents[2])}, **user)
        assert r.stdout.strip() == f"--out {top / 'runs' / 'a'}: cannot write in {top} (permission denied)", r.stderr
    finally:
        os.rmdir(top)


def test_an_unwritable_parent_as_the_system_reports_it(tmp_path, monkeypatch):
    """The same check where the test cannot switch user: the folder as os.access reports it."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    with pytest.raises(EdgetlError) as e:
        outdir.check_out(tmp_path / "runs" / "a", False)
    assert one_line(e) == f"--out {tmp_path / 'runs' / 'a'}: cannot write in {tmp_path} (permission denied)"


# ---- leftovers of killed processes -------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_dead_processes_are_removed_and_a_moved_run_restored(tmp_path):
    host, dead, live = outdir._host(), _dead_pid(), os.getppid()
    (tmp_path / f".a.partial-{host}-{dead}-x1").mkdir()
    edgetl_run(tmp_path / f".b.old-{host}-{dead}-x2" / "d", "b")  # killed between the two renames: b is missing
    (tmp_path / f".c.partial-{host}-{live}-x3").mkdir()  # a live process's: kept
    (tmp_path / f".d.partial-otherhost-{dead}-x4").mkdir()  # another machine's (shared folder): kept
    (tmp_path / ".e.partial-abc").mkdir()  # not edgetl's pattern: kept
    removed = outdir.clean_leftovers(tmp_path)
    assert sorted(removed) == [f".a.partial-{host}-{dead}-x1", f".b.old-{host}-{dead}-x2"]
    assert tag_of(tmp_path / "b") == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["b", f".c.partial-{host}-{live}-x3", f".d.partial-otherhost-{dead}-x4", ".e.partial-abc"])


def test_the_next_write_removes_leftovers(tmp_path):
    (tmp_path / f".a.partial-{outdir._host()}-{_dead_pid()}-zz").mkdir()
    with outdir.atomic_dir(tmp_path / "b") as tmp:
        (tmp / "f").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# ---- kills at every step of a write ------------------------------------------------------------------------
WRITER = """
import json, sys
from pathlib import Path
from edgetl.cli import sigterm_as_interrupt
from edgetl.core.outdir import atomic_dir
with sigterm_as_interrupt():
    with atomic_dir(Path(sys.argv[1]), overwrite=True) as tmp:
        (tmp / "model.keras").write_text("new")
        (tmp / "edgetl.json").write_text(sys.argv[2])
"""


@pytest.mark.parametrize("point", ["atomic-dir-complete", "atomic-dir-swapped"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_kill_at_any_step_leaves_the_old_run_or_the_new_one(tmp_path, point, sig):
    out = edgetl_run(tmp_path / "runs" / "run")
    new = json.dumps({**RUN_META, "tag": "new"})
    proc = factory.start_paused([sys.executable, "-c", WRITER, str(out), new], point, tmp_path / "pause")
    factory.wait_reached(proc, point, tmp_path / "pause")
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert tag_of(out) == ("new" if point == "atomic-dir-swapped" else "old")
    assert (out / "model.keras").read_text() == tag_of(out)  # whole: never a mix of the two
    left = sorted(p.name for p in out.parent.iterdir() if p.name != "run")
    assert proc.returncode != 0
    if sig == signal.SIGKILL:  # no clean-up ran: the next write removes what is left
        assert left and sorted(outdir.clean_leftovers(out.parent)) == left
    else:  # Ctrl-C and SIGTERM clean up after themselves
        assert left == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]


# ---- permissions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_and_folders_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert rundir.umask() == mask
        rundir.write_json(tmp_path / "a.json", {})
        rundir.write_bytes(tmp_path / "b.bin", b"x")
        d = rundir.temp_dir(tmp_path, ".t-")
        with outdir.atomic_dir(tmp_path / "run") as tmp:
            rundir.write_json(tmp / "edgetl.json", RUN_META)
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "a.json", tmp_path / "b.bin", d,
                                                             tmp_path / "run", tmp_path / "run" / "edgetl.json")}
    assert mode == {"a.json": 0o666 & ~mask, "b.bin": 0o666 & ~mask, d.name: 0o777 & ~mask,
                    "run": 0o777 & ~mask, "edgetl.json": 0o666 & ~mask}


# ---- the final rename --------------------------------------------------------------------------------------
@pytest.mark.parametrize("noreplace", [True, False])
def test_a_run_that_appeared_meanwhile_is_never_replaced(tmp_path, monkeypatch, noreplace):
    if not noreplace:  # a system without renameat2: mkdir (one creator wins), then rename onto it
        monkeypatch.setattr(outdir, "_renameat2", lambda a, b, flag: False)
    out = tmp_path / "run"
    with pytest.raises(EdgetlError) as e:
        with outdir.atomic_dir(out) as tmp:
            (tmp / "edgetl.json").write_text(json.dumps({**RUN_META, "tag": "second"}))
            edgetl_run(out, "first")  # another train finished first
    assert one_line(e).startswith(f"--out {out} appeared while this command ran")
    assert tag_of(out) == "first" and [p.name for p in tmp_path.iterdir()] == ["run"]
    empty = tmp_path / "empty"
    with pytest.raises(EdgetlError, match="appeared while"):  # even an empty folder: rename(2) would replace it
        with outdir.atomic_dir(empty) as tmp:
            (tmp / "edgetl.json").write_text(json.dumps(RUN_META))
            empty.mkdir()
    assert list(empty.iterdir()) == []
    with outdir.atomic_dir(out, overwrite=True) as tmp:  # with --overwrite: replaced, as asked
        (tmp / "edgetl.json").write_text(json.dumps({**RUN_META, "tag": "third"}))
    assert tag_of(out) == "third"


def test_replacing_a_run_waits_for_its_manifest_lock(tmp_path):
    import fcntl
    import threading

    out = edgetl_run(tmp_path / "run")
    before = rundir.Run(out)
    lock = open(out / rundir.MANIFEST_LOCK, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # an export writing a file
    done = threading.Event()

    def replace():
        with outdir.atomic_dir(out, overwrite=True) as tmp:
            edgetl_run(tmp, "new")
        done.set()

    t = threading.Thread(target=replace)
    t.start()
    assert not done.wait(0.5) and tag_of(out) == "old" and not before.replaced()
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    t.join(10)
    assert done.is_set() and tag_of(out) == "new" and before.replaced()
