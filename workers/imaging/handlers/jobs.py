"""Timed jobs of the imaging worker (imaging.md §9): stable studies and the staging sweep."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from contracts.imaging import StudyStabilized
from contracts.settings import SettingsError, get_settings
from workers.imaging.handlers import registry
from workers.imaging.tables import studies
from workers.imaging.views import study_event
from workers.runtime.unit_of_work import UnitOfWork

log = logging.getLogger("imaging.jobs")

STABLE_LOCK = 0x1A6E_0001
SWEEP_LOCK = 0x1A6E_0002
STABLE_BATCH = 500


def _stable_interval() -> float:
    try:
        return get_settings().imaging_stable_job_interval
    except SettingsError:  # a CLI step that does not run workers may lack secrets
        return 10.0


@registry.job("mark_stable_studies", every=_stable_interval(), lock_key=STABLE_LOCK)
async def mark_stable_studies(uow: UnitOfWork) -> None:
    """Studies with no new instance for IMAGING_STABLE_AFTER → one `imaging.study.stabilized` per burst
    (a new instance clears `stable_at`, so the next quiet period announces it again)."""
    cutoff = uow.now - timedelta(seconds=uow.settings.imaging_stable_after)
    due = (
        select(studies.c.id).where(studies.c.stable_at.is_(None), studies.c.last_instance_at <= cutoff)
        .order_by(studies.c.last_instance_at).limit(STABLE_BATCH).with_for_update(skip_locked=True)
    )
    rows = (await uow.conn.execute(
        update(studies).where(studies.c.id.in_(due.scalar_subquery())).values(stable_at=uow.now)
        .returning(studies)
    )).all()
    for row in rows:
        uow.emit(study_event(StudyStabilized, row))


@registry.job("sweep_staging", every=3600, lock_key=SWEEP_LOCK)
async def sweep_staging(uow: UnitOfWork) -> None:
    """Staged blobs older than IMAGING_STAGING_MAX_AGE: an upload that never reached a command
    (the edge died) or a command whose after-commit discard failed. Nothing refers to them."""
    removed = await uow.services.blobs.sweep_staging(uow.settings.imaging_staging_max_age)
    if removed:
        log.info("staging swept", extra={"fields": {"removed": removed}})
