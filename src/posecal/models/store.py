"""Feature store: per-instance predictions and penultimate features of a frozen pose model, on disk.

A store is a **directory**::

    STORE/
      meta.json          model SHA-256, tensor name, keypoint set, input size, preprocessing, pooling,
                         feature shapes, source data file, count, chunk size (written last, on finalize)
      predictions.json   COCO results of the raw model, row i = instance i (finalize)
      gt.json            the ground truth the instances came from (when given)
      index.json         atomic progress index: settings (+fingerprint), chunk size, finished chunks and
                         the SHA-256 of every chunk file (verified when reading, resuming and merging);
                         ``extract``: per chunk a digest of its image files (``input_digests``: a resumed
                         run recomputes a chunk whose image was replaced since)
      arrays/<name>/<j:06d>.npy   chunk j of array <name>: rows [j*chunk_size, min((j+1)*chunk_size, N))
      .lock              held (``flock``, exclusive) by the one process writing the store

Arrays over N instances (contract of docs/design.md, "Feature store"):

============================  ======================  ==========================================
name                          shape, dtype            meaning
============================  ======================  ==========================================
``image_id``                  (N,) int64              COCO image id (string ids: its code, below)
``ann_id``                    (N,) int64              gt annotation id (matching key), -1 if none
``bbox``                      (N, 4) float64          box the crop was made from, x, y, w, h (image px)
``box_score``                 (N,) float64            detector score of that box (1 for gt boxes) [ext.]
``crop_transform``            (N, 2, 3) float64       affine image px -> model-input px
``keypoints``                 (N, K, 2) float64       predicted keypoints, image pixels, dataset set
``scores``                    (N, K) float64          raw keypoint scores (model's own scale)
``sigma_hat``                 (N, K) float64          heatmap sigma estimate, image pixels (NaN if n/a)
``features_gap``              (N, C) float32          global average pooled penultimate feature
``features_kpt``              (N, K, C) float32       heatmap-weighted feature per keypoint
``features_spatial``          (N, C, H, W) float16    the full penultimate map
``gt_keypoints``              (N, K, 3) float64       [augment only] gt transformed with the jitter
============================  ======================  ==========================================

Only one ``features_*`` array is present (``meta["feature_array"]`` names it). Extra arrays are allowed.

String image ids (a data file whose image ids are all strings, as pycocotools accepts): ``image_id`` holds
each image's code, its position in ``meta["image_id_strings"]``, the sorted ids of the images of ``gt.json``
(the int64 id :func:`posecal.io.coco.load_gt` gives the image in that file), and ``predictions.json`` (like
every result written from the store) carries the original string. Stores without the key hold the ids
themselves.

Why a directory of per-chunk ``.npy`` files (and not HDF5/zarr): each chunk is written to a temporary name
and renamed into place, then the index is rewritten atomically, so a run killed at any instant leaves a
store whose index only names complete chunks; a re-run recomputes exactly the missing chunks. ``np.save``
is deterministic (no timestamps, no allocation order), so a resumed store is **bit-identical** to one
written in a single pass, and shards (chunk j belongs to shard ``j % n``) merge by moving files, giving
the same bytes as an unsharded run.

Integrity: a second writer on a store that is being written gets a one-line error (never touches the
first's files); a chunk whose bytes do not match its checksum, or whose shape does not match the index, is
reported by the reader (store, array and chunk named) and recomputed by a resumed ``posecal extract``.

Reading::

    fs = FeatureStore.open("STORE")
    fs.meta                  # dict from meta.json
    fs.num_instances         # N
    fs.arrays                # names of stored arrays
    fs.feature_name          # e.g. "features_gap"
    fs.read("scores")        # (N, K) ndarray
    fs.read("features_gap", rows=np.arange(10))   # only the chunks holding those rows are read
    fs.features()            # the features array (whichever pooling was used)
    fs.predictions           # list of COCO result dicts (predictions.json), row i = instance i
    fs.gt_path               # Path to gt.json or None

Writing (used by ``posecal extract``)::

    w = StoreWriter(path, num_instances=N, chunk_size=64, settings=meta_dict, shard=(i, n))
    for j in w.pending_chunks():           # chunks of this shard not yet on disk
        start, stop = w.chunk_rows(j)
        w.write_chunk(j, {"image_id": ..., "keypoints": ..., ...})   # arrays of stop-start rows
    store = w.finalize(gt=gt_dict)          # writes predictions.json, gt.json, meta.json
    merge_stores([shard0, shard1, ...], out)   # combine shard stores
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from posecal._util import atomic_path, dumps_json, write_bytes_atomic, write_json_atomic
from posecal.errors import PosecalInputError
from posecal.rescore.aggregate import instance_score

__all__ = ["FeatureStore", "StoreWriter", "merge_stores", "predictions_from_arrays", "file_sha256"]

FORMAT = "posecal-store/1"
FEATURE_ARRAYS = ("features_gap", "features_kpt", "features_spatial")
REQUIRED_ARRAYS = ("image_id", "ann_id", "bbox", "box_score", "crop_transform", "keypoints", "scores",
                   "sigma_hat")  # fmt: skip


def file_sha256(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(dumps_json(settings)).hexdigest()


# settings that name a folder as the user typed it (kept so in meta.json): compared by the real path they
# resolve to from the working directory, so ``--images img`` and ``--images /abs/img`` are the same setting
PATH_SETTINGS = ("images",)
_ABSENT = object()  # a key one settings dict lacks


def _same_setting(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if key in PATH_SETTINGS and isinstance(old, str) and isinstance(new, str) and old and new:
        return os.path.realpath(old) == os.path.realpath(new)
    return False


def settings_diff(old: Any, new: dict[str, Any]) -> list[str]:
    """The keys (sorted) whose values differ between two JSON-normalised settings dicts; a key present in one
    only differs, folders (:data:`PATH_SETTINGS`) are compared by real path. ``["settings"]`` when ``old`` is
    not a dict."""
    if not isinstance(old, dict):
        return ["settings"]
    return [k for k in sorted(set(old) | set(new), key=str)
            if not _same_setting(k, old.get(k, _ABSENT), new.get(k, _ABSENT))]


def describe_settings_diff(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> str:
    """``'pooling (store "gap", now "heatmap"), ...'`` for the keys of :func:`settings_diff`, values shortened."""
    def short(v: Any) -> str:
        t = "absent" if v is _ABSENT else dumps_json(v).decode()
        return t if len(t) <= 60 else t[:57] + "..."

    if keys == ["settings"]:
        return "settings"
    return ", ".join(f"{k} (store {short(old.get(k, _ABSENT))}, now {short(new.get(k, _ABSENT))})" for k in keys)


LOCK_NAME = ".lock"
INPUTS_KEY = "input_digests"  # index.json: chunk -> digest of the files it was computed from (extract: its images)


class StoreLockedError(PosecalInputError):
    """Another process holds the store's write lock."""


def _lock(path: Path):
    """Exclusive non-blocking ``flock`` on ``path/.lock``; returns the open file (the lock lives as long as it)."""
    import fcntl

    f = open(path / LOCK_NAME, "a+b")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise StoreLockedError("the store is being written by another process (its .lock is held); wait for "
                               "it to finish or choose another --out", file=str(path)) from None
    return f


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_npy(data: bytes, *, store: Path, name: str, j: int) -> np.ndarray:
    import io

    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise PosecalInputError(f"chunk {j} of array {name!r} is unreadable ({e}); re-run posecal extract "
                                "on this store to recompute it", file=str(store), field=name) from None


def _dict(obj: Any, file: Path, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise PosecalInputError(f"{what} is not a JSON object", file=str(file))
    return obj


def _check_layout(meta: dict[str, Any], index: dict[str, Any], p: Path) -> None:
    """meta.json and index.json of a finished store agree and are well-formed (an edited index is refused)."""
    _check_meta_fields(meta, p / "meta.json")
    n_chunks = -(-meta["num_instances"] // meta["chunk_size"])
    for key in ("fingerprint", "num_instances", "chunk_size", "arrays"):
        if index.get(key) != meta.get(key):
            raise PosecalInputError(f"index.json and meta.json disagree on {key} (edited?)", file=str(p),
                                    field=key)
    if index.get("chunks") != list(range(n_chunks)):
        raise PosecalInputError(f"index.json does not list the {n_chunks} chunks of a finished store (edited?)",
                                file=str(p / "index.json"), field="chunks")
    sums = index.get("checksums")
    if sums is not None and not (isinstance(sums, dict) and all(
            isinstance(v, dict) and all(isinstance(h, str) for h in v.values()) for v in sums.values())):
        raise PosecalInputError("bad checksums", file=str(p / "index.json"), field="checksums")


def _check_meta_fields(meta: dict[str, Any], file: Path) -> None:
    """meta.json's own fields: sizes, array descriptions, the feature array, file checksums."""
    for key in ("num_instances", "chunk_size"):
        v = meta.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "num_instances" else 1):
            raise PosecalInputError(f"bad {key} {v!r}", file=str(file), field=key)
    arrays = meta.get("arrays")
    if not isinstance(arrays, dict):
        raise PosecalInputError("bad arrays", file=str(file), field="arrays")
    for name, info in arrays.items():
        ok = isinstance(info, dict) and isinstance(info.get("shape"), list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
        try:
            ok = ok and np.dtype(info["dtype"]).kind in "biuf"
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok or not isinstance(name, str) or "/" in name or name.startswith("."):
            raise PosecalInputError("bad array description", file=str(file), field=str(name))
    feature = meta.get("feature_array")  # what finalize writes: one of FEATURE_ARRAYS among the arrays, or null
    if feature is not None and not (isinstance(feature, str) and feature in FEATURE_ARRAYS and feature in arrays):
        have = [f for f in FEATURE_ARRAYS if f in arrays]
        raise PosecalInputError(f"expected {' or '.join(map(repr, have)) or 'null'} (the store's feature array), got "
                                f"{str(feature)[:60]!r} (edited?)", file=str(file), field="feature_array")
    files = meta.get("files")  # checksums of predictions.json / gt.json
    if files is not None and not (isinstance(files, dict) and all(isinstance(h, str) for h in files.values())):
        raise PosecalInputError(f"expected an object of file checksums, got {str(files)[:60]!r} (edited?)",
                                file=str(file), field="files")


def predictions_from_arrays(image_id: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                            box_score: np.ndarray, bbox: np.ndarray | None = None,
                            category_id: int = 1, image_id_strings: Sequence[str] | None = None
                            ) -> list[dict[str, Any]]:
    """COCO keypoint results, one record per row.

    keypoints (N, K, 2) image px, scores (N, K), box_score (N,), bbox (N, 4) or None. With
    ``image_id_strings`` (a store's string ids) ``image_id`` holds codes and each record carries
    ``image_id_strings[code]``.
    ``score`` is MMPose's ``bbox_keypoint`` score (:func:`posecal.rescore.aggregate.instance_score`) and
    ``bbox_score`` the box score, so ``posecal rescore --method mmpose-bbox_keypoint`` reproduces it.
    Non-finite keypoint scores become 0.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    box = np.asarray(box_score, dtype=np.float64).reshape(-1)
    inst = instance_score(sc, "bbox_keypoint", box)
    out = []
    for i in range(kp.shape[0]):
        flat = np.concatenate([kp[i], sc[i][:, None]], axis=1).reshape(-1)
        rec: dict[str, Any] = {
            "image_id": int(image_id[i]) if image_id_strings is None else image_id_strings[int(image_id[i])],
            "category_id": int(category_id),
            "keypoints": [float(v) for v in flat],
            "score": float(inst[i]),
            "bbox_score": float(box[i]),
        }
        if bbox is not None:
            rec["bbox"] = [float(v) for v in bbox[i]]
        out.append(rec)
    return out


class FeatureStore:
    """Read access to a finished store directory (see module docstring for the layout)."""

    def __init__(self, path: Path, meta: dict[str, Any], index: dict[str, Any]):
        self.path = path
        self.meta = meta
        self._index = index
        self._predictions: list[dict[str, Any]] | None = None
        self._verified: set[tuple[str, int]] = set()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open a finished store; PosecalInputError if it is missing, unfinished or a shard."""
        p = Path(path)
        meta_p = p / "meta.json"
        if not meta_p.is_file():
            if (p / "index.json").is_file():
                raise PosecalInputError("store is unfinished (no meta.json); re-run extract to resume",
                                        file=str(p))
            raise PosecalInputError("not a posecal feature store (no meta.json)", file=str(p))
        try:
            meta = _dict(orjson.loads(meta_p.read_bytes()), meta_p, "meta.json")
            index = _dict(orjson.loads((p / "index.json").read_bytes()), p / "index.json", "index.json")
        except (orjson.JSONDecodeError, FileNotFoundError, IsADirectoryError) as e:
            raise PosecalInputError(f"unreadable store metadata: {e}", file=str(p)) from None
        if meta.get("format") != FORMAT:
            raise PosecalInputError(f"unknown store format {meta.get('format')!r}", file=str(meta_p),
                                    field="format")
        _check_layout(meta, index, p)
        return cls(p, meta, index)

    # -- properties --------------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        return int(self.meta["num_instances"])

    @property
    def chunk_size(self) -> int:
        return int(self.meta["chunk_size"])

    @property
    def arrays(self) -> list[str]:
        return list(self.meta["arrays"].keys())

    @property
    def feature_name(self) -> str | None:
        return self.meta.get("feature_array")

    @property
    def keypoint_names(self) -> list[str]:
        return list(self.meta["keypoint_names"])

    @property
    def image_id_strings(self) -> list[str] | None:
        """The original ids of a store made from a data file with string image ids (``image_id`` holds their
        codes: positions in this sorted list), else None (``image_id`` holds the ids)."""
        names = self.meta.get("image_id_strings")
        if names is None:
            return None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
                and all(a < b for a, b in zip(names, names[1:], strict=False))):
            raise PosecalInputError("expected the sorted, distinct string image ids (edited?)",
                                    file=str(self.path / "meta.json"), field="image_id_strings")
        return names

    @property
    def gt_path(self) -> Path | None:
        """``STORE/gt.json`` (checked against its checksum in meta.json) or None."""
        g = self.path / "gt.json"
        if not g.is_file():
            return None
        want = (self.meta.get("files") or {}).get("gt.json")
        if want is not None and ("gt.json", -1) not in self._verified:
            if file_sha256(g) != want:
                raise PosecalInputError("gt.json does not match its checksum in meta.json (edited?)", file=str(g))
            self._verified.add(("gt.json", -1))
        return g

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """Records of predictions.json (COCO results; row i = instance i)."""
        if self._predictions is None:
            pp = self.path / "predictions.json"
            if not pp.is_file():
                if self.num_instances:
                    raise PosecalInputError("missing predictions.json", file=str(self.path))
                self._predictions = []
                return self._predictions
            data = pp.read_bytes()
            want = (self.meta.get("files") or {}).get("predictions.json")
            if want is not None and _sha(data) != want:
                raise PosecalInputError("predictions.json does not match its checksum in meta.json (edited?)",
                                        file=str(pp))
            try:
                recs = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise PosecalInputError(f"not JSON: {e}", file=str(pp)) from None
            if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
                raise PosecalInputError("expected a list of result records", file=str(pp))
            self._check_predictions(recs, pp)
            self._predictions = recs
        return self._predictions

    def _check_predictions(self, recs: list[dict[str, Any]], pp: Path) -> None:
        """predictions.json must be valid COCO results, one per row, in row order (``image_id`` equal to the
        row's): every command reading a store then sees the same rows, whatever it reads them from."""
        import warnings

        from posecal.errors import PosecalWarning
        from posecal.io.coco import load_results

        if len(recs) != self.num_instances:
            raise PosecalInputError(f"{len(recs)} records for the store's {self.num_instances} rows", file=str(pp))
        names = self.image_id_strings
        if names is not None:  # string ids: read as their codes, which the image_id array holds
            recs = _coded_records(recs, names, pp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PosecalWarning)  # scores > 1: legal, warned about where used
            res = load_results(recs, file=str(pp))
        if "image_id" in self.arrays and self.num_instances:
            ids = self.read("image_id")
            bad = np.flatnonzero(res.image_id != ids)
            if bad.size:
                i = int(bad[0])

                def show(code: int) -> str:
                    ok = names is not None and 0 <= code < len(names)
                    return f"{names[code]!r:.60}" if ok else str(code)

                raise PosecalInputError(f"image_id {show(int(res.image_id[i]))} but row {i} of the store is image "
                                        f"{show(int(ids[i]))} (records reordered or edited?)", file=str(pp),
                                        record=i, field="image_id")

    def _chunks(self) -> list[int]:
        return sorted(int(j) for j in self._index["chunks"])

    def _chunk_file(self, name: str, j: int) -> Path:
        return self.path / "arrays" / name / f"{j:06d}.npy"

    def _chunk(self, name: str, j: int) -> np.ndarray:
        """Chunk j of ``name``, checked against the index: present, checksum, shape and dtype."""
        key = (name, j)
        f = self._chunk_file(name, j)
        if key in self._verified:  # checked once per store object; later reads map the file
            try:
                return np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                self._verified.discard(key)
        where = f"chunk {j} of array {name!r}"
        fix = ("; delete the store and re-run posecal extract (OKS-NMS chose a detection store's rows from all "
               "its crops, which are not kept)" if self.meta.get("oks_nms") is not None
               else "; re-run posecal extract on this store to recompute it")
        try:
            data = f.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise PosecalInputError(f"{where} is missing{fix}", file=str(self.path), field=name) from None
        want = ((self._index.get("checksums") or {}).get(f"{j:06d}") or {}).get(name)
        if want is not None and _sha(data) != want:
            raise PosecalInputError(f"{where} is damaged (checksum mismatch){fix}", file=str(self.path),
                                    field=name)
        a = _load_npy(data, store=self.path, name=name, j=j)
        info = self.meta["arrays"][name]
        start = j * self.chunk_size
        rows = min(start + self.chunk_size, self.num_instances) - start
        if a.shape != (rows, *info["shape"]) or a.dtype != np.dtype(info["dtype"]):
            raise PosecalInputError(f"{where} has shape {a.shape} {a.dtype}, the index says "
                                    f"{(rows, *info['shape'])} {np.dtype(info['dtype'])}{fix}",
                                    file=str(self.path), field=name)
        self._verified.add(key)
        return a

    # -- reading -------------------------------------------------------------------------------
    def read(self, name: str, rows: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Array ``name`` over all instances, or only ``rows`` (indices, bool mask or slice).

        Only the chunks that hold the requested rows are loaded.
        """
        if name not in self.meta["arrays"]:
            raise PosecalInputError(f"no array {name!r}; the store has: {', '.join(self.arrays)}",
                                    file=str(self.path), field=name)
        n, cs = self.num_instances, self.chunk_size
        if rows is None:
            parts = [self._chunk(name, j) for j in self._chunks()]
            if not parts:
                info = self.meta["arrays"][name]
                return np.zeros((0, *info["shape"]), dtype=info["dtype"])
            return np.concatenate(parts, axis=0)
        if isinstance(rows, slice):
            idx = np.arange(n)[rows]
        else:
            idx = np.asarray(rows)
            if idx.dtype == bool:
                if idx.shape != (n,):
                    raise PosecalInputError(f"boolean rows must have shape ({n},)", field="rows")
                idx = np.flatnonzero(idx)
            idx = idx.astype(np.int64)
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise PosecalInputError(f"row index out of range [0, {n})", field="rows")
            idx = np.where(idx < 0, idx + n, idx)
        info = self.meta["arrays"][name]
        out = np.empty((idx.size, *info["shape"]), dtype=info["dtype"])
        chunk_of = idx // cs
        for j in np.unique(chunk_of):
            arr = self._chunk(name, int(j))
            sel = chunk_of == j
            out[sel] = arr[idx[sel] - int(j) * cs]
        return out

    def verify(self) -> None:
        """Check every chunk of every array (present, checksum, shape, dtype) and predictions.json / gt.json;
        PosecalInputError naming the store, array and chunk of the first damage found."""
        for name in self.arrays:
            for j in self._chunks():
                self._chunk(name, j)
        _ = self.predictions, self.gt_path

    def features(self, rows: Any = None) -> np.ndarray:
        """The stored feature array (features_gap / features_kpt / features_spatial)."""
        if self.feature_name is None:
            raise PosecalInputError("store has no feature array", file=str(self.path))
        return self.read(self.feature_name, rows)

    def __len__(self) -> int:
        return self.num_instances

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, N={self.num_instances}, features={self.feature_name})"


class StoreWriter:
    """Writes a store chunk by chunk; resumable and shardable.

    Args:
        path: store directory (created).
        num_instances: N, total over all shards.
        chunk_size: rows per chunk; chunk j holds rows [j*chunk_size, min((j+1)*chunk_size, N)).
        settings: JSON-able dict describing everything that determines the content (model hash, tensor,
            pooling, data file hash, augmentation, ...). It becomes meta.json (plus bookkeeping keys) and its
            fingerprint guards resumption: an existing store with other settings is an error, never mixed.
        shard: (i, n): this writer only owns chunks j with j % n == i.
    """

    def __init__(self, path: str | os.PathLike, *, num_instances: int, chunk_size: int,
                 settings: dict[str, Any], shard: tuple[int, int] = (0, 1)):
        if chunk_size < 1:
            raise PosecalInputError("chunk size must be >= 1", field="chunk_size")
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise PosecalInputError(f"bad shard {i}/{n}: need 0 <= i < n", field="shard")
        self.path = Path(path)
        self.num_instances = int(num_instances)
        self.chunk_size = int(chunk_size)
        self.settings = orjson.loads(dumps_json(settings))  # normalise (tuples -> lists, numpy -> py)
        self.shard = (int(i), int(n))
        self.fingerprint = _fingerprint(self.settings)
        self.num_chunks = -(-self.num_instances // self.chunk_size)
        self._arrays_info: dict[str, dict[str, Any]] = {}
        self._done: set[int] = set()
        self._sums: dict[int, dict[str, str]] = {}
        self._inputs: dict[int, str] = {}  # chunk -> digest of the input files it was computed from
        self._lock_file = None
        self._open()

    def release(self) -> None:
        """Release the store's write lock (done by :meth:`finalize`; also when the writer is collected)."""
        f = getattr(self, "_lock_file", None)
        if f is not None:
            f.close()
            self._lock_file = None

    def __del__(self) -> None:
        self.release()

    # -- index -----------------------------------------------------------------------------
    def _index_obj(self) -> dict[str, Any]:
        inputs = {f"{j:06d}": self._inputs[j] for j in sorted(self._done) if j in self._inputs}
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "num_instances": self.num_instances,
            "chunk_size": self.chunk_size,
            "shard": list(self.shard),
            "arrays": self._arrays_info,
            "chunks": sorted(self._done),
            "checksums": {f"{j:06d}": self._sums[j] for j in sorted(self._done)},
            **({INPUTS_KEY: inputs} if inputs else {}),
        }

    def _open(self) -> None:
        idx_p = self.path / "index.json"
        if self.path.exists() and not self.path.is_dir():
            raise PosecalInputError("output exists and is not a folder", file=str(self.path))
        if not idx_p.is_file() and self.path.is_dir() and any(
                p.name != LOCK_NAME for p in self.path.iterdir()):
            raise PosecalInputError("output exists and is not a posecal store in progress; "
                                    "choose an empty or new directory", file=str(self.path))
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock(self.path)  # before touching anything: a second writer stops here
        if idx_p.is_file():
            try:
                idx = _dict(orjson.loads(idx_p.read_bytes()), idx_p, "index.json")
            except orjson.JSONDecodeError:
                raise PosecalInputError("corrupt index.json; delete the store", file=str(idx_p)) from None
            if idx.get("fingerprint") != self.fingerprint and idx.get("format") == FORMAT:
                self._adopt_settings(idx)
            for key, mine in (("format", FORMAT), ("fingerprint", self.fingerprint),
                              ("num_instances", self.num_instances), ("chunk_size", self.chunk_size),
                              ("shard", list(self.shard))):
                if idx.get(key) != mine:
                    raise PosecalInputError(
                        f"existing store was written with different settings ({key} differs); "
                        "use another --out or delete it", file=str(self.path), field=key)
            # temporaries of a killed run (atomic_path names them ".<name>.<random>.tmp")
            for tmp in self.path.rglob(".*.tmp"):
                tmp.unlink()
            self._resume(idx)
        else:
            self._write_index()

    def _adopt_settings(self, idx: dict[str, Any]) -> None:
        """The fingerprints differ: name the settings that differ in the error, or, when they are the same
        settings spelled differently (a folder given as a relative and as an absolute path, compared by real
        path), take over the store's own settings and fingerprint, so the resumed store is the one a single
        run would have written."""
        old = idx.get("settings")
        keys = settings_diff(old, self.settings)
        if keys:
            raise PosecalInputError(
                "existing store was written with different settings (fingerprint differs: "
                f"{describe_settings_diff(old if isinstance(old, dict) else {}, self.settings, keys)}); "
                "use another --out or delete it", file=str(self.path), field=keys[0] if len(keys) == 1 else "settings")
        if not isinstance(idx.get("fingerprint"), str) or idx["fingerprint"] != _fingerprint(old):
            raise PosecalInputError("corrupt index.json (its fingerprint does not match its settings); delete "
                                    "the store", file=str(self.path / "index.json"), field="fingerprint")
        self.settings, self.fingerprint = old, idx["fingerprint"]

    def _resume(self, idx: dict[str, Any]) -> None:
        """Take over the finished chunks of an index; a chunk whose files are missing, damaged (checksum) or
        of the wrong shape is dropped, so it is recomputed."""
        arrays, chunks, sums = idx.get("arrays", {}), idx.get("chunks", []), idx.get("checksums") or {}
        inputs = idx.get(INPUTS_KEY)
        if not isinstance(arrays, dict) or not isinstance(chunks, list) or not isinstance(sums, dict) or not all(
                isinstance(v, dict) and isinstance(k, str) and "/" not in k and not k.startswith(".")
                for k, v in arrays.items()):
            raise PosecalInputError("corrupt index.json; delete the store", file=str(self.path / "index.json"))
        self._arrays_info = arrays
        dropped = []
        adir = self.path / "arrays"
        on_disk = {p.name for p in adir.iterdir() if p.is_dir()} if adir.is_dir() else set()
        if not arrays or on_disk - set(arrays):  # the index does not describe the arrays on disk: edited
            dropped, chunks, self._arrays_info = [j for j in chunks if isinstance(j, int)], [], {}
        for j in chunks:
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < self.num_chunks:
                raise PosecalInputError(f"bad chunk number {j!r}", file=str(self.path / "index.json"),
                                        field="chunks")
            got = self._verify_chunk(j, sums.get(f"{j:06d}"))
            if got is None:
                dropped.append(j)
            else:
                self._done.add(j)
                self._sums[j] = got
                digest = inputs.get(f"{j:06d}") if isinstance(inputs, dict) else None
                if isinstance(digest, str):
                    self._inputs[j] = digest
        if not self._done:
            self._arrays_info = {}  # nothing trustworthy left: the first chunk written defines the arrays
        if dropped:
            import warnings

            from posecal.errors import PosecalWarning

            warnings.warn(f"{self.path}: recomputing {len(dropped)} missing or damaged chunk(s) "
                          f"({', '.join(map(str, dropped[:5]))}{' ...' if len(dropped) > 5 else ''})",
                          PosecalWarning, stacklevel=3)

    def _verify_chunk(self, j: int, sums: Any) -> dict[str, str] | None:
        """Checksums of chunk j's files if they are all present and match the index (and, without a
        checksum, load with the indexed shape); else None."""
        out = {}
        start, stop = self.chunk_rows(j)
        for name, info in self._arrays_info.items():
            try:
                data = self._chunk_file(name, j).read_bytes()
            except OSError:
                return None
            h = _sha(data)
            want = sums.get(name) if isinstance(sums, dict) else None
            if want is not None and h != want:
                return None
            try:  # and it loads with the shape the index gives (an edited index is caught here)
                a = _load_npy(data, store=self.path, name=name, j=j)
                if a.shape != (stop - start, *info["shape"]) or a.dtype != np.dtype(info["dtype"]):
                    return None
            except (PosecalInputError, KeyError, TypeError, ValueError):
                return None
            out[name] = h
        return out

    def _write_index(self) -> None:
        write_json_atomic(self.path / "index.json", self._index_obj())

    def _chunk_file(self, name: str, j: int) -> Path:
        return self.path / "arrays" / name / f"{j:06d}.npy"

    # -- chunks ----------------------------------------------------------------------------
    def chunk_rows(self, j: int) -> tuple[int, int]:
        """Row range [start, stop) of chunk j."""
        start = j * self.chunk_size
        return start, min(start + self.chunk_size, self.num_instances)

    def my_chunks(self) -> list[int]:
        i, n = self.shard
        return [j for j in range(self.num_chunks) if j % n == i]

    def pending_chunks(self) -> list[int]:
        """This shard's chunks not yet on disk, in order."""
        return [j for j in self.my_chunks() if j not in self._done]

    def finished_chunks(self) -> list[int]:
        """This shard's chunks already on disk (taken over from the index on resume, or written), in order."""
        return [j for j in self.my_chunks() if j in self._done]

    def input_digest(self, j: int) -> str | None:
        """The digest of chunk j's input files recorded with it (None: not recorded)."""
        return self._inputs.get(j)

    def set_input_digest(self, j: int, digest: str) -> None:
        """Record, with chunk j when :meth:`write_chunk` writes it, a digest of the input files it is computed
        from (``extract``: its images), in the index (``input_digests``), so that a resumed run can tell when
        one of them has changed since (:meth:`input_digest`, :meth:`redo_chunks`)."""
        self._inputs[j] = str(digest)

    def redo_chunks(self, chunks: Sequence[int], reason: str) -> None:
        """Forget finished chunks (e.g. an input file they were computed from has changed since), so they are
        pending again; warns with ``reason``."""
        chunks = [j for j in chunks if j in self._done]
        if not chunks:
            return
        for j in chunks:
            self._done.discard(j)
            self._sums.pop(j, None)
            self._inputs.pop(j, None)
        self._write_index()
        import warnings

        from posecal.errors import PosecalWarning

        warnings.warn(f"{self.path}: recomputing {len(chunks)} chunk(s) "
                      f"({', '.join(map(str, chunks[:5]))}{' ...' if len(chunks) > 5 else ''}): {reason}",
                      PosecalWarning, stacklevel=2)

    def write_chunk(self, j: int, arrays: dict[str, np.ndarray]) -> None:
        """Write chunk j: each array has ``stop - start`` rows; same names/shapes/dtypes every chunk."""
        if j not in self.my_chunks():
            raise ValueError(f"chunk {j} does not belong to shard {self.shard[0]}/{self.shard[1]}")
        start, stop = self.chunk_rows(j)
        info = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            if a.shape[0] != stop - start:
                raise ValueError(f"array {name}: {a.shape[0]} rows, chunk {j} needs {stop - start}")
            info[name] = {"shape": list(a.shape[1:]), "dtype": a.dtype.str}
        if self._arrays_info and info != self._arrays_info:
            raise PosecalInputError(f"chunk {j}: array names/shapes/dtypes differ from the chunks already in "
                                    "the store (an edited index.json?); delete the store or use another --out",
                                    file=str(self.path), field="arrays")
        sums = {}
        for name, a in arrays.items():
            f = self._chunk_file(name, j)
            f.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
            data = buf.getvalue()
            sums[name] = _sha(data)
            with atomic_path(f, suffix=".npy") as tmp:
                tmp.write_bytes(data)
        self._arrays_info = info
        self._done.add(j)
        self._sums[j] = sums
        self._write_index()

    @property
    def complete(self) -> bool:
        return not self.pending_chunks()

    # -- finishing -------------------------------------------------------------------------
    def finalize(self, gt: dict[str, Any] | bytes | None = None, category_id: int = 1) -> FeatureStore | None:
        """Write meta.json (+ predictions.json and gt.json for a whole store). Returns the opened store.

        For a shard (n > 1) only a ``shard.json`` marker is written and None returned: use
        :func:`merge_stores`. ``gt`` may be a dict (serialised) or raw bytes (copied verbatim).
        """
        if not self.complete:
            raise RuntimeError(f"{len(self.pending_chunks())} chunks still pending")
        if self.shard[1] > 1:
            self._write_index()
            if gt is not None:
                write_bytes_atomic(self.path / "gt.json", gt if isinstance(gt, bytes) else dumps_json(gt))
            write_json_atomic(self.path / "shard.json", {"shard": list(self.shard),
                                                         "fingerprint": self.fingerprint})
            self.release()
            return None
        try:
            self._write_index()  # the canonical index, whatever the file held when the run resumed
            return _finish(self.path, self.settings, self._index_obj(), gt, category_id)
        finally:
            self.release()


def _coded_records(recs: list[dict[str, Any]], names: list[str], pp: Path) -> list[dict[str, Any]]:
    """Copies of a string-id store's records with each ``image_id`` replaced by its code (its position in the
    store's ``image_id_strings``); a record whose id is not one of them is refused."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, r in enumerate(recs):
        v = r.get("image_id")
        if not isinstance(v, str) or v not in index:
            raise PosecalInputError(f"image_id {v!r:.60} is not one of the store's image ids (edited?)",
                                    file=str(pp), record=i, field="image_id")
        out.append({**r, "image_id": index[v]})
    return out


def _finish(path: Path, settings: dict[str, Any], index: dict[str, Any],
            gt: dict[str, Any] | bytes | None, category_id: int) -> FeatureStore:
    arrays = index["arrays"]
    feature = next((f for f in FEATURE_ARRAYS if f in arrays), None)
    meta = dict(settings)
    meta.update({
        "format": FORMAT,
        "num_instances": index["num_instances"],
        "chunk_size": index["chunk_size"],
        "arrays": arrays,
        "feature_array": feature,
        "fingerprint": index["fingerprint"],
    })
    tmp = FeatureStore(path, meta, index)
    if index["num_instances"]:
        bbox = tmp.read("bbox") if "bbox" in arrays else None
        box_score = (tmp.read("box_score") if "box_score" in arrays
                     else np.ones(index["num_instances"]))
        preds = predictions_from_arrays(tmp.read("image_id"), tmp.read("keypoints"), tmp.read("scores"),
                                        box_score, bbox, category_id, image_id_strings=tmp.image_id_strings)
    else:
        preds = []
    pred_b = dumps_json(preds)
    write_bytes_atomic(path / "predictions.json", pred_b)
    meta["files"] = {"predictions.json": _sha(pred_b)}
    if gt is not None:
        gt_b = gt if isinstance(gt, bytes) else dumps_json(gt)
        write_bytes_atomic(path / "gt.json", gt_b)
        meta["files"]["gt.json"] = _sha(gt_b)
    write_json_atomic(path / "meta.json", meta)  # last: its presence marks the store finished
    return FeatureStore.open(path)


def _shard_index(s: Path) -> dict[str, Any]:
    """A shard's index.json, checked for the keys merging needs."""
    ip = s / "index.json"
    if not ip.is_file():
        raise PosecalInputError("not a posecal store (no index.json)", file=str(s))
    try:
        ix = _dict(orjson.loads(ip.read_bytes()), ip, "index.json")
    except orjson.JSONDecodeError as e:
        raise PosecalInputError(f"not JSON: {e}", file=str(ip)) from None
    if not (isinstance(ix.get("shard"), list) and len(ix["shard"]) == 2 and isinstance(ix.get("chunks"), list)
            and isinstance(ix.get("arrays"), dict)):
        raise PosecalInputError("corrupt shard index", file=str(ip))

    def count(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    i, n = ix["shard"]
    for field, ok in (("shard", count(i, 0) and count(n, 1) and i < n),
                      ("num_instances", count(ix.get("num_instances"), 0)),
                      ("chunk_size", count(ix.get("chunk_size"), 1)),
                      ("chunks", all(count(j, 0) for j in ix["chunks"]))):
        if not ok:
            raise PosecalInputError("corrupt shard index (edited?); re-run the shard", file=str(ip), field=field)
    return ix


def _shard_marker(s: Path) -> Any:
    """A shard's ``shard.json`` (what :meth:`StoreWriter.finalize` writes last), or None when absent/unreadable."""
    try:
        return orjson.loads((s / "shard.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _copy_chunk(s: Path, outp: Path, j: int, arrays: dict[str, Any], want: dict[str, str],
                move: bool) -> dict[str, str]:
    """Copy chunk j of every array from shard ``s`` into ``outp``, checked against the shard's checksums."""
    out = {}
    for name in arrays:
        src = s / "arrays" / name / f"{j:06d}.npy"
        try:
            data = src.read_bytes()
        except OSError:
            raise PosecalInputError(f"chunk {j} of array {name!r} is missing; re-run the shard", file=str(s),
                                    field=name) from None
        h = _sha(data)
        if name in want and want[name] != h:
            raise PosecalInputError(f"chunk {j} of array {name!r} is damaged (checksum mismatch); re-run the "
                                    "shard", file=str(s), field=name)
        out[name] = h
        dst = outp / "arrays" / name / f"{j:06d}.npy"
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(dst, data)
        if move:
            src.unlink()
    return out


def _gt_keypoint_category(gt_b: bytes | None) -> int:
    """The keypoint category id of a store's gt.json bytes (:func:`posecal.datasets.coco.keypoint_category`);
    1 without gt or for a damaged one (named where it is read: fit, rescore)."""
    from posecal.datasets.coco import keypoint_category

    try:
        gt_d = orjson.loads(gt_b) if gt_b is not None else None
    except orjson.JSONDecodeError:
        gt_d = None
    return keypoint_category(gt_d) if isinstance(gt_d, dict) else 1


def _describe_shard_diff(a: Any, b: Any, keys: list[str]) -> str:
    """``'pooling ("heatmap" there, "gap" here), ...'``: the settings (:func:`settings_diff` keys) in which a
    shard differs from the first one."""
    if not keys or not isinstance(a, dict) or not isinstance(b, dict):
        return "settings (corrupt index.json?)"

    def short(v: Any) -> str:
        t = "absent" if v is _ABSENT else dumps_json(v).decode()
        return t if len(t) <= 60 else t[:57] + "..."

    return ", ".join(f"{k} ({short(a.get(k, _ABSENT))} there, {short(b.get(k, _ABSENT))} here)" for k in keys)


def _shards_gt(shards: list[Path]) -> bytes | None:
    """The shards' gt.json bytes (the same in every shard, or in none), else an error naming the shard."""
    gts = []
    for s in shards:
        try:
            gts.append((s / "gt.json").read_bytes() if (s / "gt.json").exists() else None)
        except OSError as e:
            raise PosecalInputError(f"cannot read gt.json: {e.strerror}", file=str(s / "gt.json")) from None
    for s, g in zip(shards[1:], gts[1:], strict=True):
        if g != gts[0]:
            raise PosecalInputError(f"gt.json differs from {shards[0]}'s (edited or missing?); re-run the shard",
                                    file=str(s), field="gt.json")
    return gts[0]


def _check_shards_agree(shards: list[Path], idxs: list[dict[str, Any]]) -> None:
    """The shards were written with the same settings, sizes and shard count, and are shards 0..n-1 exactly once."""
    ref = idxs[0]
    n = ref["shard"][1]
    for s, ix in zip(shards, idxs, strict=True):
        if ix.get("fingerprint") != ref.get("fingerprint"):
            # the settings that differ, named as a resume names them; the same settings spelled differently
            # (the images folder relative in one shard, absolute in another) merge like a resumed store
            keys = settings_diff(ref.get("settings"), ix.get("settings") if isinstance(ix.get("settings"), dict)
                                 else {})
            if keys or not isinstance(ix.get("fingerprint"), str) \
                    or ix["fingerprint"] != _fingerprint(ix.get("settings")):
                raise PosecalInputError(f"shard was written with other settings than {shards[0]}: "
                                        f"{_describe_shard_diff(ref.get('settings'), ix.get('settings'), keys)}",
                                        file=str(s), field=keys[0] if len(keys) == 1 else "settings")
        for key in ("num_instances", "chunk_size"):
            if ix.get(key) != ref.get(key):
                raise PosecalInputError(f"shard differs from {shards[0]} in {key}", file=str(s), field=key)
        if ix["shard"][1] != n:
            raise PosecalInputError(f"shard count {ix['shard'][1]} != {n}", file=str(s), field="shard")
    by_i: dict[Any, Path] = {}
    for s, ix in zip(shards, idxs, strict=True):
        i = ix["shard"][0]
        if i in by_i:
            raise PosecalInputError(f"shard {i}/{n} given twice (also {by_i[i]})", file=str(s), field="shard")
        by_i[i] = s
    seen = sorted(by_i, key=str)
    if seen != list(range(n)):
        missing = [i for i in range(n) if i not in by_i]
        more = ", ..." if len(missing) > 5 else ""
        raise PosecalInputError(f"need shards 0..{n - 1} exactly once, got {seen}"
                                + (f" (missing: {', '.join(map(str, missing[:5]))}{more})" if missing else ""),
                                field="shards")


def _check_shards_complete(shards: list[Path], idxs: list[dict[str, Any]], num_chunks: int,
                           arrays: dict[str, Any]) -> None:
    """Every shard holds its chunks (chunk j belongs to shard j mod n) and the same arrays, and finished."""
    n = idxs[0]["shard"][1]
    for s, ix in zip(shards, idxs, strict=True):
        i = ix["shard"][0]
        want = [j for j in range(num_chunks) if j % n == i]
        if sorted(ix["chunks"]) != want:
            raise PosecalInputError(f"shard {i}/{n} is incomplete ({len(ix['chunks'])}/{len(want)} chunks); "
                                    "re-run it", file=str(s))
        if ix["arrays"] and ix["arrays"] != arrays:
            raise PosecalInputError("shards hold different arrays", file=str(s), field="arrays")
        if n > 1 and _shard_marker(s) != {"shard": ix["shard"], "fingerprint": ix.get("fingerprint")}:
            # finalize writes shard.json last (after gt.json): without it the run stopped before finishing
            raise PosecalInputError(f"shard {i}/{n} is unfinished (no shard.json, or another one: its run was "
                                    "interrupted); re-run it", file=str(s), field="shard.json")


def merge_stores(shards: Iterable[str | os.PathLike], out: str | os.PathLike,
                 category_id: int | None = None, move: bool = False) -> FeatureStore:
    """Combine shard stores (from ``StoreWriter(..., shard=(i, n))``) into one finished store at ``out``.

    The result is byte-identical to the store an unsharded run writes. ``move`` renames chunk files instead
    of copying them. ``category_id`` (of the records of predictions.json): default the keypoint category of
    the shards' gt.json, as ``extract`` writes it (1 without gt).
    """
    shards = [Path(s) for s in shards]
    if not shards:
        raise PosecalInputError("no shard stores given", field="shards")
    idxs = [_shard_index(s) for s in shards]
    ref = idxs[0]
    _check_shards_agree(shards, idxs)
    num_chunks = -(-ref["num_instances"] // ref["chunk_size"])
    arrays = next((ix["arrays"] for ix in idxs if ix["arrays"]), {})
    _check_shards_complete(shards, idxs, num_chunks, arrays)
    gt_b = _shards_gt(shards)
    outp = Path(out)
    if outp.exists() and (not outp.is_dir() or any(outp.iterdir())):
        raise PosecalInputError("merge output exists and is not a folder" if not outp.is_dir() else
                                "merge output exists and is not empty" + (
                                    " (a finished store: use another --out or delete it)"
                                    if (outp / "meta.json").is_file()
                                    else " (an interrupted merge? delete it and merge again)"), file=str(outp))
    settings_src = ref["settings"]
    sums: dict[int, dict[str, str]] = {}
    inputs: dict[str, str] = {}
    outp.mkdir(parents=True, exist_ok=True)
    lock = _lock(outp)
    try:
        for s, ix in zip(shards, idxs, strict=True):
            for j in ix["chunks"]:
                sums[j] = _copy_chunk(s, outp, j, arrays, (ix.get("checksums") or {}).get(f"{j:06d}") or {},
                                      move)
                digest = ix.get(INPUTS_KEY).get(f"{j:06d}") if isinstance(ix.get(INPUTS_KEY), dict) else None
                if isinstance(digest, str):
                    inputs[f"{j:06d}"] = digest
        index = {
            "format": FORMAT, "fingerprint": ref["fingerprint"], "settings": settings_src,
            "num_instances": ref["num_instances"],
            "chunk_size": ref["chunk_size"], "shard": [0, 1], "arrays": arrays, "chunks": list(range(num_chunks)),
            "checksums": {f"{j:06d}": sums[j] for j in range(num_chunks)},
            **({INPUTS_KEY: dict(sorted(inputs.items()))} if inputs else {}),  # as an unsharded run's index
        }
        write_json_atomic(outp / "index.json", index)
        if category_id is None:  # the data's keypoint category, not COCO's person 1 (extract's own choice)
            category_id = _gt_keypoint_category(gt_b)
        return _finish(outp, settings_src, index, gt_b, category_id)
    finally:
        lock.close()

