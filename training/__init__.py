"""The training package: dialogues into the checkpoint the playground serves (it imports playground.template)."""

# First, before anything imports transformers' Trainer (which imports peft, which imports bitsandbytes):
# playground's import turns down the library log lines nobody can act on, and bitsandbytes is imported
# without the Hub lookup its import makes on some CPUs.
from playground.console import import_bitsandbytes_offline

import_bitsandbytes_offline()
