"""The base of every shape on the wire: one pydantic model per shape, which validates or
serializes it and feeds the OpenAPI document (app/http/openapi.py), so the documented answer
and the sent one cannot drift apart."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, and nothing undocumented."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def as_json(self) -> dict[str, Any]:
        """The JSON object sent: camelCase names, JSON types."""
        return self.model_dump(by_alias=True, mode="json")
