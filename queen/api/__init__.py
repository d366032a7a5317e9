"""The APIs other programs speak, served by the queen on top of its jobs: OpenAI's (openai.py,
openai_embeddings.py), Ollama's (ollama.py) and Anthropic's (anthropic.py). Each converts a request into
an operation and renders the job in its own shapes; common.py is what they share; routes.py mounts them.
"""
