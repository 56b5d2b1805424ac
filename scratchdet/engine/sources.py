"""Where `scratchdet detect` gets its pictures: image files, folders, globs, video files, cameras, streams.

:func:`open_sources` turns what the user typed into :class:`Source` objects, checking each first
(a missing file, a glob that matches nothing, an unknown extension, a video that cannot be decoded,
a stream that does not answer within a few seconds: one :class:`SourceError` line, before anything is
written). Each source yields :class:`Frame` objects (RGB uint8 ``HxWx3`` arrays); :func:`prefetch`
decodes in a thread into a bounded queue, so the network never waits on the decoder, and
:func:`batched` groups frames for the network.

Video decoder: OpenCV (``opencv-python-headless``, imported only when a video, camera or stream is
opened). Measured against PyAV (``av``) decoding a generated 640x480 H.264 mp4 (300 frames) to RGB
arrays, both in one script, two rounds each, on 2 shared cores of an AMD EPYC (``lscpu``: "AMD EPYC",
family 25 model 17, KVM guest): OpenCV 5.1.0 638 and 739 frames/s (``VideoCapture.read`` + ``cvtColor`` BGR->RGB, ``setNumThreads(1)``),
PyAV 18.1.0 198 and 337 frames/s (``decode`` + ``to_ndarray("rgb24")``, threaded decoding). OpenCV
was about twice as fast, and the same library opens camera indices and rtsp/http streams with an
open/read timeout and writes the annotated video (``VideoWriter``), so one optional dependency does it all.
"""
from __future__ import annotations

import glob
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..structures.errors import DataError
from ..structures.image import read_image

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "STREAM_PREFIXES", "Frame", "Source", "SourceError", "open_sources",
           "prefetch", "batched"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov")
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
STREAM_TIMEOUT_MS = 5000     # a stream that does not open or deliver a frame within this is an error


class SourceError(DataError):
    """A source that cannot be used (missing, unreadable, unknown kind, unreachable); one line."""


@dataclass
class Frame:
    """One picture: ``index`` counts frames within its source (0 for an image file); ``timestamp`` is
    seconds from the start of a video (index / fps), from the first frame of a live source, None for images."""
    source: str
    index: int
    timestamp: float | None
    image: np.ndarray            # RGB uint8 [H, W, 3]
    output_name: str             # where its picture goes, relative to the output folder, without extension


class Source:
    """A named sequence of frames. ``length``: frames, None if unknown (a live source);
    ``fps``: frames per second of a video (None for images); ``is_video``: frames form one video."""
    name: str
    output_name: str
    length: int | None = 1
    fps: float | None = None
    is_video = False
    is_live = False

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder (a live source's handle is kept open from the check to the run)."""


class ImageSource(Source):
    def __init__(self, path: str, output_name: str):
        self.name, self.output_name = path, output_name

    def frames(self) -> Iterator[Frame]:
        # the package's one reader (EXIF orientation, 16-bit and float images; BadImageError names
        # the file); np.array makes the writable copy torch.from_numpy needs
        yield Frame(self.name, 0, None, np.array(read_image(self.name)), self.output_name)


def _cv2():
    # OpenCV's and FFmpeg's own log lines ("moov atom not found", "can't open camera by index") would
    # surround the one-line error; the error says what failed. Set these variables to see them.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")     # AV_LOG_QUIET
    try:
        import cv2
    except ImportError:
        raise SourceError("reading videos, cameras and streams needs OpenCV: "
                          "pip install 'scratchdet[video]' (or opencv-python-headless)") from None
    if os.environ["OPENCV_LOG_LEVEL"] == "OFF":     # in case cv2 was imported before the variable was set
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


class VideoSource(Source):
    """A video file, a camera index or a stream URL, decoded by OpenCV."""
    is_video = True

    def __init__(self, spec: str, output_name: str):
        self.name, self.output_name = spec, output_name
        self.is_live = spec.isdigit() or spec.lower().startswith(STREAM_PREFIXES)
        self._capture = None
        self._first = None
        capture = self._open()
        cv2 = _cv2()
        ok, first = capture.read()
        if not ok:
            capture.release()
            raise SourceError(self._unusable("no frame could be decoded"))
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else None
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.length = None if self.is_live or count <= 0 else count
        if self.is_live:     # reopening a camera or stream is slow: keep this handle and its first frame
            self._capture, self._first = capture, first
        else:
            capture.release()

    def _unusable(self, why: str) -> str:
        if self.name.isdigit():
            return f"camera {self.name}: {why} (is a camera connected at this index?)"
        if self.is_live:
            return f"stream {self.name}: {why} within {STREAM_TIMEOUT_MS / 1000:g} s (is the URL reachable?)"
        return f"cannot read video {self.name}: {why} (is it a complete {os.path.splitext(self.name)[1]} file?)"

    def _open(self):
        cv2 = _cv2()
        if self.name.isdigit():
            capture = cv2.VideoCapture(int(self.name))
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                      STREAM_TIMEOUT_MS]
            capture = cv2.VideoCapture(self.name, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(self._unusable("cannot be opened"))
        return capture

    def frames(self) -> Iterator[Frame]:
        cv2 = _cv2()
        capture, first = (self._capture, self._first) if self._capture is not None else (self._open(), None)
        self._capture = self._first = None
        start = time.monotonic()
        index = 0
        try:
            while True:
                if first is not None:
                    ok, bgr, first = True, first, None
                else:
                    ok, bgr = capture.read()
                if not ok:       # the end (or a damaged tail: the frames before it are kept)
                    return
                if self.is_live:
                    timestamp = time.monotonic() - start
                else:
                    timestamp = index / self.fps if self.fps else None
                yield Frame(self.name, index, timestamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.output_name)
                index += 1
        finally:
            capture.release()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = self._first = None


def _kind(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _stem(relative: str) -> str:
    return os.path.splitext(relative)[0]


def _glob_root(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard (output names are relative to it)."""
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or "."


def _files_under(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in files if _kind(f)]
    return sorted(found)


def _source(path: str, output_name: str) -> Source:
    kind = _kind(path)
    if kind == "image":
        return ImageSource(path, output_name)
    return VideoSource(path, output_name)


def open_sources(specs: Sequence[str]) -> list[Source]:
    """Check and open what the user gave: image or video files, folders (searched recursively, sorted),
    glob patterns (``"data/**/*.jpg"``), camera indices (``"0"``) and stream URLs (``rtsp://``,
    ``http(s)://``). Raises :class:`SourceError` (one line) for the first that cannot be used."""
    sources: list[Source] = []
    used: set[str] = set()

    def add(path: str, relative: str) -> None:
        name = base = _stem(relative)
        n = 1
        while name in used:          # two files with one name (a/x.jpg, b/x.png): x, x_1
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        sources.append(_source(path, name))

    try:
        for spec in specs:
            if spec.isdigit() or spec.lower().startswith(STREAM_PREFIXES):
                add(spec, "camera" + spec if spec.isdigit() else "stream")
            elif os.path.isdir(spec):
                files = _files_under(spec)
                if not files:
                    raise SourceError(f"no images or videos in folder {spec} (looked for {', '.join(IMAGE_EXTS + VIDEO_EXTS)})")
                for path in files:
                    add(path, os.path.relpath(path, spec))
            elif os.path.isfile(spec):
                if _kind(spec) is None:
                    raise SourceError(f"{spec}: unknown file type {os.path.splitext(spec)[1] or '(none)'!r}; expected an "
                                      f"image ({', '.join(IMAGE_EXTS)}) or a video ({', '.join(VIDEO_EXTS)})")
                add(spec, os.path.basename(spec))
            elif glob.has_magic(spec):
                matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and _kind(p))
                if not matches:
                    raise SourceError(f"the pattern {spec!r} matches no image or video file")
                root = _glob_root(spec)
                for path in matches:
                    add(path, os.path.relpath(path, root))
            else:
                what = {"image": "image", "video": "video"}.get(_kind(spec) or "", "source")
                raise SourceError(f"{what} not found: {spec}")
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(sources: Iterable[Source], maxsize: int = 32) -> Iterator[Frame]:
    """The frames of every source, in order, decoded in a background thread into a queue of at most
    ``maxsize`` frames. An error in the decoder is raised here; leaving the loop early stops the thread."""
    frames: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for source in sources:
                try:
                    for frame in source.frames():
                        if not put(frame):
                            return
                finally:
                    source.close()
            put(_END)
        except BaseException as exc:       # handed to the consumer, which raises it
            put(_Failed(exc))

    thread = threading.Thread(target=decode, name="scratchdet-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = frames.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def batched(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Lists of ``size`` consecutive frames (the last may be shorter)."""
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
