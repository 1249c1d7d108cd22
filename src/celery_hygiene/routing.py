"""A public path, kept: the module now lives in ``celery_hygiene.task.routing``."""

from celery_hygiene.task.routing import (
    REQUESTED,
    SETTING,
    QueueDeclaration,
    QueueOptions,
    QueueSpec,
    apply_queue_time_limits,
    build_routes,
    configure_queues,
    configure_requested,
    declared_queues,
    parse_queues,
    queue_of_delivery,
    raw_declaration,
)

__all__ = [
    "QueueDeclaration",
    "QueueOptions",
    "QueueSpec",
    "REQUESTED",
    "SETTING",
    "apply_queue_time_limits",
    "build_routes",
    "configure_queues",
    "configure_requested",
    "declared_queues",
    "parse_queues",
    "queue_of_delivery",
    "raw_declaration",
]
