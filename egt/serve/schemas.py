"""Request and response bodies of the HTTP API (they also make the OpenAPI schema at /docs).

Contract: shapes only; limits that depend on the server's settings (k, ads per request, token counts) are checked
in `egt.serve.app`, so the error names the configured limit.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TargetingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "Trail running shoes, 20% off this weekend", "k": 5},
                     {"texts": ["Family SUV lease deals", "Vegan protein powder"], "k": 3}]})
    text: str | None = Field(None, description="one ad text (give either text or texts)")
    texts: list[str] | None = Field(None, description="a batch of ad texts")
    k: int = Field(5, description="number of catalog entities to return per ad")
    catalog: str | None = Field(None, description="catalog name; default: the server's only catalog")


class Entity(BaseModel):
    id: str
    text: str
    score: float


class TargetingResult(BaseModel):
    entities: list[Entity]
    timings: dict[str, Any] = Field(default_factory=dict)


class TargetingResponse(BaseModel):
    model: str
    catalog: str
    k: int
    results: list[TargetingResult] = Field(description="one result per ad, in request order")


class CompletionRequest(BaseModel):
    """OpenAI /v1/completions. Decoding is greedy: temperature must be 0 or absent, n must be 1."""
    model_config = ConfigDict(extra="ignore", json_schema_extra={
        "examples": [{"prompt": "Write a slogan for a bakery:", "max_tokens": 16, "stream": False}]})
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(None, description="default: 16, capped at the server's limit")
    stream: bool = False
    stop: str | list[str] | None = None
    temperature: float | None = None
    n: int = 1
    echo: bool = False
    logprobs: int | None = None


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ErrorBody(BaseModel):
    type: str
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
