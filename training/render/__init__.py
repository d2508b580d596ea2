"""Procedural face renderer: expressive faces from FACS action units with their true poker faces."""

from training.render.face import (
    AU_CODES,
    EMOTIONS,
    PROTOTYPES,
    Identity,
    Render,
    Scene,
    action_units,
    face_geometry,
    identity_from_id,
    prototype_aus,
    random_identity,
    random_scene,
    render_face,
    render_pair,
    render_scene,
)

__all__ = [
    "AU_CODES",
    "EMOTIONS",
    "PROTOTYPES",
    "Identity",
    "Render",
    "Scene",
    "action_units",
    "face_geometry",
    "identity_from_id",
    "prototype_aus",
    "random_identity",
    "random_scene",
    "render_face",
    "render_pair",
    "render_scene",
]
