"""COCO keypoints JSON + image folder: validation and per-instance iteration for top-down extraction."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from posecal._util import keypoint_category_record, read_json
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.keypoints import KeypointSet, find_keypoint_set


@dataclass(frozen=True)
class Instance:
    """One person to crop.

    Attributes:
        image_id: COCO image id as the data file writes it: an int, or a string when the file's image ids are
            strings (:func:`image_id_codes` gives the integer code the store holds).
        ann_id: gt annotation id (-1 for a detection box without gt).
        file_name: image file name relative to the image folder.
        bbox: (4,) float64 x, y, w, h in image pixels.
        box_score: detector score (1.0 for gt boxes).
        keypoints: (K, 3) float64 gt x, y, v in image pixels, or None (detections).
        area: gt area (image px²) or NaN.
    """

    image_id: int | str
    ann_id: int
    file_name: str
    bbox: np.ndarray
    box_score: float
    keypoints: np.ndarray | None
    area: float


def image_size(path: str | os.PathLike, record: object = None) -> tuple[int, int]:
    """(width, height) from the image header (PIL, lazy); an unreadable image raises PosecalInputError
    naming the image and ``record``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = int(im.size[0]), int(im.size[1])
    except OSError as e:  # includes PIL.UnidentifiedImageError
        raise PosecalInputError(f"cannot read image: {e.strerror or e}", file=str(path), record=record,
                                field="file_name") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise PosecalInputError(f"cannot read image: {e}", file=str(path), record=record,
                                field="file_name") from None
    if w < 1 or h < 1:
        raise PosecalInputError(f"image has size {w}x{h}", file=str(path), record=record, field="file_name")
    return w, h


# -- field checks (one line naming file, record and field) -------------------------------------------
def is_number(v: Any) -> bool:
    """A JSON number: int or float, not bool (nor a numeric string)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(v: Any, file: str | None, record: object, field: str, *, integer: bool = False,
           finite: bool = True) -> float | int:
    """``v`` checked to be a JSON number (an integer when ``integer``: a 64-bit signed one, as the store and the
    evaluator hold ids), finite unless ``finite=False``."""
    if not is_number(v) or (integer and not (isinstance(v, int) or float(v).is_integer())):
        raise PosecalInputError(f"expected {'an integer' if integer else 'a number'}, got {_show(v)}",
                                file=file, record=record, field=field)
    if finite and not np.isfinite(v):
        raise PosecalInputError(f"not finite: {v}", file=file, record=record, field=field)
    if integer and not -(2**63) <= v < 2**63:  # ids are stored as int64 (and JSON writers stop at 64 bits)
        raise PosecalInputError(f"integer out of range: {v!r:.40} (a 64-bit signed integer is needed)", file=file,
                                record=record, field=field)
    return int(v) if integer else float(v)


def numbers(v: Any, length: int | None, file: str | None, record: object, field: str) -> np.ndarray:
    """A flat list of finite JSON numbers (of ``length`` when given) -> float64 array."""
    if not isinstance(v, list):
        raise PosecalInputError(f"expected a list of numbers, got {_show(v)}", file=file, record=record,
                                field=field)
    if length is not None and len(v) != length:
        raise PosecalInputError(f"{len(v)} values, expected {length}", file=file, record=record, field=field)
    for x in v:
        if not is_number(x):
            raise PosecalInputError(f"expected numbers, got {_show(x)}", file=file, record=record, field=field)
    a = np.asarray(v, dtype=np.float64)
    if not np.isfinite(a).all():
        raise PosecalInputError("non-finite value", file=file, record=record, field=field)
    return a


def _show(v: Any) -> str:
    r = repr(v)
    return f"{type(v).__name__} {r[:40]}{'...' if len(r) > 40 else ''}"


def safe_file_name(name: Any, file: str | None, record: object, field: str = "file_name") -> str:
    """An image ``file_name`` (or the source format's ``field``, e.g. MPII's ``image``): a non-empty relative
    path that stays inside the image folder."""
    if not isinstance(name, str) or not name:
        raise PosecalInputError(f"expected a non-empty string, got {_show(name)}", file=file, record=record,
                                field=field)
    if "\x00" in name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise PosecalInputError(f"must be a path inside the image folder, got {name!r}", file=file,
                                record=record, field=field)
    return name


# -- image ids: integers, or (as pycocotools accepts) all strings ------------------------------------
def image_key(v: Any) -> int | str:
    """An image id (checked) as a dict key: a string id as it is, a number as its int (``5.0`` is image 5)."""
    return v if isinstance(v, str) else int(v)


def show_id(v: Any) -> str:
    """An image id in a message: a number as written (``493652``), a string quoted (``'img_1'``)."""
    return f"{v!r:.60}" if isinstance(v, str) else str(v)


def image_id_codes(ids: Any) -> dict[str, int] | None:
    """``{id: code}`` for string image ids: each id's position in their sorted distinct list, the int64 id
    :func:`posecal.io.coco.load_gt` gives that image (pycocotools sorts the ids, strings as text); None for
    numeric ids, whose code is the id itself. ``ids``: the ids of every image of the file (checked by
    :func:`check_image_records`, so all strings or all numbers)."""
    ids = list(ids)
    if not ids or not isinstance(ids[0], str):
        return None
    return {n: i for i, n in enumerate(sorted(set(ids)))}


def image_ref(v: Any, string_ids: bool, file: str | None, record: object, *, field: str = "image_id",
              whose: str = "the images' ids") -> int | str:
    """A reference to an image (an annotation's or a detection's ``image_id``), checked: a string when the
    images' ids are strings (``string_ids``, as :func:`posecal.io.coco.load_gt` reads them), else an integer."""
    if string_ids:
        if not isinstance(v, str):
            raise PosecalInputError(f"expected a string id ({whose} are strings), got {_show(v)}", file=file,
                                    record=record, field=field)
        return v
    return number(v, file, record, field, integer=True)


def check_ref_kind(images: list[tuple[int | str, str]], anns: Any, file: str | None) -> None:
    """Images whose ids are strings while every annotation refers to its image by a number (the ids turned
    into text in ``images`` alone?): one error on the first image's ``id``, naming both. (An annotation with a
    number among others with strings is named itself, by :func:`image_ref`.)"""
    if not images or not isinstance(images[0][0], str) or not isinstance(anns, list):
        return
    refs = [a["image_id"] for a in anns if isinstance(a, dict) and "image_id" in a]
    if refs and not any(isinstance(v, str) for v in refs) and any(is_number(v) for v in refs):
        num = next(v for v in refs if is_number(v))
        raise PosecalInputError(f"image ids are strings ({images[0][0]!r:.40}, ...) but the annotations refer to "
                                f"their images by number ({num!r:.40}, ...): write every image id as one kind",
                                file=file, record="images[0]", field="id")


def read_coco(src: str | os.PathLike | dict[str, Any], *, file: str | None = None,
              sigmas: Sequence[float] | None = None) -> dict[str, Any]:
    """Load and validate a COCO keypoints file; returns the dict. ``sigmas``: as :func:`keypoint_set` takes.

    Checks: ``images``/``annotations``/``categories`` present, ``categories[0].keypoints`` names a known
    keypoint set or every annotation's keypoint count matches one (else error), keypoints length 3K; what
    ``posecal evaluate`` would refuse too: duplicate image/annotation ids or file names, an annotation of an
    unknown category, a negative area, no category, image ids that mix strings and numbers. Image ids (and
    the annotations' ``image_id``) are integers or, as pycocotools and ``posecal evaluate`` accept, all
    strings (:func:`image_id_codes`: the integer code a store holds for each).
    """
    if isinstance(src, dict):
        d, file = src, file or "<dict>"
    else:
        file = file or str(src)
        d = read_json(src)
    if not isinstance(d, dict):
        raise PosecalInputError("expected a COCO dict with images/annotations/categories", file=file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise PosecalInputError("missing or not a list", file=file, field=key)
    images = check_image_records(d["images"], file)
    cat_ids = _check_categories(d["categories"], file)
    check_ref_kind(images, d["annotations"], file)
    _check_annotations(d["annotations"], cat_ids, file, bool(images) and isinstance(images[0][0], str))
    keypoint_set(d, file=file, sigmas=sigmas)
    return d


def check_image_records(images: list, file: str | None) -> list[tuple[int | str, str]]:
    """``(id, file_name)`` of every ``images`` record, checked: an object with an integer ``id`` — or, as
    pycocotools (and ``posecal evaluate``) accept, every id a string — unique, and a safe relative
    ``file_name`` (unique: one picture under two ids would be read twice), ``width``/``height`` >= 1 when
    present. Strings and numbers mixed are refused (pycocotools cannot sort them). Used by ``extract``
    (:func:`read_coco`) and ``detect --data``."""
    out: list[tuple[int | str, str]] = []
    seen: dict[int | str, int] = {}
    names: dict[str, int] = {}
    first: tuple[int, Any] | None = None  # the first record's id: strings or numbers, one kind throughout
    for r, im in enumerate(images):
        rec = f"images[{r}]"
        if not isinstance(im, dict):
            raise PosecalInputError("image record is not an object", file=file, record=rec)
        for key in ("id", "file_name"):
            if key not in im:
                raise PosecalInputError("missing", file=file, record=rec, field=key)
        v = im["id"]
        iid = v if isinstance(v, str) else number(v, file, rec, "id", integer=True)
        if first is None:
            first = (r, v)
        elif isinstance(first[1], str) != isinstance(v, str):
            raise PosecalInputError(f"image ids mix strings and numbers (images[{first[0]}]: {first[1]!r:.40}, "
                                    f"here: {v!r:.40}); pycocotools cannot sort them", file=file, record=rec,
                                    field="id")
        if iid in seen:
            raise PosecalInputError(f"duplicate image id {show_id(iid)} (also images[{seen[iid]}])", file=file,
                                    record=rec, field="id")
        seen[iid] = r
        name = safe_file_name(im["file_name"], file, rec)
        for key in ("width", "height"):
            if key in im and number(im[key], file, rec, key, integer=True) < 1:
                raise PosecalInputError("must be >= 1", file=file, record=rec, field=key)
        if name in names:  # the second record's people would be cropped from the first one's picture
            raise PosecalInputError(f"file_name {name!r} also names images[{names[name]}]", file=file, record=rec,
                                    field="file_name")
        names[name] = r
        out.append((iid, name))
    return out


def _check_categories(cats: list, file: str) -> set[int]:
    """The category ids (categories without one are allowed: the annotations are then not checked)."""
    if not cats:
        raise PosecalInputError("empty: the person category (with its keypoint names) is needed", file=file,
                                field="categories")
    ids: set[int] = set()
    for r, c in enumerate(cats):
        if not isinstance(c, dict):
            raise PosecalInputError("category is not an object", file=file, record=f"categories[{r}]")
        if "id" in c:
            ids.add(number(c["id"], file, f"categories[{r}]", "id", integer=True))
        names = c.get("keypoints")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise PosecalInputError("expected a list of keypoint names", file=file, record=f"categories[{r}]",
                                    field="keypoints")
    return ids


def _check_annotations(anns: list, cat_ids: set[int], file: str, string_ids: bool = False) -> None:
    """Annotation ids (integers, unique), ``image_id`` (an integer, or a string where the images' ids are),
    the numeric fields, the category."""
    ann_ids: set[int] = set()
    for r, a in enumerate(anns):
        if not isinstance(a, dict):
            raise PosecalInputError("annotation is not an object", file=file, record=r)
        for key in ("id", "image_id"):
            if key not in a:
                raise PosecalInputError("missing", file=file, record=r, field=key)
            if key == "id":
                number(a[key], file, r, key, integer=True)
            else:
                image_ref(a[key], string_ids, file, r)
        if a["id"] in ann_ids:
            raise PosecalInputError(f"duplicate annotation id {a['id']}", file=file, record=r, field="id")
        ann_ids.add(a["id"])
        for key in ("iscrowd", "area", "num_keypoints", "category_id"):
            if key in a and not (key == "iscrowd" and isinstance(a[key], bool)):  # true/false as pycocotools
                number(a[key], file, r, key, integer=key != "area")
        if "area" in a and a["area"] < 0:
            raise PosecalInputError(f"negative area {a['area']}", file=file, record=a["id"], field="area")
        if "category_id" in a and cat_ids and a["category_id"] not in cat_ids:
            raise PosecalInputError(f"unknown category_id {a['category_id']} (categories: "
                                    f"{', '.join(map(str, sorted(cat_ids)))})", file=file, record=a["id"],
                                    field="category_id")


def check_converted(d: dict[str, Any], *, file: str | None = None, split: str | None = None) -> None:
    """What ``posecal convert`` writes must be what ``posecal evaluate`` accepts: at least one annotation,
    every keypoint coordinate finite and every flag 0, 1 or 2 (checked again here, whatever the reader)."""
    if not d["annotations"]:
        what = f"split {split!r}" if split else "the conversion"
        raise PosecalInputError(f"{what} holds no person; nothing to write", file=file,
                                field="split" if split else None)
    for r, a in enumerate(d["annotations"]):
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(kp).all():
            raise PosecalInputError("non-finite keypoint value", file=file, record=a.get("id", r),
                                    field="keypoints")
        if not np.isin(kp[:, 2], (0, 1, 2)).all():
            raise PosecalInputError("keypoint flag not in {0, 1, 2}", file=file, record=a.get("id", r),
                                    field="keypoints")
        for key in ("bbox", "area"):  # coordinates near 1e308 are finite but their box or area is not
            if key in a and not np.isfinite(np.asarray(a[key], dtype=np.float64)).all():
                raise PosecalInputError(f"not finite ({a[key]}): coordinates too large", file=file,
                                        record=a.get("id", r), field=key)


def keypoint_set(d: dict[str, Any], *, file: str | None = None,
                 sigmas: Sequence[float] | None = None) -> KeypointSet:
    """Keypoint set of a COCO dict: by the keypoint category's ``keypoints`` names (``categories[0]``, or the
    first category that names keypoints: :func:`posecal._util.keypoint_category_index`), else by keypoint count.

    A count that matches no known set, or two sets (e.g. 14: LSP14 and CrowdPose14) without names, raises.
    With ``sigmas`` (OKS sigmas, one per keypoint: ``posecal extract --sigmas``) the set is the data's own:
    its keypoint names with these sigmas (:func:`posecal.keypoints.custom_keypoint_set`), any skeleton.
    """
    from posecal.keypoints import KEYPOINT_SETS

    c0 = keypoint_category_record(d)
    names = c0.get("keypoints") if c0 is not None else None
    if sigmas is not None:
        return _custom_set(d, names, sigmas, file)
    if names:
        ks = find_keypoint_set(names)
        if ks is not None:
            return ks
    anns = [a for a in d.get("annotations", []) if isinstance(a, dict) and a.get("keypoints")]
    if not anns:
        raise PosecalInputError("no keypoint names in categories[0] and no annotations with keypoints",
                                file=file, field="categories")
    if not isinstance(anns[0]["keypoints"], list):
        raise PosecalInputError("expected a list of numbers", file=file, record=0, field="keypoints")
    n3 = len(anns[0]["keypoints"])
    k = n3 // 3
    sets = [s for s in KEYPOINT_SETS.values() if s.num_keypoints == k] if n3 % 3 == 0 else []
    if len(sets) == 1:
        if names and len(names) != k and find_keypoint_set(list(names[:k])) is sets[0]:
            # e.g. Human-Art: 21 names, `keypoints` holds the first 17 (COCO's, as are the first 17 names)
            warnings.warn(f"{file}: categories[0] names {len(names)} keypoints, the annotations carry {k}: taken "
                          f"as {sets[0].name}, which its first {k} names are", PosecalWarning, stacklevel=2)
        elif names and (moved := _reordered(names, sets[0])):
            raise PosecalInputError(f"the names are {sets[0].name}'s joints in another order (position "
                                    f"{moved[0]}: {moved[1]!r}); posecal "
                                    f"keeps keypoints in {sets[0].name}'s order, so its predictions would be "
                                    "scored against the wrong joints: reorder the names and every annotation's "
                                    "keypoints to it", file=file, field="categories[0].keypoints")
        elif names:
            warnings.warn(f"{file}: categories[0].keypoints names match no known keypoint set; taken as "
                          f"{sets[0].name} by its keypoint count ({k}), with that set's order and OKS sigmas "
                          f"({_OWN_SET_HINT})", PosecalWarning, stacklevel=2)
        return sets[0]
    if not sets:
        raise PosecalInputError(f"{n3} keypoint values ({n3 / 3:g} keypoints) match no keypoint set"
                                + (f" ({_OWN_SET_HINT})" if names and n3 % 3 == 0 else ""),
                                file=file, record=0, field="keypoints")
    if names:  # named, but not as any known set (e.g. AI Challenger: LSP's joints in its own order)
        raise PosecalInputError(f"the names ({', '.join(map(str, names[:3]))}, …) match no known keypoint set"
                                f"{_same_joints_hint(names)} and {k} keypoints fit "
                                f"{', '.join(s.name for s in sets)}: rename and reorder the keypoints to one of "
                                f"these sets ({_OWN_SET_HINT})", file=file, field="categories[0].keypoints")
    raise PosecalInputError(f"{k} keypoints fit {', '.join(s.name for s in sets)}; name them in "
                            "categories[0].keypoints", file=file, field="categories")


_OWN_SET_HINT = "a skeleton of your own: give its OKS sigmas, posecal extract --sigmas S ..."


def _custom_set(d: dict[str, Any], names: Any, sigmas: Sequence[float], file: str | None) -> KeypointSet:
    """The data's own keypoint set: ``names`` (categories[0].keypoints) with ``sigmas``, checked against
    the first annotation's keypoint count."""
    from posecal.keypoints import custom_keypoint_set, keypoint_names_problem, oks_sigmas_problem

    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise PosecalInputError("--sigmas needs the keypoint names: a list of non-empty strings", file=file,
                                field="categories[0].keypoints")
    dup = keypoint_names_problem(names)  # non-empty strings by now: only a name twice is left to find
    if dup is not None:
        raise PosecalInputError(dup, file=file, field="categories[0].keypoints")
    if len(sigmas) != len(names):
        raise PosecalInputError(f"{len(sigmas)} OKS sigmas for {len(names)} keypoint names", file=file,
                                field="--sigmas")
    problem = oks_sigmas_problem(sigmas)
    if problem is not None:
        raise PosecalInputError(problem, file=file, field="--sigmas")
    for r, a in enumerate(d.get("annotations", [])):
        kp = a.get("keypoints") if isinstance(a, dict) else None
        if isinstance(kp, list) and kp and len(kp) != 3 * len(names):
            raise PosecalInputError(f"{len(kp)} keypoint values, expected {3 * len(names)} ({len(names)} "
                                    "keypoints named in categories[0].keypoints)", file=file,
                                    record=a.get("id", r), field="keypoints")
    known = find_keypoint_set(names)
    if known is not None:  # allowed (other OKS sigmas for a known skeleton), but the set is no longer the known one
        warnings.warn(f"{file}: categories[0].keypoints are {known.name}'s; --sigmas replaces its OKS sigmas and "
                      f"the keypoint set is 'custom' (heads fitted on it fit only data extracted with these "
                      f"names and sigmas; without --sigmas it is {known.name})", PosecalWarning, stacklevel=3)
    return custom_keypoint_set(names, sigmas)


def _norm_name(n: object) -> str:
    """A keypoint name compared case-, space- and dash-insensitively."""
    return str(n).strip().lower().replace(" ", "_").replace("-", "_")


def _reordered(names: list, ks: KeypointSet) -> tuple[int, str] | None:
    """``(position, name)`` of the first name out of place when ``names`` (normalised, aliases allowed) are
    exactly ``ks``'s joints in another order; None otherwise (other joints, or the same order)."""
    from posecal.keypoints import JOINT_ALIASES

    have = [_norm_name(n) for n in ks.names]
    canon = []
    for n in map(_norm_name, names):
        hit = n if n in have else next((a for a in JOINT_ALIASES.get(n, ()) if a in have), None)
        if hit is None:
            return None
        canon.append(hit)
    if len(canon) != len(have) or set(canon) != set(have) or canon == have:
        return None
    i = next(i for i, (a, b) in enumerate(zip(canon, have, strict=True)) if a != b)
    return i, str(names[i])


def _same_joints_hint(names: list) -> str:
    """`` (lsp14 has the same joints in another order)`` when the names, normalised, are a known set's joints."""
    from posecal.keypoints import JOINT_ALIASES, KEYPOINT_SETS

    want = {_norm_name(n) for n in names}
    for s in KEYPOINT_SETS.values():
        have = {_norm_name(n) for n in s.names}
        if len(have) == len(want) and all(n in have or any(a in have for a in JOINT_ALIASES.get(n, ()))
                                          for n in want):
            return f" ({s.name} has the same joints in another order)"
    return ""


MIN_BOX_PX = 1e-3
"""Smallest side, in image px, the larger side of a box to crop may have: below it the crop's scale (model input px
per image px) runs out of floating-point range and the model sees garbage; no detector or annotator writes it."""


MAX_BOX_XY = 1e12
"""Largest abs(x), abs(y) (image px) a box to crop may have: farther off, its crop's position and the keypoints found
in it lose their sub-pixel precision (and beyond ~1e154 px, OKS-NMS overflows); no image is that large."""


def _check_box_size(bbox: np.ndarray, file: str | None, record: object) -> None:
    """A box to crop: w, h > 0, not vanishingly small (:data:`MIN_BOX_PX`) nor impossibly far off
    (:data:`MAX_BOX_XY`)."""
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise PosecalInputError("bbox must be [x, y, w, h] with w, h > 0", file=file, record=record, field="bbox")
    if max(abs(bbox[0]), abs(bbox[1])) > MAX_BOX_XY:
        raise PosecalInputError(f"box at ({bbox[0]:g}, {bbox[1]:g}) px: coordinates beyond ±{MAX_BOX_XY:g} px "
                                "cannot be cropped (no image is that large)", file=file, record=record, field="bbox")
    if max(bbox[2], bbox[3]) < MIN_BOX_PX:
        raise PosecalInputError(f"box {bbox[2]:g} × {bbox[3]:g} px is too small to crop (both sides under "
                                f"{MIN_BOX_PX:g} px)", file=file, record=record, field="bbox")


def _image_wh(image: dict[str, Any], image_size: Callable[[str], tuple[int, int] | None] | None
              ) -> dict[str, Any]:
    """``image`` when it gives width/height, else its header size (``image_size(file_name)``) when known."""
    if image_size is not None and not (is_number(image.get("width")) and is_number(image.get("height"))):
        wh = image_size(image["file_name"])
        return image if wh is None else {"width": wh[0], "height": wh[1]}
    return image


def _check_box_on_image(bbox: np.ndarray, image: dict[str, Any], file: str | None, record: int,
                        outside: list[int]) -> None:
    """A box to crop (gt or detection; x, y, w, h, image px) against its image's width/height when known:
    larger than 1000× the image is an error (no detector writes it; its crop transform degenerates), one
    that misses the image entirely is noted in ``outside``."""
    W, H = image.get("width"), image.get("height")
    if not (is_number(W) and is_number(H)):
        return
    if max(bbox[2], bbox[3]) > 1000.0 * max(W, H):
        raise PosecalInputError(f"box {bbox[2]:g} × {bbox[3]:g} px on a {W} × {H} image", file=file,
                                record=record, field="bbox")
    if bbox[0] + bbox[2] <= 0 or bbox[1] + bbox[3] <= 0 or bbox[0] >= W or bbox[1] >= H:
        outside.append(record)


def _note_corner_box(bbox: np.ndarray, image: dict[str, Any], record: int, corners: dict[str, list[int]]) -> None:
    """Evidence that a detection file holds corner boxes ``[x1, y1, x2, y2]`` (MMDetection's own layout) rather
    than COCO's ``[x, y, w, h]``: as ``[x, y, w, h]`` the box runs past the image's right or bottom edge by more
    than 5 % of it (``overshoot``), or it cannot be read as corners inside the image (``not_xyxy``)."""
    W, H = image.get("width"), image.get("height")
    if not (is_number(W) and is_number(H)):
        return
    corners["known"].append(record)
    x, y, w, h = (float(v) for v in bbox)
    if x + w > 1.05 * W or y + h > 1.05 * H:
        corners["overshoot"].append(record)
    if not (w > x and h > y and w <= 1.01 * W + 1 and h <= 1.01 * H + 1):
        corners["not_xyxy"].append(record)


def keypoint_category(d: dict[str, Any]) -> int:
    """The id of the keypoint category (``categories[0]``, or the first category that names keypoints: the one
    :func:`keypoint_set` reads), 1 when it names none: the category a detection must have to be cropped, and
    the one the store's results carry."""
    c0 = keypoint_category_record(d)
    cid = c0.get("id", 1) if c0 is not None else 1
    return int(cid) if is_number(cid) and not isinstance(cid, bool) and float(cid) == int(cid) else 1


def instances(d: dict[str, Any], *, boxes: list[dict[str, Any]] | None = None, file: str | None = None,
              min_keypoints: int = 1, boxes_file: str | None = None,
              image_size: Callable[[str], tuple[int, int] | None] | None = None,
              sigmas: Sequence[float] | None = None) -> list[Instance]:
    """Instances to crop, in a stable order (annotation file order, or detection file order).

    With ``boxes=None`` every non-crowd gt annotation with at least ``min_keypoints`` labelled keypoints
    (and a positive box) is one instance. With ``boxes`` (COCO detection results: image_id, bbox, score)
    each detection of an image present in ``d`` and of the keypoint category (:func:`keypoint_category`; a
    detection without ``category_id`` is taken as one) is one instance, ``ann_id = -1``; its box is checked
    against the image's width/height (from the data, else ``image_size(file_name)``, e.g. the header), as is
    every gt box: larger than 1000× the image is an error, one entirely outside it a warning; a box whose
    larger side is under :data:`MIN_BOX_PX` cannot be cropped (an error).
    """
    ks = keypoint_set(d, file=file, sigmas=sigmas)
    imgs = {image_key(im["id"]): im for im in d["images"]}
    if boxes is None:
        return _gt_instances(d, ks, imgs, file, min_keypoints, image_size)
    return _detection_instances(boxes, imgs, boxes_file, image_size, keypoint_category(d))


def _gt_instances(d: dict[str, Any], ks: KeypointSet, imgs: dict[int | str, Any], file: str | None,
                  min_keypoints: int, image_size: Callable[[str], tuple[int, int] | None] | None = None
                  ) -> list[Instance]:
    k = ks.num_keypoints
    out: list[Instance] = []
    outside: list[int] = []  # gt boxes that miss their image entirely: cropped from padding, warned about
    for r, a in enumerate(d["annotations"]):
        if a.get("iscrowd", 0):
            continue
        kp = a.get("keypoints")
        if not kp:
            continue
        if isinstance(kp, list) and len(kp) != 3 * k:
            raise PosecalInputError(f"{len(kp)} keypoint values, expected {3 * k} ({ks.name})",
                                    file=file, record=r, field="keypoints")
        kpa = numbers(kp, 3 * k, file, r, "keypoints").reshape(k, 3)
        if not np.isin(kpa[:, 2], (0, 1, 2)).all():
            raise PosecalInputError("visibility flag not in {0, 1, 2}", file=file, record=r, field="keypoints")
        if int((kpa[:, 2] > 0).sum()) < min_keypoints:
            continue
        if "bbox" not in a:
            raise PosecalInputError("missing", file=file, record=r, field="bbox")
        bbox = numbers(a["bbox"], 4, file, r, "bbox")
        _check_box_size(bbox, file, r)
        iid = image_key(a["image_id"])
        if iid not in imgs:
            raise PosecalInputError(f"image_id {show_id(iid)} not in images", file=file, record=r,
                                    field="image_id")
        _check_box_on_image(bbox, _image_wh(imgs[iid], image_size), file, r, outside)
        out.append(Instance(iid, int(a["id"]), imgs[iid]["file_name"], bbox, 1.0, kpa,
                            float(a.get("area", bbox[2] * bbox[3]))))
    if outside:
        warnings.warn(f"{file}: {len(outside)} annotation box(es) lie entirely outside their image (first: record "
                      f"{outside[0]}, field 'bbox'); their crops hold only padding", PosecalWarning, stacklevel=3)
    return out


def _check_detection_image(b: dict[str, Any], img: dict[str, Any], boxes_file: str | None, r: int) -> None:
    """A detection that names its image (``file_name``, as ``posecal detect`` writes without ``--data``) must
    name the data file's image of its ``image_id``: else its box would be cropped from another picture."""
    fn = b.get("file_name")
    if fn is None:
        return
    want = img.get("file_name")
    if not isinstance(fn, str) or os.path.normpath(fn) != os.path.normpath(str(want)):
        raise PosecalInputError(f"image_id {show_id(b['image_id'])} is {want!r} in the data file, but this box was "
                                f"detected on {fn!r:.80}: ids made up by `posecal detect` without --data need not be "
                                "the data file's; run detect with --data DATA.json", file=boxes_file, record=r,
                                field="file_name")


def _detection_instances(boxes: list[dict[str, Any]], imgs: dict[int | str, Any], boxes_file: str | None,
                         image_size: Callable[[str], tuple[int, int] | None] | None, category: int = 1
                         ) -> list[Instance]:
    out: list[Instance] = []
    elsewhere = []  # detections of images the data file does not list
    odd_score = []  # person detections scored outside [0, 1]: legal, kept as they are, warned about
    outside: list[int] = []  # person boxes that miss their image entirely: cropped from padding, warned about
    corners: dict[str, list[int]] = {"known": [], "overshoot": [], "not_xyxy": []}  # [x1, y1, x2, y2] written?
    string_ids = any(isinstance(k, str) for k in imgs)  # the data file's ids are strings: so must the boxes' be
    for r, b in enumerate(boxes):
        if not isinstance(b, dict):
            raise PosecalInputError("detection is not an object", file=boxes_file, record=r)
        for key in ("image_id", "bbox", "score"):
            if key not in b:
                raise PosecalInputError("missing", file=boxes_file, record=r, field=key)
        iid = image_ref(b["image_id"], string_ids, boxes_file, r, whose="the data file's image ids")
        bbox = numbers(b["bbox"], 4, boxes_file, r, "bbox")
        score = number(b["score"], boxes_file, r, "score")
        cat = number(b.get("category_id", category), boxes_file, r, "category_id", integer=True)
        _check_box_size(bbox, boxes_file, r)
        if iid not in imgs:
            elsewhere.append(r)
        if iid not in imgs or cat != category:  # other categories (a COCO-80 detector's file): not people
            continue
        if not 0.0 <= score <= 1.0:
            odd_score.append(r)
        _check_detection_image(b, imgs[iid], boxes_file, r)
        wh = _image_wh(imgs[iid], image_size)
        _check_box_on_image(bbox, wh, boxes_file, r, outside)
        _note_corner_box(bbox, wh, r, corners)
        out.append(Instance(iid, -1, imgs[iid]["file_name"], bbox, score, None, float("nan")))
    if odd_score:
        warnings.warn(f"{boxes_file}: {len(odd_score)} person detection score(s) outside [0, 1] (first: record "
                      f"{odd_score[0]}, field 'score'); kept as they are (they scale the instance score)",
                      PosecalWarning, stacklevel=3)
    if outside:
        warnings.warn(f"{boxes_file}: {len(outside)} person box(es) lie entirely outside their image (first: "
                      f"record {outside[0]}, field 'bbox'); their crops hold only padding", PosecalWarning,
                      stacklevel=3)
    over = corners["overshoot"]
    if over and not corners["not_xyxy"] and len(over) >= 0.2 * len(corners["known"]):
        warnings.warn(f"{boxes_file}: {len(over)} of {len(corners['known'])} person boxes, read as COCO's "
                      "[x, y, w, h], run well past their image's right or bottom edge (first: record "
                      f"{over[0]}, field 'bbox'), while every box fits its image as [x1, y1, x2, y2]: corner "
                      "boxes? posecal reads [x, y, w, h]", PosecalWarning, stacklevel=3)
    if elsewhere:
        warnings.warn(f"{boxes_file}: {len(elsewhere)} detection(s) on images that the data file does not "
                      f"list (first: record {elsewhere[0]}); skipped", PosecalWarning, stacklevel=3)
    return out
