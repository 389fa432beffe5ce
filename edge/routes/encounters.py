"""`/encounters` (patients.md §3, §5): a patient's visit in a room's daily queue and its states."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, get, patch, post
from msgspec import Meta

from contracts.common import Page, Struct
from contracts.encounters import (
    ArriveEncounter,
    CancelEncounter,
    EncounterPatch,
    EncounterQueue,
    EncounterStats,
    EncounterView,
    FinishEncounter,
    GetEncounter,
    GetEncounterStats,
    GetPatientOverview,
    GetQueueStats,
    ListEncounters,
    OpenEncounter,
    PatientOverview,
    QueueStats,
    ReturnEncounterToQueue,
    StartEncounter,
    TransferEncounter,
    UpdateEncounter,
)
from edge.access import ADM, CLINICAL, PHY, RCP, roles
from edge.bus import if_match, send
from edge.queries import documented, parse_query

TAGS = ["encounters"]


class ReasonBody(Struct):
    reason: Annotated[str, Meta(min_length=3, max_length=500)]


class TransferBody(Struct):
    to_physician_id: UUID | None = None
    to_service_room_id: UUID | None = None
    notes: Annotated[str, Meta(max_length=2000)] | None = None


@post("/encounters", operation_id="OpenEncounter", opt=roles(RCP, PHY), tags=TAGS,
      summary="Put a patient in a room's queue (a gap-free number of the day), with vital signs if given")
async def open_encounter(request: Request, data: OpenEncounter) -> EncounterView:
    return await send(request, data, status=201, location="/encounters", etag=True)  # type: ignore[return-value]


@get("/encounters", operation_id="ListEncounters", opt=roles(*CLINICAL), tags=TAGS,
     operation_class=documented(ListEncounters))
async def list_encounters(request: Request) -> Page[EncounterView]:
    query = parse_query(request, ListEncounters, me=("assignedPhysicianId", "createdBy"))
    return await send(request, query)  # type: ignore[return-value]


@get("/encounters/queue", operation_id="EncounterQueue", opt=roles(RCP, PHY), tags=TAGS,
     operation_class=documented(EncounterQueue),
     summary="A room's queue (default: the caller's duty room now): in progress, then priority, then number")
async def queue(request: Request) -> Page[EncounterView]:
    return await send(request, parse_query(request, EncounterQueue))  # type: ignore[return-value]


@get("/encounters/queue-stats", operation_id="QueueStats", opt=roles(RCP, PHY, ADM), tags=TAGS,
     operation_class=documented(GetQueueStats))
async def queue_stats(request: Request) -> list[QueueStats]:
    return await send(request, parse_query(request, GetQueueStats))  # type: ignore[return-value]


@get("/encounters/stats", operation_id="EncounterStats", opt=roles(ADM, RCP, PHY), tags=TAGS,
     operation_class=documented(GetEncounterStats))
async def encounter_stats(request: Request) -> EncounterStats:
    return await send(request, parse_query(request, GetEncounterStats))  # type: ignore[return-value]


@get("/encounters/{encounter_id:uuid}", operation_id="GetEncounter", opt=roles(*CLINICAL), tags=TAGS)
async def get_encounter(request: Request, encounter_id: UUID) -> EncounterView:
    return await send(request, GetEncounter(id=encounter_id), etag=True)  # type: ignore[return-value]


@patch("/encounters/{encounter_id:uuid}", operation_id="UpdateEncounter", opt=roles(RCP, PHY), tags=TAGS,
       summary="Reception while waiting: type, priority, complaint, symptoms, notes; the assigned physician: "
               "complaint, symptoms, notes")
async def update_encounter(request: Request, encounter_id: UUID, data: EncounterPatch) -> EncounterView:
    cmd = UpdateEncounter(id=encounter_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


def _transition(path: str, operation_id: str, allowed: tuple[Any, ...], command: type, summary: str,
                body: type | None = None) -> Any:
    """One transition route: `POST /encounters/{id}/<verb>`, with the body's fields (if any) and If-Match."""
    if body is None:
        async def handler(request: Request, encounter_id: UUID) -> EncounterView:
            cmd = command(id=encounter_id, if_match=if_match(request))
            return await send(request, cmd, etag=True)  # type: ignore[return-value]
    else:
        async def handler(request: Request, encounter_id: UUID, data: Any) -> EncounterView:  # type: ignore[misc]
            cmd = command(id=encounter_id, if_match=if_match(request), **msgspec.structs.asdict(data))
            return await send(request, cmd, etag=True)  # type: ignore[return-value]

        handler.__annotations__["data"] = body
    return post(f"/encounters/{{encounter_id:uuid}}/{path}", operation_id=operation_id, opt=roles(*allowed),
                tags=TAGS, status_code=200, summary=summary, name=operation_id)(handler)


arrive = _transition("arrive", "ArriveEncounter", (RCP, PHY), ArriveEncounter, "waiting → arrived")
start = _transition("start", "StartEncounter", (PHY,), StartEncounter,
                    "waiting/arrived → in progress; the caller becomes the assigned physician")
finish = _transition("finish", "FinishEncounter", (PHY,), FinishEncounter, "in progress → finished (assigned)")
return_to_queue = _transition("return-to-queue", "ReturnEncounterToQueue", (PHY,), ReturnEncounterToQueue,
                              "in progress → arrived, keeping the number (assigned)", ReasonBody)
cancel = _transition("cancel", "CancelEncounter", (RCP, PHY, ADM), CancelEncounter, "waiting/arrived → cancelled",
                     ReasonBody)
transfer = _transition("transfer", "TransferEncounter", (PHY, ADM), TransferEncounter,
                       "To another physician and/or room; back to waiting (assigned physician, admin)", TransferBody)


@get("/patients/{patient_id:uuid}/encounters", operation_id="ListPatientEncounters", opt=roles(*CLINICAL),
     tags=TAGS, operation_class=documented(ListEncounters, exclude=("patientId",)))
async def patient_encounters(request: Request, patient_id: UUID) -> Page[EncounterView]:
    return await send(request, parse_query(request, ListEncounters, patient_id=str(patient_id)))  # type: ignore[return-value]


@get("/patients/{patient_id:uuid}/overview", operation_id="PatientOverview", opt=roles(*CLINICAL), tags=["patients"],
     summary="Latest vital signs, active conditions (not for reception), open and recent encounters")
async def overview(request: Request, patient_id: UUID) -> PatientOverview:
    return await send(request, GetPatientOverview(id=patient_id))  # type: ignore[return-value]


ROUTES = [open_encounter, list_encounters, queue, queue_stats, encounter_stats, get_encounter, update_encounter,
          arrive, start, finish, return_to_queue, cancel, transfer, patient_encounters, overview]
