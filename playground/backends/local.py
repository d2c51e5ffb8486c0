"""transformers in this process: a Hub id or a local folder, streamed from a worker thread."""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    TextStreamer,
)

from playground.backends import BackendError, BackendInfo, ChatRequest, Outcome, context_length
from playground.backends.fast import FastEngine, Job, supports
from playground.console import import_bitsandbytes_offline, libraries_quiet
from playground.template import EOS, Message, Prompt, control_ids, fit_to_context, stop_ids

BITSANDBYTES = ("8bit", "4bit")  # plain generate; the fallback where the fast engine cannot serve
TORCHAO = ("int8", "int4")  # weight-only, served by the fast engine
SLOW_BUCKET_S = 5.0  # a fast-engine bucket whose start-up took longer is named as it completes
QUANTIZATIONS = ("none", *TORCHAO, *BITSANDBYTES)


class Pieces(TextStreamer):
    """TextStreamer's incremental decoding (whole words, no broken characters), kept for a generator to yield."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_special_tokens=True)
        self.pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.pieces.append(text)

    def take(self) -> list[str]:
        pieces, self.pieces = self.pieces, []
        return pieces


class CancelCriteria(StoppingCriteria):
    """Stops generate() at the next decode step once the request's cancel event is set."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def quantization_config(quantize: str) -> BitsAndBytesConfig | None:
    """bitsandbytes' config for 8bit / 4bit, applied while loading; None for the others."""
    if quantize == "none" or quantize in TORCHAO:
        return None
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if not torch.cuda.is_available():
        raise BackendError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); this machine has none")
    import_bitsandbytes_offline()  # before transformers imports it to load the model
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def quantize_weights(model, quantize: str, device: torch.device):
    """Weight-only int8 or int4 (torchao) for the linear layers of every transformer layer, one layer at a
    time onto `device`: the model stays where it was loaded (the CPU), so the GPU never holds more than
    one layer in bf16 and an int4 StarCoderPlus loads on a 16 GB card. The embeddings and the head they
    share stay as loaded."""
    if quantize == "int4" and device.type != "cuda":
        raise BackendError("--quantize int4 needs a CUDA GPU (torchao's int4 kernels); on the CPU use --quantize int8")
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    # tile_packed_to_4d is the format of PyTorch's own int4 kernel (tinygemm): no extra package needed. No
    # set_inductor_config: it would tune every bucket of every engine; the engine tunes its one-row step itself.
    config = (
        Int8WeightOnlyConfig(set_inductor_config=False)
        if quantize == "int8"
        else Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d", set_inductor_config=False)
    )
    for block in model.transformer.h:
        quantize_(block.to(device), config)
    return model.to(device)


def fit_hint(weight_bytes: int, gpu_bytes: int) -> str | None:
    """What to try when the weights leave no room on the card for the cache and the activations."""
    room = 0.9 * gpu_bytes
    if weight_bytes <= room:
        return None
    sizes = f"{weight_bytes / 1e9:.0f} GB of weights, {gpu_bytes / 1e9:.0f} GB card"
    if weight_bytes / 2 <= room:
        return f"{sizes}: try --quantize int8 (or int4)"
    if weight_bytes / 3.5 <= room:  # int4 with its scales: about 3.5x smaller than bf16
        return f"{sizes}: try --quantize int4"
    return f"{sizes}: the model is too big even in int4; serve it on a larger card (--backend endpoint)"


def say_slow_bucket(batch: int, length: int, seconds: float, width: int = 1) -> None:
    """A first start on a GPU compiles every bucket (minutes for int8): the log shows that it moves."""
    if seconds >= SLOW_BUCKET_S:
        verifying = f", verifying {width} positions" if width > 1 else ""
        print(f"Fast engine: batch {batch}, context {length}{verifying} ready after {seconds:.1f} s", flush=True)


def say_warm_up(fast: FastEngine) -> None:
    buckets = len(fast.buckets())
    what = "captured as CUDA graphs" if fast.graphs else "compiled"
    print(f"Fast engine: {buckets} (batch, context) buckets {what} in {fast.warm_up_s:.1f} s.", flush=True)


def say_speculation(name: str, speculate: int, fast: bool) -> None:
    """Said at start-up: a setting that changes nothing must not look as if it worked."""
    print(
        f"{name}: the fast engine drafts up to {speculate} tokens a step (--speculate)"
        if fast
        else f"{name}: --speculate {speculate} is not used: it drafts in the fast engine, and this model "
        "is served with plain generate (--engine fast chooses the fast engine where it can run)",
        flush=True,
    )


def describe_device(model) -> str:
    devices = sorted({str(p.device) for p in model.parameters()})
    if devices == ["cpu"]:
        return "CPU"
    gpus = [d for d in devices if d.startswith("cuda")]
    name = torch.cuda.get_device_name(torch.device(gpus[0]))
    return name if len(gpus) == 1 else f"{len(gpus)} x {name}"


def on_gpu(fn):
    """ZeroGPU Spaces lend the GPU only inside functions marked with `spaces.GPU` (a no-op on other
    hardware); without the `spaces` package, as everywhere outside Spaces, nothing changes."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


@dataclass
class LocalBackend:
    model: torch.nn.Module
    tokenizer: object
    info: BackendInfo
    # One generate() at a time per model: the GPU is shared and the seed is process-wide.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    engine: FastEngine | None = None  # continuous batching over a static cache; None: plain generate

    @property
    def stop_ids(self) -> list[int]:
        return stop_ids(self.tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        quantize: str = "none",
        demo: bool = False,
        engine: str = "auto",
        slots: int = 8,
        name: str = "",
        speculate: int = 0,
    ) -> LocalBackend:
        """engine: "fast" (our batched decoder), "plain" (generate), or "auto": fast on a CUDA GPU
        for a GPTBigCode model on one device without bitsandbytes, plain otherwise. name: what people
        see (default: the Hub id, or a local folder's name). speculate: the fast engine's draft tokens a step."""
        quant = quantization_config(quantize)
        on_gpu = torch.cuda.is_available()
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_gpu else torch.float32
        # torchao's: loaded on the CPU, then quantized onto the GPU layer by layer.
        device_map = "auto" if on_gpu and quantize not in TORCHAO else None
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=False)
        control_ids(tokenizer)  # fail at start-up, not at the first message, on a non-StarChat tokenizer
        # A named model's load takes a while and transformers' bar shows it; the demo loads in milliseconds,
        # and on its first start the line that explained the build and the training's bar were enough.
        with libraries_quiet() if demo else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(
                model_id,
                dtype=dtype,
                device_map=device_map,
                quantization_config=quant,
                use_safetensors=True,
                trust_remote_code=False,
            )
        model.eval()
        if quantize in TORCHAO:
            model = quantize_weights(model, quantize, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        elif quantize == "none" and next(model.parameters()).device.type == "cuda":
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            if hint := fit_hint(weights, torch.cuda.get_device_properties(0).total_memory):
                print(hint, flush=True)
        name = name or (Path(model_id).name if Path(model_id).exists() else model_id)
        if engine == "fast" and not supports(model):
            raise BackendError(
                "--engine fast serves GPTBigCode (multi-query) models on one device, in full or --quantize int8/int4"
            )
        fast = None
        if engine == "fast" or (engine == "auto" and torch.cuda.is_available() and supports(model)):
            try:
                fast = FastEngine(model, stop_ids(tokenizer), slots, on_bucket=say_slow_bucket, speculate=speculate)
            except Exception as exc:
                if engine == "fast":
                    raise
                # auto: a compile or capture failure must not keep the playground from serving.
                print(f"The fast engine could not start ({exc!r}); serving with plain generate.", flush=True)
        if fast and fast.warm_up_s:  # the start-up's longest wait on a GPU: say what it was
            say_warm_up(fast)
        if speculate:
            say_speculation(name, speculate, fast is not None)
        device = describe_device(model) + (f", batched decoding of {slots}" if fast else "")
        device += f", drafting up to {speculate} tokens a step" if fast and speculate else ""
        info = BackendInfo(name, device, quantize, context_length(model.config), demo, slots if fast else 1)
        return cls(model, tokenizer, info, engine=fast)

    def prepare(self, messages: list[Message], max_new_tokens: int) -> Prompt:
        return fit_to_context(self.tokenizer, messages, max_new_tokens, self.info.context_length)

    def generation_config(self, request: ChatRequest) -> GenerationConfig:
        p = request.params
        # Greedy (temperature 0) uses no sampling flag, and the checkpoint's generation_config.json must not
        # fill them in either (the card's temperature 0.2, top_p 0.95): generate() merges the flags ours
        # leaves unset from it and warns that they "are not valid" for greedy. So ours sets each to the value
        # transformers takes for "not set" (its defaults: 1.0, 1.0 and top_k 50, which greedy ignores).
        sampling = {"temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k}
        greedy = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
        return GenerationConfig(
            max_new_tokens=p.max_new_tokens,
            repetition_penalty=p.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=control_ids(self.tokenizer)[EOS],
            do_sample=p.temperature > 0,
            **(sampling if p.temperature > 0 else greedy),
        )

    @on_gpu
    def stream(self, request: ChatRequest) -> Iterator[str | Outcome]:
        prompt = self.prepare(request.messages, request.params.max_new_tokens)
        if self.engine:
            yield from self.stream_batched(request, prompt.input_ids)
            return
        device = self.model.get_input_embeddings().weight.device
        input_ids = torch.tensor([prompt.input_ids], device=device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        seed = request.params.seed if request.params.seed >= 0 else secrets.randbelow(2**31)
        failure: list[BaseException] = []
        outcome = Outcome(finish="cancelled")  # what `work` found, read once its thread has ended

        def work() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if request.cancel.is_set():
                        return
                    torch.manual_seed(seed)
                    out = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=self.generation_config(request),
                        stopping_criteria=StoppingCriteriaList([CancelCriteria(request.cancel)]),
                        streamer=streamer,
                    )
                new = out[0, len(prompt.input_ids) :].tolist()
                outcome.tokens = len(new)
                if new and new[-1] in self.stop_ids:
                    outcome.finish = "stop"
                else:  # generate() ends the streamer before it returns, so a consumer may cancel after a full reply
                    cut = request.cancel.is_set() and len(new) < request.params.max_new_tokens
                    outcome.finish = "cancelled" if cut else "length"
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                failure.append(
                    BackendError(
                        "The GPU ran out of memory on this request and its memory was freed. "
                        "Try a shorter conversation or fewer max new tokens."
                    )
                )
            except Exception as exc:  # surfaced to the caller below, never lost in the thread
                failure.append(exc)
            finally:
                streamer.end()

        thread = threading.Thread(target=work, name="starchat-generate", daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)  # it yields '' while holding back
        finally:
            request.cancel.set()
            thread.join()
        if failure:
            raise failure[0]
        yield outcome

    def stream_batched(self, request: ChatRequest, prompt: list[int]) -> Iterator[str | Outcome]:
        """The engine hands over token ids; they are turned into text here, in the caller's thread."""
        job, text = Job(request, prompt), Pieces(self.tokenizer)
        self.engine.submit(job)
        try:
            for token in job:
                text.put(torch.tensor([token]))
                yield from text.take()
            text.end()
            yield from text.take()
        finally:
            request.cancel.set()  # the engine frees the slot at its next step
        if job.error:
            raise job.error
        yield Outcome(job.generated, job.finish)
