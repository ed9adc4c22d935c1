"""Video recording: the display actor's whole run and every actor's best episode.

Files are fragmented MP4 (H.264, yuv420p): an empty moov box goes first and the frames follow in short,
self-contained fragments that reach the disk as soon as they are cut, so a file whose actor was killed
(SIGKILL, power loss) still plays up to its last complete fragment.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import math
import os
import re
from fractions import Fraction

import numpy as np

# CPU per 256x240 Mario frame on this project's 2-core host, one thread: OpenCV's RGB->I420 0.05 ms (PyAV's own
# conversion took ~0.4 ms of each frame), then libx264 veryfast ~0.7 ms or ultrafast ~0.3 ms; veryfast files are
# about half the size at the same crf. The run video is kept: veryfast. Each env records every episode as a
# best-run candidate and nearly all are dropped: ultrafast.
PRESET = "veryfast"
CANDIDATE_PRESET = "ultrafast"
CRF = 23
KEYFRAME_EVERY_S = 2.0
# Fragments are cut at every keyframe and also every half second between them: a kill then loses at most
# about half a second of video plus the encoder's lookahead (~13 frames), not a whole keyframe interval.
FRAGMENT_S = 0.5

BEST_RUN_PATTERN = re.compile(r"^mario_best_run_(-?\d+\.\d{2})\.mp4$")


class RecordingError(RuntimeError):
    """Recording failed (disk full, unwritable folder, encoder error); one-line message."""


def best_run_name(reward: float) -> str:
    return f"mario_best_run_{reward:.2f}.mp4"


def _check_format(fps: float, width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"frame size must be positive and even for yuv420p, got {width}x{height}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")


def _reason(error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(reason.split())


class _UnbufferedFile(io.FileIO):
    """The muxer's output: every byte reaches the OS at once (so cut fragments survive a kill), and a short
    write near a full disk is retried rather than silently dropped."""

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            view = view[super().write(view) :]
        return len(data)


class VideoWriter:
    """Streams RGB frames into an H.264 (yuv420p) fragmented MP4 that stays playable if the process is killed."""

    def __init__(self, path: str, fps: float, width: int, height: int, preset: str = PRESET):
        import av  # here, not at the top: an actor that records nothing does not need PyAV

        _check_format(fps, width, height)
        self.path = path
        self.width = width
        self.height = height
        self.frames = 0
        self._failure: str | None = None
        self._file = self._container = None
        rate = Fraction(fps).limit_denominator(1001)
        self._time_base = 1 / rate  # frame n is shown at n / fps, so the duration is frames / fps
        try:
            # We own the file (not the muxer): a bad folder fails here, and the file is closed even if
            # FFmpeg fails half-way through writing the header.
            self._file = _UnbufferedFile(path, "w")
            self._container = av.open(
                self._file,
                "w",
                format="mp4",
                options={
                    "movflags": "frag_keyframe+empty_moov+default_base_moof",
                    "frag_duration": str(int(FRAGMENT_S * 1_000_000)),
                    "flush_packets": "1",  # each fragment goes out when cut, whatever the default for this output
                },
            )
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.width = width
            self._stream.height = height
            self._stream.pix_fmt = "yuv420p"
            self._stream.codec_context.gop_size = max(1, round(KEYFRAME_EVERY_S * fps))
            # One thread: the actors already keep every core busy, and frame threads would delay output.
            self._stream.options = {"preset": preset, "crf": str(CRF), "threads": "1"}
        except (OSError, av.FFmpegError) as error:
            self._fail(error)

    def write(self, rgb: np.ndarray) -> None:
        """Encode one frame; a RecordingError leaves the writer closed and failed."""
        import av
        import cv2

        if self._failure is not None:
            raise RecordingError(self._failure)
        if self._container is None:
            raise ValueError(f"{self.path}: write to a closed VideoWriter")
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 frame of shape {(self.height, self.width, 3)}, got {rgb.dtype} {rgb.shape}"
            )
        frame = av.VideoFrame.from_ndarray(
            cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420), format="yuv420p"
        )
        frame.pts = self.frames
        frame.time_base = self._time_base
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1
            self._check_file()
        except (OSError, av.FFmpegError) as error:
            self._fail(error)

    def close(self) -> None:
        """Flush the encoder and finalize the file. Idempotent; a failed writer was closed when it failed."""
        import av

        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._check_file()
            container, self._container = self._container, None
            container.close()
            self._file.close()
        except (OSError, av.FFmpegError) as error:
            self._fail(error)

    def _check_file(self) -> None:
        """Writes into a deleted file (or deleted folder) succeed silently on POSIX, so look (~1 us)."""
        if os.fstat(self._file.fileno()).st_nlink == 0:
            raise FileNotFoundError(errno.ENOENT, "the file or its folder was deleted")

    def _fail(self, error: BaseException):
        """Close quietly (releasing the file) and raise the one-line RecordingError the caller reports."""
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._failure = f"recording {self.path} failed: {_reason(error)}"
        raise RecordingError(self._failure) from error


def best_runs(run_dir: str) -> list[tuple[float, str]]:
    """(reward, path) of every mario_best_run_*.mp4 in run_dir; the file name is the run-wide record."""
    found = []
    for name in os.listdir(run_dir):
        match = BEST_RUN_PATTERN.match(name)
        if match:
            found.append((float(match.group(1)), os.path.join(run_dir, name)))
    return found


@contextlib.contextmanager
def _run_lock(run_dir: str):
    """Serializes the best-run check-and-replace across all actor processes sharing run_dir. The lock is
    on the run folder itself, so no lock file is left in it."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


class EpisodeRecorder:
    """Records each episode of one actor to a temporary file in the run folder; at the episode's end keeps it as
    mario_best_run_<reward:.2f>.mp4 if its reward beats the best of the whole run (all actors), replacing the previous
    best file, else discards it. Memory stays bounded (frames are encoded as they come, never listed)."""

    def __init__(self, run_dir: str, actor_index: int, fps: float, width: int, height: int, env_index: int = 0):
        _check_format(fps, width, height)
        self.run_dir = run_dir
        self.fps, self.width, self.height = fps, width, height
        # A leading dot keeps the unfinished episode from looking like a result.
        env = f"_env{env_index}" if env_index else ""
        self.temp_path = os.path.join(run_dir, f".episode_actor{actor_index}{env}.mp4")
        self._writer: VideoWriter | None = None

    def start_episode(self) -> None:
        """Begin a new temporary recording, dropping an unfinished one."""
        self._discard()
        self._writer = VideoWriter(self.temp_path, self.fps, self.width, self.height, CANDIDATE_PRESET)

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            raise RuntimeError("EpisodeRecorder.write() before start_episode()")
        try:
            self._writer.write(rgb)
        except RecordingError:
            self._discard()
            raise

    def end_episode(self, reward: float) -> str | None:
        """Returns the best-run path if this episode became the run's best, else None."""
        writer, self._writer = self._writer, None
        if writer is None:
            return None
        try:
            writer.close()
            if writer.frames == 0 or not math.isfinite(reward):
                _remove_quietly(self.temp_path)
                return None
            return self._keep_if_best(reward)
        except RecordingError:
            _remove_quietly(self.temp_path)
            raise
        except OSError as error:
            _remove_quietly(self.temp_path)
            raise RecordingError(f"keeping the best run in {self.run_dir} failed: {_reason(error)}") from error

    def close(self) -> None:
        """Discards an unfinished episode's temp file."""
        self._discard()

    def _keep_if_best(self, reward: float) -> str | None:
        # Compare at the precision of the file name, so a tie never replaces a file by one of the same name.
        reward = float(f"{reward:.2f}") + 0.0  # + 0.0 turns -0.0 into 0.0: no "mario_best_run_-0.00"
        with _run_lock(self.run_dir):
            existing = best_runs(self.run_dir)
            record = max(existing, default=None)
            if record is not None and reward <= record[0]:
                os.remove(self.temp_path)
                kept = record[1]
                best = None
            else:
                kept = best = os.path.join(self.run_dir, best_run_name(reward))
                os.replace(self.temp_path, best)
            # Also sweeps up a second file left by an actor killed between its rename and its delete.
            for _, path in existing:
                if path != kept:
                    _remove_quietly(path)
            return best

    def _discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(RecordingError):
                writer.close()
            _remove_quietly(self.temp_path)
