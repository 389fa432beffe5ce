"""`/departments` (users.md §4)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Request, delete, get, patch, post, put
from msgspec import Meta

from contracts.common import Page, Struct
from contracts.users import (
    AssignDepartmentHead,
    CreateDepartment,
    DeleteDepartment,
    DepartmentPatch,
    DepartmentStats,
    DepartmentView,
    GetDepartment,
    GetDepartmentStats,
    ListDepartments,
    RestoreDepartment,
    UpdateDepartment,
)
from edge.access import ADM, roles, staff
from edge.bus import if_match, send
from edge.queries import documented, parse_query

TAGS = ["departments"]


class HeadBody(Struct):
    user_id: UUID | None


@get("/departments", operation_id="ListDepartments", opt=staff(), tags=TAGS,
     operation_class=documented(ListDepartments), summary="Departments, filtered, sorted and paged")
async def list_departments(request: Request) -> Page[DepartmentView]:
    return await send(request, parse_query(request, ListDepartments))  # type: ignore[return-value]


@get("/departments/stats", operation_id="DepartmentStats", opt=roles(ADM), tags=TAGS,
     summary="Counts by state, users per department")
async def stats(request: Request) -> DepartmentStats:
    return await send(request, GetDepartmentStats())  # type: ignore[return-value]


@get("/departments/by-code/{code:str}", operation_id="GetDepartmentByCode", opt=staff(), tags=TAGS,
     summary="One department by its code")
async def by_code(request: Request, code: Annotated[str, Meta(max_length=10)]) -> DepartmentView:
    return await send(request, GetDepartment(code=code[:10]), etag=True)  # type: ignore[return-value]


@get("/departments/{department_id:uuid}", operation_id="GetDepartment", opt=staff(), tags=TAGS,
     summary="One department with its head and counts")
async def get_department(request: Request, department_id: UUID) -> DepartmentView:
    return await send(request, GetDepartment(id=department_id), etag=True)  # type: ignore[return-value]


@post("/departments", operation_id="CreateDepartment", opt=roles(ADM), tags=TAGS, summary="Create a department")
async def create_department(request: Request, data: CreateDepartment) -> DepartmentView:
    return await send(request, data, status=201, location="/departments", etag=True)  # type: ignore[return-value]


@patch("/departments/{department_id:uuid}", operation_id="UpdateDepartment", opt=roles(ADM), tags=TAGS,
       summary="Change a department (merge patch)")
async def update_department(request: Request, department_id: UUID, data: DepartmentPatch) -> DepartmentView:
    cmd = UpdateDepartment(id=department_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/departments/{department_id:uuid}", operation_id="DeleteDepartment", opt=roles(ADM), tags=TAGS,
        summary="Soft-delete; refused (409 in_use) while rooms or users point at it")
async def delete_department(request: Request, department_id: UUID) -> None:
    await send(request, DeleteDepartment(id=department_id), empty=True)


@post("/departments/{department_id:uuid}/restore", operation_id="RestoreDepartment", opt=roles(ADM),
      tags=TAGS, status_code=200, summary="Restore a deleted department")
async def restore_department(request: Request, department_id: UUID) -> DepartmentView:
    return await send(request, RestoreDepartment(id=department_id), etag=True)  # type: ignore[return-value]


@put("/departments/{department_id:uuid}/head", operation_id="AssignDepartmentHead", opt=roles(ADM), tags=TAGS,
     summary="Set the head (a live active member) or clear it with null")
async def assign_head(request: Request, department_id: UUID, data: HeadBody) -> DepartmentView:
    cmd = AssignDepartmentHead(id=department_id, user_id=data.user_id)
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


ROUTES = [list_departments, stats, by_code, get_department, create_department, update_department,
          delete_department, restore_department, assign_head]
