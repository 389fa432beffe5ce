"""The system worker: the audit trail today; notifications, settings, AI and analytics later."""
