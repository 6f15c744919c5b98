"""The language model: GGUF files, Qwen3 prompting and the llama.cpp engine."""
