"""StarChat Playground: the chat UI, the APIs and the backends (training/ imports the template)."""

from playground.console import quiet_library_loggers

quiet_library_loggers()
