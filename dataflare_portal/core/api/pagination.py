"""A paginator that never counts the whole table: it fetches one row more to know if there is a next page."""

from collections import OrderedDict

from django.utils.translation import gettext
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param


class NoCountPagination(BasePagination):
    page_size = 50
    max_page_size = 500
    limit_query_param = "limit"
    offset_query_param = "offset"

    def _int(self, request, name, default, maximum=None):
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ValidationError({name: [gettext("Enter a whole number, 0 or more.")]})
        return min(value, maximum) if maximum else value

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        self.limit = self._int(request, self.limit_query_param, self.page_size, self.max_page_size) or self.page_size
        self.offset = self._int(request, self.offset_query_param, 0)
        rows = list(queryset[self.offset : self.offset + self.limit + 1])
        self.has_next = len(rows) > self.limit
        return rows[: self.limit]

    def get_paginated_response(self, data):
        url = self.request.build_absolute_uri()
        next_url = prev_url = None
        if self.has_next:
            next_url = replace_query_param(url, self.offset_query_param, self.offset + self.limit)
        if self.offset > 0:
            prev_offset = max(self.offset - self.limit, 0)
            prev_url = (
                replace_query_param(url, self.offset_query_param, prev_offset)
                if prev_offset
                else remove_query_param(url, self.offset_query_param)
            )
        return Response(OrderedDict([("next", next_url), ("previous", prev_url), ("results", data)]))

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["results"],
            "properties": {
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.limit_query_param,
                "required": False,
                "in": "query",
                "schema": {"type": "integer", "minimum": 0},
            },
            {
                "name": self.offset_query_param,
                "required": False,
                "in": "query",
                "schema": {"type": "integer", "minimum": 0},
            },
        ]
