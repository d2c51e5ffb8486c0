"""`python -m bench.switch`: New conversation clicked as a reply ends, both cores busy, always shows."""

import pytest

from tests.conftest import bench_records

pytestmark = pytest.mark.slow  # A real app and a real browser, with both cores kept busy.


def test_new_conversation_as_a_reply_ends_shows_even_with_both_cores_busy(demo_model, tmp_path):
    """The old way (queued behind the reply's own events) lost about one switch in ten this way: the chat
    stayed on the old conversation until the page's next event."""
    [record] = bench_records("bench.switch", "--tries", "2", "--busy", "2", "--model", str(demo_model))
    assert record["bench"] == "switch" and record["tries"] == 2 and record["device"].startswith("CPU")
    assert record["lost"] == 0 and record["median_s"] > 0
