"""Free-text patient search (`q`): an identifier exactly, else a name by its words, typo-tolerant.

Every patient carries `name_set`: the accent- and case-free words of the name, distinct, sorted and
joined by spaces. `patients.name_sets` holds each distinct set once with its words (GIN), and
`patients.name_vocabulary` each word once (trigram GiST). A query is split into words the same way;
each typed word is corrected against the vocabulary: itself if it is a name word, and words within a
small edit distance among its trigram neighbours; an unknown last word also as the start of a word
(search-as-you-type). Then, newest first within each tier:

1. the patients whose word set *is* one of the best corrections, closest first — "nguyen van anh"
   finds every Nguyễn Văn Anh before anyone else, and a typo that is itself a name word still finds
   the name that was meant;
2. the patients whose names contain a likely reading of every typed word — "pham thach" finds
   Phạm Ngọc Thạch.

Both tiers are lists of name sets, and a set's patients come newest first from the btree on
(`name_set`, `created_at`): a page merges at most page × limit entries per set from the index alone.
So a search corrects against hundreds of words and reads sets and index entries, never the million
names; its cost does not grow with the number of patients who share a common family name.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Select, Text, any_, func, literal, or_, select, text, true
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import MAX_WINDOW, ListParams
from workers.patients import mrn as mrns
from workers.patients.tables import name_sets, patients
from workers.runtime.lists import fetch_page

MAX_WORDS = 6  # more typed words than this are not a name
CANDIDATES_PER_WORD = 6
MAX_SETS = 32  # exact word sets looked up in the first tier
NEIGHBOURS = 16  # trigram neighbours of a typed word checked for edit distance
PREFIXES = 8  # vocabulary words extending the last typed word
MAX_WIDE_SETS = 2000  # name sets merged newest first in one statement; beyond, the planner decides


def max_edits(word: str) -> int:
    """Edits tolerated in a typed word: none in one or two letters, one up to six, two from seven."""
    return 0 if len(word) <= 2 else 1 if len(word) <= 6 else 2


_CANDIDATES = text(
    r"""
    WITH typed AS (
        SELECT t.w, t.ord, max(t.ord) OVER () AS last
        FROM regexp_split_to_table(public.f_unaccent(lower(:q)), '[^[:alnum:]]+') WITH ORDINALITY AS t(w, ord)
        WHERE t.w <> ''
    )
    SELECT typed.ord, typed.w AS typed, c.word, min(c.edits) AS edits, bool_or(c.prefix) AS prefix,
           public.similarity(c.word, typed.w) AS similarity
    FROM typed CROSS JOIN LATERAL (
        SELECT n.word, public.levenshtein_less_equal(n.word, typed.w, 2) AS edits, false AS prefix
        FROM (SELECT v.word FROM patients.name_vocabulary v ORDER BY v.word <-> typed.w LIMIT :neighbours) n
        UNION ALL
        SELECT v.word, 0, false FROM patients.name_vocabulary v WHERE v.word = typed.w
        UNION ALL
        SELECT p.word, 3, true FROM (
            SELECT v.word FROM patients.name_vocabulary v
            WHERE typed.ord = typed.last AND v.word LIKE typed.w || '%' AND v.word <> typed.w
              AND NOT EXISTS (SELECT FROM patients.name_vocabulary k WHERE k.word = typed.w)
            ORDER BY length(v.word), v.word LIMIT :prefixes
        ) p
    ) c
    GROUP BY typed.ord, typed.w, c.word
    """
)


@dataclass(frozen=True)
class Candidate:
    word: str
    cost: int  # edits; a word the typed (last) word begins costs one
    similarity: float
    prefix: bool


@dataclass(frozen=True)
class TypedWord:
    typed: str
    candidates: tuple[Candidate, ...]  # the most likely first

    @property
    def likely(self) -> list[str]:
        """What the word most probably is: itself if it is a name word, else its closest corrections;
        for the last word also the words it begins."""
        best = min((c.cost for c in self.candidates if not c.prefix), default=None)
        return [c.word for c in self.candidates if c.prefix or c.cost == best]


async def correct(conn: AsyncConnection, q: str) -> list[TypedWord] | None:
    """The typed words with their corrections; None when some word matches no name word."""
    rows = (await conn.execute(_CANDIDATES, {"q": q, "neighbours": NEIGHBOURS, "prefixes": PREFIXES})).all()
    typed: dict[int, tuple[str, list[Candidate]]] = {}
    for row in rows:
        word, found = typed.setdefault(row.ord, (row.typed, []))
        if row.edits == 0:
            found.append(Candidate(row.word, 0, row.similarity, False))
        elif row.prefix:
            found.append(Candidate(row.word, 1, row.similarity, True))
        elif row.edits <= max_edits(word):
            found.append(Candidate(row.word, row.edits, row.similarity, False))
    out: list[TypedWord] = []
    for _, (word, found) in sorted(typed.items()):
        found.sort(key=lambda c: (c.cost, -c.similarity, c.word))
        out.append(TypedWord(word, tuple(found[:CANDIDATES_PER_WORD])))
    if not out or len(out) > MAX_WORDS or any(not w.candidates for w in out):
        return None
    return out


def best_sets(words: Sequence[TypedWord], limit: int = MAX_SETS) -> list[list[str]]:
    """The `limit` word sets with the fewest edits in all (a beam over the candidates), closest
    first, as the sorted arrays `name_words` holds."""
    beam: list[tuple[int, tuple[int, ...], frozenset[str]]] = [(0, (), frozenset())]
    for w in words:
        grown = [(cost + c.cost, (*order, i), chosen | {c.word})
                 for cost, order, chosen in beam for i, c in enumerate(w.candidates)]
        beam = heapq.nsmallest(limit, grown, key=lambda x: (x[0], x[1]))
    seen: set[frozenset[str]] = set()
    out: list[list[str]] = []
    for _, _, chosen in beam:
        if chosen not in seen:
            seen.add(chosen)
            out.append(sorted(chosen))
    return out


def identifier_match(term: str) -> ColumnElement[bool]:
    """An MRN (read the Crockford way), a phone or an insurance number, exactly."""
    matches: list[ColumnElement[bool]] = [patients.c.phone == term, patients.c.insurance_number == term]
    if mrns.is_mrn(term):
        matches.append(patients.c.mrn == mrns.normalise(term))
    return or_(*matches)


def _texts(items: Sequence[str]) -> Any:
    return literal(list(items), ARRAY(Text))


@dataclass(frozen=True)
class NameQuery:
    """A name search: the best exact word sets, and the sets holding a likely reading of every typed
    word (see the module docstring)."""

    words: Sequence[TypedWord]
    sets: list[str]  # the best exact word sets, closest first, as `name_set` holds them

    @classmethod
    def of(cls, words: Sequence[TypedWord]) -> NameQuery:
        return cls(words, [" ".join(s) for s in best_sets(words)])

    def containing(self) -> Select[Any]:
        """The name sets holding a likely reading of every typed word (GIN on `name_sets.words`)."""
        return select(name_sets.c.name_set).where(
            *(name_sets.c.words.overlap(_texts(w.likely)) for w in self.words)
        )

    def matches(self) -> ColumnElement[bool]:
        """A patient's name is one of the exact sets or contains the words."""
        return or_(patients.c.name_set == any_(_texts(self.sets)), patients.c.name_set.in_(self.containing()))

    async def wider_sets(self, conn: AsyncConnection) -> list[str] | None:
        """The containing sets beyond the exact ones, or None when there are more than MAX_WIDE_SETS."""
        exact = set(self.sets)
        found = (await conn.execute(self.containing().limit(MAX_WIDE_SETS + len(exact) + 1))).scalars().all()
        if len(found) > MAX_WIDE_SETS + len(exact):
            return None
        return sorted(s for s in found if s not in exact)


def _merged_page(columns: Sequence[Any], filters: Sequence[ColumnElement[bool]], sets: Sequence[str],
                 ranked: int, offset: int, limit: int) -> Select[Any]:
    """One page over the patients of `sets`: the first `ranked` sets in their order, then the rest
    together; newest first within each. Every set contributes at most offset + limit entries, read
    newest first from `ix_patients_name_set` (index only, when the filters are only about deletion),
    and only the page's rows are read from the table."""
    listed = func.unnest(_texts(sets)).table_valued("name_set", with_ordinality="rank").render_derived("listed")
    per_set = (
        select(patients.c.id, patients.c.created_at)
        .where(patients.c.name_set == listed.c.name_set, *filters)
        .order_by(patients.c.created_at.desc().nulls_last(), patients.c.id.desc())
        .limit(offset + limit)
        .lateral("per_set")
    )
    tier = func.least(listed.c.rank, ranked + 1).label("tier")
    page = (
        select(per_set.c.id, per_set.c.created_at, tier)
        .select_from(listed.join(per_set, true()))
        .order_by(tier, per_set.c.created_at.desc().nulls_last(), per_set.c.id.desc())
        .limit(limit).offset(offset)
        .subquery("page")
    )
    return (
        select(*columns)
        .select_from(page.join(patients, patients.c.id == page.c.id))
        .order_by(page.c.tier, page.c.created_at.desc().nulls_last(), page.c.id.desc())
    )


async def search_page(conn: AsyncConnection, term: str, columns: Sequence[Any],
                      filters: Sequence[ColumnElement[bool]], params: ListParams,
                      sort_columns: Mapping[str, ColumnElement[Any]],
                      default_sort: str) -> tuple[list[Any], int, bool]:
    """(rows, total, total_is_lower_bound) of one page of a free-text search. Identifier matches,
    when there are any, are the whole answer. Else names: without an explicit sort the exact word
    sets first (closest first), then the names that contain the words; newest first within each."""
    tiebreak = patients.c.id
    found = await fetch_page(conn, select(*columns).where(*filters, identifier_match(term)), params, sort_columns,
                             default_sort, tiebreak)
    if found[1]:
        return found
    words = await correct(conn, term)
    if words is None:
        return [], 0, False
    name = NameQuery.of(words)
    wider = None if params.sort else await name.wider_sets(conn)
    if wider is None:  # an explicit order, or a very common word: the planner's choice over one condition
        return await fetch_page(conn, select(*columns).where(*filters, name.matches()), params, sort_columns,
                                default_sort, tiebreak)
    params.window_check()
    sets = name.sets + wider
    offset = (params.page - 1) * params.limit
    rows = list((await conn.execute(
        _merged_page(columns, filters, sets, len(name.sets), offset, params.limit)
    )).all())
    if params.page == 1 and len(rows) < params.limit:
        return rows, len(rows), False
    capped = select(literal(1)).where(patients.c.name_set == any_(_texts(sets)), *filters).limit(MAX_WINDOW + 1)
    total = (await conn.execute(select(func.count()).select_from(capped.subquery()))).scalar_one()
    return rows, min(total, MAX_WINDOW + 1), total > MAX_WINDOW
