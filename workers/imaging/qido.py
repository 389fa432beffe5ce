r"""QIDO-RS search over the DICOM index (imaging.md §7; PS3.18 10.6; PS3.4 C.2.2.2 matching).

`qido_search` answers one `QidoSearch` (already parsed and validated by the edge,
edge/dicomweb/qido_params.py) with the JSON array of DICOM JSON objects, as bytes the edge passes
through, and the warnings for the `Warning: 299` header.

Matching runs on the normalised columns of `imaging.studies` / `series` / `instances`, never on the
stored DICOM JSON:

- UID list (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID): `=` or
  `= ANY($n::text[])`, btree.
- text (PatientID, AccessionNumber, StudyDescription, StudyID, Modality, SeriesDescription,
  BodyPartExamined): `=` or `LIKE`, case-sensitive (PS3.4 C.2.2.2.1, C.2.2.2.4).
- person name (PatientName, ReferringPhysicianName): case- and accent-insensitive (PS3.4 leaves PN
  matching to the implementation): `f_unaccent(lower(col)) =` / `LIKE f_unaccent(lower($n))`; with
  fuzzymatching, PatientName: every query word starts a word of `patient_name_key` (a regex),
  the query normalised by the ingest's `dicom_file.name_key`.
- date (StudyDate): `=`, `BETWEEN`, `>=`, `<=` on the date column.
- time (StudyTime): the same on the value as HHMMSS text; a reduced-precision bound covers its
  whole hour or minute ("-10" ends at 10:59:59).
- integer (SeriesNumber, InstanceNumber): `=`.
- ModalitiesInStudy: `&& $n::text[]` (GIN): any of the values (`\` or `,` separated).

An empty value, or `*`, is universal matching: no condition, the attribute is returned. Returned
attributes: the level's defaults (spec list, built from the columns: no JSON is parsed for them),
the matching keys, the `includefield` tags (columns first, then the stored `attributes` jsonb /
instance `metadata`, loaded only when a requested tag has no column), and for cross-level searches
the defaults of the levels the path does not fix. A default or matching attribute without a value
is returned empty (`{"vr": ..}`); an `includefield` attribute the entity does not have is left out.
Bulk data (BulkDataURI, PixelData) is never returned. Keys are sorted by tag in every object.

Order: studies newest first (StudyDate, StudyTime, nulls last, then id: the index of migration
0012), series by SeriesNumber, instances by InstanceNumber, each below its parent's order when
the parent is not fixed by the path. limit/offset are applied in SQL.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import msgspec
from pydicom.datadict import dictionary_VR, keyword_for_tag
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.errors import BadRequest
from contracts.imaging import QidoLevel, QidoSearch
from workers.imaging.dicom_file import name_key

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 100_000

STUDY, SERIES, INSTANCE = QidoLevel.STUDY, QidoLevel.SERIES, QidoLevel.INSTANCE
_DEPTH = {STUDY: 0, SERIES: 1, INSTANCE: 2}
_LEVELS = (STUDY, SERIES, INSTANCE)

# ---------------------------------------------------------------- fuzzy PatientName


def _fuzzy_patterns(value: str) -> list[str]:
    r"""PostgreSQL regular expressions a `patient_name_key` must all match: every word of the query,
    normalised by the ingest's own `name_key` (case- and accent-free, `^` and `=` as spaces; `*`
    and `?` kept as wildcards), starts a word of the key: after its start, a space or the
    punctuation `name_key` keeps (O'Brien, Jean-Pierre). Spelled `(^|[ '().,-])` rather than `\m`
    so that pg_trgm's GIN index (`ix_studies_name`) can use it, even for one- and two-letter words.
    `đ`, which has no decomposition, and `d` match each other: "Dat", "Đạt" and "đat" find each other."""
    patterns = []
    for word in name_key(value).split():
        if not word.strip("*"):
            continue
        patterns.append(_WORD_START + "".join(_FUZZY_CHARS.get(ch) or re.escape(ch) for ch in word))
    return patterns


_WORD_START = r"(^|[ '().,-])"
_FUZZY_CHARS = {"*": r"\S*", "?": r"\S", "d": "[dđ]", "đ": "[dđ]"}


# ---------------------------------------------------------------- matching keys


@dataclass(frozen=True, slots=True)
class MatchKey:
    tag: str
    keyword: str
    level: QidoLevel
    column: str  # SQL expression over the aliases s (studies), se (series), i (instances)
    kind: str  # uid | text | pn | date | time | int | cs_list


MATCH_KEYS: dict[str, MatchKey] = {k.tag: k for k in (
    MatchKey("0020000D", "StudyInstanceUID", STUDY, "s.study_instance_uid", "uid"),
    MatchKey("00100020", "PatientID", STUDY, "s.patient_id_in_file", "text"),
    MatchKey("00100010", "PatientName", STUDY, "s.patient_name_in_file", "pn"),
    MatchKey("00080050", "AccessionNumber", STUDY, "s.accession_number", "text"),
    MatchKey("00080020", "StudyDate", STUDY, "s.study_date", "date"),
    MatchKey("00080030", "StudyTime", STUDY, "s.study_time", "time"),
    MatchKey("00081030", "StudyDescription", STUDY, "s.study_description", "text"),
    MatchKey("00080061", "ModalitiesInStudy", STUDY, "s.modalities_in_study", "cs_list"),
    MatchKey("00080090", "ReferringPhysicianName", STUDY, "s.referring_physician_name", "pn"),
    MatchKey("00200010", "StudyID", STUDY, "s.study_id_tag", "text"),
    MatchKey("0020000E", "SeriesInstanceUID", SERIES, "se.series_instance_uid", "uid"),
    MatchKey("00080060", "Modality", SERIES, "se.modality", "text"),
    MatchKey("00200011", "SeriesNumber", SERIES, "se.series_number", "int"),
    MatchKey("0008103E", "SeriesDescription", SERIES, "se.series_description", "text"),
    MatchKey("00180015", "BodyPartExamined", SERIES, "se.body_part_examined", "text"),
    MatchKey("00080018", "SOPInstanceUID", INSTANCE, "i.sop_instance_uid", "uid"),
    MatchKey("00080016", "SOPClassUID", INSTANCE, "i.sop_class_uid", "uid"),
    MatchKey("00200013", "InstanceNumber", INSTANCE, "i.instance_number", "int"),
)}

DEFAULTS: dict[QidoLevel, frozenset[str]] = {
    STUDY: frozenset({
        "00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
        "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208",
    }),
    SERIES: frozenset({
        "00080005", "00080060", "0008103E", "00080021", "00080031", "0020000E", "00200011", "00201209",
        "00180015", "00081190",
    }),
    INSTANCE: frozenset({
        "00080005", "00080016", "00080018", "00200013", "00280010", "00280011", "00280100", "00280008",
        "00081190",
    }),
}
# Never returned empty: Specific Character Set shall not have a zero-length value (PS3.4 C.2.2.2).
_NEVER_EMPTY = frozenset({"00080005"})

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DA = re.compile(r"[0-9]{8}")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.[0-9]{1,6})?)?)?")
_IS = re.compile(r"[+-]?[0-9]{1,10}")
_LIST_SPLIT = re.compile(r"[,\\]")


def vr_of(tag: str) -> str:
    """The dictionary VR of a tag (the first one when the dictionary allows several)."""
    try:
        vr = dictionary_VR(int(tag, 16))
    except (KeyError, ValueError):
        return "UN"
    return vr.split(" or ")[0] if vr else "UN"


def _name(tag: str) -> str:
    try:
        return keyword_for_tag(int(tag, 16)) or tag
    except ValueError:
        return tag


def _bad(key: MatchKey, detail: str) -> BadRequest:
    return BadRequest(f"{key.keyword}: {detail}", field=key.keyword)


def is_wild(value: str) -> bool:
    return "*" in value or "?" in value


def is_universal(value: str) -> bool:
    return value.strip("*") == "" if value else True


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern (escape character: backslash)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def parse_date(key: MatchKey, value: str) -> date:
    if not _DA.fullmatch(value):
        raise _bad(key, f"{value!r} is not a date (YYYYMMDD)")
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise _bad(key, f"{value!r} is not a valid date") from None


def parse_time(key: MatchKey, value: str) -> tuple[str, str]:
    """A TM value as the lowest and highest HHMMSS it stands for ("1015" → 101500…101599)."""
    bare = value.replace(":", "")
    m = _TM.fullmatch(bare)
    if not m:
        raise _bad(key, f"{value!r} is not a time (HHMMSS.FFFFFF)")
    hh, mm, ss = m.group(1), m.group(2), m.group(3)
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise _bad(key, f"{value!r} is not a valid time")
    digits = hh + (mm or "") + (ss or "")
    return digits.ljust(6, "0"), digits.ljust(6, "9")


def parse_range(key: MatchKey, value: str, one: Callable[[MatchKey, str], Any]) -> tuple[Any, Any]:
    """`a`, `a-b`, `a-`, `-b` → (low, high) with None for an open end (PS3.4 C.2.2.2.5)."""
    if "-" not in value:
        low = high = one(key, value)
        return low, high
    first, _, second = value.partition("-")
    if "-" in second or not (first or second):
        raise _bad(key, f"{value!r} is not a range (a-b, a- or -b)")
    low = one(key, first) if first else None
    high = one(key, second) if second else None
    return low, high


def split_list(value: str) -> list[str]:
    return [v.strip() for v in _LIST_SPLIT.split(value) if v.strip()]


# ---------------------------------------------------------------- SQL


class _Sql:
    def __init__(self) -> None:
        self.params: list[Any] = []
        self.where: list[str] = []
        self.patterns = False  # a LIKE or regex condition: plan with its value (see qido_search)

    def p(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def pattern(self, value: str) -> str:
        self.patterns = True
        return self.p(value)


_TIME_SQL = "rpad(split_part(replace(btrim({c}), ':', ''), '.', 1), 6, '0')"
# Person names without fuzzymatching: case- and accent-insensitive (unaccent also folds đ, ø, ł, ß),
# `^` and `=` kept; the GIN index ix_studies_name_unaccent (migration 0012) is on this expression.
_PN_FOLD = "public.f_unaccent(lower({c}))"


def _condition(sql: _Sql, key: MatchKey, value: str, fuzzy: bool) -> str | None:
    """The SQL condition of one matching key, or None for universal matching."""
    col, kind = key.column, key.kind
    value = value.strip()
    if kind == "uid":
        uids = split_list(value)
        if not uids or "*" in uids:
            return None
        for uid in uids:
            if len(uid) > 64 or not _UID.fullmatch(uid):
                raise _bad(key, f"{uid!r} is not a UID")
        return f"{col} = {sql.p(uids[0])}" if len(uids) == 1 else f"{col} = ANY({sql.p(uids)}::text[])"
    if kind == "cs_list":
        values = split_list(value)
        if not values or any(is_universal(v) for v in values):
            return None
        exact = [v for v in values if not is_wild(v)]
        parts = [f"{col} && {sql.p(exact)}::text[]"] if exact else []
        parts += [f"EXISTS (SELECT 1 FROM unnest({col}) AS m(v) WHERE m.v LIKE {sql.pattern(like_pattern(v))})"
                  for v in values if is_wild(v)]
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
    if is_universal(value):
        return None
    if "\\" in value:
        raise _bad(key, "multiple values are accepted only for UID lists and ModalitiesInStudy")
    if kind == "date":
        if is_wild(value):
            raise _bad(key, "wildcards are not allowed for dates")
        low, high = parse_range(key, value, parse_date)
    elif kind == "time":
        if is_wild(value):
            raise _bad(key, "wildcards are not allowed for times")
        low_t, high_t = parse_range(key, value, parse_time)
        low, high = (low_t[0] if low_t else None), (high_t[1] if high_t else None)
        col = _TIME_SQL.format(c=col)
    elif kind == "int":
        if not _IS.fullmatch(value):
            raise _bad(key, f"{value!r} is not an integer")
        return f"{col} = {sql.p(int(value))}"
    elif kind == "pn":
        if fuzzy and key.tag == "00100010":
            patterns = _fuzzy_patterns(value)
            if not patterns:
                return None
            return " AND ".join(f"s.patient_name_key ~ {sql.pattern(p)}" for p in patterns)
        folded = _PN_FOLD.format(c=col)
        if is_wild(value):
            return f"{folded} LIKE {_PN_FOLD.format(c=sql.pattern(like_pattern(value)))}"
        return f"{folded} = {_PN_FOLD.format(c=sql.p(value))}"
    else:  # text: case-sensitive (PS3.4 C.2.2.2.1 / C.2.2.2.4)
        if is_wild(value):
            return f"{col} LIKE {sql.pattern(like_pattern(value))}"
        return f"{col} = {sql.p(value)}"
    if low is not None and high is not None and low > high:
        raise _bad(key, f"{value!r}: the range ends before it starts")
    if low is not None and low == high and kind == "date":
        return f"{col} = {sql.p(low)}"
    if low is not None and high is not None:
        return f"{col} BETWEEN {sql.p(low)} AND {sql.p(high)}"
    if low is not None:
        return f"{col} >= {sql.p(low)}"
    return f"{col} <= {sql.p(high)}"


# ---------------------------------------------------------------- the columns each level returns

_STUDY_COLS = (
    "s.study_instance_uid", "s.patient_id_in_file", "s.patient_name_in_file", "s.patient_birth_date",
    "s.patient_sex", "s.accession_number", "s.study_id_tag", "s.study_date", "s.study_time",
    "s.study_description", "s.referring_physician_name", "s.modalities_in_study", "s.number_of_series",
    "s.number_of_instances", "s.specific_character_set",
)
_SERIES_COLS = (
    "se.series_instance_uid", "se.modality", "se.series_number", "se.series_description",
    "se.body_part_examined", "se.series_date", "se.series_time", "se.protocol_name", "se.number_of_instances",
    "se.specific_character_set",
)
_INSTANCE_COLS = (
    "i.sop_instance_uid", "i.sop_class_uid", "i.instance_number", "i.rows", "i.columns", "i.bits_allocated",
    "i.number_of_frames", "i.photometric_interpretation", "i.transfer_syntax_uid", "i.specific_character_set",
)
_COLS = {STUDY: _STUDY_COLS, SERIES: _SERIES_COLS, INSTANCE: _INSTANCE_COLS}
_ATTRS_COL = {STUDY: "s.attributes::text", SERIES: "se.attributes::text", INSTANCE: "i.metadata"}

# Every DICOM JSON element is encoded to bytes as soon as it is made and the response is joined from
# them: a page of 100 objects never exists as ~4,000 live dicts and lists, which would set off the
# cyclic garbage collector's full passes over the whole process (tens of ms) every few requests.
_encode = msgspec.json.encode
_PREFIXES: dict[str, bytes] = {}
_EMPTIES: dict[str, bytes] = {}
Getter = Callable[[Any, int, str], "bytes | None"]


def _prefix(vr: str) -> bytes:
    prefix = _PREFIXES.get(vr)
    if prefix is None:
        prefix = _PREFIXES[vr] = b'{"vr":"' + vr.encode() + b'","Value":['
    return prefix


def empty_element(vr: str) -> bytes:
    element = _EMPTIES.get(vr)
    if element is None:
        element = _EMPTIES[vr] = b'{"vr":"' + vr.encode() + b'"}'
    return element


def _el(vr: str, value: Any) -> bytes | None:
    if value is None or value == "":
        return None
    return _prefix(vr) + _encode(value) + b"]}"


def _pn(value: str | None) -> bytes | None:
    if not value:
        return None
    groups = {name: g for name, g in zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False)
              if g}
    return _prefix("PN") + _encode(groups) + b"]}" if groups else None


def _da(value: date | None) -> bytes | None:
    if value is None:
        return None
    return _prefix("DA") + b'"%04d%02d%02d"]}' % (value.year, value.month, value.day)


def _cs_list(values: list[str] | None) -> bytes | None:
    return b'{"vr":"CS","Value":' + _encode(values) + b"}" if values else None


def _charset(value: str | None) -> bytes | None:
    return b'{"vr":"CS","Value":' + _encode([v or None for v in value.split("\\")]) + b"}" if value else None


def _column(vr: str, i: int) -> Getter:
    return lambda r, o, url: _el(vr, r[o + i])


_ONLINE = b'{"vr":"CS","Value":["ONLINE"]}'


def _url(r: Any, o: int, url: str) -> bytes:
    return _prefix("UR") + _encode(url) + b"]}"


# tag → how to read it from the row (o: where the level's columns start; url: its RetrieveURL)
_GETTERS: dict[QidoLevel, dict[str, Getter]] = {
    STUDY: {
        "0020000D": _column("UI", 0),
        "00100020": _column("LO", 1),
        "00100010": lambda r, o, url: _pn(r[o + 2]),
        "00100030": _column("DA", 3),
        "00100040": _column("CS", 4),
        "00080050": _column("SH", 5),
        "00200010": _column("SH", 6),
        "00080020": lambda r, o, url: _da(r[o + 7]),
        "00080030": _column("TM", 8),
        "00081030": _column("LO", 9),
        "00080090": lambda r, o, url: _pn(r[o + 10]),
        "00080061": lambda r, o, url: _cs_list(r[o + 11]),
        "00201206": _column("IS", 12),
        "00201208": _column("IS", 13),
        "00080005": lambda r, o, url: _charset(r[o + 14]),
        "00080056": lambda r, o, url: _ONLINE,
        "00081190": _url,
    },
    SERIES: {
        "0020000E": _column("UI", 0),
        "00080060": _column("CS", 1),
        "00200011": _column("IS", 2),
        "0008103E": _column("LO", 3),
        "00180015": _column("CS", 4),
        "00080021": lambda r, o, url: _da(r[o + 5]),
        "00080031": _column("TM", 6),
        "00181030": _column("LO", 7),
        "00201209": _column("IS", 8),
        "00080005": lambda r, o, url: _charset(r[o + 9]),
        "00081190": _url,
    },
    INSTANCE: {
        "00080018": _column("UI", 0),
        "00080016": _column("UI", 1),
        "00200013": _column("IS", 2),
        "00280010": _column("US", 3),
        "00280011": _column("US", 4),
        "00280100": _column("US", 5),
        "00280008": _column("IS", 6),
        "00280004": _column("CS", 7),
        "00083002": _column("UI", 8),
        "00080005": lambda r, o, url: _charset(r[o + 9]),
        "00081190": _url,
    },
}
COLUMN_TAGS: dict[QidoLevel, frozenset[str]] = {lv: frozenset(g) for lv, g in _GETTERS.items()}
_UID_TAG = {STUDY: "0020000D", SERIES: "0020000E", INSTANCE: "00080018"}
_SEGMENT = {STUDY: "/studies/", SERIES: "/series/", INSTANCE: "/instances/"}
# Attributes of the levels below one: never looked up there (PS3.18 10.6.3.3: lower-level attributes
# in includefield are not returned), so OHIF's `includefield=00080060` at the study level costs nothing.
_SHARED = frozenset({"00080005", "00081190"})
_BELOW: dict[QidoLevel, frozenset[str]] = {
    lv: frozenset().union(*(COLUMN_TAGS[d] for d in _LEVELS if _DEPTH[d] > _DEPTH[lv])) - _SHARED
    for lv in _LEVELS
}
_PIXEL_DATA = "7FE00010"


def _order(level: QidoLevel, fixed: set[QidoLevel]) -> str:
    parts = []
    if STUDY not in fixed:
        parts.append("s.study_date DESC NULLS LAST, s.study_time DESC NULLS LAST, s.id")
    if _DEPTH[level] >= 1 and SERIES not in fixed:
        parts.append("se.series_number, se.id")
    if level == INSTANCE:
        parts.append("i.instance_number, i.id")
    return ", ".join(parts)


def _from(level: QidoLevel) -> str:
    if level == STUDY:
        return "imaging.studies s"
    if level == SERIES:
        return "imaging.series se JOIN imaging.studies s ON s.id = se.study_id"
    return ("imaging.instances i JOIN imaging.series se ON se.id = i.series_id "
            "JOIN imaging.studies s ON s.id = i.study_id")


_AttrsType = dict[str, msgspec.Raw]
_decode_attrs = msgspec.json.Decoder(_AttrsType)


def _stored(raw: str | None) -> dict[str, msgspec.Raw]:
    """Stored DICOM JSON as tag → the element's own JSON, unparsed."""
    if not raw:
        return {}
    try:
        return _decode_attrs.decode(raw)
    except msgspec.ValidationError:
        return {}


def _usable(element: msgspec.Raw | None) -> bytes | None:
    """The element's JSON, unless it is (or holds) bulk data."""
    if element is None:
        return None
    data = bytes(element)
    return None if b'"BulkDataURI"' in data else data


def _private_creator(tag: str) -> str | None:
    """The Private Creator of a private data element (gggg,xxyy → gggg,00xx), None if not private."""
    group, elem = int(tag[:4], 16), int(tag[4:], 16)
    if group % 2 == 1 and elem >= 0x1000:
        return f"{group:04X}{elem >> 8:04X}"
    return None


# ---------------------------------------------------------------- the search


@dataclass(slots=True)
class QidoPlan:
    """The SQL of one search and how to turn its rows into DICOM JSON."""

    sql: str
    params: list[Any]
    levels: tuple[QidoLevel, ...]  # the levels whose columns are selected, top first
    offsets: dict[QidoLevel, int]
    attrs_at: dict[QidoLevel, int]  # level → index of its stored attributes column
    emit: dict[QidoLevel, tuple[tuple[str, Getter, bytes | None], ...]]  # per level: (tag, getter, when empty)
    include_stored: tuple[str, ...]  # requested tags looked up in the stored attributes
    full: dict[QidoLevel, bool]  # per level: all its columns selected (else only its UID)
    custom_plan: bool  # plan with the values: the statement has LIKE / regex patterns


def plan_search(q: QidoSearch, *, default_limit: int = DEFAULT_LIMIT,
                max_limit: int = MAX_LIMIT) -> tuple[QidoPlan | None, list[str], int, int]:
    """Validate the search and build its SQL. Returns (plan or None when nothing can match,
    warnings, limit, offset)."""
    warnings: list[str] = []
    level = q.level
    path_uids: dict[QidoLevel, str] = {}
    if q.study_instance_uid and level != STUDY:
        path_uids[STUDY] = q.study_instance_uid
    if q.series_instance_uid and level == INSTANCE:
        path_uids[SERIES] = q.series_instance_uid
    fixed = frozenset(path_uids)
    searchable = {lv for lv in _LEVELS if _DEPTH[lv] <= _DEPTH[level] and lv not in fixed}

    limit = default_limit if q.limit is None else q.limit
    if limit > max_limit:
        warnings.append(f"The limit {limit} exceeds the maximum of {max_limit}; at most {max_limit} results "
                        "are returned. Additional results can be requested with offset.")
        limit = max_limit
    offset = q.offset
    if offset > MAX_OFFSET:
        raise BadRequest(f"offset: at most {MAX_OFFSET}", field="offset")

    sql = _Sql()
    for lv, uid in path_uids.items():
        sql.where.append(f"{MATCH_KEYS[_UID_TAG[lv]].column} = {sql.p(uid)}")
    matched: dict[QidoLevel, set[str]] = {lv: set() for lv in _LEVELS}
    for match in q.matches:
        key = MATCH_KEYS.get(match.tag)
        if key is None or key.level not in searchable:
            where = "fixed by the path" if key is not None and key.level in fixed else "not supported"
            warnings.append(f"{_name(match.tag)} ({match.tag}) is {where} as a matching key at the {level} "
                            "level and was ignored")
            continue
        condition = _condition(sql, key, match.value, q.fuzzy)
        if condition is not None:
            sql.where.append(condition)
        matched[key.level].add(key.tag)

    # What each selected level returns: its defaults when it is the level searched or a parent the
    # path does not fix; for a fixed parent only its UID (the path's own).
    levels = tuple(lv for lv in _LEVELS if _DEPTH[lv] <= _DEPTH[level])
    required: dict[QidoLevel, frozenset[str]] = {}
    for lv in levels:
        base = DEFAULTS[lv] if lv not in fixed else frozenset({_UID_TAG[lv]})
        required[lv] = base | matched[lv]
    include = [t.upper() for t in q.include_fields]
    include_cols = {lv: frozenset(t for t in include if t in COLUMN_TAGS[lv]) for lv in levels}
    # A fixed parent selects only its UID, unless a requested tag has a column there.
    full = {lv: lv not in fixed or bool(include_cols[lv]) for lv in levels}
    column_backed = set().union(*(include_cols[lv] for lv in levels))
    include_stored = tuple(t for t in include if t not in column_backed and t not in _BELOW[level]
                           and t != _PIXEL_DATA)

    # Stored attributes: the searched level's for includefield=all, and any level that may hold a
    # requested tag without a column (an instance's metadata holds them all).
    attr_levels: list[QidoLevel] = []
    if q.include_all:
        attr_levels.append(level)
    if include_stored:
        attr_levels += [INSTANCE] if level == INSTANCE else list(levels)
    columns: list[str] = []
    offsets: dict[QidoLevel, int] = {}
    for lv in levels:
        offsets[lv] = len(columns)
        if full[lv]:
            columns.extend(_COLS[lv])
        else:
            columns.append(MATCH_KEYS[_UID_TAG[lv]].column)
    attrs_at: dict[QidoLevel, int] = {}
    for lv in dict.fromkeys(attr_levels):
        attrs_at[lv] = len(columns)
        columns.append(_ATTRS_COL[lv])

    columns.append("s.patient_id")  # last: whose data this row is, for the audit trail (never returned)
    text = f"SELECT {', '.join(columns)} FROM {_from(level)}"
    if sql.where:
        text += " WHERE " + " AND ".join(sql.where)
    text += f" ORDER BY {_order(level, set(fixed))} LIMIT {int(limit)}"
    if offset:
        text += f" OFFSET {int(offset)}"
    emit = {lv: tuple((tag, _GETTERS[lv][tag],
                       empty_element(vr_of(tag)) if tag in required[lv] and tag not in _NEVER_EMPTY else None)
                      for tag in sorted(required[lv] | include_cols[lv]))
            for lv in levels}
    plan = QidoPlan(text, sql.params, levels, offsets, attrs_at, emit, include_stored, full, sql.patterns)
    return (plan if limit > 0 else None), warnings, limit, offset


def _build(plan: QidoPlan, include_all: bool, level: QidoLevel, row: Any, base: str) -> bytes:
    """One result as DICOM JSON bytes, keys sorted by tag."""
    obj: dict[str, bytes] = {}
    url = base
    stored = {lv: _stored(row[i]) for lv, i in plan.attrs_at.items()}
    for lv in plan.levels:
        o = plan.offsets[lv]
        url += _SEGMENT[lv] + row[o]
        attrs = stored.get(lv)
        if attrs:
            if include_all and lv == level:
                for tag, raw in attrs.items():
                    data = _usable(raw)
                    if data is not None and tag != _PIXEL_DATA:
                        obj[tag] = data
            for tag in plan.include_stored:
                data = _usable(attrs.get(tag))
                if data is not None:
                    obj[tag] = data
                    creator = _private_creator(tag)
                    creator_data = _usable(attrs.get(creator)) if creator else None
                    if creator and creator_data is not None:
                        obj[creator] = creator_data
        if not plan.full[lv]:
            obj[_UID_TAG[lv]] = _el("UI", row[o])  # type: ignore[assignment]  # a path UID is never empty
            continue
        for tag, getter, when_empty in plan.emit[lv]:
            data = getter(row, o, url)
            if data is not None:
                obj[tag] = data
            elif when_empty is not None and tag not in obj:
                obj[tag] = when_empty
    return b"{" + b",".join([b'"' + tag.encode() + b'":' + obj[tag] for tag in sorted(obj)]) + b"}"


async def qido_search(conn: AsyncConnection, q: QidoSearch, *, base_url: str,
                      default_limit: int = DEFAULT_LIMIT, max_limit: int = MAX_LIMIT,
                      patients: set[Any] | None = None) -> tuple[bytes, list[str]]:
    """Run one QIDO-RS search: the JSON array (bytes) of DICOM JSON objects and the warnings of
    the search itself (`q.warnings`, the edge's, are not repeated: the handler adds them).
    `base_url` is the public base (settings.public_base_url)."""
    plan, warnings, _limit, _offset = plan_search(q, default_limit=default_limit, max_limit=max_limit)
    if plan is None:
        return b"[]", warnings
    if plan.custom_plan:
        # The statement is prepared once per connection and Postgres moves to a generic plan after
        # five runs; for a LIKE or regex pattern that plan cannot see the pattern and guesses (a
        # bitmap scan of the trigram index, then sorting every match: 15–35 ms instead of 1–3 at
        # 10,000 studies for `*nguy*` or `*le*`). Plan this one with its values. Session-level
        # SET/RESET: worker queries run in autocommit, where SET LOCAL would do nothing.
        await conn.exec_driver_sql("SET plan_cache_mode = force_custom_plan")
    try:
        rows = (await conn.exec_driver_sql(plan.sql, tuple(plan.params))).all()
    finally:
        if plan.custom_plan:
            with contextlib.suppress(DBAPIError):  # an aborted transaction takes the SET with it
                await conn.exec_driver_sql("RESET plan_cache_mode")
    if patients is not None:  # the matched patients whose data the answer holds (the audit trail names them)
        patients.update(row[-1] for row in rows if row[-1] is not None)
    base = base_url.rstrip("/") + "/dicom-web"
    return b"[" + b",".join([_build(plan, q.include_all, q.level, row, base) for row in rows]) + b"]", warnings

