"""Videos, the data side of the video layer: class folders of clips or of frame folders, the video
column of any source, a probe of every file before training, clip sampling, and decoding only the
frames a clip needs.

A video is a file (any container FFmpeg reads: mp4, avi, webm, mkv, mov, ...), the bytes of one
(a datasets `Video` column), or a folder of frame images (`{clip}/*.jpg`, in name order).
PyAV decodes files: it seeks to the keyframe before a clip, decodes forward, converts and resizes
only the frames the clip takes (in FFmpeg's swscale, in one pass), and stops after the last one.
Measured against torchcodec and against decoding every frame: benchmarks/README.md.

Positions are in frames of the video's average rate (frames / duration). A file's frame at
position p is the frame nearest time p / fps, so with a variable frame rate clips stay evenly
spaced in time; a frame folder's is its file number round(p).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from hftool.data import images
from hftool.data.checks import Findings
from hftool.data.splits import SPLIT_ALIASES
from hftool.errors import HftoolError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".3gp")
# Column names found without data.video_column.
VIDEO_COLUMNS = ("video", "video_path", "clip", "path", "file", "filename", "file_name", "video_file")
SKIP_KEY = "skip_bad_videos"  # the data.* option that skips unreadable videos (images' rule, own name)


@dataclass(frozen=True)
class Probe:
    """What a video's header (or a frame folder's listing) says: enough to place clips."""

    frames: int  # decodable frames, as the container counts them
    fps: float  # average rate (frames / duration); 0 for a frame folder, which has none


# ------------------------------------------------------------------------------------ layouts
def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a frame folder, in name order (00001.jpg, 00002.jpg, ...)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and images.is_image(p) and not p.name.startswith("."))


def _class_clips(folder: Path) -> list[Path]:
    """A class folder's clips: its video files, and its subfolders that hold frame images."""
    clips = [p for p in folder.rglob("*") if p.is_file() and is_video(p) and _visible(p, folder)]
    clips += [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and frame_files(p)]
    return sorted(clips)


def is_video_folder(path: Path) -> bool:
    """A folder of class subfolders holding clips (optionally inside train/val/test folders)."""
    folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    inner = [q for p in folders if p.name.lower() in SPLIT_ALIASES for q in p.iterdir() if q.is_dir()]
    return any(_class_clips(p) for p in (inner or folders))


def read_video_folder(path: Path):
    """`path/<class>/*.mp4`, `path/<class>/<clip>/*.jpg`, or either inside train/val/test
    folders -> DatasetDict(video, label), absolute paths. Without split folders the whole folder is
    `train` (the data layer then holds out a seeded validation part)."""
    import datasets

    folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_folders = {SPLIT_ALIASES[p.name.lower()]: p for p in folders if p.name.lower() in SPLIT_ALIASES}
    splits = {}
    for split, root in (split_folders or {"train": path}).items():
        stray = next((p for p in sorted(root.iterdir()) if p.is_file() and is_video(p)), None)
        if stray is not None:
            raise HftoolError(f"{stray} is not inside a class folder; {path} needs one subfolder per class "
                              f"({root}/<class>/<clip>): move it into one")
        paths, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            clips = _class_clips(folder)
            if not clips and split == "train":  # its class would silently not exist
                Findings().add("empty_class_folder", folder=folder, label=folder.name, items="videos")
            paths += [str(c.resolve()) for c in clips]
            labels += [folder.name] * len(clips)
        if paths:
            splits[split] = datasets.Dataset.from_dict({"video": paths, "label": labels})
    if "train" not in splits:
        raise HftoolError(f"{path} holds no videos ({', '.join(VIDEO_EXTENSIONS)} files, or folders of frame images) "
                          f"in class folders; expected {path}/<class>/<clip>.mp4 (or {path}/train/<class>/...)")
    return datasets.DatasetDict(splits)


def input_paths(inputs: list[str]) -> list[str]:
    """Prediction inputs -> videos: folders expand to the video files in them (recursively, in
    order), or are one clip when they hold frame images; files stay as given."""
    paths = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file() and is_video(p) and _visible(p, path)]
            if not found and frame_files(path):
                found = [path]
            if not found:
                raise HftoolError(f"{given} holds no videos ({', '.join(VIDEO_EXTENSIONS)}) and no frame images")
            paths += [str(p) for p in found]
        else:
            paths.append(given)
    return paths


# ------------------------------------------------------------------------------------- probing
def _open(entry):
    """A PyAV container for a path or a datasets Video dict ({bytes, path})."""
    import av

    if isinstance(entry, dict):
        entry = entry.get("bytes") or entry.get("path")
    source = io.BytesIO(entry) if isinstance(entry, bytes) else entry
    try:
        return av.open(source)
    except av.FFmpegError as err:
        raise ValueError(f"not a video FFmpeg can read ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


def probe(entry) -> Probe:
    """Frame count and average frame rate of a video, from its header; a container that does not
    count its frames (webm, mkv) has its packets counted (demuxed, nothing decoded).

    Raises:
        ValueError: missing, empty, not a video, no video stream, no frames (the message says which).
    """
    import av

    path = None if isinstance(entry, dict) and entry.get("bytes") else Path(entry["path"] if isinstance(entry, dict)
                                                                             else entry)
    if path is not None:
        if path.is_dir():
            frames = len(frame_files(path))
            if not frames:
                raise ValueError("a folder with no frame images")
            return Probe(frames, 0.0)
        if not path.is_file():
            raise ValueError("no such file")
        if path.stat().st_size == 0:
            raise ValueError("empty file")
    with _open(entry) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        frames = stream.frames
        try:
            if not frames:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as err:
            raise ValueError(f"damaged ({_first_line(err)})") from None
        if not frames:
            raise ValueError("no frames")
        seconds = (float(stream.duration * stream.time_base) if stream.duration else
                   container.duration / 1e6 if container.duration else 0.0)
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        # Neither a duration nor a rate (raw streams): FFmpeg's own default of 25 fps.
        return Probe(frames, frames / seconds if seconds > 0 else rate or 25.0)


def entry_path(value, base: Path | None) -> str | dict:
    """A video column's value -> what the decoder reads: an absolute path (relative ones are
    relative to the data file), or a datasets Video dict as it is."""
    if isinstance(value, dict):
        return value if value.get("bytes") else images.resolve_paths([value.get("path") or ""], base)[0]
    return images.resolve_paths([value], base)[0]


def video_rows(ds, source: str, configured: str | None, skip_bad: bool):
    """The video column of `ds` as columns `video` (absolute path, or a datasets Video dict with
    bytes), `frames` and `fps`, every video probed. An unreadable or empty one stops the run naming
    it (its row for an empty cell) or, with `skip_bad`, is skipped and counted (the image rule).
    Returns (rows, kept): the row indices still there."""
    import datasets

    from hftool.data.columns import find_column, source_dir

    column = find_column(ds, source, configured, VIDEO_COLUMNS, "video", "video_column")
    feature = ds.features[column]
    stored = isinstance(feature, (datasets.Video, dict)) and not isinstance(feature, datasets.Value)
    if isinstance(feature, datasets.Video):
        ds = ds.cast_column(column, datasets.Video(decode=False))
    elif not stored and not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise HftoolError(f"{source}: column '{column}' holds {feature}, not video paths or videos; "
                          "set data.video_column to the column with the videos")
    given = ds[column]
    base = source_dir(ds)
    entries = [entry_path(v, base) if v else "" for v in given]
    probes: dict[int, Probe] = {}

    def check(i: int) -> str | None:
        try:
            probes[i] = probe(entries[i])
        except ValueError as err:
            return str(err)
        return None

    names = [e if isinstance(e, str) else e.get("path") or f"{source} row {i + 1} (stored bytes)"
             for i, e in enumerate(entries)]
    kept = images.check_images(names, given, source, column, skip_bad, check=check, noun="videos", key=SKIP_KEY)
    columns = {"video": [entries[i] for i in kept], "frames": [probes[i].frames for i in kept],
               "fps": [probes[i].fps for i in kept]}
    if any(isinstance(e, dict) for e in columns["video"]):
        rows = datasets.Dataset.from_dict(columns, features=datasets.Features(
            {"video": datasets.Video(decode=False), "frames": datasets.Value("int64"), "fps": datasets.Value("float64")}))
    else:
        rows = datasets.Dataset.from_dict(columns)
    return rows, kept


# ------------------------------------------------------------------------------------ sampling
def clip_positions(frames: int, num_frames: int, stride: float, start: float, short: str) -> list[float]:
    """Positions of a clip's `num_frames` frames, `stride` apart from `start`. A video shorter than
    the clip loops back to its first frame (`short="loop"`) or repeats its last (`"pad"`)."""
    positions = [start + k * stride for k in range(num_frames)]
    if short == "loop":
        return [p % frames for p in positions]
    return [min(p, frames - 1) for p in positions]


def clip_span(frames: int, num_frames: int, stride: float) -> float:
    """Frames a clip covers, (num_frames - 1) x stride + 1, and the room left for its start."""
    return max(0.0, frames - ((num_frames - 1) * stride + 1))


def eval_starts(frames: int, num_frames: int, stride: float, clips: int) -> list[float]:
    """Starts of `clips` evenly spaced clips: the centres of equal parts of the room left (one
    clip is the middle one)."""
    room = clip_span(frames, num_frames, stride)
    return [room * (j + 0.5) / clips for j in range(clips)]


# ------------------------------------------------------------------------------------ decoding
def _scaled(width: int, height: int, short: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) with the shorter side `short`, or exactly (height, width) when a pair."""
    if isinstance(short, tuple):
        return short[1], short[0]
    scale = short / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode(entry, positions: list[float], fps: float, short: int | tuple[int, int], interpolation: str = "bilinear"):
    """The frames at `positions` (any order, repeats allowed) as a uint8 tensor (T, 3, H, W), each
    frame resized to shorter side `short` (or to (height, width)) while it is converted to RGB.

    Raises:
        ValueError: the video cannot be decoded (the message says why).
    """
    import numpy as np
    import torch

    if isinstance(entry, str) and Path(entry).is_dir():
        arrays = _decode_folder(Path(entry), positions, short, interpolation)
    else:
        arrays = _decode_file(entry, positions, fps, short, interpolation)
    # Frames of one clip can differ in size (a stream that changes resolution): bring them to the first's.
    height, width = arrays[0].shape[:2]
    frames = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for a in arrays]
    if any(f.shape[1:] != (height, width) for f in frames):
        from torchvision.transforms.v2 import functional as F

        frames = [f if f.shape[1:] == (height, width) else F.resize(f, [height, width], antialias=True) for f in frames]
    return torch.stack(frames)


def _decode_folder(folder: Path, positions: list[float], short, interpolation: str) -> list:
    import numpy as np
    from PIL import Image

    files = frame_files(folder)
    if not files:
        raise ValueError("a folder with no frame images")
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}.get(interpolation, Image.BICUBIC)
    decoded = {}
    for index in sorted({min(round(p), len(files) - 1) for p in positions}):
        image = images.decode(str(files[index])).permute(1, 2, 0).numpy()
        width, height = _scaled(image.shape[1], image.shape[0], short)
        decoded[index] = np.array(Image.fromarray(image).resize((width, height), resample)) if (
            (width, height) != (image.shape[1], image.shape[0])) else image
    return [decoded[min(round(p), len(files) - 1)] for p in positions]


def _decode_file(entry, positions: list[float], fps: float, short, interpolation: str) -> list:
    """Seek to the keyframe at or before the first wanted time, decode forward, convert only the
    frames shown at the wanted times, stop after the last."""
    import av

    times = sorted({p / fps for p in positions})
    interp = {"nearest": "POINT", "bilinear": "BILINEAR"}.get(interpolation, "BICUBIC")
    picked: dict[float, object] = {}
    with _open(entry) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        seeked = times[0] > 0
        if seeked:
            try:
                container.seek(int((origin + times[0]) / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                seeked = False
                container.seek(0)
        try:
            picked = _pick(container, stream, times, origin, short, interp, not seeked, 0.5 / fps)
            if times[0] not in picked:  # the seek overshot (an index that lies): decode from the start
                container.seek(0)
                picked = _pick(container, stream, times, origin, short, interp, True, 0.5 / fps)
        except av.FFmpegError as err:
            raise ValueError(f"damaged ({_first_line(err)})") from None
    if not picked:
        raise ValueError("no frame decodes")
    return [picked[p / fps] for p in positions]


def _pick(container, stream, times: list[float], origin: float, short, interp: str, before_first: bool,
          half_frame: float) -> dict:
    """time -> RGB array of the frame nearest that time, for each of `times` (sorted ascending).
    Times after the last frame get the last frame. A time more than half a frame before the first
    decoded frame gets it with `before_first`, and is left out otherwise (after a seek, that means
    the seek overshot)."""
    picked: dict[float, object] = {}
    previous, i = None, 0  # previous: [frame, time, its RGB array or None]

    def convert(entry):
        if entry[2] is None:
            width, height = _scaled(entry[0].width, entry[0].height, short)
            entry[2] = entry[0].to_ndarray(width=width, height=height, format="rgb24", interpolation=interp)
        return entry[2]

    for frame in container.decode(stream):
        if frame.time is None:
            continue
        current = [frame, frame.time - origin, None]
        while i < len(times) and times[i] < current[1]:  # before this frame: it or the previous, the nearer
            t = times[i]
            if previous is None and not before_first and current[1] - t > half_frame:
                return picked
            nearer = previous if previous is not None and t - previous[1] <= current[1] - t else current
            picked[t] = convert(nearer)
            i += 1
        if i == len(times):
            return picked
        previous = current
    if previous is not None:
        for t in times[i:]:
            picked[t] = convert(previous)
    return picked


def entry_name(entry) -> str:
    """How messages name a video entry: its path, else that it is stored in the data."""
    path = entry.get("path") if isinstance(entry, dict) else entry
    return path or "a video stored in the data"


def readable(entries, load, skip_bad: bool) -> list:
    """images.readable's rule for videos: a video that does not decode stops naming it, or with
    data.skip_bad_videos is skipped with a warning."""
    return images.readable(entries, load, skip_bad, key=SKIP_KEY)
