"""QIDO-RS: the study order as one index, and PatientName matching without fuzzymatching.

- `ix_studies_qido_order`: QIDO-RS lists studies newest first: StudyDate, then StudyTime, both
  descending with nulls last, then id (imaging.md §7; workers/imaging/qido.py). `ix_studies_date`
  of 0009 sorts StudyTime nulls first, so a page of the study list (OHIF's worklist, `limit=101`)
  sorted every matching study; with this index it reads the first rows of the index and stops, and
  `/series` and `/instances` without a study walk it too.
- `ix_studies_name_unaccent`: without fuzzymatching (OHIF's default) PatientName is matched case-
  and accent-insensitively, `*nguyen*` finding "Nguyễn^Văn^An", as
  `f_unaccent(lower(patient_name_in_file)) LIKE f_unaccent(lower(…))`. Without an index on that
  expression Postgres had no statistics for it, guessed few matches and scanned the whole table
  (9–22 ms at 10,000 studies, growing with it); the trigram index gives it the statistics (a
  common name walks `ix_studies_qido_order`) and a bitmap scan for a rare one. Same expression and
  operator class as the other name indexes of the system (0002, 0004).

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_studies_qido_order ON imaging.studies "
        "(study_date DESC NULLS LAST, study_time DESC NULLS LAST, id)"
    )
    op.execute(
        "CREATE INDEX ix_studies_name_unaccent ON imaging.studies "
        "USING gin (public.f_unaccent(lower(patient_name_in_file)) gin_trgm_ops)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX imaging.ix_studies_name_unaccent")
    op.execute("DROP INDEX imaging.ix_studies_qido_order")
