"""Patient name search by words.

Every patient gets `name_set`: the accent- and case-free words of the name, distinct, sorted and
joined by spaces ("Phạm Ngọc Thạch" and "Thạch Phạm Ngọc" are both "ngoc pham thach"), with a btree
that lists everyone of one name set newest first from the index alone. Two small tables beside it:
`name_sets` (each distinct set once, its words in a GIN index: which names contain these words?)
and `name_vocabulary` (each name word once, trigram GiST: which known words is this typo close
to?). Both are kept by statement-level triggers, so a bulk load learns its words in one pass.

At a million patients, trigram similarity over whole names cannot be fast: a common family name
(Nguyễn is ~40 % of Vietnamese patients) shares most trigrams with every query. Typos are instead
corrected against the vocabulary (hundreds to a few thousand words), the corrected words find their
name sets (about a tenth as many as patients), and the sets find their patients by btree. The
whole-name trigram indexes go; they cost every registration and answer no query now.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS fuzzystrmatch")
    op.execute(
        r"""
        CREATE FUNCTION public.f_name_words(text) RETURNS text[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
        AS $$
            SELECT coalesce(array_agg(DISTINCT w ORDER BY w), '{}')
            FROM (SELECT t COLLATE "C" AS w
                  FROM regexp_split_to_table(public.f_unaccent(lower($1)), '[^[:alnum:]]+') AS t) words
            WHERE w <> ''
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION public.f_name_set(text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
        AS $$ SELECT array_to_string(public.f_name_words($1), ' ') $$
        """
    )
    op.execute("DROP INDEX IF EXISTS patients.ix_patients_name_knn")
    op.execute("DROP INDEX IF EXISTS patients.ix_patients_name_trgm")
    op.execute(
        "ALTER TABLE patients.patients ADD COLUMN name_set text GENERATED ALWAYS AS "
        "(public.f_name_set(first_name || ' ' || last_name)) STORED"
    )
    # Everyone with exactly this set of name words, newest first, read from the index alone.
    op.execute("CREATE INDEX ix_patients_name_set ON patients.patients "
               "(name_set, created_at DESC NULLS LAST, id DESC) INCLUDE (deleted_at)")
    op.execute("CREATE TABLE patients.name_sets (name_set text PRIMARY KEY, words text[] NOT NULL)")
    op.execute("CREATE TABLE patients.name_vocabulary (word text PRIMARY KEY)")
    op.execute("CREATE INDEX ix_name_vocabulary_trgm ON patients.name_vocabulary USING gist (word gist_trgm_ops)")
    op.execute("CREATE INDEX ix_name_vocabulary_prefix ON patients.name_vocabulary (word text_pattern_ops)")
    # Statement-level, from the transition table: one insert per statement, rows in key order (one
    # lock order for concurrent registrations), and a row only for a set or word never seen before.
    op.execute(
        """
        CREATE FUNCTION patients.learn_names() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO patients.name_sets (name_set, words)
            SELECT DISTINCT name_set, string_to_array(name_set, ' ') FROM new_rows WHERE name_set <> ''
            ORDER BY 1 ON CONFLICT DO NOTHING;
            INSERT INTO patients.name_vocabulary (word)
            SELECT DISTINCT unnest(string_to_array(name_set, ' ')) FROM new_rows WHERE name_set <> ''
            ORDER BY 1 ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $$
        """
    )
    for verb in ("INSERT", "UPDATE"):
        op.execute(
            f"CREATE TRIGGER learn_names_{verb.lower()} AFTER {verb} ON patients.patients "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION patients.learn_names()"
        )
    op.execute("INSERT INTO patients.name_sets (name_set, words) SELECT DISTINCT name_set, "
               "string_to_array(name_set, ' ') FROM patients.patients WHERE name_set <> '' ON CONFLICT DO NOTHING")
    op.execute("INSERT INTO patients.name_vocabulary (word) SELECT DISTINCT unnest(words) FROM patients.name_sets "
               "ON CONFLICT DO NOTHING")
    # No pending list: a search never scans unsorted recent entries (a new name set is rare).
    op.execute("CREATE INDEX ix_name_sets_words ON patients.name_sets USING gin (words) WITH (fastupdate = off)")


def downgrade() -> None:
    op.execute("DROP TRIGGER learn_names_insert ON patients.patients")
    op.execute("DROP TRIGGER learn_names_update ON patients.patients")
    op.execute("DROP FUNCTION patients.learn_names()")
    op.execute("DROP TABLE patients.name_vocabulary")
    op.execute("DROP TABLE patients.name_sets")
    op.execute("ALTER TABLE patients.patients DROP COLUMN name_set")
    op.execute("DROP FUNCTION public.f_name_set(text)")
    op.execute("DROP FUNCTION public.f_name_words(text)")
    op.execute("CREATE INDEX ix_patients_name_trgm ON patients.patients USING gin (name_key gin_trgm_ops)")
    op.execute("CREATE INDEX ix_patients_name_knn ON patients.patients USING gist (name_key gist_trgm_ops)")
