"""The one rule the hive and the worker must agree on about a worker's KV cache: llama.cpp cannot read a
quantized V cache without flash attention (llama_init_from_model refuses it with no context), so such a
worker is refused before it starts, with what to do instead."""

from __future__ import annotations

from shared.operations import FLASH_ATTN_MODES, KV_CACHE_TYPES

KV_CACHE_DEFAULT = "f16"
FLASH_ATTN_DEFAULT = "auto"


def kv_cache_problem(kv_cache_type: str, flash_attn: str) -> str | None:
    """Why this KV cache type and flash-attention mode cannot go together (None: they can)."""
    if kv_cache_type not in KV_CACHE_TYPES:
        return f"the KV cache type must be one of {', '.join(KV_CACHE_TYPES)}, not {kv_cache_type!r}"
    if flash_attn not in FLASH_ATTN_MODES:
        return f"flash attention must be one of {', '.join(FLASH_ATTN_MODES)}, not {flash_attn!r}"
    if kv_cache_type != "f16" and flash_attn == "off":
        return (f"a {kv_cache_type} KV cache needs flash attention (llama.cpp reads a quantized V cache only "
                f"through it): use --flash-attn auto or on with --kv-cache-type {kv_cache_type}, or keep "
                "--flash-attn off with --kv-cache-type f16")
    return None
