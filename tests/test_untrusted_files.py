"""Files a sandbox could have written, from the trusted side (``harness.trusted.untrusted_files``): sized for the
disk cap, checked for links at every level, and removed without following a link, at any depth."""

import os
import shutil
import subprocess
import sys

import pytest

from harness.trusted.untrusted_files import files_bytes, folder_beneath, regular_file_beneath, remove_tree

HOLDS_UNLINKED_FILES = """
import ctypes, os, sys, time
folder = os.fsencode(sys.argv[1])
held = os.open(os.path.join(folder, b"held"), os.O_RDWR | os.O_CREAT)
os.write(held, b"h" * (2 << 20))
os.unlink(os.path.join(folder, b"held"))  # open, no longer in any folder
name = os.path.join(folder, b"mapped-\\xff")  # a name that is no UTF-8, as its mapping shows it
mapped = os.open(name, os.O_RDWR | os.O_CREAT)
os.write(mapped, b"m" * (3 << 20))
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
assert libc.mmap(None, 4096, 1, 1, mapped, 0) not in (None, ctypes.c_void_p(-1).value)  # PROT_READ, MAP_SHARED
os.close(mapped)
os.unlink(name)  # neither open nor in a folder: mapped only
print("ready", flush=True)
time.sleep(60)
"""


def _maps_readable(pid: int) -> bool:
    """Whether this process may read another's mappings (``/proc/PID/map_files``: root may)."""
    with open(f"/proc/{pid}/maps") as f:
        first = f.readline().split(maxsplit=1)[0]
    try:
        os.stat(f"/proc/{pid}/map_files/{first}")
    except PermissionError:
        return False
    return True


def test_a_sandboxs_files_count_in_its_folder_and_unlinked_while_held_or_mapped(tmp_path):
    """The disk cap counts the files under the run folder once each (a hard link twice would be one file), never
    what a link there names, and the files a process of the sandbox unlinked but still holds open, or maps only
    (where this process may read its mappings), even under a name that is no UTF-8."""
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "written").write_bytes(b"w" * (1 << 20))
    os.link(run / "sub" / "written", run / "linked")
    (tmp_path / "big").write_bytes(b"b" * (8 << 20))
    os.symlink(tmp_path / "big", run / "points-outside")
    assert files_bytes(run, []) == pytest.approx(1 << 20, abs=64 << 10)

    proc = subprocess.Popen([sys.executable, "-c", HOLDS_UNLINKED_FILES, str(run / "sub")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        mapped = (3 << 20) if _maps_readable(proc.pid) else 0
        assert files_bytes(run, [proc.pid]) == pytest.approx((3 << 20) + mapped, abs=64 << 10)
    finally:
        proc.kill()
        proc.wait()


def test_a_tree_too_deep_to_count_is_over_the_cap_and_long_paths_are_counted(tmp_path):
    """Folders nested past MAX_DEPTH hide nothing from the count: the tree cannot be counted (None, over the cap).
    Below it, names long enough that the paths pass the system's limit are still counted: the walk never makes one."""
    from harness.trusted.untrusted_files import MAX_DEPTH

    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        for _ in range(MAX_DEPTH):
            os.mkdir("n" * 200)
            os.chdir("n" * 200)
        with open("deep", "wb") as f:
            f.write(b"d" * (4 << 20))
        assert files_bytes(tmp_path, []) == pytest.approx((4 << 20) + MAX_DEPTH * 4096, abs=64 << 10)
        os.mkdir("one-more")
    finally:
        os.chdir(here)
    assert files_bytes(tmp_path, []) is None
    assert remove_tree(tmp_path)


COUNTS_AN_UNREADABLE_FOLDER = """
import os, sys
from pathlib import Path
from harness.trusted.untrusted_files import files_bytes
run = Path(sys.argv[1])
(run / "hidden").mkdir(parents=True)
(run / "hidden" / "f").write_bytes(b"x" * (1 << 20))
(run / "hidden").chmod(0o300)
print(files_bytes(run, []))
(run / "hidden").chmod(0o700)
"""


def test_a_folder_a_program_made_unreadable_is_over_the_cap(tmp_path):
    prefix = _without_file_capabilities()
    if prefix is None:
        pytest.skip("root, and no setpriv to drop its file capabilities")
    out = subprocess.run([*prefix, sys.executable, "-c", COUNTS_AN_UNREADABLE_FOLDER, str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["None"], out.stderr


def test_every_entry_counts_at_least_a_block_even_empty():
    """Empty files and folders take no blocks, but each takes an inode and an entry: 10,000 of them count 40 MiB."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(5000):
            os.mkdir(os.path.join(tmp, f"d{i}"))
            open(os.path.join(tmp, f"f{i}"), "w").close()
        assert files_bytes(tmp, []) >= 10_000 * 4096


def test_a_link_at_any_level_below_the_root_is_refused(tmp_path):
    run, host = tmp_path / "run", tmp_path / "host"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "rung0.pt").write_bytes(b"trained")
    host.mkdir()
    (host / "rung0.pt").write_bytes(b"the host's")
    assert regular_file_beneath(run, run / "weights" / "rung0.pt") and folder_beneath(run, run / "weights")
    (run / "weights").rename(run / "moved")
    (run / "weights").symlink_to(host)  # what a program past the policy did to its weights folder
    assert not regular_file_beneath(run, run / "weights" / "rung0.pt")
    assert not folder_beneath(run, run / "weights")
    assert not regular_file_beneath(run, tmp_path / "elsewhere" / "rung0.pt")  # not beneath the root at all
    assert not regular_file_beneath(run, run / "moved")  # a folder is not a regular file


LEAVES_A_HOSTILE_TREE = """
import os, sys
from pathlib import Path
from harness.trusted.untrusted_files import remove_tree

run, victim = Path(sys.argv[1]), Path(sys.argv[2])
run.mkdir()
locked = run / "locked"  # a link in a folder the program made read-only: its removal failed, and Python's own
locked.mkdir()           # cleanup then made the link's target writable (CVE-2023-6597)
(locked / "link").symlink_to(victim)
(locked / "file").write_text("z")
locked.chmod(0o500)
unreadable = run / "unreadable"
unreadable.mkdir()
(unreadable / "f").write_text("q")
unreadable.chmod(0)
(run / "to-the-host").symlink_to(victim.parent)
os.chdir(run)
for _ in range(3000):  # deeper than the interpreter's recursion limit
    os.mkdir("d")
    os.chdir("d")
Path("f").write_text("deep")
os.chdir("/")
for i in range(2000):
    (run / "wide" / str(i)).mkdir(parents=True)
print(remove_tree(run), run.exists(), oct(victim.stat().st_mode), victim.read_text(), sorted(os.listdir(victim.parent)))
"""


def _without_file_capabilities() -> list[str]:
    """A prefix under which this test's child cannot override file permissions: none for a user who is not root;
    for root, its capabilities to do so dropped (``setpriv``), else None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"] if setpriv else None


@pytest.mark.parametrize("unprivileged", [False, True])
def test_a_run_folder_is_removed_without_touching_what_its_links_name(tmp_path, unprivileged):
    """A read-only folder holding a link to a file of the host, an unreadable folder, a link to a host folder, a
    chain of 3,000 folders and 2,000 folders side by side: all removed, and the host's file keeps its mode and
    content. Unprivileged, unlinking in the read-only folder fails first, as it does for a user who is not root."""
    prefix = _without_file_capabilities() if unprivileged else []
    if prefix is None:
        pytest.skip("root, and no setpriv to drop its file capabilities")
    victim = tmp_path / "host" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("the host's")
    victim.chmod(0o400)
    out = subprocess.run([*prefix, sys.executable, "-c", LEAVES_A_HOSTILE_TREE, str(tmp_path / "run"), str(victim)],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "False", "0o100400", "the", "host's", "['notes.txt']"], out.stderr


def test_the_run_folders_a_killed_evaluator_left_are_removed_by_the_next(tmp_path, monkeypatch):
    """A killed evaluator never runs its cleanup (hundreds of run folders piled up in /tmp over a day of tests). The
    next run folder's maker removes those whose maker died, and no other: not a live maker's, not one made on
    another boot or in another PID namespace (a machine or container sharing the folder), not one of another
    prefix, nor a name that holds no pid."""
    import tempfile

    from harness.trusted import untrusted_files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    space = untrusted_files._owner_tag().split("-")[0]
    left = tmp_path / f"harness-sandbox-{space}-{dead.pid}-abcd"
    (left / "tmp" / "deep").mkdir(parents=True)
    kept = [tmp_path / f"harness-sandbox-{space}-{os.getpid()}-live", tmp_path / f"harness-sandbox-1-{dead.pid}-other",
            tmp_path / f"harness-scorer-{space}-{dead.pid}-prefix", tmp_path / "harness-sandbox-untagged",
            # names another user of the folder could make: no pid a process can have
            tmp_path / f"harness-sandbox-{space}-99999999999999999999999-x", tmp_path / f"harness-sandbox-{space}-\u00b2-x"]
    for folder in kept:
        folder.mkdir()
    with untrusted_files.run_folder("harness-sandbox-") as made:
        assert made.name.startswith(f"harness-sandbox-{space}-{os.getpid()}-")
        assert not left.exists() and all(folder.exists() for folder in kept)
    assert not made.exists()
