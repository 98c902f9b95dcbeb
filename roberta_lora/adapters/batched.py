"""`BatchedAdapters`: one forward pass for a batch whose rows name different adapters.

The Punica / S-LoRA idea for an encoder. `MultiAdapterPredictor` runs one sub-batch per adapter
(switching adapters in between); here the frozen base runs ONCE over the whole batch and each row
adds its own adapter's parts, gathered per row from stacked tables:

- every `nn.Linear` of a copy of the plain base encoder becomes a `BatchedLinear`: the base matmul
  without bias, once for the batch (`F.linear(x, W)`, (B, T, out)), plus the row's bias from a table
  (n + 1, out) and the row's LoRA update scale * B(A x) from tables (n + 1, r_max, in) and
  (n + 1, out, r_max) through `torch.bmm` (smaller ranks are padded with zeros; an adapter that does
  not target the layer has zero factors);
- every `nn.LayerNorm` becomes a `BatchedLayerNorm`: `F.layer_norm` without affine, then the row's
  weight and bias from tables (n + 1, H).

Row 0 of every table is the plain base (no update, the base's own bias and LayerNorm); adapter k
(load order) is row k + 1 and holds the base's values wherever it trains none. The per-row table
index reaches the modules for one call only, through a context variable set by `forward` (as
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
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from roberta_lora.errors import ConfigError
from roberta_lora.lora.injection import set_submodule
from roberta_lora.model.adapter_files import check_tensors, read_adapter_tensors
from roberta_lora.model.config import AdapterConfig, head_attribute, read_adapter_config
from roberta_lora.model.families import family_of
from roberta_lora.model.heads import build_head
from roberta_lora.model.tensors import base_name, is_lora_factor
from roberta_lora.model.wrapper import LoraWrapperRoberta

# The table row of each example (B,), for the duration of one `BatchedAdapters.forward` only.
_ROWS: ContextVar[torch.Tensor | None] = ContextVar("roberta_lora_batched_rows", default=None)


@contextmanager
def _rows(rows: torch.Tensor) -> Iterator[None]:
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def _current_rows(x: torch.Tensor) -> torch.Tensor:
    rows = _ROWS.get()
    if rows is None or rows.size(0) != x.size(0):
        raise RuntimeError("internal error: a batched adapter module was called outside BatchedAdapters.forward "
                           "or on another batch than the one its rows were set for")
    return rows


def _pad(table: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """`table` cut or zero-padded to `size` along `dim` (the rank dimension of a LoRA table)."""
    if table.size(dim) >= size:
        return table.narrow(dim, 0, size)
    shape = list(table.shape)
    shape[dim] = size - table.size(dim)
    return torch.cat([table, table.new_zeros(shape)], dim=dim)


class BatchedLinear(nn.Module):
    """A frozen linear layer whose bias and LoRA update are chosen per row of the batch.

    Tables (row 0 = the plain base): `biases` (n + 1, out) or None when the base has no bias,
    `lora_a` (n + 1, r_max, in), `lora_b` (n + 1, out, r_max) already multiplied by alpha / r.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)  # (out, in), shared by every row
        out_features, in_features = self.weight.shape
        self.register_buffer("biases", None if base.bias is None else base.bias.detach()[None].clone())
        self.register_buffer("lora_a", self.weight.new_zeros(1, 0, in_features))
        self.register_buffer("lora_b", self.weight.new_zeros(1, out_features, 0))
        self.ranks = [0]  # the true rank of each row (padding aside)

    def append(self, tensors: dict[str, torch.Tensor], scaling: float) -> None:
        """Add a row: `tensors` may hold "bias" (out,), "lora_A" (r, in) and "lora_B" (out, r)."""
        if self.biases is not None:
            bias = tensors.get("bias", self.biases[0])
            self.biases = torch.cat([self.biases, bias.to(self.biases)[None]])
        a = tensors.get("lora_A", self.lora_a.new_zeros(0, self.lora_a.size(2)))
        b = tensors.get("lora_B", self.lora_b.new_zeros(self.lora_b.size(1), 0)) * scaling
        r_max = max(self.lora_a.size(1), a.size(0))
        self.lora_a = torch.cat([_pad(self.lora_a, r_max, 1), _pad(a.to(self.lora_a)[None], r_max, 1)])
        self.lora_b = torch.cat([_pad(self.lora_b, r_max, 2), _pad(b.to(self.lora_b)[None], r_max, 2)])
        self.ranks.append(a.size(0))

    def drop(self, row: int) -> None:
        """Remove table row `row` (> 0); the padding shrinks to the largest remaining rank."""
        keep = [i for i in range(len(self.ranks)) if i != row]
        del self.ranks[row]
        if self.biases is not None:
            self.biases = self.biases[keep]
        self.lora_a = _pad(self.lora_a[keep], max(self.ranks), 1)
        self.lora_b = _pad(self.lora_b[keep], max(self.ranks), 2)

    def row_nbytes(self, row: int) -> int:
        tables = [t[row] for t in (self.biases, self.lora_a, self.lora_b) if t is not None]
        return sum(t.numel() * t.element_size() for t in tables)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _current_rows(x)  # (B,)
        x3 = x.reshape(x.size(0), -1, x.size(-1))  # (B, T, in)
        out = F.linear(x3, self.weight)  # (B, T, out): the base matmul, once for the whole batch
        if self.biases is not None:
            out += self.biases[rows].unsqueeze(1)
        if self.lora_a.size(1):
            hidden = torch.bmm(x3, self.lora_a[rows].transpose(1, 2))  # (B, T, r_max)
            out = torch.baddbmm(out, hidden, self.lora_b[rows].transpose(1, 2))  # + scale * B(A x)
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

    def append(self, tensors: dict[str, torch.Tensor], scaling: float = 1.0) -> None:
        """Add a row: `tensors` may hold "weight" and "bias" (H,); the base's values otherwise."""
        self.weights = torch.cat([self.weights, tensors.get("weight", self.weights[0]).to(self.weights)[None]])
        self.biases = torch.cat([self.biases, tensors.get("bias", self.biases[0]).to(self.biases)[None]])

    def drop(self, row: int) -> None:
        keep = [i for i in range(self.weights.size(0)) if i != row]
        self.weights, self.biases = self.weights[keep], self.biases[keep]

    def row_nbytes(self, row: int) -> int:
        return 2 * self.weights[row].numel() * self.weights.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _current_rows(x)  # (B,)
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
        self._uses_token_types = family_of(model.config).uses_token_types
        self._batched: dict[str, BatchedLinear | BatchedLayerNorm] = {}
        for path, module in list(self.encoder.named_modules()):
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                batched = BatchedLinear(module) if isinstance(module, nn.Linear) else BatchedLayerNorm(module)
                set_submodule(self.encoder, path, batched)
                self._batched[path] = batched
        self._configs: dict[str, AdapterConfig] = {}  # load order = table rows 1, 2, ...
        self._heads: dict[str, nn.Module] = {}

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
        """Bytes held for adapter `name`: its table rows (LoRA rows padded to each layer's largest rank,
        and the base's biases / LayerNorms where it trains none) and its head."""
        row = self._row(name)
        head = sum(p.numel() * p.element_size() for p in self._heads[name].parameters())
        return head + sum(module.row_nbytes(row) for module in self._batched.values())

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
        scaling = float(config.lora_alpha) / config.lora_rank
        for path, module in self._batched.items():
            module.append(per_module.get(path, {}), scaling)
        self._heads[name] = head.eval().requires_grad_(False)
        live = self._model.adapter_config
        self._configs[name] = replace(config, base_fingerprint=live.base_fingerprint, base_model=live.base_model)

    def remove(self, name: str) -> None:
        """Stop serving adapter `name` and free its table rows and head."""
        row = self._row(name)
        for module in self._batched.values():
            module.drop(row)
        del self._configs[name], self._heads[name]

    # ----------------------------------------------------------------------------- the forward pass
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapters: Sequence[str],
                token_type_ids: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """One result per row of `input_ids` (B, T), row i answered by adapter `adapters[i]`:
        {"logits": (C,)} for GLUE, {"start_logits": (T,), "end_logits": (T,)} for SQuAD.

        The encoder runs once for the whole batch; `token_type_ids` (B, T) reach it where the family
        uses segments (BERT). Each adapter's head runs on its own rows.
        """
        if isinstance(adapters, str) or len(adapters) != input_ids.size(0):
            count = "a string" if isinstance(adapters, str) else f"{len(adapters)} adapter names"
            raise ConfigError(f"got {count} for a batch of {input_ids.size(0)} rows; pass one name per row")
        table_rows = {name: self._row(name) for name in dict.fromkeys(adapters)}  # ConfigError when unknown
        rows = torch.tensor([table_rows[name] for name in adapters], device=input_ids.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        segments = {"token_type_ids": token_type_ids} if self._uses_token_types else {}
        with _rows(rows):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state
        results: list[dict[str, torch.Tensor]] = [{} for _ in adapters]
        for name in table_rows:  # first-appearance order; heads are tiny
            positions = [i for i, a in enumerate(adapters) if a == name]
            out = self._heads[name](hidden[positions])  # (n, C) or (n, T, 2)
            for k, position in enumerate(positions):
                results[position] = _row_output(self._configs[name], out[k])
        return results


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
        if is_lora_factor(name):
            path, factor, _ = name.removeprefix("roberta.").rsplit(".", 2)
            per_module.setdefault(path, {})[factor] = tensor
        else:
            path, parameter = str(base_name(name)).rsplit(".", 1)
            per_module.setdefault(path, {})[parameter] = tensor
    return per_module, head


def _row_output(config: AdapterConfig, out: torch.Tensor) -> dict[str, torch.Tensor]:
    if config.task_type == "glue":
        return {"logits": out}  # (C,)
    start, end = out.unbind(dim=-1)  # each (T,)
    return {"start_logits": start, "end_logits": end}
