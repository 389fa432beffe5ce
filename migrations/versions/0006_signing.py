"""Users domain, digital signatures: one active Ed25519 key per user, sealed under a PIN-derived
key; every issued signature kept.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE users.signing_keys (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id uuid NOT NULL REFERENCES users.users (id),
            algorithm text NOT NULL DEFAULT 'ed25519',
            public_key text NOT NULL,
            fingerprint text NOT NULL,
            status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
            sealed_private_key bytea NOT NULL,
            nonce bytea NOT NULL,
            kdf_salt bytea NOT NULL,
            kdf_params jsonb NOT NULL,
            failed_attempts integer NOT NULL DEFAULT 0,
            locked_until timestamptz,
            revoked_at timestamptz,
            revoked_by uuid,
            revoke_reason text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX uq_signing_keys_active ON users.signing_keys (user_id) WHERE status = 'active'")
    op.execute("CREATE INDEX ix_signing_keys_user ON users.signing_keys (user_id, created_at DESC)")
    op.execute(
        """
        CREATE TABLE users.signatures (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            key_id uuid NOT NULL REFERENCES users.signing_keys (id),
            signer_id uuid NOT NULL REFERENCES users.users (id),
            purpose text NOT NULL
                CHECK (purpose IN ('study_technician_verify', 'report_submit', 'report_approve')),
            entity_type text NOT NULL CHECK (entity_type IN ('study', 'report')),
            entity_id uuid NOT NULL,
            content_sha256 text NOT NULL,
            statement jsonb NOT NULL,
            statement_bytes bytea NOT NULL,
            signature text NOT NULL,
            algorithm text NOT NULL,
            signed_at timestamptz NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_signatures_entity ON users.signatures (entity_type, entity_id)")
    op.execute("CREATE INDEX ix_signatures_signer ON users.signatures (signer_id, signed_at DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE users.signatures")
    op.execute("DROP TABLE users.signing_keys")
