"""OpenAPI additions: the one error shape, documented on every operation."""

from rest_framework import serializers

ERROR_COMPONENT = {
    "type": "object",
    "description": "The one error shape of the API.",
    "required": ["error", "request_id"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer", "description": "The HTTP status."},
                "code": {"type": "string", "description": "A stable machine-readable code."},
                "message": {"type": "string", "description": "What went wrong, naming the field if any."},
                "fields": {
                    "type": "object",
                    "description": "Per-field messages (validation errors).",
                    "additionalProperties": True,
                },
            },
        },
        "request_id": {"type": "string", "description": "Echoed in the X-Request-ID header and the logs."},
    },
}

ERROR_STATUSES = {
    "400": "Invalid input; `error.fields` names the fields.",
    "401": "Not authenticated.",
    "403": "Your role does not allow this.",
    "404": "Not found.",
    "405": "Method not allowed.",
    "406": "Not acceptable.",
    "409": "Conflicts with the current state (still referenced, duplicate, wrong state).",
    "413": "The request body is too large.",
    "415": "Unsupported media type.",
    "429": "Too many requests (rate limited).",
}


class ErrorSerializer(serializers.Serializer):
    """For `extend_schema(responses=...)` of views that answer with an error on purpose."""

    class ErrorDetail(serializers.Serializer):
        status = serializers.IntegerField()
        code = serializers.CharField()
        message = serializers.CharField()
        fields = serializers.DictField(required=False)

    error = ErrorDetail()
    request_id = serializers.CharField()


def add_error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: document the error shape on every operation."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_COMPONENT
    ref = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_STATUSES.items():
                responses.setdefault(
                    code, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return result
