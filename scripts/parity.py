"""trm-parity: run the legacy PyTorch reference and trm_mlx from the same weights and compare them.

Per ACT step (evaluation loop, every row runs halt_max_steps steps, each step from the same carry) it reports the
max abs/rel differences of logits, Q logits and the carry handed on; with --grads, the loss and every parameter
gradient of one training step (the puzzle embedding rows included). PASS, or FAIL with the check that failed and
its numbers, against the tolerances in TOLERANCES (see docs/PARITY.md).

    trm-parity --checkpoint checkpoints/run/step_1000 [--config all_config.yaml] [--grads] [--json]

In fp32 the reference also runs in fp64 (unless --fixed-tolerances): see ``within``.
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from trm_mlx.blas import load_fast_blas

load_fast_blas()  # trm-parity's entry module: the CPU BLAS loads before MLX does
# fp32 is compared as fp32: PyTorch's fp32 products on CUDA are full fp32 by default, MLX's round their operands to
# TF32 unless this is 0 (read when MLX starts; docs/PARITY.md).
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

try:
    import torch
except ModuleNotFoundError:
    raise SystemExit(
        'trm-parity: the PyTorch reference needs torch: pip install -e ".[legacy]" (on a machine without a GPU, '
        "install PyTorch's CPU-only build first; docs/PARITY.md)"
    ) from None

from legacy.models.losses import ACTLossHead as LegacyLossHead
from legacy.utils.functions import load_model_class
from trm_mlx.checkpoint import load_weights_into, read_model_source
from trm_mlx.checkpoint.original import arch_from_original
from trm_mlx.data.dataset import collate, load_set
from trm_mlx.data.metadata import load_metadata
from trm_mlx.model import ACTLossHead, create_model
from trm_mlx.runtime import Runtime
from trm_mlx.user_errors import one_line_errors

# Acceptance tolerances: fp32 is the contract; bf16 is measured drift of two bf16 implementations (docs/PARITY.md).
TOLERANCES = {
    "float32": {"logits_abs": 1e-4, "q_abs": 1e-4, "carry_abs": 1e-4, "loss_rel": 1e-5, "grad_rel": 1e-4},
    "bfloat16": {"logits_abs": 0.25, "q_abs": 0.1, "carry_abs": 0.25, "loss_rel": 2e-2, "grad_rel": 0.1},
}


def legacy_model(arch: dict, batch_size: int):
    """The legacy ACT model and loss head for an arch dict (name + fields, injected sizes included)."""
    fields = {k: v for k, v in arch.items() if k not in ("name", "loss")}
    fields["batch_size"] = batch_size
    model = load_model_class(arch["name"], prefix="legacy.models.")(fields)
    return LegacyLossHead(model, loss_type=arch.get("loss", {}).get("loss_type", "stablemax_cross_entropy"))


def load_legacy_weights(head, weights: dict) -> None:
    """Copy native-named MLX arrays into the legacy model (`model.` + native key), strictly, keeping dtypes."""
    state = head.state_dict()
    new_state = {}
    for key, ref in state.items():
        native = key[len("model.") :]
        if native not in weights:
            raise ValueError(f"legacy key {key} has no counterpart in the checkpoint")
        value = np.array(weights[native].astype(mx.float32))
        new_state[key] = torch.from_numpy(value).to(ref.dtype)
    head.load_state_dict(new_state, strict=True)


def make_batch(arch: dict, batch_size: int, seed: int, data_path=None, split: str = "test") -> dict:
    """A batch of NumPy int32 arrays: the first rows of a dataset's test split with random puzzle identifiers, or
    (``split="train"``) the first example of each of ``batch_size`` training puzzles drawn with ``seed``, with their
    own identifiers (so their trained puzzle rows); without a dataset, random tokens."""
    rng = np.random.default_rng(seed)
    if data_path is not None:
        metadata = load_metadata(data_path, split)
        examples = load_set(data_path, split, "all", metadata)
        if split == "train":
            identifiers = examples.puzzle_identifiers
            if len(identifiers) < batch_size:
                root = Path(data_path) / split
                raise ValueError(f"{root}: {len(identifiers)} puzzles, fewer than the batch size {batch_size}")
            puzzles = np.sort(rng.choice(len(identifiers), batch_size, replace=False))
            rows, ids = examples.puzzle_indices[puzzles], identifiers[puzzles]
        else:
            rows = slice(0, min(batch_size, len(examples.inputs)))
            ids = rng.integers(0, arch["num_puzzle_identifiers"], size=rows.stop)
        return collate(examples.inputs[rows], examples.labels[rows], ids, metadata, len(ids))
    seq_len, vocab = arch["seq_len"], arch["vocab_size"]
    labels = rng.integers(0, vocab, size=(batch_size, seq_len)).astype(np.int32)
    labels[:, : seq_len // 4] = -100  # some ignored positions, as in real data
    return {
        "inputs": rng.integers(0, vocab, size=(batch_size, seq_len)).astype(np.int32),
        "labels": labels,
        "puzzle_identifiers": rng.integers(0, arch["num_puzzle_identifiers"], size=batch_size).astype(np.int32),
    }


def _diff(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64), b.astype(np.float64)
    abs_diff = np.abs(a - b)
    return {"max_abs": float(abs_diff.max()), "max_rel": float((abs_diff / (np.abs(b) + 1e-6)).max())}


def _to_numpy(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.array(t.astype(mx.float32))


def _exact_norms() -> None:
    """Every legacy module's ``rms_norm``, which computes in fp32 whatever its input, computes fp64 inputs in fp64
    (others as before): without it the fp64 model would round to fp32 at every norm."""
    import legacy.models.layers as layers

    original = layers.rms_norm
    if hasattr(original, "original"):
        return

    def rms_norm(hidden_states, variance_epsilon):
        if hidden_states.dtype != torch.float64:
            return original(hidden_states, variance_epsilon)
        variance = hidden_states.square().mean(-1, keepdim=True)
        return hidden_states * torch.rsqrt(variance + variance_epsilon)

    rms_norm.original = original
    for name, module in list(sys.modules.items()):
        if name.startswith("legacy.") and getattr(module, "rms_norm", None) is original:
            module.rms_norm = rms_norm


def _exact_rotary(head, theta: float) -> None:
    """The RoPE tables of ``head`` (in fp64) as the exact cos/sin of the original's fp32 angles: ``.double()`` keeps
    the fp32 roundings of the original's tables, which would then count as exact."""
    from legacy.models.layers import RotaryEmbedding

    for module in head.modules():
        if isinstance(module, RotaryEmbedding):
            positions, dim = module.cos_cached.shape
            inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
            angles = torch.cat((freqs, freqs), dim=-1)
            if not torch.equal(angles.cos().double(), module.cos_cached):
                raise ValueError("the reference's RoPE tables are not those of its angles")
            module.cos_cached, module.sin_cached = angles.double().cos(), angles.double().sin()


def exact_legacy_model(arch: dict, weights: dict, batch_size: int):
    """The legacy model in fp64: the exact computation both fp32 implementations approximate."""
    _exact_norms()
    exact = legacy_model({**arch, "forward_dtype": "float64"}, batch_size)
    load_legacy_weights(exact, weights)
    exact = exact.double()
    _exact_rotary(exact, arch.get("rope_theta", 10000.0))
    if hasattr(exact.model.inner, "puzzle_emb"):  # .double() made the gradient buffer a non-leaf; make it a leaf
        emb = exact.model.inner.puzzle_emb
        emb.local_weights = emb.local_weights.detach().requires_grad_()
    return exact


def _to_mlx(t: torch.Tensor, dtype) -> mx.array:
    """A carry tensor of either torch dtype as an MLX array of ``dtype`` (exact where ``dtype`` holds its values)."""
    return mx.array(t.detach().cpu().float().numpy()).astype(dtype)


def _carry_diff(a, b) -> float:
    """Largest absolute difference between two inner carries (torch dataclass or MLX dict) over their states."""
    a, b = (carry if isinstance(carry, dict) else vars(carry) for carry in (a, b))
    return max(_diff(_to_numpy(a[k]), _to_numpy(b[k]))["max_abs"] for k in b)


def _nudged(head, carry, batch: dict, generator: torch.Generator):
    """``carry`` with about half of its latent entries moved up by one ulp: an input another correct program could
    have rounded to. A carry whose rows are about to restart is restarted here first (so the nudge reaches the
    first step too) and marked running."""
    if bool(carry.halted.any()):
        inner = head.model.inner.reset_carry(carry.halted, carry.inner_carry)
        carry = dataclasses.replace(carry, inner_carry=inner, halted=torch.zeros_like(carry.halted),
                                    steps=torch.zeros_like(carry.steps), current_data=dict(batch))  # fmt: skip
    nudged = {}
    for name, value in vars(carry.inner_carry).items():
        up = torch.nextafter(value, torch.full_like(value, float("inf")))
        coins = torch.rand(value.shape, generator=generator, device="cpu").to(value.device)
        nudged[name] = torch.where(coins < 0.5, up, value)
    return dataclasses.replace(carry, inner_carry=dataclasses.replace(carry.inner_carry, **nudged))


Q_KEYS = ("q_halt_logits", "q_continue_logits")


def _errors_from_exact(out: dict, inner: dict, side: str) -> dict:
    """How far one side's step (outputs ``out[side]``, carry ``inner[side]``) is from the fp64 reference's."""
    return {
        "logits": _diff(out[side]["logits"], out["exact"]["logits"])["max_abs"],
        "q": max(_diff(out[side][k], out["exact"][k])["max_abs"] for k in Q_KEYS),
        "carry": _carry_diff(inner[side], inner["exact"]),
    }


def compare_forward(legacy_head, mlx_head, batch: dict, exact_head=None) -> list:
    """Evaluation ACT loop on both, every step from the same carry; per step, the differences of the logits, the Q
    logits and the carry each hands on.

    The recursion amplifies rounding from step to step (docs/PARITY.md, "Chaos"): two free-running fp32 programs
    drift apart by units of logit within a few steps of a trained model, whatever their accuracy. So each step
    starts every head from one carry: the fp64 reference's (``exact_head``), rounded to the compared dtype, else
    legacy's; a step's differences are then that step's own. With ``exact_head`` each step also records how far
    from fp64 the reference is (``noise_floor``: the larger of its errors from that carry and from the carry nudged
    by one ulp, two roundings a correct program could make) and trm_mlx is (``mlx_vs_exact``), and the verdict asks
    trm_mlx to be no less accurate than the reference.
    """
    heads = {"legacy": legacy_head}
    if exact_head is not None:
        heads.update(exact=exact_head, nudged=legacy_head)
    leader = "exact" if exact_head is not None else "legacy"
    generator = torch.Generator().manual_seed(0)
    t_batch = _torch_batch(batch, legacy_head)
    m_batch = {k: mx.array(v) for k, v in batch.items()}
    mlx_head.eval()
    with torch.inference_mode():
        for head in heads.values():
            head.eval()
        t_carries = {k: h.initial_carry(t_batch) for k, h in heads.items()}
        if "nudged" in t_carries:
            t_carries["nudged"] = _nudged(legacy_head, t_carries["nudged"], t_batch, generator)
    model = mlx_head.model
    m_carry = model.initial_carry(m_batch)
    keys = ["logits", *Q_KEYS]
    rows = []
    for step in range(mlx_head.model.config.halt_max_steps):
        t_out = {}
        with torch.inference_mode():
            for name, head in heads.items():
                t_carries[name], _, _, t_out[name], _ = head(return_keys=keys, carry=t_carries[name], batch=t_batch)
        m_step = model(model.reset_halted(m_carry, m_batch))
        m_carry = m_step.carry
        m_out = {"logits": m_step.logits, "q_halt_logits": m_step.q_halt, "q_continue_logits": m_step.q_continue}
        mx.eval(m_carry, m_out)
        out = {"mlx": {k: _to_numpy(v) for k, v in m_out.items()}}
        out.update({name: {k: _to_numpy(v) for k, v in outputs.items()} for name, outputs in t_out.items()})
        inner = {"mlx": m_carry["inner"], **{name: carry.inner_carry for name, carry in t_carries.items()}}
        row = {
            "step": step + 1,
            "logits": _diff(out["mlx"]["logits"], out["legacy"]["logits"]),
            "q_halt": _diff(out["mlx"]["q_halt_logits"], out["legacy"]["q_halt_logits"]),
            "q_continue": _diff(out["mlx"]["q_continue_logits"], out["legacy"]["q_continue_logits"]),
            "carry": _carry_diff(inner["mlx"], inner["legacy"]),
        }
        if exact_head is not None:
            errors = {side: _errors_from_exact(out, inner, side) for side in ("mlx", "legacy", "nudged")}
            for key, prefix in (("logits", ""), ("q", "q_"), ("carry", "carry_")):
                row[f"{prefix}noise_floor"] = max(errors["legacy"][key], errors["nudged"][key])
                row[f"{prefix}mlx_vs_exact"] = errors["mlx"][key]
        rows.append(row)
        lead, follower = t_carries[leader].inner_carry, t_carries["legacy"].inner_carry
        with torch.inference_mode():
            for name, value in vars(lead).items():
                setattr(follower, name, value.to(getattr(follower, name).dtype))
            if "nudged" in t_carries:
                continued = dataclasses.replace(t_carries["nudged"], inner_carry=dataclasses.replace(follower))
                t_carries["nudged"] = _nudged(legacy_head, continued, t_batch, generator)
        m_carry["inner"] = {k: _to_mlx(getattr(lead, k), v.dtype) for k, v in m_carry["inner"].items()}
    return rows


def _torch_batch(batch: dict, head) -> dict:
    """The NumPy batch as torch tensors on the device of ``head``'s weights."""
    device = next(head.parameters()).device
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def legacy_gradients(legacy_head, batch: dict, compiled: bool = False) -> tuple[float, dict]:
    """Loss and gradients (native names, plus `puzzle_rows`) of one training step from a fresh carry; `compiled`:
    the step under torch.compile, as the original trains."""
    legacy_head.train()
    t_batch = _torch_batch(batch, legacy_head)
    step = torch.compile(legacy_head) if compiled else legacy_head
    _, loss, _, _, _ = step(return_keys=[], carry=legacy_head.initial_carry(t_batch), batch=t_batch)
    loss.backward()
    grads = {k[len("model.") :]: _to_numpy(p.grad) for k, p in legacy_head.named_parameters() if p.grad is not None}
    if hasattr(legacy_head.model.inner, "puzzle_emb"):
        grads["puzzle_rows"] = _to_numpy(legacy_head.model.puzzle_emb.local_weights.grad)
    return float(loss.detach()), grads


def mlx_gradients(mlx_head, batch: dict) -> tuple[float, dict]:
    model = mlx_head.model
    mlx_head.train()
    m_batch = {k: mx.array(v) for k, v in batch.items()}
    carry = model.reset_halted(model.initial_carry(m_batch), m_batch)
    rows = model.puzzle_rows(carry)

    def loss_fn(params, rows):
        model.update(params)
        return mlx_head.loss_and_metrics(model(carry, rows))[0]

    if rows is None:  # no puzzle embedding: the weights alone
        loss, g_params = mx.value_and_grad(lambda params: loss_fn(params, None))(model.trainable_parameters())
        return loss.item(), {k: _to_numpy(v) for k, v in tree_flatten(g_params)}
    loss, (g_params, g_rows) = mx.value_and_grad(loss_fn, argnums=(0, 1))(model.trainable_parameters(), rows)
    grads = {k: _to_numpy(v) for k, v in tree_flatten(g_params)}
    grads["puzzle_rows"] = _to_numpy(g_rows)
    return loss.item(), grads


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norm = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / norm) if norm > 0 else float(np.linalg.norm(a))


def compare_gradients(legacy_head, mlx_head, batch: dict, exact_head=None, compiled: bool = False) -> dict:
    """One training step (exploration off): loss and every gradient, norm-wise relative to legacy (under
    torch.compile if `compiled`).

    With `exact_head` (legacy in fp64, eager), each entry also gets the legacy error against it (`floor`).
    """
    t_loss, t_grads = legacy_gradients(legacy_head, batch, compiled)
    m_loss, m_grads = mlx_gradients(mlx_head, batch)
    one_sided = sorted(set(t_grads) ^ set(m_grads))
    if one_sided:
        raise ValueError(f"gradients present on one side only: {one_sided}")
    result = {"loss": {"legacy": t_loss, "mlx": m_loss, "rel": abs(m_loss - t_loss) / max(abs(t_loss), 1e-12)}}
    result["grads"] = {k: {"rel": _relative(m_grads[k], g), "norm": float(np.linalg.norm(g))} for k, g in t_grads.items()}
    if exact_head is not None:
        e_loss, e_grads = legacy_gradients(exact_head, batch)
        result["loss"]["floor"] = abs(t_loss - e_loss) / max(abs(e_loss), 1e-12)
        result["loss"]["mlx_vs_exact"] = abs(m_loss - e_loss) / max(abs(e_loss), 1e-12)
        for key, g in t_grads.items():
            result["grads"][key]["floor"] = _relative(g, e_grads[key])
            result["grads"][key]["mlx_vs_exact"] = _relative(m_grads[key], e_grads[key])
    return result


FLOOR_FACTOR = 2  # trm_mlx may be this many times as far from fp64 as legacy fp32 is


def within(diff: float, tolerance: float, entry: dict, floor_key="noise_floor", exact_key="mlx_vs_exact") -> bool:
    """diff <= tolerance, or (with an fp64 reference) trm_mlx at most twice as far from exact as legacy fp32."""
    if diff <= tolerance:
        return True
    return floor_key in entry and entry[exact_key] <= tolerance + FLOOR_FACTOR * entry[floor_key]


def _failure(what: str, diff: float, tolerance: float, entry: dict, floor_key: str, exact_key: str) -> str:
    line = f"{what}: trm_mlx - legacy {diff:.3g} > {tolerance:g}"
    if floor_key in entry:
        line += (f", and trm_mlx - fp64 {entry[exact_key]:.3g} > {tolerance:g} + {FLOOR_FACTOR} x "
                 f"(legacy - fp64 {entry[floor_key]:.3g})")
    return line


def failures(forward_rows: list, grads: dict | None, tolerances: dict) -> list[str]:
    """Each check that failed, with its numbers (empty: PASS)."""
    found = []

    def check(what, diff, tolerance, entry, floor_key, exact_key):
        if not within(diff, tolerance, entry, floor_key, exact_key):
            found.append(_failure(what, diff, tolerance, entry, floor_key, exact_key))

    for r in forward_rows:
        check(f"logits at ACT step {r['step']}", r["logits"]["max_abs"], tolerances["logits_abs"], r,
              "noise_floor", "mlx_vs_exact")  # fmt: skip
        for key in ("q_halt", "q_continue"):
            check(f"{key} at ACT step {r['step']}", r[key]["max_abs"], tolerances["q_abs"], r,
                  "q_noise_floor", "q_mlx_vs_exact")  # fmt: skip
        check(f"carry after ACT step {r['step']}", r["carry"], tolerances["carry_abs"], r, "carry_noise_floor",
              "carry_mlx_vs_exact")  # fmt: skip
    if grads is not None:
        check("loss", grads["loss"]["rel"], tolerances["loss_rel"], grads["loss"], "floor", "mlx_vs_exact")
        for key, g in grads["grads"].items():
            check(f"gradient of {key}", g["rel"], tolerances["grad_rel"], g, "floor", "mlx_vs_exact")
    return found


def verdict(forward_rows: list, grads: dict | None, tolerances: dict) -> bool:
    return not failures(forward_rows, grads, tolerances)


def run(checkpoint, config=None, dtype=None, batch_size=4, seed=0, data_path=None, grads=False, floor=None,
        seq_len=None, split="test", torch_device="cpu", compiled=False) -> dict:
    """Compare on one batch (``make_batch``'s ``split`` of ``data_path``). ``floor`` (fp64 reference, see
    ``within``): None = on in fp32, off in bf16. ``torch_device``: where the reference runs (its models built
    under it, as the original builds them on CUDA). ``compiled``: the reference's training step under
    torch.compile."""
    runtime = Runtime.create()
    checkpoint, weights, arch, own_config = read_model_source(checkpoint)
    if config is not None or arch is None:
        full = config if config is not None else own_config
        if full is None:
            raise ValueError(f"{checkpoint}: pass --config (no all_config.yaml beside it)")
        if data_path is not None:  # the dataset given here, not the run's (which may not exist on this machine)
            full = {**full, "data_paths": [str(data_path)]}
        arch = arch_from_original(full, weights, checkpoint)
    if seq_len is not None:
        arch = {**arch, "seq_len": seq_len}
    if dtype is not None:
        arch = {**arch, "forward_dtype": dtype}
    if arch.get("seq_len") is None:
        raise ValueError(f"{checkpoint}: sequence length unknown: pass --seq-len or --data-path (a built dataset)")
    arch = {**arch, "halt_exploration_prob": 0.0}
    dtype_name = arch.get("forward_dtype", "bfloat16")

    loss_type = arch.get("loss", {}).get("loss_type", "stablemax_cross_entropy")
    mlx_head = ACTLossHead(create_model(arch, runtime.execution), loss_type)
    load_weights_into(mlx_head.model, weights, checkpoint)
    torch.manual_seed(seed)
    batch = make_batch(arch, batch_size, seed, data_path, split)
    if floor is None:
        floor = dtype_name == "float32"
    with torch.device(torch_device):
        legacy_head = legacy_model(arch, batch_size)
        load_legacy_weights(legacy_head, weights)
        exact = exact_legacy_model(arch, weights, batch_size) if floor else None
        forward_rows = compare_forward(legacy_head, mlx_head, batch, exact)
        grad_result = compare_gradients(legacy_head, mlx_head, batch, exact, compiled) if grads else None
    tolerances = TOLERANCES["float32" if dtype_name == "float32" else "bfloat16"]
    failed = failures(forward_rows, grad_result, tolerances)
    return {
        "dtype": dtype_name,
        "tolerances": tolerances,
        "fp64_reference": exact is not None,
        "forward": forward_rows,
        "gradients": grad_result,
        "failures": failed,
        "pass": not failed,
    }


def _print_report(result: dict) -> None:
    print(f"dtype {result['dtype']}  tolerances {result['tolerances']}")
    print(
        f"{'step':>4}  {'logits abs':>11}  {'logits rel':>11}  {'q_halt abs':>11}  {'q_cont abs':>11}"
        f"  {'carry abs':>11}  {'legacy-fp64':>11}  {'mlx-fp64':>11}"
    )
    for r in result["forward"]:
        exact = "".join(f"  {r[k]:11.3e}" if k in r else f"  {'-':>11}" for k in ("noise_floor", "mlx_vs_exact"))
        print(
            f"{r['step']:>4}  {r['logits']['max_abs']:11.3e}  {r['logits']['max_rel']:11.3e}  "
            f"{r['q_halt']['max_abs']:11.3e}  {r['q_continue']['max_abs']:11.3e}  {r['carry']:11.3e}{exact}"
        )
    if result["gradients"] is not None:
        g = result["gradients"]
        def exact(d):
            if "floor" not in d:
                return ""
            ratio = f" ({d['mlx_vs_exact'] / d['floor']:.2f}x)" if d["floor"] > 0 else ""
            return f"  legacy-fp64 {d['floor']:.3e}  mlx-fp64 {d['mlx_vs_exact']:.3e}{ratio}"

        print(f"loss legacy {g['loss']['legacy']:.8g}  mlx {g['loss']['mlx']:.8g}  rel {g['loss']['rel']:.3e}{exact(g['loss'])}")
        for key, d in g["grads"].items():
            print(f"  grad {key:<56} rel {d['rel']:.3e}  norm {d['norm']:.3e}{exact(d)}")
    judged = "fixed tolerances, or the fp64 noise floor" if result["fp64_reference"] else "fixed tolerances"
    if result["pass"]:
        print(f"PASS ({judged})")
    else:
        more = f" (and {len(result['failures']) - 1} more)" if len(result["failures"]) > 1 else ""
        print(f"FAIL ({judged}): {result['failures'][0]}{more}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="trm-parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="original PyTorch (step_N) or native checkpoint, or a trm-train run folder")
    parser.add_argument("--config", help="all_config.yaml (default: the one beside the checkpoint)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="what both sides compute in (default %(default)s, the contract; bfloat16's tolerances "
                        "are a smoke alarm that a trained model's logits exceed: docs/PARITY.md)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-path", help="built dataset: take the batch from it (--split; and the sequence "
                        "length, where the checkpoint does not give it)")  # fmt: skip
    parser.add_argument("--seq-len", type=int, help="sequence length, where neither checkpoint nor dataset gives it")
    parser.add_argument("--grads", action="store_true", help="also compare loss and gradients of a training step")
    parser.add_argument(
        "--fixed-tolerances",
        action="store_true",
        help="fp32: judge by the fixed tolerances alone. By default legacy also runs in fp64, and a difference above "
        "tolerance passes if trm_mlx is at most twice as far from fp64 as legacy fp32 is (a trained model's large "
        "logits round past the fixed tolerance in one step, in both)",
    )
    parser.add_argument("--fp64", action="store_true", help="bfloat16: also run legacy in fp64 and judge as in "
                        "fp32 (trm_mlx at most twice as far from fp64 as legacy): how far each rounds")  # fmt: skip
    parser.add_argument("--split", choices=["test", "train"], default="test", help="the --data-path batch: its test "
                        "split's first rows with random puzzle identifiers (default), or one example of each of "
                        "--batch-size training puzzles with their own (trained) puzzle rows")  # fmt: skip
    parser.add_argument("--torch-device", choices=["cpu", "cuda"], default="cpu", help="where the reference runs "
                        "(default %(default)s; cuda: a GPU's arithmetic, where the original trains)")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="with --grads: the reference's training step under "
                        "torch.compile, as the original trains (its fused kernels round elsewhere)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.fixed_tolerances and args.fp64:
        parser.error("--fixed-tolerances and --fp64 contradict each other")
    if args.torch_device == "cuda" and not torch.cuda.is_available():
        parser.error("--torch-device cuda: PyTorch sees no CUDA GPU on this machine")
    if args.compile and not args.grads:
        parser.error("--compile compiles the reference's training step: pass --grads")
    if args.split == "train" and not args.data_path:
        parser.error("--split train takes its batch from --data-path: pass a built dataset")

    config = None
    if args.config:
        import yaml

        config = yaml.safe_load(Path(args.config).read_text())
    with one_line_errors("trm-parity"):
        floor = False if args.fixed_tolerances else True if args.fp64 else None
        result = run(args.checkpoint, config, args.dtype, args.batch_size, args.seed, args.data_path, args.grads,
                     floor=floor, seq_len=args.seq_len, split=args.split, torch_device=args.torch_device,
                     compiled=args.compile)  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        _print_report(result)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
