"""Patients domain (spec patients.md): the registry, conditions and vital signs.

Encounters and reports have their own modules (contracts.encounters; reports later)."""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from msgspec import UNSET, Meta, UnsetType

from contracts.common import Empty, ListParams, Page, PingResult, Struct, Text, View
from contracts.envelope import Event
from contracts.registry import command, event, query

PATIENT_SORT = ("lastName", "firstName", "dateOfBirth", "mrn", "createdAt")
CONDITION_SORT = ("recordedAt", "createdAt", "code")
VITAL_SORT = ("recordedAt",)
CLINICAL = "Clinical+"

Name = Annotated[str, Meta(min_length=1, max_length=50)]
Phone = Annotated[str, Meta(max_length=20, pattern=r"^[0-9 +()-]*$")]
Address = Annotated[str, Meta(max_length=500)]
Insurance = Annotated[str, Meta(min_length=1, max_length=50)]
Mrn = Annotated[str, Meta(min_length=1, max_length=20)]


class Gender(enum.StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class BloodType(enum.StrEnum):
    A_POS = "A+"
    A_NEG = "A-"
    B_POS = "B+"
    B_NEG = "B-"
    AB_POS = "AB+"
    AB_NEG = "AB-"
    O_POS = "O+"
    O_NEG = "O-"
    UNKNOWN = "unknown"


class ClinicalStatus(enum.StrEnum):
    ACTIVE = "active"
    RECURRENT = "recurrent"
    INACTIVE = "inactive"
    REMISSION = "remission"
    RESOLVED = "resolved"


class VitalSignStatus(enum.StrEnum):
    FINAL = "final"
    ENTERED_IN_ERROR = "entered_in_error"


# ---------------------------------------------------------------- views


class PatientRef(View):
    id: UUID
    mrn: str
    display_name: str
    date_of_birth: date
    gender: Gender


class PatientView(View):
    id: UUID
    mrn: str
    first_name: str
    last_name: str
    display_name: str
    date_of_birth: date
    gender: Gender
    phone: str | None
    address: str | None
    blood_type: BloodType
    insurance_number: str | None
    is_active: bool
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class PatientStats(View):
    total: int
    active: int
    inactive: int
    deleted: int
    new_today: int
    new_this_month: int


class ConditionView(View):
    id: UUID
    patient_id: UUID
    patient: PatientRef
    encounter_id: UUID | None
    code: str
    code_system: str
    code_display: str | None
    clinical_status: ClinicalStatus
    body_site: str | None
    recorded_at: datetime
    recorded_by: UUID | None
    notes: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class VitalSignView(View):
    id: UUID
    encounter_id: UUID
    patient_id: UUID
    code: str
    display: str
    value: Decimal
    unit: str
    recorded_at: datetime
    recorded_by: UUID | None
    derived: bool
    status: VitalSignStatus
    retract_reason: str | None
    created_at: datetime
    version: int


class LatestVital(View):
    code: str
    display: str
    value: Decimal
    unit: str
    recorded_at: datetime


# ---------------------------------------------------------------- patients


class NewPatient(Struct):
    first_name: Name
    last_name: Name
    date_of_birth: date
    gender: Gender
    phone: Phone | None = None
    address: Address | None = None
    blood_type: BloodType = BloodType.UNKNOWN
    insurance_number: Insurance | None = None
    is_active: bool = True


@command("patients.register_patient", result=PatientView, summary="Register a patient (RCP, PHY)")
class RegisterPatient(NewPatient, kw_only=True):
    allow_duplicate: bool = False


class PatientPatch(Struct):
    first_name: Name | UnsetType = UNSET
    last_name: Name | UnsetType = UNSET
    date_of_birth: date | UnsetType = UNSET
    gender: Gender | UnsetType = UNSET
    phone: Phone | UnsetType | None = UNSET
    address: Address | UnsetType | None = UNSET
    blood_type: BloodType | UnsetType = UNSET
    insurance_number: Insurance | UnsetType | None = UNSET
    is_active: bool | UnsetType = UNSET


@command("patients.update_patient", result=PatientView, summary="Change a patient (any field but the MRN)")
class UpdatePatient(Struct):
    id: UUID
    patch: PatientPatch
    if_match: int | None = None


@command("patients.delete_patient", summary="Soft-delete; refused while the patient has open encounters")
class DeletePatient(Struct):
    id: UUID
    if_match: int | None = None


@command("patients.restore_patient", result=PatientView)
class RestorePatient(Struct):
    id: UUID


@query("patients.list_patients", result=Page[PatientView], summary="Search and filter patients")
class ListPatients(ListParams):
    q: Annotated[str, Meta(max_length=100)] | None = None
    gender: list[Gender] | None = None
    date_of_birth: date | None = None
    blood_type: list[BloodType] | None = None
    is_active: bool | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    include_deleted: bool = False


@query("patients.get_patient", result=PatientView, summary="One patient, by id or MRN")
class GetPatient(Struct):
    id: UUID | None = None
    mrn: Mrn | None = None


@query("patients.patient_stats", result=PatientStats)
class GetPatientStats(Empty):
    pass


@query("patients.get_patient_refs", result=list[PatientRef], summary="PatientRefs for ids (bus query)")
class GetPatientRefs(Struct):
    ids: Annotated[list[UUID], Meta(max_length=500)]


@query("patients.find_by_mrn", result=PatientRef, summary="The live patient with this MRN (bus query)")
class FindByMrn(Struct):
    mrn: Mrn


@query("patients.ping", result=PingResult)
class PingPatients(Empty):
    pass


# ---------------------------------------------------------------- conditions

ConditionCode = Annotated[str, Meta(min_length=1, max_length=50)]


class ConditionFields(Struct):
    code: ConditionCode
    code_system: Annotated[str, Meta(min_length=1, max_length=100)] = "http://hl7.org/fhir/sid/icd-10"
    code_display: Annotated[str, Meta(max_length=255)] | None = None
    clinical_status: ClinicalStatus = ClinicalStatus.ACTIVE
    body_site: Annotated[str, Meta(max_length=100)] | None = None
    recorded_at: datetime | None = None
    encounter_id: UUID | None = None
    notes: Text | None = None


@command("patients.create_condition", result=ConditionView, summary="Record a condition of a patient")
class CreateCondition(Struct):
    patient_id: UUID
    condition: ConditionFields


@command("patients.bulk_create_conditions", result=list[ConditionView], summary="Up to 50 conditions, all or none")
class BulkCreateConditions(Struct):
    patient_id: UUID
    items: Annotated[list[ConditionFields], Meta(min_length=1, max_length=50)]


class ConditionPatch(Struct):
    code: ConditionCode | UnsetType = UNSET
    code_system: Annotated[str, Meta(min_length=1, max_length=100)] | UnsetType = UNSET
    code_display: Annotated[str, Meta(max_length=255)] | UnsetType | None = UNSET
    clinical_status: ClinicalStatus | UnsetType = UNSET
    body_site: Annotated[str, Meta(max_length=100)] | UnsetType | None = UNSET
    recorded_at: datetime | UnsetType = UNSET
    notes: Text | UnsetType | None = UNSET


@command("patients.update_condition", result=ConditionView)
class UpdateCondition(Struct):
    id: UUID
    patch: ConditionPatch
    if_match: int | None = None


@command("patients.delete_condition", summary="Soft-delete (its recorder or an administrator)")
class DeleteCondition(Struct):
    id: UUID


@command("patients.restore_condition", result=ConditionView)
class RestoreCondition(Struct):
    id: UUID


@query("patients.list_conditions", result=Page[ConditionView], summary="A patient's conditions")
class ListConditions(ListParams, kw_only=True):
    patient_id: UUID
    clinical_status: list[ClinicalStatus] | None = None
    code: Annotated[str, Meta(max_length=50)] | None = None
    include_deleted: bool = False


@query("patients.get_condition", result=ConditionView)
class GetCondition(Struct):
    id: UUID


# ---------------------------------------------------------------- vital signs


class VitalInput(Struct):
    code: Annotated[str, Meta(min_length=1, max_length=20)]
    value: Decimal
    unit: Annotated[str, Meta(min_length=1, max_length=20)]
    recorded_at: datetime | None = None


class VitalShorthand(Struct):
    """The original's object form; each value takes the first unit of its LOINC row."""

    bp_systolic: Decimal | None = None
    bp_diastolic: Decimal | None = None
    heart_rate: Decimal | None = None
    respiratory_rate: Decimal | None = None
    temperature: Decimal | None = None
    oxygen_saturation: Decimal | None = None
    weight: Decimal | None = None
    height: Decimal | None = None
    bmi: Decimal | None = None
    glucose: Decimal | None = None
    pain_scale: Decimal | None = None
    recorded_at: datetime | None = None


VitalList = Annotated[list[VitalInput], Meta(min_length=1, max_length=30)]


@command("patients.record_vital_signs", result=list[VitalSignView], summary="Record vital signs on an encounter")
class RecordVitalSigns(Struct):
    encounter_id: UUID
    items: VitalList | None = None
    shorthand: VitalShorthand | None = None  # the original's object form; the worker expands it


@command("patients.retract_vital_sign", result=VitalSignView, summary="Mark a reading entered in error")
class RetractVitalSign(Struct):
    id: UUID
    reason: Annotated[str, Meta(min_length=3, max_length=500)]


@query("patients.list_vital_signs", result=Page[VitalSignView], summary="A patient's or an encounter's vital signs")
class ListVitalSigns(ListParams):
    patient_id: UUID | None = None
    encounter_id: UUID | None = None
    code: list[Annotated[str, Meta(max_length=20)]] | None = None
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None
    include_retracted: bool = False


# ---------------------------------------------------------------- events


class PatientEventBase(Event):
    """Only patient events carry demographics (for consumers' projections)."""

    patient_id: UUID
    mrn: str
    first_name: str
    last_name: str
    date_of_birth: date
    gender: Gender
    is_active: bool
    version: int


@event("patients.patient.registered")
class PatientRegistered(PatientEventBase):
    pass


@event("patients.patient.updated")
class PatientUpdated(PatientEventBase):
    pass


@event("patients.patient.deleted")
class PatientDeleted(PatientEventBase):
    pass


@event("patients.patient.restored")
class PatientRestored(PatientEventBase):
    pass


class ConditionEventBase(Event):
    condition_id: UUID
    patient_id: UUID
    encounter_id: UUID | None
    code: str
    code_system: str
    clinical_status: ClinicalStatus
    version: int


@event("patients.condition.created")
class ConditionCreated(ConditionEventBase):
    pass


@event("patients.condition.updated")
class ConditionUpdated(ConditionEventBase):
    pass


@event("patients.condition.deleted")
class ConditionDeleted(ConditionEventBase):
    pass


@event("patients.condition.restored")
class ConditionRestored(ConditionEventBase):
    pass


class VitalSignsEventBase(Event):
    encounter_id: UUID
    patient_id: UUID
    vital_sign_ids: list[UUID]
    codes: list[str]
    version: int = 1


@event("patients.vital_signs.recorded")
class VitalSignsRecorded(VitalSignsEventBase):
    pass


@event("patients.vital_signs.retracted")
class VitalSignsRetracted(VitalSignsEventBase):
    pass


