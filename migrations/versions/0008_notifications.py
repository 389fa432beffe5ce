"""System domain: notifications, one per trigger and recipient.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TYPES = ("('encounter_assigned','encounter_transferred','imaging_order_assigned','report_awaiting_approval',"
         "'report_approved','report_rejected','study_rejected','ai_analysis_finished','security','announcement',"
         "'system_alert')")


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE system.notifications (
            id uuid PRIMARY KEY,
            recipient_id uuid NOT NULL,
            sender_id uuid,
            type text NOT NULL CHECK (type IN {TYPES}),
            title text NOT NULL CHECK (length(title) BETWEEN 1 AND 255),
            message text NOT NULL CHECK (length(message) <= 2000),
            related_entity_type text,
            related_entity_id text,
            is_read boolean NOT NULL DEFAULT false,
            read_at timestamptz,
            source_event_id uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    # Exactly one notification per trigger and recipient, however often the trigger is redelivered.
    op.execute("CREATE UNIQUE INDEX uq_notifications_source ON system.notifications (recipient_id, source_event_id) "
               "WHERE source_event_id IS NOT NULL")
    op.execute("CREATE INDEX ix_notifications_mine ON system.notifications (recipient_id, created_at DESC, id DESC) "
               "WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX ix_notifications_unread ON system.notifications (recipient_id) "
               "WHERE deleted_at IS NULL AND NOT is_read")


def downgrade() -> None:
    op.execute("DROP TABLE system.notifications")
