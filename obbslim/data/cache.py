"""Label cache: parsed labels of one split in a plain .npz (no pickle), keyed by a hash of the files.

The key hashes (path, size, mtime) of every image and label file, the class names and the cache
version, so any change to the data re-parses the split; a stale or unreadable cache is ignored.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np

from obbslim.data.classes import normalize_name
from obbslim.utils.io import atomic_write_bytes

CACHE_VERSION = 2  # 2: the unknown class names of each image


def cache_path(im_files: list[str], label_dir: str, split: str) -> str | None:
    """`<root>/<label_dir>/<split>.cache` (`labels/` or `labelTxt/`) for images under `<root>/images/`."""
    sa = f"{os.sep}images{os.sep}"
    for f in im_files:
        if sa in f:
            head = f.rsplit(sa, 1)[0]
            return os.path.join(head, label_dir, f"{split}.cache")
    return None


def files_hash(
    im_files: list[str], lb_files: list[str | None], orphans: list[str], names: list[str], min_area: float
) -> str:
    """What the cached scan depends on: the files' sizes and times, the class names, the area limit."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{min_area}|{'|'.join(normalize_name(n) for n in names)}\n".encode())
    for group in (im_files, lb_files, orphans):
        for p in group:
            if not p:
                h.update(b"-\n")
                continue
            try:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0missing\n".encode())
        h.update(b"#\n")
    return h.hexdigest()


def save(path: str, key: str, im_files: list[str], results: list[dict]) -> str | None:
    """Write the cache atomically; return None, or the reason it could not be written."""
    counts = np.array([len(r["cls"]) for r in results], dtype=np.int64)
    msgs = [m for r in results for m in r["msgs"]]
    unknown = [k for r in results for k in r["unknown"]]
    arrays = {
        "version": np.array(CACHE_VERSION, dtype=np.int64),
        "key": np.array(key),
        "im_files": np.array(im_files, dtype=str),
        "shapes": np.array([r["shape"] for r in results], dtype=np.int64).reshape(-1, 2),
        "status": np.array([r["status"] for r in results], dtype=np.int64),
        "dropped": np.array([r["dropped"] for r in results], dtype=np.int64),
        "counts": counts,
        "n_msgs": np.array([len(r["msgs"]) for r in results], dtype=np.int64),
        "msgs": np.array(msgs, dtype=str) if msgs else np.zeros(0, dtype="<U1"),
        "n_unknown": np.array([len(r["unknown"]) for r in results], dtype=np.int64),
        "unknown": np.array(unknown, dtype=str) if unknown else np.zeros(0, dtype="<U1"),
        "polys": np.concatenate([r["polys"] for r in results]).astype(np.float32).reshape(-1, 8),
        "cls": np.concatenate([r["cls"] for r in results]).astype(np.int64),
        "difficult": np.concatenate([r["difficult"] for r in results]).astype(np.int64),
    }
    folder = os.path.dirname(path)
    if os.path.isdir(folder) and not os.stat(folder).st_mode & 0o222:
        # root ignores permissions; a folder with no write bits is read-only by intent (shared data)
        return f"{folder}: read-only folder, labels are not cached"
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None


def load(path: str, key: str) -> list[dict] | None:
    """The cached per-image results if the cache exists and matches `key`, else None."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["key"]) != key:
                return None
            a = {k: z[k] for k in z.files}
    except Exception:  # a corrupt or foreign file is just a cache miss
        return None
    ends = np.cumsum(a["counts"])
    starts = ends - a["counts"]
    mends = np.cumsum(a["n_msgs"])
    mstarts = mends - a["n_msgs"]
    msgs = [str(m) for m in a["msgs"]]
    uends = np.cumsum(a["n_unknown"])
    ustarts = uends - a["n_unknown"]
    unknown = [str(k) for k in a["unknown"]]
    return [
        {
            "status": int(a["status"][i]),
            "shape": (int(a["shapes"][i, 0]), int(a["shapes"][i, 1])),
            "dropped": int(a["dropped"][i]),
            "msgs": msgs[mstarts[i] : mends[i]],
            "unknown": unknown[ustarts[i] : uends[i]],
            "polys": a["polys"][starts[i] : ends[i]],
            "cls": a["cls"][starts[i] : ends[i]],
            "difficult": a["difficult"][starts[i] : ends[i]],
        }
        for i in range(len(a["counts"]))
    ]
