"""Response shapes, for the OpenAPI description at /docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Hit(BaseModel):
    image_id: int
    uri: str
    score: float = Field(description="(1 + cosine) / 2 in [0, 1]; higher is more similar.")
    distance: float = Field(description="Euclidean distance of the unit embeddings, in [0, 2].")
    match: str | None = Field(
        None, description="What the image is to the query, by the model's calibrated "
                          "thresholds: exact (the same bytes), copy (an edited copy), similar "
                          "(the same scene or a look-alike), or null.")
    width: int | None
    height: int | None
    thumbnail_url: str
    file_url: str
    copies: list[Hit] = Field(default_factory=list,
                              description="With collapse: copies of this image folded into it.")


class SearchResponse(BaseModel):
    results: list[Hit] = Field(description="Best first.")
    took_ms: dict[str, float] = Field(description="Time per stage: read, decode, embed, "
                                                  "search, total.")


class ImageOut(BaseModel):
    image_id: int
    uri: str
    status: str
    width: int | None
    height: int | None
    size: int | None
    content_hash: str | None
    added_at: float
    uploaded: bool = Field(description="Stored inside the collection by POST /images.")
    metadata: dict[str, Any] | None
    thumbnail_url: str
    file_url: str


class SimilarResponse(SearchResponse):
    query: ImageOut


class UploadResponse(BaseModel):
    image: ImageOut
    created: bool = Field(description="False when identical bytes were uploaded before.")
    duplicates: list[dict[str, Any]] | None = Field(
        None, description="With check_duplicates=true: the image's exact and near duplicates "
                          "in the collection (id, uri, tier, cosine, how, aligned, detail).")
    screened: dict[str, Any] | None = Field(
        None, description="With serve --screen-against: {\"matched\": true, \"tier\": ...} "
                          "when the image matches the watchlist, else null.")


class DeleteResponse(BaseModel):
    deleted: int


class EmbedResponse(BaseModel):
    vector: list[float] = Field(description="The embedding: L2-normalised, the model's "
                                            "dimension (exact as float32).")
    model: str
    fingerprint: str = Field(description="What decides the vector (model, weights, graph, "
                                         "pooling): the one a collection's manifest records.")
    width: int
    height: int
    content_hash: str
    took_ms: dict[str, float] = Field(description="Time per stage: read, decode, embed, total.")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
