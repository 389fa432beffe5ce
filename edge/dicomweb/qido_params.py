r"""QIDO-RS query parameters (PS3.18 8.3.4, imaging.md §7) → `QidoSearch`.

`parse_qido` reads the raw query pairs in order, repeated keys kept:

- matching keys by keyword (`PatientName`, as spelled in PS3.6) or tag (`00100010`, either case);
  UID lists separated by commas (PS3.18) or backslashes, in one value or repeated;
  ModalitiesInStudy likewise (any of). Every other key may appear once.
- `includefield`: comma-joined and/or repeated; keywords, tags or `all`.
- `fuzzymatching`, `emptyvaluematching`, `multiplevaluematching`: `true` / `false`. The last two are
  not supported: `true` is answered with the warning PS3.18 8.3.4.5/8.3.4.6 prescribe.
- `limit` (default and cap from the settings; a larger one is clamped, with a warning) and
  `offset` (at most 100,000): unsigned integers.
- `_` (jQuery's `cache: false` cache-buster) is ignored.

Ignored with a warning (the text of a `Warning: 299` header): a known attribute that is not a
matching key of the level — including a parent key fixed by the path, e.g. StudyInstanceUID at
`/studies/{study}/series` — and sequence paths (`00081115.0020000E`).

400 (`BadRequest`, `field` = the parameter as sent): an unknown keyword or parameter, a malformed
tag, a repeated single-valued key or parameter, a value that does not fit its key (a date, time,
range, UID or integer that does not parse; a wildcard where the VR allows none; a list where one
value is expected), a non-integer, negative or too large limit/offset.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import date

from pydicom.datadict import keyword_dict, keyword_for_tag

from contracts.errors import BadRequest
from contracts.imaging import QidoLevel, QidoMatch, QidoSearch
from contracts.settings import Settings

MAX_OFFSET = 100_000
MAX_VALUE_LENGTH = 1024

STUDY, SERIES, INSTANCE = QidoLevel.STUDY, QidoLevel.SERIES, QidoLevel.INSTANCE
_DEPTH = {STUDY: 0, SERIES: 1, INSTANCE: 2}

# tag → (level, kind); the worker (workers/imaging/qido.py) holds the same table with the columns.
MATCHING_KEYS: dict[str, tuple[QidoLevel, str]] = {
    "0020000D": (STUDY, "uid"),  # StudyInstanceUID
    "00100020": (STUDY, "text"),  # PatientID
    "00100010": (STUDY, "pn"),  # PatientName
    "00080050": (STUDY, "text"),  # AccessionNumber
    "00080020": (STUDY, "date"),  # StudyDate
    "00080030": (STUDY, "time"),  # StudyTime
    "00081030": (STUDY, "text"),  # StudyDescription
    "00080061": (STUDY, "cs_list"),  # ModalitiesInStudy
    "00080090": (STUDY, "pn"),  # ReferringPhysicianName
    "00200010": (STUDY, "text"),  # StudyID
    "0020000E": (SERIES, "uid"),  # SeriesInstanceUID
    "00080060": (SERIES, "text"),  # Modality
    "00200011": (SERIES, "int"),  # SeriesNumber
    "0008103E": (SERIES, "text"),  # SeriesDescription
    "00180015": (SERIES, "text"),  # BodyPartExamined
    "00080018": (INSTANCE, "uid"),  # SOPInstanceUID
    "00080016": (INSTANCE, "uid"),  # SOPClassUID
    "00200013": (INSTANCE, "int"),  # InstanceNumber
}
_LIST_KINDS = frozenset({"uid", "cs_list"})

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_UINT = re.compile(r"[0-9]+")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DA = re.compile(r"[0-9]{8}")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.[0-9]{1,6})?)?)?")
_IS = re.compile(r"[+-]?[0-9]{1,10}")
_LIST_SPLIT = re.compile(r"[,\\]")
_BOOLS = {"true": True, "false": False}


@functools.cache
def _keywords_by_lower() -> dict[str, str]:
    return {k.lower(): k for k in keyword_dict}


def _tag_name(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or tag


def resolve_attribute(name: str, field: str) -> str:
    """A keyword or an 8-hex-digit tag → the tag as 8 upper-case hex digits; 400 otherwise."""
    if _TAG.fullmatch(name):
        return name.upper()
    tag = keyword_dict.get(name)
    if tag is not None:
        return f"{tag:08X}"
    hint = _keywords_by_lower().get(name.lower())
    detail = f"{name!r} is not a query parameter, a DICOM keyword or a tag"
    if hint:
        detail += f" (keywords are case-sensitive: did you mean {hint}?)"
    raise BadRequest(detail, field=field)


def _uint(name: str, value: str) -> int:
    if not _UINT.fullmatch(value):
        raise BadRequest(f"{name} must be an unsigned integer, got {value!r}", field=name)
    return int(value) if len(value) <= 12 else 10**12


def _bool(name: str, value: str) -> bool:
    parsed = _BOOLS.get(value.lower())
    if parsed is None:
        raise BadRequest(f"{name} must be true or false, got {value!r}", field=name)
    return parsed


def _check_date(name: str, value: str) -> date:
    if not _DA.fullmatch(value):
        raise BadRequest(f"{name}: {value!r} is not a date (YYYYMMDD)", field=name)
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not a valid date", field=name) from None


def _check_time(name: str, value: str) -> tuple[str, str]:
    m = _TM.fullmatch(value.replace(":", ""))
    if not m or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59 or int(m.group(3) or 0) > 60:
        raise BadRequest(f"{name}: {value!r} is not a time (HHMMSS.FFFFFF)", field=name)
    digits = "".join(g for g in m.groups() if g)
    return digits.ljust(6, "0"), digits.ljust(6, "9")


def _check_range(name: str, value: str, kind: str) -> None:
    if "-" not in value:
        if kind == "date":
            _check_date(name, value)
        else:
            _check_time(name, value)
        return
    first, _, second = value.partition("-")
    if "-" in second or not (first or second):
        raise BadRequest(f"{name}: {value!r} is not a range (a-b, a- or -b)", field=name)
    if kind == "date":
        low: date | str | None = _check_date(name, first) if first else None
        high: date | str | None = _check_date(name, second) if second else None
    else:
        low = _check_time(name, first)[0] if first else None
        high = _check_time(name, second)[1] if second else None
    if low is not None and high is not None and low > high:  # type: ignore[operator]  # same type
        raise BadRequest(f"{name}: {value!r} ends before it starts", field=name)


def _list(value: str) -> list[str]:
    return [v.strip() for v in _LIST_SPLIT.split(value) if v.strip()]


def _check_value(name: str, kind: str, value: str) -> str:
    """The value as the worker expects it (lists joined by backslashes); 400 when it cannot match."""
    if len(value) > MAX_VALUE_LENGTH:
        raise BadRequest(f"{name}: the value is longer than {MAX_VALUE_LENGTH} characters", field=name)
    value = value.strip()
    if kind == "uid":
        uids = _list(value)
        for uid in uids:
            if uid != "*" and (len(uid) > 64 or not _UID.fullmatch(uid)):
                raise BadRequest(f"{name}: {uid!r} is not a UID (digits and dots, at most 64)", field=name)
        return "\\".join(uids)
    if kind == "cs_list":
        return "\\".join(_list(value))
    if value.strip("*") == "":
        return ""  # universal matching (PS3.4 C.2.2.2.4: "*" alone is universal)
    if "\\" in value:
        raise BadRequest(f"{name}: multiple values are accepted only for UID lists and ModalitiesInStudy",
                         field=name)
    wild = "*" in value or "?" in value
    if kind in ("date", "time"):
        if wild:
            raise BadRequest(f"{name}: wildcards are not allowed for dates and times", field=name)
        _check_range(name, value, kind)
    elif kind == "int" and not _IS.fullmatch(value):
        raise BadRequest(f"{name}: {value!r} is not an integer", field=name)
    return value


def _check_path_uid(name: str, uid: str | None) -> None:
    if uid is not None and (len(uid) > 64 or not _UID.fullmatch(uid)):
        raise BadRequest(f"{name} in the path is not a UID", field=name)


def parse_qido(level: QidoLevel, params: Sequence[tuple[str, str]], *, study_instance_uid: str | None,
               series_instance_uid: str | None, settings: Settings) -> QidoSearch:
    """The query pairs of one QIDO-RS request (decoded, in order, repeated keys kept) → `QidoSearch`.
    `study_instance_uid` / `series_instance_uid` are the path's. Raises `BadRequest` (400)."""
    _check_path_uid("StudyInstanceUID", study_instance_uid)
    _check_path_uid("SeriesInstanceUID", series_instance_uid)
    fixed = set()
    if study_instance_uid and level != STUDY:
        fixed.add(STUDY)
    if series_instance_uid and level == INSTANCE:
        fixed.add(SERIES)
    warnings: list[str] = []
    values: dict[str, list[str]] = {}  # tag → values, in order of first appearance
    include: dict[str, None] = {}
    include_all = False
    singles: dict[str, str] = {}  # fuzzymatching, limit, offset, … → raw value

    for raw_name, value in params:
        name = raw_name.strip()
        lname = name.lower()
        if name == "_":
            continue
        if lname == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item.lower() == "all":
                    include_all = True
                elif "." in item:
                    warnings.append(f"includefield {item}: attributes inside sequences are not supported; ignored")
                else:
                    include.setdefault(resolve_attribute(item, "includefield"))
            continue
        if lname in ("fuzzymatching", "limit", "offset", "emptyvaluematching", "multiplevaluematching"):
            if lname in singles:
                raise BadRequest(f"{lname} is given more than once", field=name)
            singles[lname] = value.strip()
            continue
        if "." in name:  # a sequence path: every step must be an attribute, then it is ignored
            for step in name.split("."):
                resolve_attribute(step, name)
            warnings.append(f"{name}: sequence matching is not supported; the key was ignored")
            continue
        tag = resolve_attribute(name, name)
        key = MATCHING_KEYS.get(tag)
        if key is None or key[0] in fixed or _DEPTH[key[0]] > _DEPTH[level]:
            why = "fixed by the path" if key is not None and key[0] in fixed else "not supported"
            warnings.append(f"{_tag_name(tag)} ({tag}) is {why} as a matching key at the {level} level "
                            "and was ignored")
            continue
        kind = key[1]
        if tag in values and kind not in _LIST_KINDS:
            raise BadRequest(f"{name} is given more than once (only UID lists and ModalitiesInStudy repeat)",
                             field=name)
        values.setdefault(tag, []).append(_check_value(name, kind, value))

    matches = []
    for tag, vals in values.items():
        kind = MATCHING_KEYS[tag][1]
        if kind in _LIST_KINDS:
            # Repeated list keys add to one list; any universal value makes the whole key universal.
            items = [v for val in vals for v in val.split("\\") if v] if all(vals) else []
            value = "" if "*" in items else "\\".join(dict.fromkeys(items))
        else:
            value = vals[0]
        matches.append(QidoMatch(tag=tag, value=value))

    fuzzy = _bool("fuzzymatching", singles["fuzzymatching"]) if "fuzzymatching" in singles else False
    for name, text in (("emptyvaluematching", "Empty Value Matching"),
                       ("multiplevaluematching", "Multiple Value Matching")):
        if name in singles and _bool(name, singles[name]):
            warnings.append(f"The {name} parameter is not supported. {text} has not been performed.")
    limit = settings.qido_default_limit
    if "limit" in singles:
        limit = _uint("limit", singles["limit"])
    if limit > settings.qido_max_limit:
        warnings.append(f"The limit {limit} exceeds the maximum of {settings.qido_max_limit}; at most "
                        f"{settings.qido_max_limit} results are returned. Additional results can be "
                        "requested with offset.")
        limit = settings.qido_max_limit
    offset = _uint("offset", singles["offset"]) if "offset" in singles else 0
    if offset > MAX_OFFSET:
        raise BadRequest(f"offset must be at most {MAX_OFFSET}, got {offset}", field="offset")

    return QidoSearch(
        level=level,
        study_instance_uid=study_instance_uid if level != STUDY else None,
        series_instance_uid=series_instance_uid if level == INSTANCE else None,
        matches=matches,
        include_fields=list(include),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
        warnings=warnings,
    )
