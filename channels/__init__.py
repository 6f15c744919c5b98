"""Channel adapters: platform callbacks in, normalized Inbound envelopes out; outbound senders.

Never imports ``workers`` or ``llama_cpp`` (tests/unit/test_layering.py enforces it).
"""
