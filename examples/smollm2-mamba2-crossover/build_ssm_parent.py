"""Fixture: a small Mamba-2 that shares SmolLM2-135M's tokenizer and embedding, trained on shipped text.

No Mamba/SSM weights ship in any registry package, so the SSM parent of this example is built
here: ``Mamba2ForCausalLM`` with SmolLM2's hidden size (576), 4 layers, SmolLM2's **real**
token embedding copied in, frozen and tied to the head, and the mixers trained briefly from
scratch on the example's shipped training text (KJV without Ruth + CPython stdlib, alternate
batches). It is "trained on shipped data", not pretrained: a few hundred thousand tokens.
Cached: rerunning returns the existing folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from build_parents import train_loop  # examples/smollm2-bible-code (run_demo.py puts it on sys.path)

LAYERS, HEADS, HEAD_DIM, STATE = 4, 18, 64, 64  # 18 × 64 = 2 × 576 (expand 2)


def build_ssm_parent(smollm2: Path, data: Path, out: Path, *, steps: int = 400, seq: int = 128, batch: int = 4,
                     lr: float = 2e-3, seed: int = 0, log=print) -> Path:
    """Train the Mamba-2 parent into ``out`` (cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Mamba2Config, Mamba2ForCausalLM

    from darwin.io.writer import atomic_output_dir

    if (out / "model.safetensors").exists() and (out / "PARENT.json").exists():
        return out
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(smollm2)
    ref = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    rc = ref.config
    cfg = Mamba2Config(vocab_size=rc.vocab_size, hidden_size=rc.hidden_size, num_hidden_layers=LAYERS,
                       num_heads=HEADS, head_dim=HEAD_DIM, expand=2, n_groups=1, state_size=STATE, conv_kernel=4,
                       chunk_size=128, layer_norm_epsilon=rc.rms_norm_eps, hidden_act=rc.hidden_act,
                       tie_word_embeddings=True, bos_token_id=rc.bos_token_id, eos_token_id=rc.eos_token_id,
                       pad_token_id=rc.pad_token_id)
    model = Mamba2ForCausalLM(cfg)
    with torch.no_grad():
        model.backbone.embeddings.weight.copy_(ref.model.embed_tokens.weight)
    del ref
    model.tie_weights()
    model.backbone.embeddings.weight.requires_grad_(False)
    texts = [tok((data / f"train_{k}.txt").read_text(), add_special_tokens=False, return_tensors="pt").input_ids[0]
             for k in ("kjv", "code")]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    t0 = time.perf_counter()
    losses = train_loop(model, texts, opt, steps=steps, seq=seq, batch=batch, seed=seed, label="mamba2", log=log,
                        every=50, sched=sched, clip_params=params)
    model.eval()
    with atomic_output_dir(out, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (Path(tmp) / "PARENT.json").write_text(json.dumps({
            "fixture": "Mamba-2 trained on shipped data by examples/smollm2-mamba2-crossover/build_ssm_parent.py "
                       "(SmolLM2-135M's embedding copied in, frozen, tied); not pretrained",
            "layers": LAYERS, "steps": steps, "seq": seq, "batch": batch, "tokens": steps * seq * batch, "lr": lr,
            "seed": seed, "first_loss": losses[0], "last_loss": losses[-1],
            "trainable_parameters": sum(p.numel() for p in params),
            "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    return out
