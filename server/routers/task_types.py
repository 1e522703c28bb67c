"""TaskTypeService: the kinds of work time is logged for, each with its rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.tables import task_types
from db.time_tracking import task_type_filters, task_type_order
from server import standard_methods
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
from studio.v1 import task_type_pb2 as pb

if TYPE_CHECKING:
    from server.context import Ctx

__all__ = ["TASK_TYPE", "router"]

router = Router(pb, "TaskTypeService")
TASK_TYPE = ResourceMapping(
    pb.TaskType,
    task_types,
    (
        Field("name", Kind.TEXT),
        Field("description", Kind.TEXT),
        Field("hourly_rate", Kind.DECIMAL),
        Field("category", Kind.ENUM),
        Field("color", Kind.TEXT),
        Field("sort_order", Kind.INT),
        Field("is_active", Kind.BOOL),
    ),
)


@router.procedure("GetTaskType")
async def get_task_type(ctx: Ctx, request: pb.GetTaskTypeRequest) -> pb.GetTaskTypeResponse:
    task_type = await standard_methods.get(ctx, TASK_TYPE, "task_type", request.id)
    return pb.GetTaskTypeResponse(task_type=task_type)


@router.procedure("ListTaskTypes")
async def list_task_types(ctx: Ctx, request: pb.ListTaskTypesRequest) -> pb.ListTaskTypesResponse:
    items, next_token = await standard_methods.list_page(
        ctx,
        TASK_TYPE,
        request,
        where=task_type_filters(include_inactive=request.include_inactive),
        number_key=task_type_order(),
    )
    return pb.ListTaskTypesResponse(task_types=items, next_page_token=next_token)


@router.procedure("CreateTaskType", single_statement=True)
async def create_task_type(
    ctx: Ctx, request: pb.CreateTaskTypeRequest
) -> pb.CreateTaskTypeResponse:
    task_type = await standard_methods.create(ctx, TASK_TYPE, request.task_type, request.request_id)
    return pb.CreateTaskTypeResponse(task_type=task_type)


@router.procedure("UpdateTaskType")
async def update_task_type(
    ctx: Ctx, request: pb.UpdateTaskTypeRequest
) -> pb.UpdateTaskTypeResponse:
    """A new rate or category applies to time logged from then on: entries keep theirs."""
    mask = request.update_mask if request.HasField("update_mask") else None
    task_type = await standard_methods.update(ctx, TASK_TYPE, "task_type", request.task_type, mask)
    return pb.UpdateTaskTypeResponse(task_type=task_type)


@router.procedure("DeleteTaskType")
async def delete_task_type(
    ctx: Ctx, request: pb.DeleteTaskTypeRequest
) -> pb.DeleteTaskTypeResponse:
    """Refused (TASK_TYPE_HAS_TIME_ENTRIES) by the time entries' foreign key: deactivate it."""
    await standard_methods.delete(ctx, TASK_TYPE, "task_type", request.id, request.etag)
    return pb.DeleteTaskTypeResponse()
