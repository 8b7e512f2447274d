"""Flow checkpoints carry a CRC-32 (zlib): a corrupted, truncated, extended or
old-format checkpoint is refused on --resume with exit 2 and one line naming the
file, and the run's outputs are left as they were. An intact one resumes."""

import json
import struct

import numpy as np
import pytest

from conftest import run_cli, save_npy


def _args(tokens):
    return ["flow", "--builtin", "sa", "--beta", 1.0, "--tokens", tokens, "--time", 1.0,
            "--steps", 8, "--scheme", "heun", "--save-every", 2, "--no-plot"]


@pytest.fixture
def checkpointed(tmp_path):
    tokens = save_npy(tmp_path / "x.npy", np.random.default_rng(3).normal(size=(6, 3)))
    out = tmp_path / "run"
    run_cli([*_args(tokens), "--checkpoint-every", 3, "--out", out], check=True, timeout=120)
    checkpoint = out / "checkpoint.bin"
    assert checkpoint.exists()
    return tokens, out, checkpoint


def _resume(tokens, out):
    return run_cli([*_args(tokens), "--resume", "--out", out], timeout=120)


def _expect_refused(tokens, out, checkpoint, fragment):
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = _resume(tokens, out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(checkpoint) in lines[0] and fragment in lines[0], lines[0]
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before


def test_intact_checkpoint_resumes(checkpointed):
    tokens, out, _ = checkpointed
    proc = _resume(tokens, out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and summary["resumed_from_step"] == 6


def test_one_flipped_byte_in_the_middle_is_refused(checkpointed):
    tokens, out, checkpoint = checkpointed
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    _expect_refused(tokens, out, checkpoint, "checksum mismatch: the checkpoint is corrupt")


@pytest.mark.parametrize("where", [16, 24, 30, 60, -1])
def test_flipped_bytes_anywhere_are_refused(checkpointed, where):
    tokens, out, checkpoint = checkpointed
    data = bytearray(checkpoint.read_bytes())
    data[where] ^= 0x80
    checkpoint.write_bytes(bytes(data))
    _expect_refused(tokens, out, checkpoint, "checksum mismatch")


def test_truncated_and_extended_checkpoints_are_refused(checkpointed):
    tokens, out, checkpoint = checkpointed
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:-5])
    _expect_refused(tokens, out, checkpoint, "checksum mismatch")
    checkpoint.write_bytes(data + b"\0")
    _expect_refused(tokens, out, checkpoint, "checksum mismatch")
    checkpoint.write_bytes(data[:12])
    _expect_refused(tokens, out, checkpoint, "truncated checkpoint")


def test_old_format_version_is_refused(checkpointed):
    tokens, out, checkpoint = checkpointed
    data = bytearray(checkpoint.read_bytes())
    data[8:12] = struct.pack("<I", 1)
    checkpoint.write_bytes(bytes(data))
    _expect_refused(tokens, out, checkpoint, "checkpoint format version 1 is not supported")
