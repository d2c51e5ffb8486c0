"""What the chatbot renders: HTML as text, code fences intact, and a note under each reply."""

import json

from playground.display import display_messages, open_fence, raw_json, reply_note, to_display, tokens_in

TYPED = "<b>bold?</b> & <script>alert(1)</script> -> a < b && c > d"


def test_html_outside_code_becomes_text_and_code_is_untouched():
    shown = to_display("before\n```html\n<div>kept</div>\n```\nafter <i>x</i>")
    assert "&lt;i&gt;x&lt;/i&gt;" in shown
    assert "```html\n<div>kept</div>\n```" in shown
    assert to_display("a `<b>` b") == "a `<b>` b"
    assert to_display("an open fence while streaming\n```python\nif a < b:").endswith("```python\nif a < b:")


def test_code_spans_are_read_as_markdown_reads_them():
    """Inside a code span an entity shows as typed (`&gt;`), so a span is left as it is: across a line
    break, between runs of two backticks; not across a blank line, nor from an escaped backtick."""
    assert to_display("`f(x,\n  y) -> int` ok") == "`f(x,\n  y) -> int` ok"
    assert to_display("``a ` > b`` <i>") == "``a ` > b`` &lt;i&gt;"
    assert to_display("`a\n\nb > c`") == "`a\n\nb &gt; c`"
    assert to_display("\\`<b>x</b>`") == "\\`&lt;b&gt;x&lt;/b&gt;`"  # markdown shows the backtick, not code
    assert to_display("a lone ` <b>") == "a lone ` &lt;b&gt;"


def test_the_raw_conversation_is_exactly_what_was_typed():
    conversation = [{"role": "user", "content": TYPED}, {"role": "assistant", "content": "x &amp; y"}]
    assert json.loads(raw_json(conversation)) == conversation


def test_a_note_goes_under_its_reply_outside_any_code_block():
    conversation = [{"role": "user", "content": "<x>"}, {"role": "assistant", "content": "```python\nwhile True:"}]
    shown = display_messages(conversation, {1: "3 tokens · cut at max new tokens"})
    assert shown[0] == {"role": "user", "content": "&lt;x&gt;"}
    assert shown[1]["content"] == (
        '```python\nwhile True:\n```\n\n<span class="reply-note">3 tokens · cut at max new tokens</span>'
    )
    assert open_fence("```a```") == "" and open_fence("~~~\nx") == "~~~" and open_fence("no code") == ""
    assert open_fence("``` info\n```not a close`\n``` ") == ""  # as markdown reads it: closed
    assert open_fence("````\n```\n") == "````"


def test_the_note_says_how_a_reply_went():
    note = reply_note("length", 11, 0.5, 1.5)
    assert note == "11 tokens · first token 0.50 s · 10.0 tokens/s · cut at max new tokens"
    assert reply_note("stop", 1, 0.2, 0.2) == "1 token · first token 0.20 s · finished"
    assert reply_note("cancelled", 0, None, 0.1) == "0 tokens · stopped by you"


def test_a_continued_reply_counts_its_tokens_in_all():
    first = reply_note("length", 12, 0.5, 1.5)
    again = reply_note("stop", 5, 0.1, 0.5, earlier=tokens_in(first))
    assert again == "17 tokens (12 + 5 continued) · first token 0.10 s · 10.0 tokens/s · finished"
    assert tokens_in(again) == 17 and tokens_in("3 tokens") == 0 and tokens_in("") == 0  # not a note of ours
    named = reply_note("stop", 5, None, 0.5, model="Tiny · 2")
    assert named == "Tiny · 2 · 5 tokens · finished" and tokens_in(named) == 5


def test_a_note_shows_as_literal_text_whatever_a_loaded_file_put_in_it():
    shown = display_messages([{"role": "assistant", "content": "a"}], {0: "**bold** [link](http://x) `code` # <b>"})
    note = shown[0]["content"].split("\n\n", 1)[1]
    assert note == (
        '<span class="reply-note">\\*\\*bold\\*\\* \\[link\\]\\(http://x\\) \\`code\\` \\# &lt;b&gt;</span>'
    )
