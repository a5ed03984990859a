"""Images and video from a request: base64 or data URLs in, sniffed and size-checked images out.

The MIME type is read from the bytes (Pillow), never trusted from the data URL. Video is decoded with
PyAV (FFmpeg) and sampled into evenly spaced JPEG frames for image-capable models.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import av
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from backend.providers.base import Image

IMAGE_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)?;base64,", re.I)
FRAME_LONGEST_SIDE = 1024


class MediaError(ValueError):
    """A media field is unusable; the message says why, for a person."""


def decode_base64(value: str, *, max_bytes: int, what: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise MediaError(f"{what} is empty")
    match = _DATA_URL.match(value)
    payload = value[match.end():] if match else value
    payload = "".join(payload.split())  # line breaks are common in pasted base64
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise MediaError(f"{what} is larger than the limit of {max_bytes // (1024 * 1024)} MiB")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{what} is not valid base64 ({exc})") from exc
    if len(data) > max_bytes:
        raise MediaError(f"{what} is larger than the limit of {max_bytes // (1024 * 1024)} MiB")
    if not data:
        raise MediaError(f"{what} is empty")
    return data


def sniff_image(data: bytes, *, what: str) -> Image:
    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            kind = picture.format
            picture.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"{what} is not a readable image (PNG, JPEG, GIF or WebP)") from exc
    if kind not in IMAGE_MIME:
        raise MediaError(f"{what} is a {kind} image; accepted formats are PNG, JPEG, GIF and WebP")
    return Image(mime=IMAGE_MIME[kind], data=data)


def decode_image(value: str, *, max_bytes: int, what: str) -> Image:
    return sniff_image(decode_base64(value, max_bytes=max_bytes, what=what), what=what)


def _jpeg(frame: av.VideoFrame) -> bytes:
    picture = frame.to_image()
    picture.thumbnail((FRAME_LONGEST_SIDE, FRAME_LONGEST_SIDE))
    out = io.BytesIO()
    picture.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


def sample_video_frames(data: bytes, *, frames: int, what: str = "video") -> list[Image]:
    """``frames`` frames spread evenly over the video, as JPEG images."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError(f"{what} has no video stream")
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            decoded = list(_pick_frames(container, stream, frames, duration))
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{what} could not be decoded as a video ({exc.__class__.__name__})") from exc
    if not decoded:
        raise MediaError(f"{what} holds no decodable frames")
    return [Image(mime="image/jpeg", data=_jpeg(frame)) for frame in decoded]


def _pick_frames(container, stream, count: int, duration: float | None):  # type: ignore[no-untyped-def]
    if duration and duration > 0:
        marks = [duration * (i + 0.5) / count for i in range(count)]
        taken = 0
        last = None
        for frame in container.decode(stream):
            last = frame
            if frame.time is not None and taken < count and frame.time >= marks[taken]:
                yield frame
                taken += 1
                if taken == count:
                    return
        if taken == 0 and last is not None:
            yield last
        return
    # Unknown duration: keep a bounded window of frames and spread the picks over it.
    frames = []
    for frame in container.decode(stream):
        frames.append(frame)
        if len(frames) >= 3000:
            break
    if frames:
        step = len(frames) / count
        picked = sorted({min(len(frames) - 1, int(step * (i + 0.5))) for i in range(count)})
        yield from (frames[i] for i in picked)
