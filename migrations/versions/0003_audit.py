"""System domain, first part: the append-only audit trail.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE system.audit_events (
            id uuid PRIMARY KEY,
            message_id uuid NOT NULL,
            occurred_at timestamptz NOT NULL,
            last_occurred_at timestamptz NOT NULL,
            repeat_count integer NOT NULL DEFAULT 1,
            actor_id uuid,
            actor_role text,
            actor_system text,
            session_id text,
            action text NOT NULL,
            target_type text,
            target_id text,
            patient_ids uuid[] NOT NULL DEFAULT '{}',
            outcome text NOT NULL CHECK (outcome IN
                ('success','denied','invalid','not_found','conflict','error')),
            ip text,
            user_agent text,
            correlation_id uuid,
            details jsonb NOT NULL DEFAULT '{}',
            coalesce_key text,
            recorded_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX uq_audit_message ON system.audit_events (message_id)")
    op.execute("CREATE INDEX ix_audit_occurred ON system.audit_events (occurred_at DESC, id DESC)")
    op.execute("CREATE INDEX ix_audit_actor ON system.audit_events (actor_id, occurred_at DESC)")
    op.execute("CREATE INDEX ix_audit_patients ON system.audit_events USING gin (patient_ids)")
    op.execute("CREATE INDEX ix_audit_action ON system.audit_events (action, occurred_at DESC)")
    op.execute("CREATE INDEX ix_audit_target ON system.audit_events (target_type, target_id)")
    op.execute("CREATE INDEX ix_audit_correlation ON system.audit_events (correlation_id)")
    op.execute(
        "CREATE INDEX ix_audit_coalesce ON system.audit_events (coalesce_key, occurred_at DESC) "
        "WHERE coalesce_key IS NOT NULL"
    )
    # Append-only: a row may only have its coalesced-read counter raised; deletion is reserved
    # to the retention purge, which sets `audit.purge` for its own transaction.
    op.execute(
        """
        CREATE FUNCTION system.audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF current_setting('audit.purge', true) = 'on' THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF (to_jsonb(NEW) - 'repeat_count' - 'last_occurred_at')
               IS DISTINCT FROM (to_jsonb(OLD) - 'repeat_count' - 'last_occurred_at') THEN
                RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON system.audit_events "
        "FOR EACH ROW EXECUTE FUNCTION system.audit_guard()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE system.audit_events")
    op.execute("DROP FUNCTION system.audit_guard()")
