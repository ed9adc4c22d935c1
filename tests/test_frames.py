"""contiguous_rgb: the cheap path for nes-py's channel-reversed BGRX view gives exactly the same
pixels as a plain copy, and anything else falls back to a plain copy."""

import warnings

import numpy as np

from actor.envs import _make_raw
from actor.wrappers import contiguous_rgb


def test_fast_path_matches_a_plain_copy_on_real_mario_frames():
    warnings.filterwarnings("ignore")
    env = _make_raw("SuperMarioBros-1-1-v0")
    obs, _ = env.reset()
    assert not obs.flags.c_contiguous, "nes-py's frame is a strided view (the case the fast path is for)"
    for i in range(60):
        obs, *_ = env.step(i % 7)
        fast = contiguous_rgb(obs)
        assert fast.flags.c_contiguous and fast.shape == (240, 256, 3) and fast.dtype == np.uint8
        assert np.array_equal(fast, np.ascontiguousarray(obs))
    env.close()


def test_other_layouts_fall_back_to_a_copy():
    frame = np.random.default_rng(0).integers(0, 255, (240, 256, 3), dtype=np.uint8)
    assert contiguous_rgb(frame) is frame
    for view in (frame[:, ::-1], frame[::2], frame[..., ::-1]):
        assert np.array_equal(contiguous_rgb(view), np.ascontiguousarray(view))
    bgrx = np.random.default_rng(1).integers(0, 255, (240, 256, 4), dtype=np.uint8)
    offset_view = bgrx[..., 2::-1][..., :3]  # starts at byte 2: the nes-py layout
    wrong_view = bgrx[..., 3:0:-1]  # starts at byte 3: same strides, other channels
    for view in (offset_view, wrong_view):
        assert np.array_equal(contiguous_rgb(view), np.ascontiguousarray(view))
