"""Foundation: extensions, one schema per domain, each with its inbox and outbox.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMAS = ("users", "patients", "imaging", "system")


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    # unaccent() is STABLE; an IMMUTABLE wrapper with a fixed dictionary can back an index.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION public.f_unaccent(text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
        AS $$ SELECT public.unaccent('public.unaccent'::regdictionary, $1) $$
        """
    )
    for schema in SCHEMAS:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        op.execute(
            f"""
            CREATE TABLE {schema}.inbox (
                message_id uuid PRIMARY KEY,
                type text NOT NULL,
                reply bytea,
                processed_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        op.execute(f"CREATE INDEX ix_{schema}_inbox_processed_at ON {schema}.inbox (processed_at)")
        op.execute(
            f"""
            CREATE TABLE {schema}.outbox (
                message_id uuid PRIMARY KEY,
                routing_key text NOT NULL,
                body bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                available_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        op.execute(f"CREATE INDEX ix_{schema}_outbox_available_at ON {schema}.outbox (available_at)")


def downgrade() -> None:
    for schema in SCHEMAS:
        op.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    op.execute("DROP FUNCTION IF EXISTS public.f_unaccent(text)")
