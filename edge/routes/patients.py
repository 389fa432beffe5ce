"""`/patients`, `/conditions`, `/vital-signs` (patients.md §3). Every read of patient data is audited
by the patients worker."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Request, delete, get, patch, post
from litestar.params import Parameter
from msgspec import Meta

from contracts.common import Page, Struct
from contracts.patients import (
    BulkCreateConditions,
    ConditionFields,
    ConditionPatch,
    ConditionView,
    CreateCondition,
    DeleteCondition,
    DeletePatient,
    GetCondition,
    GetPatient,
    GetPatientStats,
    ListConditions,
    ListPatients,
    ListVitalSigns,
    NewPatient,
    PatientPatch,
    PatientStats,
    PatientView,
    RecordVitalSigns,
    RegisterPatient,
    RestoreCondition,
    RestorePatient,
    RetractVitalSign,
    UpdateCondition,
    UpdatePatient,
    VitalInput,
    VitalShorthand,
    VitalSignView,
)
from edge.access import ADM, CLINICAL, PHY, RAD, RCP, TECH, roles
from edge.bus import if_match, send
from edge.queries import documented, parse_query

TAGS = ["patients"]


class ConditionItems(Struct):
    items: Annotated[list[ConditionFields], Meta(min_length=1, max_length=50)]


class RetractBody(Struct):
    reason: Annotated[str, Meta(min_length=3, max_length=500)]


@post("/patients", operation_id="RegisterPatient", opt=roles(RCP, PHY), tags=TAGS,
      summary="Register a patient; a likely duplicate is refused unless ?allowDuplicate=true")
async def register_patient(request: Request, data: NewPatient,
                           allow_duplicate: Annotated[bool, Parameter(query="allowDuplicate")] = False) -> PatientView:
    cmd = RegisterPatient(**msgspec.structs.asdict(data), allow_duplicate=allow_duplicate)
    return await send(request, cmd, status=201, location="/patients", etag=True)  # type: ignore[return-value]


@get("/patients", operation_id="ListPatients", opt=roles(*CLINICAL), tags=TAGS,
     operation_class=documented(ListPatients), summary="Find patients: name (typos, accents), MRN, phone, insurance")
async def list_patients(request: Request) -> Page[PatientView]:
    return await send(request, parse_query(request, ListPatients))  # type: ignore[return-value]


@get("/patients/stats", operation_id="PatientStats", opt=roles(ADM, RCP), tags=TAGS)
async def patient_stats(request: Request) -> PatientStats:
    return await send(request, GetPatientStats())  # type: ignore[return-value]


@get("/patients/by-mrn/{mrn:str}", operation_id="GetPatientByMrn", opt=roles(*CLINICAL), tags=TAGS,
     summary="One patient by MRN (I/L read as 1, O as 0)")
async def by_mrn(request: Request, mrn: str) -> PatientView:
    return await send(request, GetPatient(mrn=mrn[:20]), etag=True)  # type: ignore[return-value]


@get("/patients/{patient_id:uuid}", operation_id="GetPatient", opt=roles(*CLINICAL), tags=TAGS)
async def get_patient(request: Request, patient_id: UUID) -> PatientView:
    return await send(request, GetPatient(id=patient_id), etag=True)  # type: ignore[return-value]


@patch("/patients/{patient_id:uuid}", operation_id="UpdatePatient", opt=roles(RCP, PHY), tags=TAGS,
       summary="Change a patient (merge patch; not the MRN)")
async def update_patient(request: Request, patient_id: UUID, data: PatientPatch) -> PatientView:
    cmd = UpdatePatient(id=patient_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/patients/{patient_id:uuid}", operation_id="DeletePatient", opt=roles(RCP, ADM), tags=TAGS,
        summary="Soft-delete; refused (409) while the patient has open encounters")
async def delete_patient(request: Request, patient_id: UUID) -> None:
    await send(request, DeletePatient(id=patient_id, if_match=if_match(request)), empty=True)


@post("/patients/{patient_id:uuid}/restore", operation_id="RestorePatient", opt=roles(ADM), tags=TAGS,
      status_code=200)
async def restore_patient(request: Request, patient_id: UUID) -> PatientView:
    return await send(request, RestorePatient(id=patient_id), etag=True)  # type: ignore[return-value]


@get("/patients/{patient_id:uuid}/vital-signs", operation_id="ListPatientVitalSigns", opt=roles(*CLINICAL),
     tags=TAGS, operation_class=documented(ListVitalSigns, exclude=("patientId", "encounterId")))
async def patient_vital_signs(request: Request, patient_id: UUID) -> Page[VitalSignView]:
    query = parse_query(request, ListVitalSigns, patient_id=str(patient_id), encounter_id=None)
    return await send(request, query)  # type: ignore[return-value]


@get("/patients/{patient_id:uuid}/conditions", operation_id="ListConditions", opt=roles(PHY, RAD, TECH, ADM),
     tags=TAGS, operation_class=documented(ListConditions, exclude=("patientId",)))
async def list_conditions(request: Request, patient_id: UUID) -> Page[ConditionView]:
    return await send(request, parse_query(request, ListConditions, patient_id=str(patient_id)))  # type: ignore[return-value]


@post("/patients/{patient_id:uuid}/conditions", operation_id="CreateCondition", opt=roles(PHY, RAD), tags=TAGS)
async def create_condition(request: Request, patient_id: UUID, data: ConditionFields) -> ConditionView:
    cmd = CreateCondition(patient_id=patient_id, condition=data)
    return await send(request, cmd, status=201, location="/conditions", etag=True)  # type: ignore[return-value]


@post("/patients/{patient_id:uuid}/conditions/bulk", operation_id="BulkCreateConditions", opt=roles(PHY, RAD),
      tags=TAGS, summary="Up to 50 conditions, all or none")
async def bulk_conditions(request: Request, patient_id: UUID, data: ConditionItems) -> list[ConditionView]:
    cmd = BulkCreateConditions(patient_id=patient_id, items=data.items)
    return await send(request, cmd, status=201)  # type: ignore[return-value]


@get("/conditions/{condition_id:uuid}", operation_id="GetCondition", opt=roles(PHY, RAD, TECH, ADM), tags=TAGS)
async def get_condition(request: Request, condition_id: UUID) -> ConditionView:
    return await send(request, GetCondition(id=condition_id), etag=True)  # type: ignore[return-value]


@patch("/conditions/{condition_id:uuid}", operation_id="UpdateCondition", opt=roles(PHY, RAD), tags=TAGS)
async def update_condition(request: Request, condition_id: UUID, data: ConditionPatch) -> ConditionView:
    cmd = UpdateCondition(id=condition_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/conditions/{condition_id:uuid}", operation_id="DeleteCondition", opt=roles(PHY, RAD, ADM), tags=TAGS,
        summary="Soft-delete (who recorded it, or an administrator)")
async def delete_condition(request: Request, condition_id: UUID) -> None:
    await send(request, DeleteCondition(id=condition_id), empty=True)


@post("/conditions/{condition_id:uuid}/restore", operation_id="RestoreCondition", opt=roles(ADM), tags=TAGS,
      status_code=200)
async def restore_condition(request: Request, condition_id: UUID) -> ConditionView:
    return await send(request, RestoreCondition(id=condition_id), etag=True)  # type: ignore[return-value]


@get("/encounters/{encounter_id:uuid}/vital-signs", operation_id="ListEncounterVitalSigns", opt=roles(*CLINICAL),
     tags=TAGS, operation_class=documented(ListVitalSigns, exclude=("patientId", "encounterId")))
async def encounter_vital_signs(request: Request, encounter_id: UUID) -> Page[VitalSignView]:
    query = parse_query(request, ListVitalSigns, encounter_id=str(encounter_id), patient_id=None)
    return await send(request, query)  # type: ignore[return-value]


@post("/encounters/{encounter_id:uuid}/vital-signs", operation_id="RecordVitalSigns", opt=roles(RCP, PHY),
      tags=TAGS, summary="A list [{code, value, unit, recordedAt?}] or the shorthand object {bpSystolic: 120, …}")
async def record_vital_signs(request: Request, encounter_id: UUID,
                             data: list[VitalInput] | VitalShorthand) -> list[VitalSignView]:
    if isinstance(data, VitalShorthand):
        cmd = RecordVitalSigns(encounter_id=encounter_id, shorthand=data)
    else:
        cmd = RecordVitalSigns(encounter_id=encounter_id, items=data)
    return await send(request, cmd, status=201)  # type: ignore[return-value]


@post("/vital-signs/{vital_sign_id:uuid}/retract", operation_id="RetractVitalSign", opt=roles(RCP, PHY),
      tags=TAGS, status_code=200, summary="Mark a reading entered in error (who recorded it, or a physician)")
async def retract_vital_sign(request: Request, vital_sign_id: UUID, data: RetractBody) -> VitalSignView:
    return await send(request, RetractVitalSign(id=vital_sign_id, reason=data.reason))  # type: ignore[return-value]


ROUTES = [register_patient, list_patients, patient_stats, by_mrn, get_patient, update_patient, delete_patient,
          restore_patient, patient_vital_signs, list_conditions, create_condition, bulk_conditions, get_condition,
          update_condition, delete_condition, restore_condition, encounter_vital_signs, record_vital_signs,
          retract_vital_sign]
