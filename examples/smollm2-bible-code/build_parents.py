"""FIXTURE BUILDER (not part of darwin's engine): derive two specialist parents from SmolLM2.

Same-architecture parents of SmolLM2 do not ship anywhere offline, so this script makes them the
way people publish fine-tunes: a short full fine-tune of the real base on one domain each.
darwin itself never trains; these parents only give the merge search real task vectors.

* parent A ("kjv"): KJV Bible without the book of Ruth;
* parent B ("code"): CPython standard-library modules without the held-out files.

Defaults: 30 steps, sequence 256 × batch 2, AdamW lr 1e-4, bf16 autocast on the CPU, seeded random
windows (measured here: ≈ 4.5 s per step on 2 cores, so ≈ 2.3 min per parent; batch 4 doubles it).
Cached: a parent folder is reused when its ``PARENT.json`` records the same settings (steps, seq,
batch, lr, seed, layers, training text); otherwise it is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def train_loop(model, streams: list[torch.Tensor], opt, *, steps: int, seq: int, batch: int, seed: int,
               label: str, log=print, every: int = 10, sched=None, clip_params=None) -> list[float]:
    """``steps`` AdamW steps on random windows (bf16 autocast); step ``k`` samples ``streams[k % len]``.

    Returns:
        the loss of every step.
    """
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        ids = streams[step % len(streams)]
        starts = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seq] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        if clip_params is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % every == 0 or step == steps - 1:
            log(f"  [{label}] step {step + 1}/{steps} loss {losses[-1]:.3f} ({time.perf_counter() - t0:.0f} s)")
    return losses


def finetune(base: Path, train_text: Path, out: Path, *, steps: int = 30, seq: int = 256, batch: int = 2,
             lr: float = 1e-4, seed: int = 0, label: str = "", log=print,
             layers: range | None = None) -> Path:
    """Fine-tune of ``base`` on random windows of ``train_text``; writes ``out`` (cached).

    ``layers``: train only these decoder layers (every other weight frozen; the positive control
    of ``benchmarks/bench_generalize.py``); None trains every weight.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.io.writer import atomic_output_dir

    settings = {"train_text": train_text.name, "steps": steps, "seq": seq, "batch": batch, "lr": lr, "seed": seed,
                "layers": [layers.start, layers.stop] if layers is not None else None}
    if (out / "model.safetensors").exists() and _recorded(out / "PARENT.json", settings):
        return out
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ids = tok(train_text.read_text(), add_special_tokens=False, return_tensors="pt").input_ids[0]
    if layers is not None:
        keep = {f"model.layers.{i}." for i in layers}
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(k) for k in keep))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    losses = train_loop(model, [ids], opt, steps=steps, seq=seq, batch=batch, seed=seed, label=label, log=log,
                        every=10)
    model.eval()
    with atomic_output_dir(out, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (Path(tmp) / "PARENT.json").write_text(json.dumps({
            "fixture": "fine-tuned specialist built by examples/smollm2-bible-code/build_parents.py",
            "base": str(base), **settings, "first_loss": losses[0], "last_loss": losses[-1],
            "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    return out


def _recorded(meta: Path, settings: dict) -> bool:
    """True if ``meta`` (a parent's PARENT.json) was written with these fine-tune settings."""
    try:
        done = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return all(done.get(k) == v for k, v in settings.items())


def build_parents(base: Path, data: Path, out: Path, steps: int = 30, seq: int = 256, batch: int = 2,
                  log=print) -> dict[str, Path]:
    """Both specialists (cached)."""
    return {
        "kjv": finetune(base, data / "train_kjv.txt", out / "kjv", steps=steps, seq=seq, batch=batch, seed=1,
                        label="kjv", log=log),
        "code": finetune(base, data / "train_code.txt", out / "code", steps=steps, seq=seq, batch=batch, seed=2,
                         label="code", log=log),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    print(build_parents(a.base, a.data, a.out, a.steps))
