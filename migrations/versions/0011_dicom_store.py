"""Imaging: what ingest and DICOMweb need on top of the index of 0009.

- `instances.metadata` becomes text: the DICOM JSON exactly as built at ingest, passed through to
  WADO-RS metadata without being re-parsed or re-ordered by jsonb.
- `instances.pixel_index` (jsonb) replaces `frame_offsets`: where PixelData starts, its length,
  and for encapsulated data the fragments of every frame, so one frame is one ranged read.
- `studies.stored_by`, `series.study_instance_uid`-free lookups: QIDO's cross-level queries join by
  ids; the UIDs stay unique per level.
- A study or series never crosses patients silently: `studies.patient_id` is set at ingest from the
  MRN match, and `updated_at`/`version` move with every stored instance (the metadata cache key).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE imaging.instances DROP COLUMN frame_offsets")
    op.execute("ALTER TABLE imaging.instances ADD COLUMN pixel_index jsonb")
    op.execute("ALTER TABLE imaging.instances ALTER COLUMN metadata TYPE text USING metadata::text")
    op.execute("ALTER TABLE imaging.instances ADD COLUMN specific_character_set text")
    op.execute("ALTER TABLE imaging.studies ADD COLUMN created_by uuid")
    op.execute("ALTER TABLE imaging.studies ADD COLUMN specific_character_set text")
    op.execute("ALTER TABLE imaging.series ADD COLUMN specific_character_set text")
    # QIDO: `/instances?SOPInstanceUID=` is the unique index; by study and series the existing ones;
    # the study list filtered by modality uses the GIN on modalities_in_study.
    op.execute("CREATE INDEX ix_studies_uid_prefix ON imaging.studies (study_instance_uid text_pattern_ops)")
    op.execute("CREATE INDEX ix_studies_patient_in_file_pattern ON imaging.studies (patient_id_in_file text_pattern_ops)")
    op.execute("CREATE INDEX ix_studies_received ON imaging.studies (received_at DESC, id)")


def downgrade() -> None:
    op.execute("DROP INDEX imaging.ix_studies_received")
    op.execute("DROP INDEX imaging.ix_studies_patient_in_file_pattern")
    op.execute("DROP INDEX imaging.ix_studies_uid_prefix")
    op.execute("ALTER TABLE imaging.series DROP COLUMN specific_character_set")
    op.execute("ALTER TABLE imaging.studies DROP COLUMN specific_character_set")
    op.execute("ALTER TABLE imaging.studies DROP COLUMN created_by")
    op.execute("ALTER TABLE imaging.instances DROP COLUMN specific_character_set")
    op.execute("ALTER TABLE imaging.instances ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb")
    op.execute("ALTER TABLE imaging.instances DROP COLUMN pixel_index")
    op.execute("ALTER TABLE imaging.instances ADD COLUMN frame_offsets bigint[]")
