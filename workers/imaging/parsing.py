"""Header parsing for ingest, off the worker's own GIL: the parts of a request split over the
worker's parser processes (IMAGING_PARSE_PROCESSES, a forkserver pool), or one thread when there
are none. Every part comes back parsed or with its rejection; nothing else escapes."""

from __future__ import annotations

import asyncio
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from workers.imaging.dicom_file import InstanceRejected, ParsedInstance, parse_instance
from workers.imaging.services import ImagingServices


def storage_class_supported(sop_class_uid: str) -> bool:
    """Known SOP classes must be storage classes; private (unknown) ones are accepted as stored."""
    uid = UID(sop_class_uid)
    if not uid.is_valid or uid.name == sop_class_uid:
        return True
    return uid.type == "SOP Class" and "Storage" in uid.name


def parse_all(paths: list[Path | str | None]) -> list[ParsedInstance | InstanceRejected | None]:
    out: list[ParsedInstance | InstanceRejected | None] = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        try:
            out.append(parse_instance(path))
        except InstanceRejected as rejected:
            out.append(rejected)
    return out


async def parse_everywhere(services: ImagingServices, paths: list[Path | None]) -> list[Any]:
    """Parse in the worker's parser processes (IMAGING_PARSE_PROCESSES), the parts split between them,
    so this process's event loop and GIL stay free; in a thread when there are none."""
    pool = services.parsers
    if pool is None:
        return await asyncio.to_thread(parse_all, paths)
    loop = asyncio.get_running_loop()
    n = max(1, min(services.settings.imaging_parse_processes, len(paths)))
    size = -(-len(paths) // n)
    chunks = [[str(p) if p is not None else None for p in paths[i:i + size]] for i in range(0, len(paths), size)]
    try:
        done = await asyncio.gather(*(loop.run_in_executor(pool, parse_all, chunk) for chunk in chunks))
    except BrokenProcessPool:
        services.restart_parsers()
        raise  # retried by the runtime with a fresh pool
    return [item for chunk in done for item in chunk]
