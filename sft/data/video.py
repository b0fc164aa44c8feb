"""Video clips: a row's videos decoded with PyAV and sampled by the recipe's frame budget, one batch at a time.

A row stores its videos as paths (`stored_videos`); frames are decoded only when the collator (or the one measuring
pass) asks for that row, and handed to the processor already sampled (`do_sample_frames=False`) with the metadata
the families read: the stream's frame rate and frame count, and the indices of the sampled frames (Qwen2.5-VL's
second_per_grid_ts, Qwen3-VL's, SmolVLM2's and Gemma 4's timestamps).

PyAV (not decord, not torchcodec): its wheels carry FFmpeg for every platform the toolkit installs on, with no system
FFmpeg and no pin to one torch build; decoding runs in the calling process, sequentially, with nothing to hang.

Sampling is deterministic, a function of the stream's frame count and rate: `video_fps` frames a second of video
(at least one, at most `video_max_frames`), spread evenly over the clip from its first frame to its last; a family
whose processor stacks a batch's clips (`Family.video_fixed_frames`) takes exactly `video_max_frames`, evenly spread
(a shorter clip repeats frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sft.errors import UserError

DEFAULT_FPS = 2.0  # frames sampled per second of video (Qwen's and LLaMA-Factory's default)
DEFAULT_MAX_FRAMES = 32  # frames at most per clip (Gemma 4's default count)
# Where the recipe's frame budget is kept on the processor's video processor, so that the processor saved with a
# run (sft predict, export) samples as training did. Names of our own: transformers' `fps` / `num_frames` would
# change what the processor samples when someone else calls it with do_sample_frames.
FPS_SETTING, MAX_FRAMES_SETTING = "sft_video_fps", "sft_video_max_frames"


@dataclass
class Clip:
    """One video's sampled frames and what the processor needs to know about them."""

    frames: np.ndarray  # (frames, height, width, 3) uint8 RGB
    metadata: dict  # transformers' VideoMetadata fields: total_num_frames, fps, duration, frames_indices, height, width

    def __len__(self) -> int:
        return len(self.frames)


def frame_indices(total: int, stream_fps: float, fps: float | None, max_frames: int, exact: bool) -> list[int]:
    """The frames sampled from a stream of `total` frames at `stream_fps`: `fps` a second of video, at least one
    and at most `max_frames` (or exactly `max_frames` when `exact`), evenly spread from the first to the last."""
    if exact:
        count = max_frames
    else:
        count = min(max_frames, total, max(1, int(total / stream_fps * fps)))
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


def _open(path: str):
    import av

    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream in it")
    return container


def _stream_facts(container) -> tuple[int, float]:
    """The video stream's frame count (from the header, else by counting its packets: nothing decoded) and rate."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    if total and not stream.frames:
        container.seek(0)
    return total, float(rate) if rate else 0.0


def probe_video(path: str) -> None:
    """A video file that opens, has a video stream and decodes a first frame; ValueError with the reason otherwise
    (cheap: one frame, for `sft check` and row reading to name every bad video before any weights load)."""
    import av

    try:
        with _open(path) as container:
            total, rate = _stream_facts(container)
            first = next(container.decode(video=0), None)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read video {path}: {_reason(exc)}") from None
    if not total or first is None:
        raise ValueError(f"video {path} has zero frames")
    if not rate:
        raise ValueError(f"video {path} has no frame rate")


def _reason(exc: Exception) -> str:
    """FFmpeg's words for a failure (`Invalid data found when processing input`), without its errno and the path."""
    return getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def decode_clip(path: str, where: str, fps: float | None, max_frames: int, exact: bool) -> Clip:
    """The clip at `path`, its frames sampled (`frame_indices`) and decoded to RGB; a UserError naming the row and
    the file when it cannot be read, has no frames, or ends before its header's frame count."""
    import av

    try:
        with _open(path) as container:
            total, rate = _stream_facts(container)
            if not total or not rate:
                raise UserError(f"{where}: video {path} has {'zero frames' if not total else 'no frame rate'}")
            indices = frame_indices(total, rate, fps, max_frames, exact)
            wanted, frames = set(indices), {}
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames[index] = frame.to_ndarray(format="rgb24")
                if index >= indices[-1]:
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{where}: cannot decode video {path}: {_reason(exc)}") from None
    if len(frames) < len(wanted):
        raise UserError(f"{where}: cannot decode video {path}: its stream ends after {len(frames)} of the "
                        f"{total} frames its header counts")
    stacked = np.stack([frames[index] for index in indices])
    height, width = stacked.shape[1:3]
    metadata = dict(total_num_frames=total, fps=rate, duration=total / rate, frames_indices=indices, height=height,
                    width=width)
    return Clip(stacked, metadata)


def frame_budget(processing_class) -> tuple[float, int]:
    """The frame budget kept on the processor's video processor (sft/family/video_budget.py), else the defaults."""
    video_processor = getattr(processing_class, "video_processor", None)
    fps = getattr(video_processor, FPS_SETTING, None)
    max_frames = getattr(video_processor, MAX_FRAMES_SETTING, None)
    return (DEFAULT_FPS if fps is None else fps), (DEFAULT_MAX_FRAMES if max_frames is None else max_frames)
