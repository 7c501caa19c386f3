"""Policy, reference and tokenizer loading; the embedded tiny model and its pretraining.

`model.name = "tiny"` resolves to a Qwen3-architecture causal LM of ~0.8M parameters with a
character-level tokenizer, supervised-pretrained on the synthetic tasks' reference completions
and cached under `$GBMPO_CACHE` (default `~/.cache/gbmpo-bench`) by a hash of everything that
determines it. It is saved as a normal Hugging Face directory, so `AutoModelForCausalLM` and
`AutoTokenizer` load it like any hub model. Any other name is passed to `from_pretrained`
(a hub id or a local directory).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import string
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from gbmpo import bases
from gbmpo.config import PretrainSection, RunConfig
from gbmpo.threads import ThreadGovernor

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", "")
TINY_FORMAT_VERSION = "1"  # bump when the architecture code or SFT recipe changes


def cache_root() -> Path:
    return Path(os.environ.get("GBMPO_CACHE", Path.home() / ".cache" / "gbmpo-bench"))


# ---- tokenizer ---------------------------------------------------------------------------
def build_char_tokenizer():
    """Character-level fast tokenizer: one id per printable ASCII char, plus pad/eos/unk."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    # BPE with no merges is exactly character-level; Fuse joins characters back on decode.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    return fast


# ---- tiny model --------------------------------------------------------------------------
def tiny_key(cfg: PretrainSection) -> str:
    """Hash of the recipe (architecture, data, SFT settings, seed); `source` only says where
    the weights come from, so a local rebuild of a shipped recipe shares its key."""
    from gbmpo.tasks import TASKS

    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "source"}
    parts = {
        "pretrain": recipe,
        "task_versions": {t: TASKS.get(t).version for t in cfg.tasks},
        "format": TINY_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def tiny_dir(cfg: PretrainSection) -> Path:
    return cache_root() / f"tiny-{tiny_key(cfg)}"


def build_tiny_model(cfg: PretrainSection, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )
    torch.manual_seed(cfg.seed)
    return Qwen3ForCausalLM(config)


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tiny(cfg: PretrainSection, progress: bool = True, device: str = "cpu") -> Path:
    """The tiny base's directory: the shipped one when it matches the recipe and
    `cfg.source == "auto"` (checksums verified), else the local cache, pretraining it first if
    absent (file-locked, so concurrent cells wait for one pretraining instead of racing).
    `device` only says where a missing base is pretrained; the key does not depend on it."""
    if cfg.source == "auto":
        shipped = bases.find_shipped(tiny_key(cfg))
        if shipped is not None:
            return shipped
    return ensure_local_tiny(cfg, progress=progress, device=device)


def tiny_source(path: Path) -> str:
    return "shipped" if Path(path).parent == bases.SHIPPED_ROOT else "local"


def ensure_local_tiny(cfg: PretrainSection, progress: bool = True, device: str = "cpu",
                      force: bool = False) -> Path:
    """The locally pretrained base in the cache (pretrained now if absent, or if `force`)."""
    target = tiny_dir(cfg)
    if (target / bases.RECORD).is_file() and not force:
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if (target / bases.RECORD).is_file() and not force:
            return target
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        info = pretrain_tiny(cfg, tmp, progress=progress, device=device)
        info["files"] = bases.checksums(tmp)
        (tmp / bases.RECORD).write_text(json.dumps(info, indent=1) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def _sft_corpus(cfg: PretrainSection) -> list[tuple[str, str]]:
    from gbmpo.tasks import TASKS

    pairs = []
    rng = random.Random(cfg.seed)
    for name in cfg.tasks:
        task = TASKS.get(name)()
        try:
            pairs += [(task.build_prompt(ex), task.demonstration(ex, rng, cfg.slip_rate))
                      for ex in task.split("train")]
        finally:
            task.close()
    return pairs


def pretrain_tiny(cfg: PretrainSection, out: Path, progress: bool = True,
                  device: str = "cpu") -> dict[str, Any]:
    """Supervised pretraining on prompt -> demonstration (loss on the completion and EOS)."""
    from tqdm.auto import tqdm

    t0 = time.time()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = ThreadGovernor()  # the cores this process is given, re-checked as it goes
    tok = build_char_tokenizer()
    model = build_tiny_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    pairs = _sft_corpus(cfg)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain tiny", disable=not progress, file=sys.stderr)
    loss_ema, curve = None, []
    for step in bar:
        batch = rng.sample(pairs, cfg.batch_size)
        ids, labels = (t.to(device) for t in _sft_batch(tok, batch))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out_ = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels)
        opt.zero_grad(set_to_none=True)
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        threads.tick()
        cur = out_.loss.item()
        loss_ema = cur if loss_ema is None else 0.95 * loss_ema + 0.05 * cur
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_ema:.3f}")
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            curve.append([step + 1, round(loss_ema, 5)])
    model.eval().to("cpu")
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "source"}
    return {"config": recipe, "params": n_params, "final_loss": loss_ema, "loss_curve": curve,
            "wall_time_s": round(time.time() - t0, 1), "key": tiny_key(cfg),
            "device": str(device), "float_env": bases.float_environment()}


def _sft_batch(tok, batch: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (-100 on prompt and padding)."""
    seqs, lab = [], []
    for prompt, completion in batch:
        p = tok.encode(prompt, add_special_tokens=False)
        c = tok.encode(completion, add_special_tokens=False) + [tok.eos_token_id]
        seqs.append(p + c)
        lab.append([-100] * len(p) + c)
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, lab, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(lb)] = torch.tensor(lb)
    return ids, labels


# ---- loading -----------------------------------------------------------------------------
def resolve_model_path(cfg: RunConfig, name: str | None = None, progress: bool = True) -> str:
    name = cfg.model.name if name is None else name
    if name == "tiny":
        return str(ensure_tiny(cfg.pretrain, progress=progress, device=cfg.run.device))
    return name


def load_policy_and_reference(cfg: RunConfig, device: torch.device, progress: bool = True):
    """(policy, reference, tokenizer). The reference is frozen and in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars drown the run's own progress

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.run.dtype]
    path = resolve_model_path(cfg, progress=progress)
    kw: dict[str, Any] = {"dtype": dtype}
    if cfg.model.revision and not Path(path).exists():
        kw["revision"] = cfg.model.revision
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(path, **kw).to(device)
    ref_path = resolve_model_path(cfg, cfg.model.reference) if cfg.model.reference else path
    reference = AutoModelForCausalLM.from_pretrained(ref_path, **kw).to(device)
    reference.eval()
    reference.requires_grad_(False)
    return policy, reference, tok


def base_identity(cfg: RunConfig) -> dict[str, Any]:
    """What a result records about its starting weights. Embedded tiny bases: source
    (shipped or local), recipe key, pretraining seed and the SHA-256 of the weights; other
    models: the name and revision as given."""
    if cfg.model.name == "tiny":
        path = ensure_tiny(cfg.pretrain, progress=False, device=cfg.run.device)
        return bases.identity(path, tiny_source(path))
    source = "path" if Path(cfg.model.name).exists() else "hub"
    return {"source": source, "name": cfg.model.name, "revision": cfg.model.revision or None,
            "seed": None, "sha256": None}
