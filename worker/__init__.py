"""llm-worker-rbee: serves one GGUF model through llama.cpp and streams tokens over SSE."""
