"""Neural fields as pure functions of (parameters, coordinates): encodings, networks, heads."""

from genfield.fields.coords import grid_coords
from genfield.fields.field import FIELD_PRESETS, Field, FieldConfig, build_field, field_config

__all__ = ["FIELD_PRESETS", "Field", "FieldConfig", "build_field", "field_config", "grid_coords"]
