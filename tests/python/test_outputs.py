"""Output safety and signals (issue 14, items 1, 2, 9, 12): measattn never deletes,
truncates or replaces what it did not write; output paths are checked before any
work; special files are written through, symbolic links followed; SIGINT, SIGTERM
and SIGHUP leave no temporary behind."""

import os
import pathlib
import signal
import stat
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import measattn_bin, run_cli, save_npy, save_mha_safetensors

MARKER = ".measattn-output"


def listing(root):
    """Every path under root (relative), directories included."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def temporaries(root):
    return sorted(p for p in listing(root) if ".tmp." in p or ".old." in p)


def one_error_line(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def scratch(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "notes.txt").write_text("mine\n")
    return d


def run_in(cwd, args, **kw):
    return subprocess.run([measattn_bin(), *[str(a) for a in args]], cwd=cwd,
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **kw.pop("env", {})}, **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True).double()
    model = save_mha_safetensors(d / "m.safetensors", mha, num_heads=2)
    tokens = save_npy(d / "x.npy", np.random.default_rng(0).normal(size=(6, 4)) * 0.5)
    return {"model": model, "tokens": tokens}


# ---- directory outputs: analyze --out, flow --out, lipschitz --witness ----------

@pytest.mark.parametrize("out", [".", "./", "inner/..", "..", "ABS_CWD", "ABS_PARENT"])
def test_analyze_out_containing_cwd_is_refused(scratch, out):
    (scratch / "inner").mkdir()
    (scratch / "inner" / "keep.txt").write_text("k")
    out = {"ABS_CWD": str(scratch), "ABS_PARENT": str(scratch.parent)}.get(out, out)
    before = listing(scratch.parent)
    proc = run_in(scratch, ["analyze", "--out", out])
    one_error_line(proc, "--out", "working directory")
    assert listing(scratch.parent) == before
    assert (scratch / "notes.txt").read_text() == "mine\n"


def test_analyze_out_with_user_files_is_refused(scratch):
    d = scratch / "d"
    d.mkdir()
    (d / "u.txt").write_text("user")
    proc = run_in(scratch, ["analyze", "--out", "d"])
    one_error_line(proc, "--out", "not empty")
    assert listing(d) == {"u.txt"} and (d / "u.txt").read_text() == "user"


def test_analyze_out_file_is_refused(scratch):
    proc = run_in(scratch, ["analyze", "--out", "notes.txt"])
    one_error_line(proc, "notes.txt", "not a directory")
    assert (scratch / "notes.txt").read_text() == "mine\n"
    assert listing(scratch) == {"notes.txt"}


def test_analyze_fills_an_empty_dir_and_replaces_its_own_report(scratch):
    (scratch / "rep").mkdir()
    run_in(scratch, ["analyze", "--out", "rep"], check=True)
    files = listing(scratch / "rep")
    assert "report.md" in files and MARKER in files
    assert (scratch / "rep" / MARKER).read_text().startswith("measattn analyze output\n")
    proc = run_in(scratch, ["analyze", "--out", "rep"])
    assert proc.returncode == 0, proc.stderr
    assert listing(scratch / "rep") == files
    assert listing(scratch) == {"notes.txt", "rep"} | {"rep/" + f for f in files}
    # A file the user added to the report is never deleted: the run is refused.
    (scratch / "rep" / "my_notes.md").write_text("n")
    proc = run_in(scratch, ["analyze", "--out", "rep"])
    one_error_line(proc, "did not write", "my_notes.md")
    assert (scratch / "rep" / "my_notes.md").read_text() == "n"
    # Another command's output is not an analyze output.
    (scratch / "rep" / "my_notes.md").unlink()
    (scratch / "rep" / MARKER).write_text("measattn flow output\nfinal.npy\n")
    one_error_line(run_in(scratch, ["analyze", "--out", "rep"]), "flow output")


def test_marker_naming_outside_files_is_refused(scratch):
    d = scratch / "rep"
    d.mkdir()
    (d / MARKER).write_text("measattn analyze output\n../notes.txt\n")
    one_error_line(run_in(scratch, ["analyze", "--out", "rep"]), "plain file name")
    assert (scratch / "notes.txt").read_text() == "mine\n"


def test_analyze_parent_must_exist(scratch):
    proc = run_in(scratch, ["analyze", "--out", "a/b"])
    one_error_line(proc, "--out", "does not exist")
    assert listing(scratch) == {"notes.txt"}


def test_flow_reuses_its_output_and_failure_leaves_no_empty_dir(scratch):
    x = save_npy(scratch / "x.npy", np.random.default_rng(1).normal(size=(8, 2)))
    args = ["flow", "--builtin", "sa", "--beta", 1, "--tokens", x, "--time", 0.5, "--steps", 5,
            "--no-plot", "--out", "fl"]
    run_in(scratch, [*args, "--save-every", 1], check=True)
    assert {"final.npy", "trajectory.npy", "summary.json", MARKER} <= listing(scratch / "fl")
    run_in(scratch, args, check=True)  # its own previous output: refilled
    assert "trajectory.npy" not in listing(scratch / "fl")  # stale output of ours removed
    # Refused: a directory of the user's, and a failing run leaves no --out.
    (scratch / "user").mkdir()
    (scratch / "user" / "u").write_text("u")
    one_error_line(run_in(scratch, [*args[:-1], "user"]), "not empty")
    assert listing(scratch / "user") == {"u"}
    zero = save_npy(scratch / "z.npy", np.zeros((3, 2)))
    bad = ["flow", "--builtin", "sa", "--beta", 1, "--tokens", zero, "--time", 1, "--steps", 1,
           "--sphere", "--checkpoint-every", 1, "--out", "new"]
    assert run_in(scratch, bad).returncode == 2
    assert not (scratch / "new").exists()
    # A run that fails after the start (non-finite particles) leaves no empty --out.
    big = save_npy(scratch / "big.npy", np.full((4, 2), 1e307))
    proc = run_in(scratch, ["flow", "--builtin", "sa", "--beta", 1, "--tokens", big, "--time", 100,
                            "--steps", 2, "--checkpoint-every", 1, "--out", "new"])
    assert proc.returncode == 2, proc.stderr
    assert not (scratch / "new").exists()
    assert temporaries(scratch) == []


def test_lipschitz_witness_creates_only_the_last_component(scratch, small):
    args = ["lipschitz", "--model", small["model"], "--radius", 1, "--restarts", 2, "--steps", 5,
            "--atoms", 3]
    proc = run_in(scratch, [*args, "--witness", "a/b/c"])
    one_error_line(proc, "--witness", "does not exist")
    assert listing(scratch) == {"notes.txt"}
    run_in(scratch, [*args, "--witness", "w"], check=True)
    assert "witness.json" in listing(scratch / "w")
    run_in(scratch, [*args, "--witness", "w"], check=True)  # its own previous output
    one_error_line(run_in(scratch, [*args, "--witness", "."]), "working directory")
    assert temporaries(scratch) == []


# ---- file outputs ----------------------------------------------------------------

def attend(cwd, small, out):
    return run_in(cwd, ["attend", "--model", small["model"], "--tokens", small["tokens"],
                        "--out", out])


def char_device(directory, name, minor):
    """A private twin of /dev/null (minor 3) or /dev/full (minor 7) where device nodes
    can be made (root), so that a regression replaces only the twin, never the system's
    node; otherwise the system's node itself (which a non-root run cannot replace)."""
    path = directory / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        os.close(os.open(path, os.O_WRONLY))
        return path
    except OSError:
        if path.exists():
            path.unlink()
    return pathlib.Path("/dev") / name


def test_attend_to_dev_null_keeps_the_device(tmp_path, scratch, small):
    null = char_device(tmp_path, "null", 3)
    proc = attend(scratch, small, null)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_dev_full_is_a_clear_error(tmp_path, scratch, small):
    full = char_device(tmp_path, "full", 7)
    if not full.exists():
        pytest.skip("no /dev/full")
    proc = attend(scratch, small, full)
    assert proc.returncode != 0
    assert str(full) in proc.stderr and "No space left" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_fifo_is_written_through_or_refused(scratch, small):
    fifo = scratch / "pipe.npy"
    os.mkfifo(fifo)
    # No reader: refused at once (no hang), the FIFO stays a FIFO.
    proc = attend(scratch, small, fifo)
    one_error_line(proc, "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # With a reader (the output is smaller than the pipe buffer): written through.
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        proc = attend(scratch, small, fifo)
        assert proc.returncode == 0, proc.stderr
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    assert data.startswith(b"\x93NUMPY")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert temporaries(scratch) == []


def test_symlink_stays_a_link_and_its_target_gets_the_content(scratch, small):
    (scratch / "real").mkdir()
    target = scratch / "real" / "y.npy"
    target.write_bytes(b"old")
    link = scratch / "link.npy"
    link.symlink_to("real/y.npy")
    assert attend(scratch, small, "link.npy").returncode == 0
    assert link.is_symlink() and os.readlink(link) == "real/y.npy"
    assert np.load(target).shape == (6, 4)
    # A dangling link: the file is created where it points.
    (scratch / "dangling.npy").symlink_to("real/new.npy")
    assert attend(scratch, small, "dangling.npy").returncode == 0
    assert (scratch / "dangling.npy").is_symlink() and np.load(scratch / "real" / "new.npy").size
    assert temporaries(scratch) == []


def test_out_is_a_directory_or_in_a_missing_one(scratch, small):
    one_error_line(attend(scratch, small, scratch), "is a directory")
    one_error_line(attend(scratch, small, "nodir/y.npy"), "does not exist")
    one_error_line(attend(scratch, small, "notes.txt/y.npy"), "not a directory")
    assert listing(scratch) == {"notes.txt"}


def test_misspec_plot_and_csv_checked_before_work(scratch, small):
    base = ["misspec", "--model", small["model"], "--tokens", small["tokens"],
            "--kind", "sample", "--sizes", "2,3", "--repeats", 1]
    # (the MEASATTN_PROGRESS line would show work being done before the refusal)
    for flag in ["--plot", "--csv"]:
        proc = run_in(scratch, [*base, flag, "missing/x.png"], env={"MEASATTN_PROGRESS": "1"})
        one_error_line(proc, flag, "missing", "does not exist")
    assert listing(scratch) == {"notes.txt"}
    run_in(scratch, [*base, "--plot", "p.png", "--csv", "t.csv"], check=True)
    assert (scratch / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert temporaries(scratch) == []


def test_entropy_plot_and_wasserstein_plan_checked(scratch, small):
    one_error_line(run_in(scratch, ["entropy", "--model", small["model"], "--tokens",
                                    small["tokens"], "--plot", "no/p.png"]), "--plot")
    a = save_npy(scratch / "a.npy", np.zeros((2, 1)))
    one_error_line(run_in(scratch, ["wasserstein", a, a, "--plan", "no/plan.npy"]), "--plan")
    one_error_line(run_in(scratch, ["wasserstein", a, a, "--plan", "."]), "--plan")


# ---- signals -----------------------------------------------------------------------

def start(cwd, args, env=None):
    return subprocess.Popen([measattn_bin(), *[str(a) for a in args]], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})


def wait_for(proc, condition):
    while proc.poll() is None and not condition():
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the signal: " + proc.stderr.read().decode()


def check_interrupted(proc, sig):
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err and "terminate" not in err
    # (a progress line, when shown, is ended by "\r\x1b[K" rather than a newline)
    assert err.endswith("measattn: interrupted by " + signal.Signals(sig).name + "\n"), err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_during_analyze_leaves_no_temporary(tmp_path, sig):
    cwd = tmp_path / "s"
    cwd.mkdir()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    (cwd / "notes.txt").write_text("mine\n")
    proc = start(cwd, ["analyze", "--out", "rep"], env={"TMPDIR": str(tmpdir)})
    # Started: its hidden temporary report directory exists.
    wait_for(proc, lambda: any(".rep.tmp." in p for p in os.listdir(cwd)))
    proc.send_signal(sig)
    check_interrupted(proc, sig)
    assert listing(cwd) == {"notes.txt"}
    assert listing(tmpdir) == set()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_during_flow_leaves_nothing(tmp_path, sig):
    cwd = tmp_path / "s"
    cwd.mkdir()
    save_npy(cwd / "x.npy", np.random.default_rng(2).normal(size=(300, 3)))
    proc = start(cwd, ["flow", "--builtin", "sa", "--beta", 1, "--tokens", "x.npy", "--sphere",
                       "--time", 1000, "--steps", 1000000, "--out", "fl"],
                 env={"MEASATTN_PROGRESS": "1"})
    os.set_blocking(proc.stderr.fileno(), False)
    seen = []

    def started():  # the progress line shows the integration running
        chunk = proc.stderr.read()
        if chunk:
            seen.append(chunk)
        return b"flow" in b"".join(seen)

    wait_for(proc, started)
    os.set_blocking(proc.stderr.fileno(), True)
    proc.send_signal(sig)
    check_interrupted(proc, sig)
    assert listing(cwd) == {"x.npy"}


def test_second_signal_and_checkpointed_flow(tmp_path):
    """With --checkpoint-every the output directory holds the checkpoint (to
    resume) but no temporary; two quick signals still leave no temporary."""
    cwd = tmp_path / "s"
    cwd.mkdir()
    save_npy(cwd / "x.npy", np.random.default_rng(3).normal(size=(300, 3)))
    args = ["flow", "--builtin", "sa", "--beta", 1, "--tokens", "x.npy", "--sphere", "--time",
            1000, "--steps", 1000000, "--checkpoint-every", 20, "--out", "fl"]
    proc = start(cwd, args)
    wait_for(proc, lambda: (cwd / "fl" / "checkpoint.bin").exists())
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # (pending signals are delivered lowest number first: either may count as the first)
    assert proc.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), err
    assert "interrupted by SIG" in err.decode()
    assert listing(cwd / "fl") == {MARKER, "checkpoint.bin"}
    assert temporaries(cwd) == []
