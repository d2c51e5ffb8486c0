"""gpt-fast-style decoding for GPTBigCode (the StarCoder family), with continuous batching.

One static KV cache holds up to `slots` conversations. Requests join between decode steps, leave
when they stop, finish or are cancelled, and each has its own sampling parameters, seed and stream.

- Prefill: waiting prompts go through the model together, packed into one batch of at most
  `prefill_tokens` tokens per engine iteration while streams are decoding (a longer prompt is cut
  into chunks), with one decode step for the running streams between two chunks; four times as many
  when nothing is decoding. Attention is SDPA over the single K/V head
  (`enable_gqa`: flash on a GPU, no copies of K/V per head).
- Decode: one step decodes the rows [0, batch) where `batch` is the next power of two above the
  highest live row (live rows are kept at the front), attending to the first `length` cache
  positions (a context bucket). The step runs the model, then samples on the device (temperature,
  top-k, top-p, repetition penalty, a counter-based per-request seed): no Python loop over rows.
  Each transformer layer is one Inductor-compiled function shared by all layers (a batch of one
  has its own, with tuned matmul reductions); on a GPU the whole step is captured once per
  (batch, length) as a CUDA graph at start-up and replayed.
- The host reads the sampled ids once a step (one device-to-host copy) and hands them to each
  request's queue; detokenizing happens in the consumer's thread, not here.
- Speculation (`speculate` N > 0): before a step, each live row drafts up to N tokens by prompt lookup
  (the tokens that followed the last earlier occurrence of its newest 3, 2 or 1 tokens in its prompt
  and reply); a verify step reads every row's last token and draft over N+1 positions in one pass and
  keeps the drafted tokens the model samples too, plus the model's own next one. The draws are those
  the plain steps would make, so replies are the same, greedy or sampled, seed for seed. Rows without
  a draft ride along at their first position; with no draft in a batch, or more than 8 rows, the step
  is the plain one. Verify steps are CUDA graphs too, one per (batch, context) up to 8 rows.

The modules, in the order a step uses them: `scheduler` (jobs in and out, the engine's thread),
`speculation` (drafts, and which to keep), `graphs` (the steps captured and replayed), `model` (the
forward pass over the cache), `sampling`.

Why our own loop rather than transformers' continuous batching: its batched and static-cache ways
are far slower (docs/benchmarks.md: the peers beside ours). This package reads the model's own
modules, so any GPTBigCode checkpoint (multi-query attention) works; anything else uses plain generate.
"""

from playground.backends.fast.model import ROW_OPTIONS, decode_layer
from playground.backends.fast.sampling import sample
from playground.backends.fast.scheduler import IDLE_PREFILL, FastEngine, Job, Stats

__all__ = ["IDLE_PREFILL", "ROW_OPTIONS", "FastEngine", "Job", "Stats", "decode_layer", "sample", "supports"]


def supports(model) -> bool:
    config = model.config
    single_device = len({p.device for p in model.parameters()}) == 1
    bitsandbytes = getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None)
    return config.model_type == "gpt_bigcode" and config.multi_query and single_device and not bitsandbytes
