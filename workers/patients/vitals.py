"""Vital signs (patients.md §2): the LOINC codes, their UCUM units and physiological ranges.

A reading outside its range, an unknown code or a unit the code does not allow is refused with
the field named (`vitalSigns/2/value` `out_of_range`, …/unit `invalid_unit`, …/code
`unknown_code`); a diastolic at or above the systolic is `inconsistent_blood_pressure`; weight and
height without a BMI add a derived BMI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from contracts.errors import FieldError, Invalid
from contracts.patients import VitalInput, VitalShorthand

FIELD = "vitalSigns"
FUTURE_TOLERANCE = timedelta(minutes=2)  # clocks of bedside devices drift a little


@dataclass(frozen=True, slots=True)
class VitalCode:
    code: str
    display: str
    units: dict[str, tuple[Decimal, Decimal]]  # the first unit is the shorthand's unit
    shorthand: str | None = None
    integer: bool = False


def _r(low: str, high: str) -> tuple[Decimal, Decimal]:
    return Decimal(low), Decimal(high)


CATALOGUE: dict[str, VitalCode] = {v.code: v for v in (
    VitalCode("8480-6", "Systolic blood pressure", {"mm[Hg]": _r("0", "300")}, "bp_systolic"),
    VitalCode("8462-4", "Diastolic blood pressure", {"mm[Hg]": _r("0", "200")}, "bp_diastolic"),
    VitalCode("8478-0", "Mean blood pressure", {"mm[Hg]": _r("0", "250")}),
    VitalCode("8867-4", "Heart rate", {"/min": _r("0", "300")}, "heart_rate"),
    VitalCode("9279-1", "Respiratory rate", {"/min": _r("0", "60")}, "respiratory_rate"),
    VitalCode("8310-5", "Body temperature", {"Cel": _r("30", "45"), "[degF]": _r("86", "113")}, "temperature"),
    VitalCode("59408-5", "SpO2 by pulse oximetry", {"%": _r("0", "100")}, "oxygen_saturation"),
    VitalCode("29463-7", "Body weight", {"kg": _r("0", "500"), "g": _r("0", "500000"), "[lb_av]": _r("0", "1100")},
              "weight"),
    VitalCode("8302-2", "Body height", {"cm": _r("0", "300"), "m": _r("0", "3"), "[in_i]": _r("0", "120")}, "height"),
    VitalCode("39156-5", "Body mass index", {"kg/m2": _r("5", "150")}, "bmi"),
    VitalCode("2339-0", "Glucose, blood (mass)", {"mg/dL": _r("10", "2000")}, "glucose"),
    VitalCode("15074-8", "Glucose, blood (moles)", {"mmol/L": _r("0.5", "110")}),
    VitalCode("72514-3", "Pain severity 0-10", {"{score}": _r("0", "10")}, "pain_scale", integer=True),
    VitalCode("9843-4", "Head circumference", {"cm": _r("10", "100")}),
)}
SHORTHAND = {v.shorthand: v for v in CATALOGUE.values() if v.shorthand}
SYSTOLIC, DIASTOLIC, WEIGHT, HEIGHT, BMI = "8480-6", "8462-4", "29463-7", "8302-2", "39156-5"
_TO_KG = {"kg": Decimal(1), "g": Decimal("0.001"), "[lb_av]": Decimal("0.45359237")}
_TO_M = {"cm": Decimal("0.01"), "m": Decimal(1), "[in_i]": Decimal("0.0254")}


@dataclass(slots=True)
class Reading:
    code: str
    value: Decimal
    unit: str
    recorded_at: datetime
    derived: bool = False


def from_shorthand(shorthand: VitalShorthand) -> list[VitalInput]:
    """The original's object form → the list form, each value with its row's first unit."""
    items = []
    for key, vital in SHORTHAND.items():
        value = getattr(shorthand, key)
        if value is not None:
            items.append(VitalInput(code=vital.code, value=value, unit=next(iter(vital.units)),
                                    recorded_at=shorthand.recorded_at))
    return items


def validate(items: list[VitalInput], now: datetime) -> list[Reading]:
    """Every problem of the submission at once, the first one as the problem's `field`."""
    errors: list[FieldError] = []
    readings: list[Reading] = []
    for i, item in enumerate(items):
        vital = CATALOGUE.get(item.code)
        if vital is None:
            errors.append(FieldError(field=f"{FIELD}/{i}/code", code="unknown_code",
                                     detail=f"{item.code} is not a supported LOINC vital sign"))
            continue
        bounds = vital.units.get(item.unit)
        if bounds is None:
            errors.append(FieldError(field=f"{FIELD}/{i}/unit", code="invalid_unit",
                                     detail=f"{vital.display} takes {', '.join(vital.units)}"))
            continue
        low, high = bounds
        if not low <= item.value <= high:
            errors.append(FieldError(field=f"{FIELD}/{i}/value", code="out_of_range",
                                     detail=f"{vital.display} in {item.unit} must be {low}–{high}"))
            continue
        if vital.integer and item.value != item.value.to_integral_value():
            errors.append(FieldError(field=f"{FIELD}/{i}/value", code="invalid_format",
                                     detail=f"{vital.display} is a whole number"))
            continue
        exponent = item.value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -2:
            errors.append(FieldError(field=f"{FIELD}/{i}/value", code="invalid_format",
                                     detail="at most 2 decimals"))
            continue
        at = item.recorded_at or now
        if at > now + FUTURE_TOLERANCE:
            errors.append(FieldError(field=f"{FIELD}/{i}/recordedAt", code="out_of_range",
                                     detail="a reading cannot be recorded in the future"))
            continue
        readings.append(Reading(item.code, item.value, item.unit, at))
    if errors:
        first = errors[0]
        raise Invalid(first.detail, field=first.field, errors=errors)
    by_code = {r.code: r for r in readings}
    if SYSTOLIC in by_code and DIASTOLIC in by_code and by_code[DIASTOLIC].value >= by_code[SYSTOLIC].value:
        raise Invalid("the diastolic pressure must be below the systolic", code="inconsistent_blood_pressure",
                      field=f"{FIELD}/{next(i for i, r in enumerate(items) if r.code == DIASTOLIC)}/value")
    if WEIGHT in by_code and HEIGHT in by_code and BMI not in by_code:
        weight, height = by_code[WEIGHT], by_code[HEIGHT]
        metres = height.value * _TO_M[height.unit]
        if metres > 0:
            bmi = (weight.value * _TO_KG[weight.unit] / (metres * metres)).quantize(Decimal("0.01"), ROUND_HALF_UP)
            low, high = CATALOGUE[BMI].units["kg/m2"]
            if low <= bmi <= high:
                readings.append(Reading(BMI, bmi, "kg/m2", max(weight.recorded_at, height.recorded_at), derived=True))
    return readings
