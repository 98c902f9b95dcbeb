"""`BatchedAdapters`: one forward pass for a batch whose rows name different adapters.

The Punica / S-LoRA idea for an encoder. `MultiAdapterPredictor` runs one sub-batch per adapter
(switching adapters in between); here the frozen base runs ONCE over the whole batch and each row
adds its own adapter's parts, gathered per row from stacked tables:

- every `nn.Linear` of a copy of the plain base encoder becomes a `BatchedLinear`: the base matmul
  without bias, once for the batch (`F.linear(x, W)`, (B, T, out)), plus the row's bias from a table
  (n + 1, out) and the row's LoRA update scale * B(A x). The LoRA factors are kept at each adapter's
  own rank, one table pair per rank on the layer ((k + 1, r, in) and (k + 1, out, r) for the k
  adapters of rank r); no adapter is padded to another's rank;
- every `nn.LayerNorm` becomes a `BatchedLayerNorm`: `F.layer_norm` without affine, then the row's
  weight and bias from tables (n + 1, H).

Row 0 of every bias / LayerNorm table is the plain base; adapter k (load order) is row k + 1 and
holds the base's values wherever it trains none. `forward` orders the batch so that rows of one
rank are contiguous (the encoder treats rows independently; the answers come back in the caller's
order), and each layer then runs one `bmm` pair per rank present IN THIS BATCH on that slice of
rows: the cost depends on the ranks in the batch only, and a batch of one rank costs one gather and
one `bmm` pair, as a single padded table would. What the modules need for one call (the rows and
the rank slices, `_Batch`) reaches them through a context variable set by `forward` (as
`lora.layer.shared_branches` does): concurrent forwards never mix and nothing stays on a module.
Each adapter's head (tiny) then runs on its own rows. Transformers' forward code runs unchanged.

Adapters that train the embeddings, and "full" adapters (the whole model), are refused: their
rows could not share the base's tables. `add` / `remove` rebuild the tables; they must not run
while a forward is in progress (a server serialises them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from roberta_lora.errors import ConfigError
from roberta_lora.lora.injection import set_submodule
from roberta_lora.lora.variants import PLAIN, LoraVariant, require, scaling, variant_named
from roberta_lora.model.adapter_files import check_tensors, read_adapter_tensors
from roberta_lora.model.config import AdapterConfig, head_attribute, read_adapter_config
from roberta_lora.model.families import family_of
from roberta_lora.model.heads import build_head
from roberta_lora.model.tensors import base_name, is_lora_factor
from roberta_lora.model.wrapper import LoraWrapperRoberta


@dataclass(frozen=True)
class _Batch:
    """One forward's rows, as the batched modules need them.

    rows: (B,) the table row of each example, with the rows of one rank contiguous.
    groups: (rank, start, stop) for each rank with LoRA factors present in the batch: rows[start:stop].
    """

    rows: torch.Tensor
    groups: tuple[tuple[int, int, int], ...]
    scaled: bool = False  # some row's adapter has a per-feature output scale (DoRA)


# The rows of the batch, for the duration of one `BatchedAdapters.forward` only.
_BATCH: ContextVar[_Batch | None] = ContextVar("roberta_lora_batched_rows", default=None)


@contextmanager
def _batch(batch: _Batch) -> Iterator[None]:
    token = _BATCH.set(batch)
    try:
        yield
    finally:
        _BATCH.reset(token)


def _current_batch(x: torch.Tensor) -> _Batch:
    batch = _BATCH.get()
    if batch is None or batch.rows.size(0) != x.size(0):
        raise RuntimeError("internal error: a batched adapter module was called outside BatchedAdapters.forward "
                           "or on another batch than the one its rows were set for")
    return batch


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class RankTable(nn.Module):
    """The LoRA factors of one layer's adapters of rank r: `a` (k + 1, r, in) and `b` (k + 1, out, r),
    `b` already multiplied by alpha / r. Row 0 is zeros (no update): the row of an adapter of this rank
    that does not adapt the layer; rows 1..k are the k adapters of this rank that do, in load order."""

    def __init__(self, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        out_features, in_features = like.shape
        self.register_buffer("a", like.new_zeros(1, rank, in_features))
        self.register_buffer("b", like.new_zeros(1, out_features, rank))

    def __len__(self) -> int:
        """Adapters held (row 0 aside)."""
        return self.a.size(0) - 1

    def append(self, a: torch.Tensor, b: torch.Tensor) -> int:
        """Add `a` (r, in) and the scaled `b` (out, r); returns their row."""
        self.a = torch.cat([self.a, a.to(self.a)[None]])
        self.b = torch.cat([self.b, b.to(self.b)[None]])
        return len(self)

    def drop(self, row: int) -> None:
        """Remove row `row` (> 0); the rows after it move up by one."""
        keep = [i for i in range(self.a.size(0)) if i != row]
        self.a, self.b = self.a[keep], self.b[keep]

    def row_nbytes(self, row: int) -> int:
        return _bytes(self.a[row]) + _bytes(self.b[row])


class BatchedLinear(nn.Module):
    """A frozen linear layer whose bias and LoRA update are chosen per row of the batch.

    Tables (row 0 = the plain base): `biases` (n + 1, out) or None when the base has no bias;
    `factors[str(r)]`, a `RankTable` per rank r held on this layer; `slots` (n + 1,) the row of each
    adapter in its rank's table (0: no update on this layer, so also for row 0); `scales` (n + 1, out),
    the per-feature output scale of variants that have one (`lora.variants`: DoRA's m / ||W + s B A||,
    ones for every other row), or None while no adapter here has one. A row computes
    scale * (W x + s B A x) + bias, what `LoraLinear` computes for that adapter.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)  # (out, in), shared by every row
        self.register_buffer("biases", None if base.bias is None else base.bias.detach()[None].clone())
        self.factors = nn.ModuleDict()
        self.register_buffer("slots", torch.zeros(1, dtype=torch.long, device=self.weight.device))
        self.register_buffer("scales", None)
        self.ranks = [0]  # per row: the rank of its factors on this layer (0: none)

    def append(self, tensors: dict[str, torch.Tensor], scaling: float, variant: LoraVariant = PLAIN) -> None:
        """Add a row: `tensors` may hold "bias" (out,), "lora_A" (r, in), "lora_B" (out, r) and the variant's
        own tensors; `scaling` multiplies B A (`lora.variants.scaling`)."""
        if self.biases is not None:
            bias = tensors.get("bias", self.biases[0])
            self.biases = torch.cat([self.biases, bias.to(self.biases)[None]])
        slot, rank, row_scale = 0, 0, None
        if "lora_A" in tensors:
            rank = tensors["lora_A"].size(0)
            if str(rank) not in self.factors:
                self.factors[str(rank)] = RankTable(rank, self.weight)
            weight_a, weight_b = (tensors[n].to(self.weight) for n in ("lora_A", "lora_B"))
            extra = {name: tensors[name].to(self.weight) for name in variant.extra_tensors}
            row_scale = variant.row_scale(self.weight, weight_a, weight_b, scaling, extra)
            slot = self.factors[str(rank)].append(weight_a, weight_b * scaling)
        if row_scale is not None and self.scales is None:  # the first scaled row: every earlier row scales by 1
            self.scales = self.weight.new_ones(len(self.ranks), self.weight.size(0))
        if self.scales is not None:
            row = self.scales.new_ones(self.weight.size(0)) if row_scale is None else row_scale.to(self.scales)
            self.scales = torch.cat([self.scales, row[None]])
        self.ranks.append(rank)
        self.slots = torch.cat([self.slots, self.slots.new_tensor([slot])])

    def drop(self, row: int) -> None:
        """Remove table row `row` (> 0) and its factors; a rank no other adapter uses here goes with it."""
        keep = [i for i in range(len(self.ranks)) if i != row]
        if self.biases is not None:
            self.biases = self.biases[keep]
        if self.scales is not None:
            self.scales = self.scales[keep]
        rank, slot = self.ranks.pop(row), int(self.slots[row])
        slots = self.slots[keep]
        if rank and len(self.factors[str(rank)]) == 1:
            del self.factors[str(rank)]
        elif rank:
            self.factors[str(rank)].drop(slot)
            same_rank = torch.tensor([r == rank for r in self.ranks], device=slots.device)
            slots = slots - (same_rank & (slots > slot)).long()  # the rows after it moved up
        self.slots = slots

    def row_nbytes(self, row: int) -> int:
        held = _bytes(self.slots[row]) + (_bytes(self.biases[row]) if self.biases is not None else 0)
        held += _bytes(self.scales[row]) if self.scales is not None else 0
        if self.ranks[row]:
            held += self.factors[str(self.ranks[row])].row_nbytes(int(self.slots[row]))
        return held

    def held_nbytes(self) -> int:
        """Bytes of every adapter's rows (not row 0 of any table)."""
        tables = [self.slots[1:]] + ([self.biases[1:]] if self.biases is not None else [])
        tables += [self.scales[1:]] if self.scales is not None else []
        tables += [t[1:] for table in self.factors.values() for t in (table.a, table.b)]
        return sum(_bytes(t) for t in tables)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = _current_batch(x)
        x3 = x.reshape(x.size(0), -1, x.size(-1))  # (B, T, in)
        out = F.linear(x3, self.weight)  # (B, T, out): the base matmul, once for the whole batch
        for rank, start, stop in batch.groups:  # the rows of one rank are contiguous
            if str(rank) not in self.factors:
                continue  # no adapter of this rank adapts this layer
            table = self.factors[str(rank)]
            slots = self.slots[batch.rows[start:stop]]  # (n,)
            hidden = torch.bmm(x3[start:stop], table.a[slots].transpose(1, 2))  # (n, T, r)
            out[start:stop].baddbmm_(hidden, table.b[slots].transpose(1, 2))  # + scale * B(A x), in place
        if batch.scaled and self.scales is not None:
            out *= self.scales[batch.rows].unsqueeze(1)  # DoRA rows: m / ||W + s B A||; others 1
        if self.biases is not None:
            out += self.biases[batch.rows].unsqueeze(1)
        return out.view(*x.shape[:-1], -1)


class BatchedLayerNorm(nn.Module):
    """A LayerNorm whose weight and bias are chosen per row: tables `weights`, `biases` (n + 1, H)."""

    def __init__(self, base: nn.LayerNorm) -> None:
        super().__init__()
        self.normalized_shape = tuple(base.normalized_shape)
        self.eps = base.eps
        (size,) = self.normalized_shape  # the encoders normalise the last dimension only
        weight = base.weight.detach() if base.weight is not None else torch.ones(size)
        bias = base.bias.detach() if base.bias is not None else torch.zeros(size)
        self.register_buffer("weights", weight[None].clone())
        self.register_buffer("biases", bias.to(weight)[None].clone())

    def append(self, tensors: dict[str, torch.Tensor]) -> None:
        """Add a row: `tensors` may hold "weight" and "bias" (H,); the base's values otherwise."""
        self.weights = torch.cat([self.weights, tensors.get("weight", self.weights[0]).to(self.weights)[None]])
        self.biases = torch.cat([self.biases, tensors.get("bias", self.biases[0]).to(self.biases)[None]])

    def drop(self, row: int) -> None:
        keep = [i for i in range(self.weights.size(0)) if i != row]
        self.weights, self.biases = self.weights[keep], self.biases[keep]

    def row_nbytes(self, row: int) -> int:
        return _bytes(self.weights[row]) + _bytes(self.biases[row])

    def held_nbytes(self) -> int:
        """Bytes of every adapter's rows (not row 0)."""
        return _bytes(self.weights[1:]) + _bytes(self.biases[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _current_batch(x).rows  # (B,)
        normed = F.layer_norm(x, self.normalized_shape, None, None, self.eps)  # (B, T, H)
        shape = (x.size(0),) + (1,) * (x.dim() - 2) + (-1,)
        return torch.addcmul(self.biases[rows].view(shape), normed, self.weights[rows].view(shape))


class BatchedAdapters:
    """Named adapters on one frozen base, answering mixed-task batches in one encoder pass.

    Args:
        model: any `LoraWrapperRoberta` on the base to serve; it is not modified. The engine runs a
            copy of its plain base (`model.unload()`, so the model's adapter is not part of it) and
            keeps the model for its checks (family, base fingerprint, expected tensors).
    """

    def __init__(self, model: LoraWrapperRoberta) -> None:
        self._model = model
        self.encoder = model.unload().eval()  # the plain base, wrapped below; public for inspection only
        # One dtype for the whole base, the embeddings' (a model cast to bfloat16 may hand back the base
        # values it keeps, biases and LayerNorms, in float32); every table then follows it.
        self.encoder.to(self.encoder.get_input_embeddings().weight.dtype)
        self._uses_token_types = family_of(model.config).uses_token_types
        self._batched: dict[str, BatchedLinear | BatchedLayerNorm] = {}
        for path, module in list(self.encoder.named_modules()):
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                batched = BatchedLinear(module) if isinstance(module, nn.Linear) else BatchedLayerNorm(module)
                set_submodule(self.encoder, path, batched)
                self._batched[path] = batched
        self._configs: dict[str, AdapterConfig] = {}  # load order = table rows 1, 2, ...
        self._heads: dict[str, nn.Module] = {}
        self._ranks: dict[str, int] = {}  # the rank of each adapter's LoRA factors (0: it has none)

    # ----------------------------------------------------------------------------- what is here
    @property
    def names(self) -> list[str]:
        """The loaded adapters, in load order."""
        return list(self._configs)

    def config(self, name: str) -> AdapterConfig:
        """The configuration of adapter `name`."""
        self._require_known(name)
        return self._configs[name]

    def nbytes(self, name: str) -> int:
        """Bytes held for adapter `name`: its LoRA factors (at its own rank, on the layers it adapts), its
        bias and LayerNorm rows (the base's values where it trains none), its row of each layer's index
        into the rank tables, and its head. Other adapters, added or removed, do not change it."""
        row = self._row(name)
        head = sum(_bytes(p) for p in self._heads[name].parameters())
        return head + sum(module.row_nbytes(row) for module in self._batched.values())

    def held_bytes(self) -> int:
        """Bytes held for all adapters together (not the base's own row 0 or its shared weights):
        `sum(self.nbytes(name) for name in self.names)`, counted from the tables."""
        heads = sum(_bytes(p) for head in self._heads.values() for p in head.parameters())
        return heads + sum(module.held_nbytes() for module in self._batched.values())

    def _row(self, name: str) -> int:
        self._require_known(name)
        return self.names.index(name) + 1

    def _require_known(self, name: str) -> None:
        if name not in self._configs:
            raise ConfigError(f"no adapter named {name!r} in this BatchedAdapters; loaded adapters: {self.names} "
                              "(add it with .add(name, directory))")

    # ----------------------------------------------------------------------------- adding and removing
    def add(self, name: str, directory: str | Path, allow_base_mismatch: bool = False) -> AdapterConfig:
        """Read an adapter folder and serve it as `name`.

        Raises AdapterError for a corrupt file, tensors that do not fit, a base of another family or
        another base (unless `allow_base_mismatch`, which only warns); ConfigError for a name in use
        or an adapter this engine cannot batch ("full", train_embeddings).
        """
        self._check_new(name)
        config, digest = read_adapter_config(directory)
        self._model.check_base(config, directory, allow_base_mismatch)
        self._check_batchable(config, str(directory))
        self._add(name, config, read_adapter_tensors(directory, digest), str(directory))
        return self._configs[name]

    def add_tensors(self, name: str, config: AdapterConfig, tensors: dict[str, torch.Tensor]) -> None:
        """Serve an adapter held in memory (config + tensors named as in its adapter file) as `name`."""
        self._check_new(name)
        self._check_batchable(config, f"adapter {name!r}")
        self._add(name, config, tensors, f"adapter {name!r}")

    def _check_new(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"an adapter name must be a non-empty string, got {name!r}")
        if name in self._configs:
            raise ConfigError(f"an adapter named {name!r} is already loaded; remove({name!r}) first or pick another name")

    def _check_batchable(self, config: AdapterConfig, source: str) -> None:
        config.validate()
        self._model.check_family(config, source)
        if config.method == "full":
            raise ConfigError(f"{source} is a 'full' adapter (it replaces every base weight), so its rows cannot share "
                              "the base; serve it with LoraWrapperRoberta.from_adapter, or train a LoRA adapter")
        if config.train_embeddings:
            raise ConfigError(f"{source} trains the embeddings (train_embeddings=True), which BatchedAdapters shares "
                              "across rows; serve it with MultiAdapterPredictor or LoraWrapperRoberta.from_adapter")
        kind = variant_named(config.variant)
        require(kind.name, kind.batchable, f"BatchedAdapters ({source})",
                "serve it with MultiAdapterPredictor or LoraWrapperRoberta.from_adapter")

    def _add(self, name: str, config: AdapterConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Check `tensors` against `config` (already found batchable) and append its rows and head."""
        check_tensors(tensors, self._model.expected_adapter_tensors(config), source)
        per_module, head_state = _split_tensors(tensors, head_attribute(config.task_type))
        unknown = sorted(set(per_module) - set(self._batched))
        if unknown:  # check_tensors accepted them, so the tables and the model disagree
            raise RuntimeError(f"internal error: adapter tensors for modules {unknown[:3]} that are not batched")
        weight = self.encoder.get_input_embeddings().weight  # the heads follow the base's device and dtype
        head = build_head(config, self._model.config).to(device=weight.device, dtype=weight.dtype)
        head.load_state_dict(head_state)
        factor = scaling(config.lora_alpha, config.lora_rank, config.use_rslora)
        kind = variant_named(config.variant)
        for path, module in self._batched.items():
            if isinstance(module, BatchedLinear):
                module.append(per_module.get(path, {}), factor, kind)
            else:
                module.append(per_module.get(path, {}))
        self._heads[name] = head.eval().requires_grad_(False)
        self._ranks[name] = config.lora_rank if any(is_lora_factor(n) for n in tensors) else 0
        live = self._model.adapter_config
        self._configs[name] = replace(config, base_fingerprint=live.base_fingerprint, base_model=live.base_model)

    def remove(self, name: str) -> None:
        """Stop serving adapter `name` and free its table rows and head."""
        row = self._row(name)
        for module in self._batched.values():
            module.drop(row)
        del self._configs[name], self._heads[name], self._ranks[name]

    # ----------------------------------------------------------------------------- the forward pass
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapters: Sequence[str],
                token_type_ids: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """One result per row of `input_ids` (B, T), row i answered by adapter `adapters[i]`:
        {"logits": (C,)} for GLUE, {"start_logits": (T,), "end_logits": (T,)} for SQuAD.

        The encoder runs once for the whole batch, on its rows ordered by adapter rank (stable, so a
        batch of one rank keeps its order); `token_type_ids` (B, T) reach it where the family uses
        segments (BERT). Each adapter's head runs on its own rows; results are in the caller's order.
        """
        if isinstance(adapters, str) or len(adapters) != input_ids.size(0):
            count = "a string" if isinstance(adapters, str) else f"{len(adapters)} adapter names"
            raise ConfigError(f"got {count} for a batch of {input_ids.size(0)} rows; pass one name per row")
        table_rows = {name: self._row(name) for name in dict.fromkeys(adapters)}  # ConfigError when unknown
        order = sorted(range(len(adapters)), key=lambda i: self._ranks[adapters[i]])  # sorted position -> row
        names = [adapters[i] for i in order]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._uses_token_types:
            inputs["token_type_ids"] = token_type_ids
        if order != sorted(order):
            index = torch.tensor(order, device=input_ids.device)
            inputs = {k: None if v is None else v[index] for k, v in inputs.items()}
        rows = torch.tensor([table_rows[name] for name in names], device=input_ids.device)
        scaled = any(variant_named(self._configs[name].variant).has_row_scale for name in table_rows)
        with _batch(_Batch(rows, _rank_groups([self._ranks[name] for name in names]), scaled)):
            hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H), rows in sorted order
        results: list[dict[str, torch.Tensor]] = [{} for _ in adapters]
        for name in table_rows:  # first-appearance order; heads are tiny
            positions = [k for k, a in enumerate(names) if a == name]
            out = self._heads[name](hidden[positions])  # (n, C) or (n, T, 2)
            for k, position in enumerate(positions):
                results[order[position]] = _row_output(self._configs[name], out[k])
        return results


def _rank_groups(ranks: list[int]) -> tuple[tuple[int, int, int], ...]:
    """(rank, start, stop) for each run of equal ranks in sorted `ranks`, rank 0 (no factors) left out."""
    groups, start = [], 0
    for stop in range(1, len(ranks) + 1):
        if stop == len(ranks) or ranks[stop] != ranks[start]:
            if ranks[start]:
                groups.append((ranks[start], start, stop))
            start = stop
    return tuple(groups)


def _split_tensors(tensors: dict[str, torch.Tensor], head_prefix: str,
                   ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Adapter tensors by plain encoder module path ({"bias", "weight", "lora_A", "lora_B"}), and the head's.

    "roberta.encoder.layer.0.attention.self.query.lora_A.weight" -> ("encoder.layer.0.attention.self.query", "lora_A");
    "roberta.encoder.layer.0.attention.self.query.base_layer.bias" -> (same path, "bias").
    """
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.startswith(head_prefix + "."):
            head[name.removeprefix(head_prefix + ".")] = tensor
            continue
        if is_lora_factor(name) and name.endswith(".weight"):  # "<path>.lora_A.weight"
            path, factor, _ = name.removeprefix("roberta.").rsplit(".", 2)
            per_module.setdefault(path, {})[factor] = tensor
        elif is_lora_factor(name):  # a variant's own tensor, "<path>.lora_magnitude_vector"
            path, extra = name.removeprefix("roberta.").rsplit(".", 1)
            per_module.setdefault(path, {})[extra] = tensor
        else:
            path, parameter = str(base_name(name)).rsplit(".", 1)
            per_module.setdefault(path, {})[parameter] = tensor
    return per_module, head


def _row_output(config: AdapterConfig, out: torch.Tensor) -> dict[str, torch.Tensor]:
    if config.task_type == "glue":
        return {"logits": out}  # (C,)
    start, end = out.unbind(dim=-1)  # each (T,)
    return {"start_logits": start, "end_logits": end}
