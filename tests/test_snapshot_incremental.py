"""Incremental replay snapshots: frames are written once, into frame files beside the snapshots; each snapshot
writes only the frames stored since the previous one, names the files that hold its live frames, and loads back
exactly; files no snapshot names are removed; a missing frame file is a clear error; old snapshots still load."""

import json
import os

import numpy as np
import pytest

from actor.chunks import ChunkBuilder
from common.config import TEST_ENV_ID, Config
from launcher.resume import ResumeError, _check_snapshot
from replay_server.buffer import PrioritizedReplay
from replay_server.snapshot import (
    FRAME_FILE,
    SnapshotError,
    frame_file_name,
    frame_files_named,
    read_snapshot,
    remove_unused_frame_files,
    write_snapshot,
)

CONFIG = Config(env=TEST_ENV_ID, replay_capacity=1024, learning_starts=1024)
FRAME_BYTES = CONFIG.frame_size**2


def new_buffer() -> PrioritizedReplay:
    return PrioritizedReplay(
        CONFIG.replay_capacity, CONFIG.frame_size, CONFIG.frame_stack, CONFIG.per_alpha, CONFIG.num_actions
    )


def fill(buffer: PrioritizedReplay, transitions: int, seed: int) -> None:
    """Add about `transitions` transitions of random frames in chunks of up to 64, episodes ending now and then."""
    rng = np.random.default_rng(seed)
    size = buffer.frame_size
    builder = ChunkBuilder(buffer.frame_stack)
    builder.start_episode(rng.integers(0, 256, (size, size), dtype=np.uint8))
    target = buffer.inserted + transitions
    while buffer.inserted < target:
        done = bool(rng.random() < 0.02)
        builder.add(rng.integers(0, 256, (size, size), dtype=np.uint8), 0, float(rng.normal()), done, False)
        if len(builder) == 64 or done or buffer.inserted + len(builder) >= target:
            c = builder.take()
            buffer.add_chunk(c["frames"], c["stack"], c["actions"], c["rewards"], c["bootstraps"])
            if done:
                builder.start_episode(rng.integers(0, 256, (size, size), dtype=np.uint8))


def frame_files_in(folder) -> set[str]:
    return {name for name in os.listdir(folder) if FRAME_FILE.match(name)}


def loaded(path) -> tuple[PrioritizedReplay, dict]:
    buffer = new_buffer()
    return buffer, read_snapshot(str(path), buffer)


def test_a_second_snapshot_writes_only_the_frames_stored_since(tmp_path):
    buffer = new_buffer()
    fill(buffer, 600, seed=0)
    first_path, first_hash = tmp_path / "a.replay.npz", buffer.content_hash()
    first = write_snapshot(buffer, {"n": 1}, str(first_path))
    assert first == [(0, buffer.frames_written)]
    head = buffer.frames_written

    fill(buffer, 100, seed=1)
    second = write_snapshot(buffer, {"n": 2}, str(tmp_path / "b.replay.npz"), first)
    assert second == first + [(head, buffer.frames_written)]
    new_file = tmp_path / frame_file_name(second[-1])
    assert new_file.stat().st_size < (buffer.frames_written - head) * FRAME_BYTES + 256, "more than the new frames"
    assert (tmp_path / "b.replay.npz").stat().st_size < 100_000, "the snapshot itself holds no frames"
    assert frame_files_in(tmp_path) == {frame_file_name(s) for s in second}

    restored, counters = loaded(tmp_path / "b.replay.npz")
    assert counters == {"n": 2} and restored.content_hash() == buffer.content_hash()
    earlier, counters = loaded(first_path)  # the first snapshot is still whole: its frame file was not touched
    assert counters == {"n": 1} and earlier.content_hash() == first_hash

    # Nothing new stored: the next snapshot writes no frame file at all.
    assert write_snapshot(buffer, {"n": 3}, str(tmp_path / "c.replay.npz"), second) == second
    assert frame_files_in(tmp_path) == {frame_file_name(s) for s in second}


def test_as_the_ring_wraps_only_live_frame_files_are_named_and_the_rest_removed(tmp_path):
    buffer, saved, names = new_buffer(), [], []
    for step in range(8):  # 8 x 300 transitions through a 1024-slot buffer: the rings wrap twice
        fill(buffer, 300, seed=step)
        name = f"s{step}.replay.npz"
        saved = write_snapshot(buffer, {"step": step}, str(tmp_path / name), saved)
        names.append(name)
        assert saved[0][0] <= buffer.oldest_frame() < saved[0][1], "the first file named holds the oldest frame"
        assert saved[-1][1] == buffer.frames_written
        if len(names) > 2:  # as the learner does: a snapshot no checkpoint names any more is deleted
            os.remove(tmp_path / names.pop(0))
        remove_unused_frame_files(str(tmp_path), keep=saved)
        named = {frame_file_name(s) for name in names for s in frame_files_named(str(tmp_path / name))}
        assert frame_files_in(tmp_path) == named, "a frame file no snapshot names was kept, or a named one removed"
    restored, counters = loaded(tmp_path / names[-1])
    assert counters == {"step": 7} and restored.content_hash() == buffer.content_hash()


def test_a_partial_frame_file_is_removed_with_the_unused(tmp_path):
    buffer = new_buffer()
    fill(buffer, 200, seed=0)
    saved = write_snapshot(buffer, {}, str(tmp_path / "a.replay.npz"))
    (tmp_path / (frame_file_name((5000, 6000)) + ".tmp")).write_bytes(b"torn")
    (tmp_path / "notes.txt").write_text("not ours")
    assert remove_unused_frame_files(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(["a.replay.npz", "notes.txt", frame_file_name(saved[0])])


def test_a_missing_frame_file_is_a_clear_error_when_loading_and_when_resuming(tmp_path):
    buffer = new_buffer()
    fill(buffer, 300, seed=0)
    saved = write_snapshot(buffer, {}, str(tmp_path / "a.replay.npz"))
    fill(buffer, 300, seed=1)
    saved = write_snapshot(buffer, {}, str(tmp_path / "b.replay.npz"), saved)
    _check_snapshot(str(tmp_path / "b.replay.npz"), CONFIG)  # whole: no error
    missing = frame_file_name(saved[0])
    os.remove(tmp_path / missing)
    with pytest.raises(SnapshotError, match=f"its frame file {missing} is missing"):
        loaded(tmp_path / "b.replay.npz")
    with pytest.raises(ResumeError, match=f"its frame file {missing} is missing"):
        _check_snapshot(str(tmp_path / "b.replay.npz"), CONFIG)


def test_a_frame_file_that_does_not_hold_what_its_name_says_is_refused(tmp_path):
    buffer = new_buffer()
    fill(buffer, 300, seed=0)
    (segment,) = write_snapshot(buffer, {}, str(tmp_path / "a.replay.npz"))
    np.save(tmp_path / frame_file_name(segment), np.zeros((3, 84, 84), np.uint8))  # too short
    with pytest.raises(SnapshotError, match="does not hold the frames its name says"):
        loaded(tmp_path / "a.replay.npz")


def test_a_snapshot_with_its_frames_inside_still_loads(tmp_path):
    """The layout before frame files: np.savez of state_arrays (frames included) and the counters."""
    buffer = new_buffer()
    fill(buffer, 1500, seed=3)  # wrapped, so the frames come in two pieces
    path = tmp_path / "old.replay.npz"
    np.savez(path, **buffer.state_arrays(), counters=np.array(json.dumps({"episodes": 4})))
    assert frame_files_named(str(path)) == []
    _check_snapshot(str(path), CONFIG)
    restored, counters = loaded(path)
    assert counters == {"episodes": 4} and restored.content_hash() == buffer.content_hash()
    fill(restored, 100, seed=4)  # and a run resumed from it writes frame files from then on
    plan = write_snapshot(restored, {}, str(tmp_path / "new.replay.npz"))
    assert plan == [(restored.oldest_frame(), restored.frames_written)]
    again, _ = loaded(tmp_path / "new.replay.npz")
    assert again.content_hash() == restored.content_hash()


def test_a_snapshot_that_cannot_be_read_keeps_every_frame_file(tmp_path):
    """It might name any of them: removing them would lose the replay memory of the checkpoint naming it."""
    buffer = new_buffer()
    fill(buffer, 300, seed=0)
    saved = write_snapshot(buffer, {}, str(tmp_path / "a.replay.npz"))
    (tmp_path / "b.replay.npz").write_bytes(b"not a zip")  # damaged, or unreadable for now (EMFILE, EIO)
    with pytest.raises(SnapshotError, match="b.replay.npz: cannot read which frame files it names"):
        remove_unused_frame_files(str(tmp_path))
    assert frame_files_in(tmp_path) == {frame_file_name(saved[0])}


def test_a_frame_file_of_another_history_is_never_overwritten(tmp_path):
    """A resume from an older checkpoint numbers its new frames as the newer checkpoint's were: a frame file
    of the same name holds the other history's frames, and a snapshot there names it."""
    buffer = new_buffer()
    fill(buffer, 300, seed=0)
    saved = write_snapshot(buffer, {}, str(tmp_path / "a.replay.npz"))
    other = new_buffer()
    fill(other, 300, seed=0)  # the same frame numbers (the frames do not matter: the name does)
    with pytest.raises(FileExistsError):
        write_snapshot(other, {}, str(tmp_path / "b.replay.npz"))
    assert not (tmp_path / "b.replay.npz").exists()
    restored, _ = loaded(tmp_path / "a.replay.npz")
    assert restored.content_hash() == buffer.content_hash() and frame_files_in(tmp_path) == {frame_file_name(saved[0])}


def test_a_synchronous_snapshot_leaves_the_ring_unguarded(tmp_path, monkeypatch):
    """Without fork the server writes the snapshot itself; afterwards no writer is waited for (before, the
    guard stayed at the saved frames and the next inserts past it stalled for 30 s, then failed)."""
    from common.shared_frames import NO_SNAPSHOT, SNAPSHOT
    from replay_server.snapshot import start_snapshot

    buffer = new_buffer()
    fill(buffer, 300, seed=0)
    monkeypatch.delattr(os, "fork")
    assert start_snapshot(buffer, {}, str(tmp_path / "a.replay.npz")) is None
    assert buffer.ring.shared and buffer.ring.header[SNAPSHOT] == NO_SNAPSHOT
    restored, _ = loaded(tmp_path / "a.replay.npz")
    assert restored.content_hash() == buffer.content_hash()


def test_a_failed_final_serial_save_leaves_no_replay_files(tmp_path, monkeypatch):
    """--serial's final save: a .pth that cannot be written (a full disk) takes its snapshot and the frame
    files only it names with it."""
    import errno

    import launcher.serial as serial
    from learner.learning import DQNLearner

    def full(self, path, counters=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DQNLearner, "save", full)
    config = CONFIG.replace(runs_dir=str(tmp_path), max_steps=300, headless=True, video=False, device="cpu")
    assert serial.run_serial(config) == 0
    (run_dir,) = tmp_path.iterdir()
    left = [p.name for p in run_dir.iterdir() if ".replay.npz" in p.name or FRAME_FILE.match(p.name)]
    assert left == [], left


def test_a_snapshot_whose_frame_file_list_is_malformed_is_refused_in_one_line(tmp_path):
    buffer = new_buffer()
    fill(buffer, 300, seed=0)
    write_snapshot(buffer, {}, str(tmp_path / "a.replay.npz"))
    with np.load(tmp_path / "a.replay.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["frame_files"] = arrays["frame_files"].ravel()  # 1-D: not (first, end) pairs
    np.savez(tmp_path / "b.replay.npz", **arrays)
    with pytest.raises(SnapshotError, match="b.replay.npz: not a readable replay snapshot"):
        loaded(tmp_path / "b.replay.npz")
    with pytest.raises(ResumeError, match="not \\(first, end\\) pairs"):
        _check_snapshot(str(tmp_path / "b.replay.npz"), CONFIG)
