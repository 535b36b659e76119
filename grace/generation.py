"""Rationale generation: a continuous-batching decode loop for Hugging Face models, and the vLLM backend.

`model.generate` on a padded batch keeps every row until the batch's longest rationale has finished, concatenates
each layer's key/value cache anew at every step, and, with a padding mask, copies the key/value heads once per query
head (grouped-query attention) in every layer at every step. On a 2-core AVX2 CPU those copies took more time than
the weights' products. `ContinuousBatchGenerator` instead:

- sorts the prompts by length (longest first), so each prefill pads little; results come back in the caller's order;
- keeps a fixed number of row slots decoding: a finished row leaves at once and a waiting prompt is prefilled into
  its slot (continuous batching), so no step is spent on finished rows while prompts wait;
- writes keys and values in place into preallocated per-layer buffers (`SlotKVCache`) and attends to a window of
  them, never concatenating; the window slides left (one copy) when the buffers fill up;
- attends with SDPA's grouped-query mode, which reads each key/value head where it lies (a decode step in bf16 on a
  CPU with two grouped products instead: SDPA's CPU kernel is slow there);
- chooses the number of slots from a memory budget when the caller does not;
- can pool each row's last-layer hidden states as it goes (`generate_pooled`): the prefill's and each decode step's
  are the hidden states a forward over the whole sequence computes, so the embedding needs no second forward.

Each row attends exactly its own tokens (an explicit 4-D mask) at its own positions, so it gets the sequence it would
get generated alone, up to the float rounding of differently shaped products (tested against one-prompt-at-a-time
`generate`). Simplifications: decoder-only models whose attention layers write through `past_key_values.update` and
take a 4-D `attention_mask` as given (Llama, Qwen2, Qwen3, Mistral, Gemma 3 in transformers 4.5x; checked at run
time); no attention-logit softcapping (Gemma 2) and no attention sinks (gpt-oss); a sliding window (Mistral 0.1,
Phi-3, Gemma 3) only where it cannot bind (prompt + rationale no longer than the window). A model outside these is
refused by name (`unsupported_attention`), never generated wrongly. Sampling follows the settings alone
(temperature, then top-k, then top-p), never the checkpoint's generation_config.json; sampled rows draw from one
seeded generator, so a sampled rationale depends on the call it was made in, not only on its text.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache

from grace.embedding import last_hidden_state_captured, position_ids_from_mask
from grace.pooling import mean_of_sums, pooled_sums

ATTENTION = "grace_grouped_query_sdpa"
MEMORY_BUDGET_BYTES = 2 * 1024**3  # key/value buffers on a CPU; on a GPU, half of the free memory
MAX_SLOTS = 64  # beyond this a CPU is compute-bound and a GPU's next lever is vLLM
PREFILL_TOKENS = 8192  # padded prompt tokens per prefill forward


@dataclass
class GenerationSettings:
    """How rationales are generated (part of the rationale cache key in evaluation)."""

    max_new_tokens: int = 256  # the paper's latency knee (G=256); the reference's eval.sh used 2048
    do_sample: bool = False  # greedy: the same text always gets the same rationale
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    seed: int = 0  # used when sampling

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1 and self.top_k >= 0):
            raise ValueError(f"sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0, got "
                             f"{self.temperature}, {self.top_p}, {self.top_k}")


def model_name(config) -> str:
    return f"{getattr(config, '_name_or_path', '') or 'a model'} ({config.model_type})"


def unsupported_attention(model, span: int) -> str | None:
    """Why the continuous-batching generator would generate `model`'s rationales wrongly when a row holds up to
    `span` tokens (prompt + rationale), or None when it serves it exactly."""
    config = model.config
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return f"{model_name(config)} caps its attention logits (softcap), which SDPA does not do"
    if any(name.rsplit(".", 1)[-1] == "sinks" for name, _ in model.named_parameters()):
        return f"{model_name(config)} attends with learned sinks, which SDPA does not do"
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    if window is not None and (not layer_types or "sliding_attention" in layer_types) and span > window:
        return (f"{model_name(config)} attends within a sliding window of {window} tokens, and a prompt + rationale "
                f"of up to {span} tokens would pass it (GRACE's generator has no window masks)")
    return None


class UnsupportedModelError(ValueError):
    pass


def grouped_query_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                       softcap=None, s_aux=None, **_):
    """Attention with the key/value heads shared by groups of query heads read in place (no repeated copies).

    Refuses what plain SDPA would compute wrongly (the generator checks the model first; this is the last guard,
    for a model family that passes something new): a window narrower than the keys, softcapping, sinks."""
    needs = [name for name, unsupported in (("softcapping", softcap is not None), ("sinks", s_aux is not None), (
        "a sliding window", sliding_window is not None and key.shape[-2] > sliding_window)) if unsupported]
    if needs:
        raise UnsupportedModelError(f"{model_name(module.config)}: its attention needs {' and '.join(needs)}, which "
                                    "GRACE's continuous-batching generator does not implement")
    on_cpu = query.device.type == "cpu"
    dtype = torch.get_autocast_dtype("cpu") if on_cpu and torch.is_autocast_enabled("cpu") else query.dtype
    if query.shape[2] == 1 and on_cpu and dtype != torch.float32:
        output = single_query_attention(query, key, value, attention_mask, scaling)
    else:
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                                enable_gqa=key.shape[1] != query.shape[1])
    return output.transpose(1, 2).contiguous(), None


def single_query_attention(query, key, value, attention_mask, scaling=None):
    """A decode step's attention as two grouped products and a float32 softmax: query [B, H, 1, D] against keys and
    values [B, KV, L, D], H a multiple of KV (query head h reads key/value head h // (H / KV)), boolean mask
    [B, 1, 1, L] (True: attend). On a CPU, SDPA's bf16 kernel takes 7-12x longer for one query than these products
    (benchmarks/generation_speed.py); in float32 the two are as fast, so float32 stays on SDPA."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (dim**-0.5 if scaling is None else scaling)
    scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(weights, value).reshape(batch, heads, 1, dim)


AttentionInterface.register(ATTENTION, grouped_query_sdpa)


class SlotKVCache(DynamicCache):
    """Keys and values of every layer in buffers [slots, kv heads, capacity, head dim], zero-initialised.

    A forward writes its new positions at column `end` and attends to columns [start, end + new): the attention
    window. `advance` moves `end` after each forward and checks that every layer wrote through `update`.
    """

    def __init__(self, slots: int, capacity: int):
        super().__init__()
        self.slots, self.capacity = slots, capacity
        self.key_buffers: list[torch.Tensor] = []
        self.value_buffers: list[torch.Tensor] = []
        self.start = self.end = 0
        self.layers_written = 0

    def allocate(self, like_keys: torch.Tensor, like_values: torch.Tensor) -> None:
        """Buffers for one more layer, with the head counts, head sizes and dtype of the given states."""
        for buffers, like in ((self.key_buffers, like_keys), (self.value_buffers, like_values)):
            buffers.append(like.new_zeros(self.slots, like.shape[1], self.capacity, like.shape[3]))

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        if layer_idx == len(self.key_buffers):  # the first forward allocates each layer's buffers
            self.allocate(key_states, value_states)
        stop = self.end + key_states.shape[2]
        keys, values = self.key_buffers[layer_idx], self.value_buffers[layer_idx]
        keys[:, :, self.end : stop] = key_states
        values[:, :, self.end : stop] = value_states
        self.layers_written += 1
        return keys[:, :, self.start : stop], values[:, :, self.start : stop]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.end - self.start

    def advance(self, width: int, layers: int) -> None:
        if self.layers_written != layers:
            raise RuntimeError(f"{layers} decoder layers but {self.layers_written} wrote keys and values through "
                               "past_key_values.update: this model's attention is not supported by GRACE's HF "
                               "generator (Llama/Qwen-style decoders are)")
        self.layers_written = 0
        self.end += width

    def copy_in(self, slots: torch.Tensor, source: "SlotKVCache", width: int) -> None:
        """Put the first `width` columns of `source`'s rows into `slots`, ending at column `end`."""
        while len(self.key_buffers) < len(source.key_buffers):
            layer = len(self.key_buffers)
            self.allocate(source.key_buffers[layer], source.value_buffers[layer])
        for mine, theirs in zip(self.key_buffers + self.value_buffers, source.key_buffers + source.value_buffers):
            mine[slots, :, self.end - width : self.end] = theirs[:, :, :width]

    def shift_left(self, columns: int) -> None:
        for buffer in self.key_buffers + self.value_buffers:
            buffer[:, :, : self.end - columns] = buffer[:, :, columns : self.end].clone()
        self.start -= columns
        self.end -= columns

    def keep_slots(self, slots: torch.Tensor) -> None:
        self.key_buffers = [b[slots] for b in self.key_buffers]
        self.value_buffers = [b[slots] for b in self.value_buffers]
        self.slots = len(slots)


class _attention_implementation:
    """Context manager: the model runs `name` as its attention function inside, its own outside."""

    def __init__(self, model, name: str):
        self.config, self.name = model.config, name

    def __enter__(self):
        self.previous = self.config._attn_implementation
        self.config._attn_implementation = self.name

    def __exit__(self, *exc):
        self.config._attn_implementation = self.previous


def choose_tokens(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None
                  ) -> torch.Tensor:
    """[rows] next tokens: argmax, or a draw at the settings' temperature from the top-k tokens' top-p nucleus (the
    order of transformers' and vLLM's samplers: top-p over the top-k renormalised)."""
    if not settings.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if 0 < settings.top_k < probs.shape[-1]:
        kth = probs.topk(settings.top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if settings.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= settings.top_p  # the top token is always kept
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def key_value_bytes(model) -> int:
    """Bytes of one key plus one value number in the buffers. Under an autocast (verl's rollouts: bf16 autocast,
    float32 parameters) values come out in the autocast's dtype but keys in the parameters' (rotary embeddings,
    computed in the parameters' dtype, promote them), so both dtypes count."""
    device_type = model.device.type
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else model.dtype
    return (torch.finfo(model.dtype).bits + torch.finfo(autocast).bits) // 8


def default_slots(model, capacity: int, prefill_tokens: int) -> int:
    """Slots whose key/value buffers, with those of the largest prefill (`prefill_tokens` positions), fit the memory
    budget (2 GiB on a CPU, half the free memory on a GPU)."""
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_position = config.num_hidden_layers * kv_heads * head_dim * key_value_bytes(model)
    budget = MEMORY_BUDGET_BYTES
    if model.device.type == "cuda":
        budget = torch.cuda.mem_get_info(model.device)[0] // 2
    return max(1, min(MAX_SLOTS, (budget - prefill_tokens * per_position) // (capacity * per_position)))


@dataclass
class DecodeStats:
    """What a `generate` call did: decode steps, slot-steps (slots x steps) and those of live rows, generated tokens
    (each row's first comes from its prefill), window shifts."""

    decode_steps: int = 0
    slot_steps: int = 0
    live_slot_steps: int = 0
    generated_tokens: int = 0
    window_shifts: int = 0

    @property
    def slot_use(self) -> float:
        """Fraction of the decoded slot-steps that produced a token of a live row."""
        return self.live_slot_steps / self.slot_steps if self.slot_steps else 0.0


class ContinuousBatchGenerator:
    """Batched rationale generation with a Hugging Face causal LM; returns each prompt's new tokens up to and
    including the first EOS (at most `max_new_tokens`)."""

    def __init__(self, model, eos_ids: list[int], pad_id: int, slots: int | None = None):
        self.model, self.eos_ids, self.pad_id, self.slots = model, list(eos_ids), pad_id, slots
        self.stats = DecodeStats()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], settings: GenerationSettings, on_finished=None) -> list[list[int]]:
        """`on_finished(count)` is called as rows finish (for progress bars)."""
        return self._generate(prompts, settings, on_finished, pool_skip=None)

    @torch.no_grad()
    def generate_pooled(self, prompts: list[list[int]], settings: GenerationSettings, pool_skip: list[int],
                        on_finished=None) -> tuple[list[list[int]], torch.Tensor]:
        """The rationales, and float32 [N, H] L2-normalised embeddings of each prompt + rationale (its final token
        included) pooled from the hidden states the generation computes: the masked mean of the last layer after
        each row's first `pool_skip` tokens (at most its prompt: `grace.pooling.pooling_skip`), what a forward over
        the sequence would pool, up to float rounding, without that forward. Each row stays one more decode step in
        its slot to forward its final token, so the schedule, and with it the sampled rationales, differ from
        `generate`'s."""
        if len(pool_skip) != len(prompts) or any(not 0 <= k <= len(p) for k, p in zip(pool_skip, prompts)):
            raise ValueError("pool_skip needs one count per prompt, between 0 and the prompt's length")
        return self._generate(prompts, settings, on_finished, pool_skip)

    def _generate(self, prompts, settings, on_finished, pool_skip):
        if any(len(p) == 0 for p in prompts):
            raise ValueError("an empty prompt cannot be generated from")
        self.stats = DecodeStats()
        if not prompts:
            return [] if pool_skip is None else ([], torch.zeros(0, self.model.config.hidden_size))
        refusal = unsupported_attention(self.model, max(map(len, prompts)) + settings.max_new_tokens)
        if refusal is not None:
            raise UnsupportedModelError(f"{refusal}: its rationales would be wrong. Generate them with vLLM on a GPU "
                                        "(GraceEncoder.from_pretrained(..., backend='vllm')); in training, verl's HF "
                                        "rollout takes such models through model.generate by itself")
        with _attention_implementation(self.model, ATTENTION):
            decode = _Decode(self, prompts, settings, on_finished, pool_skip)
            rationales = decode.run()
        return rationales if pool_skip is None else (rationales, decode.embeddings())


class _Decode:
    """The state of one `generate` call: slots, their rows, the key/value window; with `pool_skip`, each slot's
    running sum of pooled hidden states, and the slots whose row has finished but whose final token is still to be
    forwarded (`closing`)."""

    def __init__(self, owner: ContinuousBatchGenerator, prompts, settings, on_finished, pool_skip=None):
        self.model, self.settings, self.prompts = owner.model, settings, prompts
        self.eos = torch.tensor(owner.eos_ids, device=self.model.device)
        self.pad_id, self.stats, self.on_finished = owner.pad_id, owner.stats, on_finished
        self.layers = self.model.config.num_hidden_layers
        self.waiting = deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))
        self.longest = len(prompts[self.waiting[0]])
        span = self.longest + settings.max_new_tokens  # the most columns a row can hold
        capacity = span + max(64, span // 4)  # a shift of the window frees at least the slack
        slots = min(owner.slots or default_slots(self.model, capacity, max(PREFILL_TOKENS, self.longest)),
                    len(prompts))
        device = self.model.device
        self.cache = SlotKVCache(slots, capacity)
        self.cache.start = self.cache.end = self.longest  # room on the left for any prompt
        self.valid = torch.zeros(slots, capacity, dtype=torch.bool, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.next_tokens = torch.full((slots,), self.pad_id, dtype=torch.long, device=device)
        self.row_of_slot: list[int | None] = [None] * slots
        self.first_column = [0] * slots
        self.outputs: dict[int, list[int]] = {}
        self.done: list[list[int] | None] = [None] * len(prompts)
        self.generator = None
        if settings.do_sample:
            self.generator = torch.Generator(device=device).manual_seed(settings.seed)
        self.pool_skip = pool_skip
        if pool_skip is not None:
            hidden_size = self.model.config.hidden_size
            self.pool_sum = torch.zeros(slots, hidden_size, device=device)
            self.pool_count = torch.zeros(slots, device=device)
            self.closing = [False] * slots
            self.pooled_sums = torch.zeros(len(prompts), hidden_size)
            self.pooled_counts = torch.zeros(len(prompts))

    def embeddings(self) -> torch.Tensor:
        return mean_of_sums(self.pooled_sums, self.pooled_counts)

    def run(self) -> list[list[int]]:
        while True:
            free = [s for s, row in enumerate(self.row_of_slot) if row is None]
            live = len(self.row_of_slot) - len(free)
            enough_free = len(free) >= max(1, len(self.row_of_slot) // 8)  # worth a prefill, or a compaction
            if self.waiting and free and (live == 0 or enough_free):
                self.fill(free[: len(self.waiting)])
                continue
            if live == 0:
                return self.done
            if not self.waiting and enough_free:
                self.keep_live_slots()
            self.decode_step()

    def model_step(self, input_ids, attention_mask, position_ids, cache: SlotKVCache):
        """The next token of each row, and the last layer's hidden states of the forwarded tokens when pooling."""
        with last_hidden_state_captured(self.model) as captured:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        cache.advance(input_ids.shape[1], self.layers)
        return choose_tokens(logits, self.settings, self.generator), captured["hidden"]

    def fill(self, free_slots: list[int]) -> None:
        """Prefill waiting prompts (longest first) into free slots: a forward takes the next prompts within a token
        budget and no shorter than 3/4 of the first, so that padding stays under a quarter of the work."""
        device = self.model.device
        while free_slots and self.waiting:
            width = len(self.prompts[self.waiting[0]])
            rows = []
            budget = max(PREFILL_TOKENS, width)
            while (self.waiting and len(rows) < len(free_slots) and (len(rows) + 1) * width <= budget
                   and 4 * len(self.prompts[self.waiting[0]]) >= 3 * width):
                rows.append(self.waiting.popleft())
            count = len(rows)
            slots, free_slots = free_slots[:count], free_slots[count:]
            ids = torch.full((count, width), self.pad_id, dtype=torch.long, device=device)
            mask = torch.zeros(count, width, dtype=torch.bool, device=device)
            for i, row in enumerate(rows):
                prompt = self.prompts[row]
                ids[i, width - len(prompt) :] = torch.tensor(prompt, device=device)
                mask[i, width - len(prompt) :] = True
            causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
            # a padding position attends to itself only, so its (unused) values stay finite
            attention = (causal & mask[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)
            prefill = SlotKVCache(count, width)
            first, hidden = self.model_step(ids, attention[:, None], position_ids_from_mask(mask), prefill)
            index = torch.tensor(slots, device=device)
            if self.pool_skip is not None:  # the prompt's tokens after its skip
                skip = torch.tensor([self.pool_skip[row] for row in rows], device=device)
                self.pool_sum[index], self.pool_count[index] = pooled_sums(hidden, mask, skip)
            self.cache.copy_in(index, prefill, width)
            self.valid[index] = False
            self.valid[index, self.cache.end - width : self.cache.end] = mask
            self.positions[index] = mask.sum(-1)
            self.next_tokens[index] = first
            for slot, row in zip(slots, rows):
                self.row_of_slot[slot], self.outputs[row] = row, []
                self.first_column[slot] = self.cache.end - width
            self.record(first, slots)

    def record(self, tokens: torch.Tensor, slots: list[int]) -> None:
        """Append each live slot's new token; finish rows at EOS or at max_new_tokens."""
        finished = torch.isin(tokens, self.eos).tolist()
        for slot, token, at_eos in zip(slots, tokens.tolist(), finished):
            row = self.row_of_slot[slot]
            if row is None:
                continue
            if self.pool_skip is not None and self.closing[slot]:
                continue
            out = self.outputs[row]
            out.append(token)
            if at_eos or len(out) == self.settings.max_new_tokens:
                self.done[row] = self.outputs.pop(row)
                if self.pool_skip is None:
                    self.row_of_slot[slot] = None
                else:  # its final token is forwarded in the next step, for its hidden state
                    self.closing[slot] = True
                self.stats.generated_tokens += len(out)
                if self.on_finished is not None:
                    self.on_finished(1)

    def decode_step(self) -> None:
        cache = self.cache
        live = [s for s, row in enumerate(self.row_of_slot) if row is not None]
        if cache.end == cache.capacity:
            self.shift_window(min(self.first_column[s] for s in live))
        cache.start = min(self.first_column[s] for s in live)
        # every slot sees its newest column, so a free slot's attention stays finite
        self.valid[:, cache.end] = True
        attention = self.valid[:, None, None, cache.start : cache.end + 1]
        tokens, hidden = self.model_step(self.next_tokens[:, None], attention, self.positions[:, None], cache)
        self.positions += 1
        self.next_tokens = tokens
        self.stats.decode_steps += 1
        self.stats.slot_steps += len(self.row_of_slot)
        if self.pool_skip is not None:
            self.pool_forwarded_tokens(live, hidden[:, -1])
            live = [s for s, row in enumerate(self.row_of_slot) if row is not None]
        self.stats.live_slot_steps += len(live)
        self.record(tokens, list(range(len(self.row_of_slot))))

    def pool_forwarded_tokens(self, occupied: list[int], hidden: torch.Tensor) -> None:
        """Add each occupied slot's forwarded token (a rationale token: the skip ends within the prompt) to its sum;
        a closing slot's was its row's final token: the row's sums are complete and the slot is freed."""
        index = torch.tensor(occupied, device=hidden.device)
        self.pool_sum[index] += hidden[index].float()
        self.pool_count[index] += 1
        for slot in occupied:
            if self.closing[slot]:
                row = self.row_of_slot[slot]
                self.pooled_sums[row], self.pooled_counts[row] = self.pool_sum[slot].cpu(), self.pool_count[slot].cpu()
                self.row_of_slot[slot], self.closing[slot] = None, False

    def shift_window(self, first_live_column: int) -> None:
        """Slide every buffer left when they are full, keeping `longest` columns of room for a prompt."""
        columns = min(first_live_column, self.cache.end - self.longest)
        self.cache.shift_left(columns)
        self.valid[:, : self.cache.end] = self.valid[:, columns : columns + self.cache.end].clone()
        self.valid[:, self.cache.end :] = False
        self.first_column = [c - columns for c in self.first_column]
        self.stats.window_shifts += 1

    def keep_live_slots(self) -> None:
        """With no prompt waiting, drop the free slots so that steps compute live rows only."""
        live = [s for s, row in enumerate(self.row_of_slot) if row is not None]
        index = torch.tensor(live, device=self.model.device)
        self.cache.keep_slots(index)
        self.valid, self.positions, self.next_tokens = self.valid[index], self.positions[index], self.next_tokens[index]
        self.row_of_slot = [self.row_of_slot[s] for s in live]
        self.first_column = [self.first_column[s] for s in live]
        if self.pool_skip is not None:
            self.pool_sum, self.pool_count = self.pool_sum[index], self.pool_count[index]
            self.closing = [self.closing[s] for s in live]


class VLLMGenerator:
    """vLLM offline generation on token ids (GPU only; imported only when this backend is chosen)."""

    def __init__(self, model_path: str, eos_ids: list[int], max_model_len: int, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.8):
        from vllm import LLM

        self.eos_ids = eos_ids
        self.llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, dtype="bfloat16", enforce_eager=True,
                       trust_remote_code=True)

    def generate(self, prompts: list[list[int]], settings: GenerationSettings, on_finished=None) -> list[list[int]]:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=settings.max_new_tokens, stop_token_ids=self.eos_ids, seed=settings.seed,
                                temperature=settings.temperature if settings.do_sample else 0.0,
                                top_p=settings.top_p if settings.do_sample else 1.0,
                                top_k=settings.top_k if settings.do_sample and settings.top_k > 0 else -1)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        if on_finished is not None:
            on_finished(len(outputs))
        return [until_eos(list(o.outputs[0].token_ids), self.eos_ids) for o in outputs]


def until_eos(tokens: list[int], eos_ids: list[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: position + 1]
    return tokens


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
