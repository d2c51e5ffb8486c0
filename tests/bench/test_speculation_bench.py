"""`python -m bench.speculation --model DIR`: the edit workload on a checkpoint's own text, without and with drafts."""

import json

from bench.speculation import main
from training.scratch import build_base, python_doc_dialogues


def test_the_edit_request_runs_in_the_chat_format_without_drafts_and_with_them(tmp_path, capsys):
    # An untrained one-layer model whose 1,024 positions hold the file as this small tokenizer cuts it.
    model = build_base(python_doc_dialogues(limit=20), tmp_path, vocab_size=400, n_layer=1, n_embd=32, n_head=2)
    main(["--model", str(model), "--new", "12", "--streams", "1,2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["path"], r["streams"]) for r in rows] == [
        (path, n)
        for n in (1, 2)
        for path in ("ours: fast engine, edit, real text", "ours: fast engine, edit, real text, speculate 4")
    ]
    for r in rows:
        assert r["device"].startswith("CPU") and r["prompt"] > 300 and 0 < r["tokens"] <= 12 * r["streams"]
        assert r["tok_s"] > 0 and r["tokens_per_step"] >= 1 and 0 <= r["acceptance"] <= 1
    assert rows[0]["acceptance"] == 0 and rows[0]["vs_plain"] == 1
