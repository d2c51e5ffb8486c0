"""What the chatbot renders: HTML as text, code fences intact, and the way back for edits."""

import pytest

from playground.display import display_messages, from_display, to_display

CASES = [
    "plain text",
    "<b>bold?</b> & <script>alert(1)</script>",
    "before\n```html\n<div>kept</div>\n```\nafter <i>x</i>",
    "inline `<tag>` and <tag>",
    "literal &lt; typed by a person, and &amp;",
    "an open fence while streaming\n```python\nif a < b:",
]


@pytest.mark.parametrize("text", CASES)
def test_round_trip(text):
    assert from_display(to_display(text)) == text


def test_html_outside_code_becomes_text_and_code_is_untouched():
    shown = to_display(CASES[2])
    assert "&lt;i&gt;x&lt;/i&gt;" in shown
    assert "```html\n<div>kept</div>\n```" in shown
    assert to_display("a `<b>` b") == "a `<b>` b"
    assert to_display(CASES[5]).endswith("```python\nif a < b:")


def test_display_keeps_roles_and_order():
    conversation = [{"role": "user", "content": "<x>"}, {"role": "assistant", "content": "y"}]
    assert display_messages(conversation) == [
        {"role": "user", "content": "&lt;x&gt;"},
        {"role": "assistant", "content": "y"},
    ]
