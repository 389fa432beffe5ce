"""Imaging domain, the DICOM index: studies, series, instances (values kept as the modality wrote
them, plus the normalised columns QIDO-RS matches on).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE imaging.studies (
            id uuid PRIMARY KEY,
            study_instance_uid text NOT NULL,
            patient_id uuid,
            match_status text NOT NULL CHECK (match_status IN ('matched', 'unmatched')),
            patient_id_in_file text,
            patient_name_in_file text,
            patient_name_key text,          -- accent- and case-free, for fuzzy matching
            patient_birth_date text,
            patient_sex text,
            accession_number text,
            study_id_tag text,
            study_date date,                -- parsed DA; null when absent or invalid
            study_time text,                -- TM as written
            study_description text,
            referring_physician_name text,
            modalities_in_study text[] NOT NULL DEFAULT '{}',
            number_of_series integer NOT NULL DEFAULT 0,
            number_of_instances integer NOT NULL DEFAULT 0,
            status text NOT NULL DEFAULT 'scanned',
            order_id uuid,
            modality_machine_id uuid,
            manifest_sha256 text,
            attributes jsonb NOT NULL DEFAULT '{}',   -- study-level DICOM JSON of the first instance
            received_at timestamptz NOT NULL,
            last_instance_at timestamptz NOT NULL,
            stable_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            version integer NOT NULL DEFAULT 1,
            CONSTRAINT uq_studies_uid UNIQUE (study_instance_uid)
        )
        """
    )
    op.execute("CREATE INDEX ix_studies_date ON imaging.studies (study_date DESC NULLS LAST, study_time DESC, id)")
    op.execute("CREATE INDEX ix_studies_patient_in_file ON imaging.studies (patient_id_in_file)")
    op.execute("CREATE INDEX ix_studies_patient ON imaging.studies (patient_id)")
    op.execute("CREATE INDEX ix_studies_accession ON imaging.studies (accession_number)")
    op.execute("CREATE INDEX ix_studies_name ON imaging.studies USING gin (patient_name_key gin_trgm_ops)")
    op.execute("CREATE INDEX ix_studies_modalities ON imaging.studies USING gin (modalities_in_study)")
    op.execute("CREATE INDEX ix_studies_stable ON imaging.studies (last_instance_at) WHERE stable_at IS NULL")
    op.execute(
        """
        CREATE TABLE imaging.series (
            id uuid PRIMARY KEY,
            study_id uuid NOT NULL REFERENCES imaging.studies (id) ON DELETE CASCADE,
            series_instance_uid text NOT NULL,
            modality text,
            series_number integer,
            series_description text,
            body_part_examined text,
            series_date date,
            series_time text,
            protocol_name text,
            number_of_instances integer NOT NULL DEFAULT 0,
            attributes jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            version integer NOT NULL DEFAULT 1,
            CONSTRAINT uq_series_uid UNIQUE (series_instance_uid)
        )
        """
    )
    op.execute("CREATE INDEX ix_series_study ON imaging.series (study_id, series_number)")
    op.execute("CREATE INDEX ix_series_modality ON imaging.series (modality)")
    op.execute(
        """
        CREATE TABLE imaging.instances (
            id uuid PRIMARY KEY,
            study_id uuid NOT NULL REFERENCES imaging.studies (id) ON DELETE CASCADE,
            series_id uuid NOT NULL REFERENCES imaging.series (id) ON DELETE CASCADE,
            sop_instance_uid text NOT NULL,
            sop_class_uid text NOT NULL,
            instance_number integer,
            transfer_syntax_uid text NOT NULL,
            number_of_frames integer NOT NULL DEFAULT 1,
            rows integer,
            columns integer,
            bits_allocated integer,
            photometric_interpretation text,
            size_bytes bigint NOT NULL,
            sha256 text NOT NULL,
            file_name text NOT NULL,
            source text NOT NULL CHECK (source IN ('upload', 'stow')),
            blob_key text NOT NULL,
            metadata jsonb NOT NULL,         -- DICOM JSON of the header; bulk values as BulkDataURI markers
            pixel_data_offset bigint,        -- where the PixelData value starts in the file
            pixel_data_length bigint,        -- undefined length (encapsulated) → null
            frame_offsets bigint[],          -- encapsulated: (offset, length) pairs of each frame, flattened
            stored_at timestamptz NOT NULL,
            stored_by uuid,
            CONSTRAINT uq_instances_uid UNIQUE (sop_instance_uid)
        )
        """
    )
    op.execute("CREATE INDEX ix_instances_series ON imaging.instances (series_id, instance_number)")
    op.execute("CREATE INDEX ix_instances_study ON imaging.instances (study_id)")
    op.execute("CREATE INDEX ix_instances_class ON imaging.instances (sop_class_uid)")


def downgrade() -> None:
    for table in ("instances", "series", "studies"):
        op.execute(f"DROP TABLE imaging.{table}")
