"""Request options: given in the query or a JSON body, resolved by one function."""

from __future__ import annotations

import pytest

from service.api.options import GivenOptions, RequestOptions, resolve_options
from service.api.schemas import JsonPokerFaceRequest, JsonRecognizeRequest
from service.config import Settings
from service.errors import ValidationFailed
from service.pipeline import DetectOptions

SETTINGS = Settings(default_max_faces=7, max_faces_limit=20, default_min_face_size=30, default_detection_threshold=0.8)


def test_the_settings_fill_in_what_a_request_does_not_give():
    assert resolve_options(SETTINGS, GivenOptions()) == RequestOptions(
        detect=DetectOptions(max_faces=7, min_face_size=30, threshold=0.8, aligned=False)
    )


def test_a_json_body_wins_over_the_query_field_by_field():
    query = GivenOptions(max_faces=3, threshold=0.5, return_poker_face=True, return_aligned_face=True)
    body = GivenOptions.from_body(
        JsonRecognizeRequest.model_validate(
            {"images": [{"data": "eA=="}], "max_faces": 4, "return_poker_face": False, "aligned": True}
        )
    )
    resolved = resolve_options(SETTINGS, query, body)
    assert resolved.detect == DetectOptions(max_faces=4, min_face_size=30, threshold=0.5, aligned=True)
    # False in the body is an answer, not an absence; what the body leaves out stays the query's.
    assert (resolved.poker_face, resolved.expression_map, resolved.aligned_face) == (False, False, True)


def test_a_body_without_a_field_gives_none_for_it():
    body = JsonPokerFaceRequest.model_validate({"images": [{"data": "eA=="}], "return_expression_map": True})
    assert GivenOptions.from_body(body) == GivenOptions(return_expression_map=True)


@pytest.mark.parametrize(("query", "body", "where"), [(21, None, "query"), (5, 21, "body"), (21, 21, "body")])
def test_max_faces_over_the_setting_names_where_it_came_from(query, body, where):
    with pytest.raises(ValidationFailed) as caught:
        resolve_options(SETTINGS, GivenOptions(max_faces=query), None if body is None else GivenOptions(max_faces=body))
    assert caught.value.detail.startswith(f"{where}.max_faces: 21 is over")
    assert caught.value.extra["errors"][0]["loc"] == [where, "max_faces"]
