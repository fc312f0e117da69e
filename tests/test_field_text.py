"""What a field's value becomes before any path writes it (`engine.fields.field_text`)."""

from __future__ import annotations

import pytest

from engine.fields import field_text


@pytest.mark.parametrize(
    ("value", "written"),
    [
        pytest.param("Zoë", "Zoë", id="plain"),
        pytest.param("", "", id="empty"),
        pytest.param("a\nb\r\nc", "a b c", id="line-breaks-become-spaces"),
        pytest.param("=HYPERLINK(1)", "'=HYPERLINK(1)", id="formula"),
        pytest.param("@SUM(A1)", "'@SUM(A1)", id="at-formula"),
        pytest.param("\tx", "'\tx", id="leading-tab"),
        pytest.param("+1 (555) 010-0100", "+1 (555) 010-0100", id="phone-number"),
        pytest.param("-42.5", "-42.5", id="negative-number"),
        pytest.param("+cmd|x", "'+cmd|x", id="plus-formula"),
        pytest.param("-x\n=y", "'-x =y", id="break-and-formula"),
        pytest.param("a=b", "a=b", id="equals-inside"),
    ],
)
def test_a_value_is_written_flat_and_inert(value: str, written: str) -> None:
    """Line breaks become spaces and a value a spreadsheet would run gets a leading quote;
    anything else (numbers and phone numbers included) is written as it is, and twice is
    the same as once."""
    assert field_text(value) == written
    assert field_text(written) == written
