"""The one rule the hive and the worker must agree on about a worker's KV cache: llama.cpp cannot read a
quantized V cache without flash attention (llama_init_from_model refuses it with no context), so such a
worker is refused before it starts, with what to do instead."""

from __future__ import annotations

from shared.operations import FLASH_ATTN_MODES, KV_CACHE_TYPES

KV_CACHE_DEFAULT = "f16"
# Bytes per cached element for llama.cpp's KV cache types (block size / values per block for quantized
# ones): the hive's memory estimates and a worker growing its slots both count with it.
KV_ELEMENT_BYTES: dict[str, float] = {
    "f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32, "q4_1": 20 / 32,
    "q4_0": 18 / 32, "iq4_nl": 18 / 32,
}
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

# A generating worker's slots follow demand: it starts with START_SLOTS slots (llama.cpp sequences, each
# --ctx-size tokens of KV cache, as llama-server -np N) and, when requests wait for one, grows to as many
# as they need, at most --max-parallel (MAX_SLOTS by default), while the machine has the memory: it makes
# a larger context and moves every slot's cells into it (a pause of a fraction of a second, once). A
# worker given --parallel N keeps N slots. The queen sees the most it may reach, so requests reach the
# worker and make it grow. (Not one unified cache for all sequences: on the CPU, llama.cpp's unified KV
# makes every token's attention walk every sequence's cells, measured 10 % slower at 8 clients and 20 %
# at 16 than separate sequences.)
START_SLOTS = 4
MAX_SLOTS = 16
SLOTS_LIMIT = 64  # what --parallel and --max-parallel accept


def start_slots(fixed: int | None, most: int = MAX_SLOTS) -> int:
    """The slots a worker starts with (and plans memory for): `fixed` ones, else START_SLOTS or fewer."""
    return fixed or min(START_SLOTS, most)


def worker_slots_args(slots: int | None) -> list[str]:
    """rbee-hive's arguments for the queen's --worker-slots (none: the hive's default, slots that grow)."""
    return [] if slots is None else ["--worker-slots", str(slots)]
