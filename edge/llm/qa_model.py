"""A frozen LLM plus what one QA method trains on it: mPnP aligners, LoRA on k/v, or an input-prefix projection.

Methods (the rows of the QA table):
- `mpnp`: aligners + gates of the trained modalities into the last N blocks (optional LoRA on their k/v).
- `full`: the full-LLM baseline: connections into every block and LoRA on k/v of every block.
- `prefix`: the input-prefix baseline: modality tokens -> Linear-GELU-Linear -> d_model embeddings prepended to
  the prompt at the embedding layer; backward runs through all blocks.
- `text`: no modality at all; LoRA on k/v of the last N blocks learns the answer prior per question.

Training runs the *tail* only: blocks before the first trained one see nothing but the text, which does not change
between epochs, so their output is computed once per distinct text (`TrunkCache`) and the trainable tail (N
blocks) runs forward and backward per step. Evaluation uses the ordinary full forward with a KV cache (so what
is evaluated is the runtime path, not the training shortcut).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache

from edge.llm.aligner import ModalityAligner, load_aligner, plugin_token_spec, save_aligner
from edge.llm.connector import MPnPConnector
from edge.llm.errors import LLMError
from edge.llm.loading import LoadedLLM
from edge.llm.qa_data import QADataset, QAItem, check_modalities
from edge.llm.qa_text import QATokenizer
from edge.llm.training import PART_FORMAT, KVLoRA, freeze_llm, load_kv_lora

METHODS = ("mpnp", "full", "prefix", "text")
RUN_FILE = "run.json"


@dataclass
class QAConfig:
    """What is attached, what is trained, and how deep; saved with every run as run.json."""

    method: str = "mpnp"
    modalities: tuple[str, ...] = ("fisheye", "camera")  # attached, in prefix order
    trained: tuple[str, ...] | None = None  # modalities whose aligners/projections train (None = all attached)
    n_blocks: int = 8
    lora_rank: int = 0
    d_enc: int = 128
    # Composable aligners: each training item sees a random non-empty subset of the attached modalities, so any
    # subset the scheduler attaches at runtime is one the aligners were trained in (docs/qa.md).
    random_subsets: bool = False
    # Whether the LoRA trains with the method's parts. `edge adapt --add` from a run with a LoRA keeps it frozen
    # (False), as it keeps the starting run's aligners: with the added modality masked, the run answers as it did.
    lora_trained: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LLMError(f"unknown method '{self.method}' (known: {', '.join(METHODS)})")
        self.modalities = check_modalities(self.modalities)
        if self.method == "text":
            self.modalities = ()
        self.trained = tuple(self.modalities if self.trained is None else self.trained)
        stray = [m for m in self.trained if m not in self.modalities]
        if stray:
            raise LLMError(f"trained modalities {stray} are not attached ({list(self.modalities)})")


def token_width(modality: str, default: int) -> int:
    """The width of `modality`'s tokens: its plugin's declaration (TokenSpec.width), `default` where none declares it."""
    spec = plugin_token_spec(modality)
    return int(spec.width) if spec is not None else default


def _projection(d_enc: int, d_model: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_enc, 4 * d_enc), nn.GELU(), nn.Linear(4 * d_enc, d_model))


def run_layers(model: nn.Module, hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Decoder layers [start, end) over right-padded (B, S, d) hidden states (causal, positions 0..S-1)."""
    inner = model.model
    pos = torch.arange(hidden.shape[1], device=hidden.device)[None]
    pe = inner.rotary_emb(hidden, position_ids=pos)
    for layer in inner.layers[start:end]:
        hidden = layer(hidden, attention_mask=None, position_embeddings=pe, position_ids=pos)
    return hidden


class TrunkCache:
    """Hidden states entering block `start`, per distinct token sequence (frozen blocks, text only)."""

    def __init__(self, model: nn.Module, start: int) -> None:
        self.model, self.start = model, start
        self._store: dict[tuple[int, ...], torch.Tensor] = {}
        self.passes = 0  # sequences run through the frozen blocks (what the FLOPs record counts)

    @torch.no_grad()
    def get(self, seqs: list[tuple[int, ...]]) -> list[torch.Tensor]:
        todo = sorted({s for s in seqs if s not in self._store})
        self.passes += len(todo) if self.start > 0 else 0
        for i in range(0, len(todo), 32):
            chunk = todo[i : i + 32]
            width = max(map(len, chunk))
            ids = torch.tensor([list(s) + [0] * (width - len(s)) for s in chunk])
            hidden = run_layers(self.model, self.model.model.embed_tokens(ids), 0, self.start)
            for s, h in zip(chunk, hidden):
                self._store[s] = h[: len(s)].clone()
        return [self._store[s] for s in seqs]


class ReleasedBlock(nn.Module):
    """Stands in for a frozen block whose weights were freed once the trunk cache held every training text."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise LLMError(f"LLM block {self.index} was released after training's trunk cache was filled; this model "
                       "only trains on the texts it cached: load the run again (load_run) to evaluate or answer")


class QAModel:
    """The LLM with one method's trainable parts attached; `loss` trains, `answer` evaluates, `save`/`load` persist."""

    def __init__(self, llm: LoadedLLM, cfg: QAConfig, init_from: Path | None = None,
                 init_relayout: bool = False) -> None:
        """`init_relayout`: warm start from aligners of an older token layout (edge.llm.aligner.load_aligner)."""
        self.llm, self.cfg, self.init_relayout = llm, cfg, init_relayout
        self.model = llm.model
        self.shape = llm.shape
        self.text = QATokenizer(llm.tokenizer)
        L = self.shape.n_layers
        n = L if cfg.method == "full" else cfg.n_blocks
        if not 1 <= n <= L:
            raise LLMError(f"N={n} outside 1..{L}")
        self.n_blocks = n
        freeze_llm(self.model)
        self.conn: MPnPConnector | None = None
        self.lora: KVLoRA | None = None
        self.lora_rank = 0
        self.proj = nn.ModuleDict()
        try:
            self._build(Path(init_from) if init_from else None)
        except BaseException:
            self.close()  # a checkpoint that does not fit must not leave hooks or a connector on the shared LLM
            raise
        self.start = 0 if cfg.method == "prefix" else L - n
        self.trunk = TrunkCache(self.model, self.start)
        self.only: tuple[str, ...] | None = None  # evaluate with only these of the attached modalities fed

    def release_trunk(self, seqs: list[tuple[int, ...]]) -> int:
        """Run the frozen blocks once over every text in `seqs`, then free their weights; returns blocks freed.

        Why: those blocks see only text, so after one pass per distinct training text they are never needed again
        in training, and their weights (24 of SmolLM2's 30 blocks at N = 6, ~340 MB fp32) are most of the
        resident memory training would otherwise hold. The kept weights are copied out of the memory-mapped
        weights file, so the whole mapping goes and the freed blocks leave RSS. The shared LLM keeps working only
        on the cached texts afterwards (a released block raises LLMError): for a process that trains and exits.
        """
        if self.start == 0:
            return 0
        self.trunk.get(seqs)
        layers = self.model.model.layers
        for i in range(self.start):
            for t in [*layers[i].parameters(), *layers[i].buffers()]:  # the connector still holds their modules
                t.data = torch.empty(0, dtype=t.dtype)
            layers[i] = ReleasedBlock(i)
        for t in [*self.model.parameters(), *self.model.buffers()]:
            t.data = t.data.clone()
        return self.start

    def use_only(self, modalities: tuple[str, ...] | None) -> None:
        """Feed only `modalities` (the others attached but masked out, as if detached); None = all attached."""
        stray = [m for m in (modalities or ()) if m not in self.cfg.modalities]
        if stray:
            raise LLMError(f"modalities {stray} are not attached to this run ({list(self.cfg.modalities)})")
        self.only = modalities

    def _build(self, init: Path | None) -> None:
        cfg, L, n = self.cfg, self.shape.n_layers, self.n_blocks
        if cfg.method in ("mpnp", "full"):
            self.conn = MPnPConnector(self.model, n)
            for m in cfg.modalities:
                width = token_width(m, cfg.d_enc)
                src = init / f"aligner_{m}.safetensors" if init else None
                if src is not None and src.exists():
                    aligner = load_aligner(src, modality=m, shape=self.shape, relayout=self.init_relayout)
                    if aligner.spec.n_blocks < n:
                        aligner.extend_gates(n)
                else:
                    aligner = ModalityAligner.for_llm(m, width, self.shape, n)
                if aligner.spec.d_enc != width:
                    raise LLMError(f"aligner '{m}' takes d_enc {aligner.spec.d_enc}, the encoders give {width}")
                self.conn.attach(aligner)
        elif cfg.method == "prefix":
            for m in cfg.modalities:
                self.proj[m] = _projection(cfg.d_enc, self.shape.d_model)
            if init is not None and (init / "prefix.safetensors").exists():
                self._load_prefix(init / "prefix.safetensors")
        rank = cfg.lora_rank if cfg.method != "full" else (cfg.lora_rank or 8)
        if cfg.method == "text" and rank == 0:
            rank = 8
        if rank:
            layers = list(range(L - n, L))
            src = init / "lora.safetensors" if init is not None else None
            if src is not None and src.exists():
                self.lora = load_kv_lora(self.model, src, layers=layers, rank=rank)
            else:
                self.lora = KVLoRA(self.model, layers, rank=rank, alpha=2.0 * rank)
        self.lora_rank = rank

    # ---- parameters --------------------------------------------------------------------------------------
    def trainable(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        if self.conn is not None:
            for m in self.cfg.trained:
                params += list(self.conn.aligners[m].parameters())
        for m in self.cfg.trained:
            if m in self.proj:
                params += list(self.proj[m].parameters())
        if self.lora is not None and self.cfg.lora_trained:
            params += list(self.lora.parameters())
        for p in params:
            p.requires_grad_(True)
        if self.lora is not None and not self.cfg.lora_trained:  # carried over from the starting run, kept as is
            for p in self.lora.parameters():
                p.requires_grad_(False)
        if self.conn is not None:  # attached but not trained (e.g. the day modalities while adding at night)
            for m in self.cfg.modalities:
                if m not in self.cfg.trained:
                    for p in self.conn.aligners[m].parameters():
                        p.requires_grad_(False)
        return params

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        self.proj.train(mode)
        if self.conn is not None:
            self.conn.train(mode)

    # ---- training ----------------------------------------------------------------------------------------
    def _feed(self, data: QADataset, items: list[QAItem], training: bool = False) -> torch.Tensor | None:
        """Feed the connector (mPnP) or return the projected input prefix (prefix baseline)."""
        if self.conn is not None:
            mods = self.cfg.modalities
            keep = torch.ones(len(items), len(mods), dtype=torch.bool)
            frozen = [i for i, m in enumerate(mods) if m not in self.cfg.trained]
            if training and self.cfg.random_subsets and frozen and len(frozen) < len(mods):
                # adding beside frozen aligners (edge adapt --add): the trained modalities are always fed (the
                # gradient reaches only them), each frozen one with probability 1/2, so the new aligner learns to
                # read its tokens alone and beside any subset of the others
                keep[:, frozen] = torch.rand(len(items), len(frozen)) < 0.5
            elif training and self.cfg.random_subsets and len(mods) > 1:  # torch's RNG: seeded by --seed
                keep = torch.rand(len(items), len(mods)) < 0.5
                empty = ~keep.any(1)
                keep[empty, torch.randint(0, len(mods), (int(empty.sum()),))] = True
            elif self.only is not None:
                keep[:, [i for i, m in enumerate(mods) if m not in self.only]] = False
            for i, m in enumerate(mods):
                toks, ok = data.batch_tokens(items, m)
                self.conn.feed(m, toks, ok & keep[:, i : i + 1])
            return None
        if self.proj:
            return torch.cat([self.proj[m](data.batch_tokens(items, m)[0]) for m in self.cfg.modalities], 1)
        return None

    def loss(self, data: QADataset, items: list[QAItem]) -> torch.Tensor:
        """Mean cross-entropy over answer + EOS tokens, running only the trainable tail of the LLM."""
        seqs, starts = zip(*(self.text.sequence(it.question, it.answer) for it in items))
        prefix = self._feed(data, items, training=True)
        if prefix is None:
            hidden = self.trunk.get(list(seqs))
        else:
            emb = self.model.model.embed_tokens
            hidden = [torch.cat([p, emb(torch.tensor(s))]) for p, s in zip(prefix, seqs)]
        offset = 0 if prefix is None else prefix.shape[1]
        width = max(h.shape[0] for h in hidden)
        batch = torch.stack([F.pad(h, (0, 0, 0, width - h.shape[0])) for h in hidden])
        out = self.model.model.norm(run_layers(self.model, batch, self.start, self.shape.n_layers))
        rows, cols, targets = [], [], []
        for b, (s, a) in enumerate(zip(seqs, starts)):
            for j in range(a, len(s)):
                rows.append(b)
                cols.append(offset + j - 1)
                targets.append(s[j])
        logits = self.model.lm_head(out[rows, cols])
        return F.cross_entropy(logits.float(), torch.tensor(targets))

    # ---- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, data: QADataset, items: list[QAItem], max_new_tokens: int = 8) -> list[str]:
        """Greedy answers through the ordinary forward with a KV cache (the runtime path)."""
        prompts = [self.text.prompt(it.question) for it in items]
        prefix = self._feed(data, items)
        emb = self.model.model.embed_tokens
        rows = [emb(torch.tensor(p)) for p in prompts]
        if prefix is not None:
            rows = [torch.cat([q, r]) for q, r in zip(prefix, rows)]
        width = max(r.shape[0] for r in rows)
        embeds = torch.stack([F.pad(r, (0, 0, width - r.shape[0], 0)) for r in rows])  # left padding
        mask = torch.tensor([[0] * (width - r.shape[0]) + [1] * r.shape[0] for r in rows])
        cache = DynamicCache(config=self.model.config)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        done = torch.zeros(len(items), dtype=torch.bool)
        gen: list[list[int]] = [[] for _ in items]
        last = pos[:, -1:]
        for _ in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    gen[i].append(t)
            done |= nxt == self.text.eos
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(len(items), 1, dtype=mask.dtype)], 1)
            last = last + 1
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        return [self.text.decode(g) for g in gen]

    # ---- persistence -------------------------------------------------------------------------------------
    def save(self, out: Path, record: dict) -> None:
        """Aligners via save_aligner, LoRA and prefix projections as safetensors, and run.json (config + record)."""
        out.mkdir(parents=True, exist_ok=True)
        if self.conn is not None:
            for m, aligner in self.conn.aligners.items():
                save_aligner(aligner, out / f"aligner_{m}.safetensors")
        meta = {"format": PART_FORMAT, "llm_d_model": str(self.shape.d_model), "n_layers": str(self.shape.n_layers)}
        if self.lora is not None:
            sd = {k: v.detach().contiguous() for k, v in self.lora.state_dict().items()}
            save_file(sd, str(out / "lora.safetensors"), metadata={**meta, "layers": json.dumps(self.lora.layers),
                                                                   "rank": str(self.lora_rank),
                                                                   "alpha": str(2.0 * self.lora_rank)})
        if self.proj:
            sd = {k: v.detach().contiguous() for k, v in self.proj.state_dict().items()}
            save_file(sd, str(out / "prefix.safetensors"), metadata={**meta, "d_enc": str(self.cfg.d_enc)})
        cfg = asdict(self.cfg)
        (out / RUN_FILE).write_text(json.dumps({"config": cfg, **record}, indent=1))

    def _load_prefix(self, path: Path) -> None:
        self._load_state(self.proj, path, strict=False)

    @staticmethod
    def _load_state(module: nn.Module, path: Path, strict: bool = True) -> None:
        tensors = load_file(str(path))
        want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        bad = [k for k, v in tensors.items() if k in want and tuple(v.shape) != want[k]]
        if bad or (strict and set(tensors) != set(want)):
            raise LLMError(f"{path}: tensors do not fit this model (mismatch in {bad or sorted(set(tensors) ^ set(want))[:4]})")
        module.load_state_dict({k: v for k, v in tensors.items() if k in want}, strict=False)

    def close(self) -> None:
        """Take every hook and connection off the LLM, so another QAModel can use it."""
        if self.lora is not None:
            self.lora.remove()
            self.lora = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def load_run(llm: LoadedLLM, run_dir: Path) -> QAModel:
    """Rebuild a trained QAModel from a run directory (run.json + safetensors parts)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise LLMError(f"{run_dir}: no {RUN_FILE} (not a directory written by `edge train aligners` / `edge adapt`)")
    cfg = json.loads(path.read_text())["config"]
    cfg["modalities"], cfg["trained"] = tuple(cfg["modalities"]), tuple(cfg["trained"])
    return QAModel(llm, QAConfig(**cfg), init_from=Path(run_dir))
