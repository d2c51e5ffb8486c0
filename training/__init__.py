"""The training package: dialogues into the checkpoint the playground serves (it imports playground.template)."""

# First, before anything imports transformers: playground's import turns down the library log lines
# that nobody can act on (bitsandbytes' CPU-kernel notice when the Trainer is imported, torchao's).
import playground  # noqa: F401
