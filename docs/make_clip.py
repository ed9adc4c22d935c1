"""Make the README's pictures from a recorded video: an animated GIF of its last seconds (the flag clear
at the end of mario_play.mp4) or a PNG of its last frame.

    .venv/bin/python docs/make_clip.py RUN/mario_play.mp4 docs/clip.gif --seconds 8
    .venv/bin/python docs/make_clip.py RUN/mario_play.mp4 docs/last_frame.png

--episode-end-at S cuts the video at S seconds first (mario_play.mp4 holds several episodes in a row).
"""

from __future__ import annotations

import argparse
import sys
from collections import deque

import av
from PIL import Image


def read_frames(path: str, end_s: float | None, seconds: float | None) -> tuple[list[Image.Image], int, float]:
    """The last `seconds` of frames (None: the last frame) up to end_s seconds from the first frame (the end
    when None) as RGB images, how many frames that cut holds, and the frame rate. Only the kept frames stay
    in memory: a several-episode mario_play.mp4 decoded whole is over 1 GB of images."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        frames = deque(maxlen=1 if seconds is None else max(1, round(seconds * fps)))
        count, start = 0, None
        for frame in container.decode(stream):
            start = frame.time if start is None else start  # H.264 streams start a little after 0
            if end_s is not None and frame.time is not None and frame.time - start > end_s:
                break
            frames.append(frame.to_image())
            count += 1
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return list(frames), count, fps


def write_gif(frames: list[Image.Image], fps: float, seconds: float, every: int, scale: float, out: str) -> int:
    """The last `seconds` of frames, every `every`-th one, scaled; returns how many frames the GIF holds."""
    tail = frames[-max(1, round(seconds * fps)) :][::-1][::every][::-1]  # keeps the very last frame
    if scale != 1:
        tail = [f.resize((round(f.width * scale), round(f.height * scale)), Image.NEAREST) for f in tail]
    palette = [f.convert("P", palette=Image.ADAPTIVE, colors=64) for f in tail]
    palette[0].save(
        out, save_all=True, append_images=palette[1:], duration=round(1000 * every / fps), loop=0, optimize=True
    )
    return len(palette)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="an MP4 the trainer recorded (mario_play.mp4, mario_best_run_*.mp4)")
    p.add_argument("out", help="a .gif (the last --seconds, animated) or a .png (the last frame)")
    p.add_argument("--seconds", type=float, default=8.0, help="GIF length from the end (default 8)")
    p.add_argument("--every", type=int, default=2, help="keep every N-th frame in the GIF (default 2)")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor (default 1: 256x240 per frame)")
    p.add_argument(
        "--episode-end-at",
        type=float,
        default=None,
        metavar="S",
        help="cut the video at S seconds first (the end of the episode to show)",
    )
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.every < 1 or args.scale <= 0:
        p.error("--seconds and --scale must be positive, --every at least 1")
    gif = args.out.lower().endswith(".gif")
    if not (gif or args.out.lower().endswith(".png")):  # before the video is read, which takes a while
        p.error("out must end in .gif or .png")
    try:
        frames, count, fps = read_frames(args.video, args.episode_end_at, args.seconds if gif else None)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        print(f"make_clip: cannot read {args.video}: {exc}", file=sys.stderr)
        return 1
    if gif:
        n = write_gif(frames, fps, args.seconds, args.every, args.scale, args.out)
        print(f"wrote {args.out}: {n} frames, {args.seconds:g} s")
    else:
        frames[-1].save(args.out)
        print(f"wrote {args.out}: the last of {count} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
