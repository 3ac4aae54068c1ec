"""Files the product reads and writes: which files are images, and writes that never leave half a file.

Every output (checkpoints, ONNX models, model.json, metrics, PNGs, videos) is written to a hidden
temporary file beside its final path and renamed into place, so a reader never sees half a file and a
failure leaves the previous file untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _read_umask() -> int:  # once, at import: os.umask can only be read by setting it
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def is_image_file(path: str | os.PathLike) -> bool:
    """A visible (not ".*") regular file with an image extension (any case)."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside folder, sorted by name."""
    return sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: p.name)


def check_output_folder(folder: str | os.PathLike) -> None:
    """The folder exists and is writable, or can be created there: checked before long work, created at the
    first write (a run that fails before it leaves no empty folder)."""
    folder = Path(os.path.abspath(folder))
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise FileExistsError(f"{folder}: {existing} is a file, not a folder; choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder}: {existing} is not writable; choose another output path")


def temp_path_beside(path: str | os.PathLike) -> Path:
    """A new hidden file in path's folder that keeps its suffix (writers choose formats by suffix)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def replace_with_temp(tmp: Path, path: str | os.PathLike) -> None:
    """Moves a finished temporary file into place, with the permissions a new file would get."""
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        replace_with_temp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise



def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def encode_png(path: str | os.PathLike, image) -> bytes:
    """A uint8 image (HxW or HxWx3 BGR) as PNG bytes; ValueError naming `path` when it cannot be encoded."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{path}: cannot encode a {image.dtype} {image.shape} image as PNG")
    return buf.tobytes()


def write_png(path: str | os.PathLike, image) -> None:
    """A uint8 image (HxW or HxWx3 BGR) as PNG, written atomically."""
    atomic_write(path, encode_png(path, image))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """obj as indented JSON with sorted keys, written atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True))
