"""Request bodies of the web app's API: pydantic models that refuse anything unexpected.

Every model forbids unknown fields and bounds every number and list, so a malformed request ends in HTTP
422 with FastAPI's JSON ``detail`` before any work is done. Coordinates are in the slice frame of the
opened volume (XY pixels, ``x`` = column, ``y`` = row; see :mod:`samadapt.inference.image_frame`); the
session checks them against the slice size.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CLICKS = 64
CLASS_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\- .]{0,63}$"
WINDOW_NAME = r"^[a-z_]{1,32}$|^-?[0-9]{1,5}(\.[0-9]+)?,-?[0-9]{1,5}(\.[0-9]+)?$"

Coordinate = Annotated[float, Field(ge=-1.0, le=100000.0, allow_inf_nan=False)]
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenVolume(Strict):
    """Open a volume of the data folder by its relative path."""

    path: str = Field(min_length=1, max_length=1024)


class SliceRequest(Strict):
    """A slice and the window it is shown (and segmented) in."""

    slice: int = Field(ge=0, le=100000)
    window: str = Field(default="default", pattern=WINDOW_NAME)


class PromptRequest(SliceRequest):
    """One object's prompt on one slice: a box and/or clicks (at least one of them)."""

    box: Annotated[list[Coordinate], Field(min_length=4, max_length=4)] | None = None
    points: Annotated[list[Point], Field(max_length=MAX_CLICKS)] = Field(default_factory=list)
    labels: Annotated[list[Annotated[int, Field(ge=0, le=1)]], Field(max_length=MAX_CLICKS)] = Field(
        default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> PromptRequest:
        if len(self.points) != len(self.labels):
            raise ValueError("give one label (1 positive, 0 negative) per point")
        if self.box is None and not self.points:
            raise ValueError("give a box or at least one click")
        if self.box is not None and (self.box[2] < self.box[0] or self.box[3] < self.box[1]):
            raise ValueError("box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
        return self


class AutoRequest(SliceRequest):
    """Automatic mode on one slice for one class of the adapter."""

    class_name: str = Field(pattern=CLASS_NAME)


class CommitRequest(Strict):
    """Write a previewed mask into the label volume as ``class_name`` (a new name becomes a new class)."""

    prediction_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    class_name: str = Field(pattern=CLASS_NAME)
