"""The protocol every rbee program speaks: paths, token, operations, events, the job server and client.

Importing this package must stay cheap: no textual, llama_cpp or asyncssh (a test enforces it).
"""

__version__ = "0.2.0"  # pyproject.toml says the same (a test checks)
