"""The PyTorch reference (legacy/) against the spec: layouts, counts, init rules and hand-derived numerics."""

import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from legacy.models import layers
from legacy.models.common import trunc_normal_init_
from legacy.models.ema import EMAHelper
from legacy.models.layers import CastedLinear, RotaryEmbedding, rms_norm, rotate_half
from legacy.models.losses import IGNORE_LABEL_ID, ACTLossHead, stablemax_cross_entropy
from legacy.models.recursive_reasoning import hrm, transformers_baseline, trm, trm_hier6, trm_singlez
from legacy.models.sparse_embedding import CastedSparseEmbedding, CastedSparseEmbeddingSignSGD_Distributed
from legacy.utils.functions import get_model_source_path, load_model_class

# Values the spec states for the truncated normal on [-2, 2] (§2.3.1).
SPEC_ERF_A = -0.9544997361036416
SPEC_COMP_STD_FACTOR = 1.1368472343385565

BF16, F32 = torch.bfloat16, torch.float32

# Tiny shapes: D=16, 2 heads (hd=8), S=6, V=5, 7 puzzle ids, Dp=16, batch 3.
# SwiGLU width: round(2*16*2/3)=21 -> 256. TRM prefix P=16 (default puzzle_emb_len) -> S'=22.
D, S, V, N_ID, B = 16, 6, 5, 7, 3


def tiny_config(**overrides):
    cfg = dict(
        batch_size=B, seq_len=S, puzzle_emb_ndim=D, num_puzzle_identifiers=N_ID, vocab_size=V,
        H_cycles=2, L_cycles=2, H_layers=1, L_layers=2, hidden_size=D, expansion=2, num_heads=2,
        pos_encodings="rope", halt_max_steps=4, halt_exploration_prob=0.0, forward_dtype="float32",
        causal=False,  # injected by the trainer; every model must ignore it
    )
    cfg.update(overrides)
    return cfg


def tiny_batch(seed=0, batch_size=B):
    g = torch.Generator().manual_seed(seed)
    return dict(
        inputs=torch.randint(0, V, (batch_size, S), generator=g, dtype=torch.int32),
        labels=torch.randint(0, V, (batch_size, S), generator=g, dtype=torch.int32),
        puzzle_identifiers=torch.randint(0, N_ID, (batch_size,), generator=g, dtype=torch.int32),
    )


def layout(module):
    return [(k, tuple(v.shape), v.dtype) for k, v in module.state_dict().items()]


def attn_layer(prefix, qkv_out=48, width=16):
    return [
        (f"{prefix}.self_attn.qkv_proj.weight", (qkv_out, D), F32),
        (f"{prefix}.self_attn.o_proj.weight", (D, width), F32),
        (f"{prefix}.mlp.gate_up_proj.weight", (512, D), F32),
        (f"{prefix}.mlp.down_proj.weight", (D, 256), F32),
    ]


def mlp_t_layer(prefix, tokens):
    return [
        (f"{prefix}.mlp_t.gate_up_proj.weight", (512, tokens), F32),
        (f"{prefix}.mlp_t.down_proj.weight", (tokens, 256), F32),
        (f"{prefix}.mlp.gate_up_proj.weight", (512, D), F32),
        (f"{prefix}.mlp.down_proj.weight", (D, 256), F32),
    ]


IO_KEYS = [
    ("model.inner.embed_tokens.embedding_weight", (V, D), F32),
    ("model.inner.lm_head.weight", (V, D), F32),
    ("model.inner.q_head.weight", (2, D), F32),
    ("model.inner.q_head.bias", (2,), F32),
    ("model.inner.puzzle_emb.weights", (N_ID, D), F32),
]
INITS_TRM = [("model.inner.H_init", (D,), BF16), ("model.inner.L_init", (D,), BF16)]

EXPECTED_LAYOUTS = {
    "trm_rope": (
        trm.TinyRecursiveReasoningModel_ACTV1, {},
        INITS_TRM + IO_KEYS + attn_layer("model.inner.L_level.layers.0") + attn_layer("model.inner.L_level.layers.1"),
    ),
    "trm_learned": (
        trm.TinyRecursiveReasoningModel_ACTV1, {"pos_encodings": "learned"},
        INITS_TRM + IO_KEYS + [("model.inner.embed_pos.embedding_weight", (S + 16, D), F32)]
        + attn_layer("model.inner.L_level.layers.0") + attn_layer("model.inner.L_level.layers.1"),
    ),
    # token MLP over L = S + 16 = 22 positions: round(2*22*2/3)=29 -> 256
    "trm_mlp_t": (
        trm.TinyRecursiveReasoningModel_ACTV1, {"mlp_t": True, "pos_encodings": "none"},
        INITS_TRM + IO_KEYS + mlp_t_layer("model.inner.L_level.layers.0", 22) + mlp_t_layer("model.inner.L_level.layers.1", 22),
    ),
    "trm_singlez": (
        trm_singlez.TinyRecursiveReasoningModel_ACTV1, {},
        [("model.inner.L_init", (D,), BF16)] + IO_KEYS
        + attn_layer("model.inner.L_level.layers.0") + attn_layer("model.inner.L_level.layers.1"),
    ),
    "trm_hier6": (
        trm_hier6.TinyRecursiveReasoningModel_ACTV1, {},
        [("model.inner.H_init", (D,), BF16)] + [(f"model.inner.L{k}_init", (D,), BF16) for k in range(1, 7)] + IO_KEYS
        + attn_layer("model.inner.L_level.layers.0") + attn_layer("model.inner.L_level.layers.1"),
    ),
    # HRM: H_level (1 layer) before L_level (2 layers); P = ceil(Dp/D) = 1, so learned positions are [S+1, D]
    "hrm": (
        hrm.HierarchicalReasoningModel_ACTV1, {"pos_encodings": "learned"},
        INITS_TRM + IO_KEYS + [("model.inner.embed_pos.embedding_weight", (S + 1, D), F32)]
        + attn_layer("model.inner.H_level.layers.0")
        + attn_layer("model.inner.L_level.layers.0") + attn_layer("model.inner.L_level.layers.1"),
    ),
    # 3 heads on D=16: hd = 16 // 3 = 5, attention width 15, qkv rows 45
    "baseline": (
        transformers_baseline.Model_ACTV2, {"num_heads": 3, "H_layers": 2},
        [("model.inner.H_init", (D,), BF16)] + IO_KEYS
        + attn_layer("model.inner.H_level.layers.0", 45, 15) + attn_layer("model.inner.H_level.layers.1", 45, 15),
    ),
}


@pytest.mark.parametrize("variant", sorted(EXPECTED_LAYOUTS))
def test_state_dict_layout_matches_spec(variant):
    cls, overrides, expected = EXPECTED_LAYOUTS[variant]
    model = cls(tiny_config(forward_dtype="bfloat16", **overrides))
    head = ACTLossHead(model, loss_type="stablemax_cross_entropy")
    assert layout(head) == expected
    # The puzzle table is a buffer: AdamATan2/EMA/num_params never see it.
    assert "inner.puzzle_emb.weights" not in dict(model.named_parameters())
    assert model.puzzle_emb is model.inner.puzzle_emb
    assert model.puzzle_emb.local_weights.requires_grad and model.puzzle_emb.local_weights.shape == (B, D)
    assert model.puzzle_emb.local_ids.dtype == torch.int32


def _count_params(cls, **cfg):
    with torch.device("meta"):
        model = cls(cfg)
    return sum(p.numel() for p in model.parameters())


ARC = dict(batch_size=768, seq_len=900, puzzle_emb_ndim=512, num_puzzle_identifiers=1000, vocab_size=12,
           hidden_size=512, expansion=4, halt_max_steps=16, halt_exploration_prob=0.1, pos_encodings="rope")


def test_parameter_counts_of_default_architectures():
    # By hand, hidden 512: an attention block 512x1536 (qkv) + 512x512 (o), a SwiGLU 512x(2x1536) + 1536x512, so a
    # layer holds 3,407,872; token embedding and LM head 12x512 each (ARC's 12 tokens), the Q head 512x2 + 2.
    # TRM ARC: 2 layers + 12,288 + 1,026. Sudoku MLP-t: the attention is a SwiGLU over the 97 positions (81 + 16
    # puzzle-embedding positions, inner width 512): 97x1024 + 512x97 = 148,992, so 2 x 2,508,288 + 11,264 + 1,026.
    # HRM: 4 + 4 layers. The baseline: 12 heads of 42 (qkv 512x1512, o 504x512), 8 layers of 3,391,488.
    assert _count_params(trm.TinyRecursiveReasoningModel_ACTV1, **ARC, H_cycles=3, L_cycles=6, H_layers=0,
                         L_layers=2, num_heads=8) == 6_829_058
    sudoku = dict(ARC, seq_len=81, vocab_size=11, pos_encodings="none", mlp_t=True)
    assert _count_params(trm.TinyRecursiveReasoningModel_ACTV1, **sudoku, H_cycles=3, L_cycles=6, H_layers=0,
                         L_layers=2, num_heads=8) == 5_028_866
    assert _count_params(hrm.HierarchicalReasoningModel_ACTV1, **ARC, H_cycles=2, L_cycles=2, H_layers=4,
                         L_layers=4, num_heads=8) == 27_276_290
    assert _count_params(transformers_baseline.Model_ACTV2, **ARC, H_cycles=1, H_layers=8, num_heads=12) == 27_145_218


def test_default_arc_shapes_and_sudoku_token_mlp():
    with torch.device("meta"):
        arc = trm.TinyRecursiveReasoningModel_ACTV1(dict(ARC, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, num_heads=8))
        sudoku = trm.TinyRecursiveReasoningModel_ACTV1(
            dict(ARC, seq_len=81, vocab_size=11, mlp_t=True, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, num_heads=8))
        base = transformers_baseline.Model_ACTV2(dict(ARC, H_cycles=1, H_layers=8, num_heads=12))
    sd = arc.state_dict()
    assert sd["inner.L_level.layers.0.self_attn.qkv_proj.weight"].shape == (1536, 512)
    assert sd["inner.L_level.layers.1.mlp.gate_up_proj.weight"].shape == (3072, 512)
    assert sd["inner.L_level.layers.1.mlp.down_proj.weight"].shape == (512, 1536)
    assert arc.inner.rotary_emb.cos_cached.shape == (916, 64)
    assert sudoku.state_dict()["inner.L_level.layers.0.mlp_t.gate_up_proj.weight"].shape == (1024, 97)
    assert sudoku.state_dict()["inner.L_level.layers.0.mlp_t.down_proj.weight"].shape == (97, 512)
    assert base.state_dict()["inner.H_level.layers.0.self_attn.o_proj.weight"].shape == (512, 504)
    assert base.inner.rotary_emb.cos_cached.shape == (901, 42)


# --------------------------------------------------------------------------------------------- initialisation


def test_trunc_normal_matches_spec_algorithm_exactly():
    n, sigma = 10_000, 0.37
    comp_std = sigma * SPEC_COMP_STD_FACTOR
    torch.manual_seed(123)
    expected = torch.empty(n, dtype=torch.float64).uniform_(SPEC_ERF_A, -SPEC_ERF_A)
    expected = (torch.erfinv(expected) * (math.sqrt(2) * comp_std)).clip(-2 * comp_std, 2 * comp_std)

    torch.manual_seed(123)
    got = trunc_normal_init_(torch.empty(n, dtype=torch.float64), std=sigma)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)


def test_trunc_normal_statistics_bounds_and_zero_std():
    torch.manual_seed(0)
    sigma = 0.05
    x = trunc_normal_init_(torch.empty(200_000), std=sigma)
    assert abs(x.std().item() / sigma - 1) < 0.01
    bound = 2 * SPEC_COMP_STD_FACTOR * sigma
    assert x.abs().max().item() <= bound * (1 + 1e-6)
    assert x.abs().max().item() > 0.99 * bound  # the clip bound is reached, i.e. the std was corrected
    x16 = trunc_normal_init_(torch.empty(50_000, dtype=BF16), std=1.0)
    assert x16.dtype == BF16 and abs(x16.float().std().item() - 1) < 0.02

    state = torch.random.get_rng_state()
    zeros = trunc_normal_init_(torch.full((4, 4), 7.0), std=0)
    assert torch.equal(zeros, torch.zeros(4, 4))
    assert torch.equal(torch.random.get_rng_state(), state)  # std 0 draws nothing


def test_init_rules():
    torch.manual_seed(0)
    model = trm.TinyRecursiveReasoningModel_ACTV1(tiny_config(forward_dtype="bfloat16", hidden_size=256, puzzle_emb_ndim=256, num_heads=4))
    inner = model.inner
    assert torch.equal(inner.q_head.weight, torch.zeros(2, 256))
    assert torch.equal(inner.q_head.bias, torch.full((2,), -5.0))
    assert torch.equal(inner.puzzle_emb.weights, torch.zeros(N_ID, 256))
    assert inner.H_init.dtype == BF16 and inner.L_init.dtype == BF16
    assert not torch.equal(inner.H_init, inner.L_init)
    # LeCun std 1/sqrt(fan_in) for linears; 1/sqrt(D) for embeddings.
    qkv = inner.L_level.layers[0].self_attn.qkv_proj.weight
    assert abs(qkv.std().item() * math.sqrt(256) - 1) < 0.02
    down = inner.L_level.layers[0].mlp.down_proj.weight  # I = round(2*256*2/3)=341 -> 512
    assert down.shape == (256, 512) and abs(down.std().item() * math.sqrt(512) - 1) < 0.02
    assert abs(inner.embed_tokens.embedding_weight.std().item() * math.sqrt(256) - 1) < 0.1


@pytest.mark.parametrize("variant", ["trm", "hrm"])
def test_random_draw_order(variant):
    """Same seed => same tensors as drawing them one by one in the order of spec §2.3.2 / §3.1."""
    if variant == "trm":
        cfg = tiny_config(pos_encodings="learned", forward_dtype="bfloat16")
        names = ["embed_tokens.embedding_weight", "lm_head.weight", "q_head.weight", "embed_pos.embedding_weight"]
        layer_names = [f"L_level.layers.{i}" for i in range(2)]
        cls = trm.TinyRecursiveReasoningModel_ACTV1
    else:
        cfg = tiny_config(pos_encodings="learned", forward_dtype="bfloat16", H_layers=2, L_layers=1)
        names = ["embed_tokens.embedding_weight", "lm_head.weight", "q_head.weight", "embed_pos.embedding_weight"]
        layer_names = ["H_level.layers.0", "H_level.layers.1", "L_level.layers.0"]
        cls = hrm.HierarchicalReasoningModel_ACTV1
    for layer in layer_names:
        names += [f"{layer}.self_attn.qkv_proj.weight", f"{layer}.self_attn.o_proj.weight",
                  f"{layer}.mlp.gate_up_proj.weight", f"{layer}.mlp.down_proj.weight"]
    names += ["H_init", "L_init"]

    torch.manual_seed(42)
    model = cls(cfg)
    sd = model.inner.state_dict()

    torch.manual_seed(42)
    for name in names:
        ref = sd[name]
        std = 1.0 if name.endswith("_init") else (1 / math.sqrt(ref.shape[1]))
        drawn = trunc_normal_init_(torch.empty(ref.shape, dtype=ref.dtype), std=std)
        if name != "q_head.weight":  # drawn, then overwritten with zeros
            assert torch.equal(drawn, ref), name


# --------------------------------------------------------------------------------------------- primitives


def test_rms_norm_formula_and_dtype():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8) * 3
    expected = x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(rms_norm(x, 1e-5).double(), expected, rtol=1e-6, atol=1e-6)
    xb = x.to(BF16)
    yb = rms_norm(xb, 1e-5)
    assert yb.dtype == BF16
    ref = (xb.float() * torch.rsqrt(xb.float().square().mean(-1, keepdim=True) + 1e-5)).to(BF16)
    assert torch.equal(yb, ref)
    # eps matters for small inputs
    tiny = torch.full((1, 4), 1e-3)
    assert rms_norm(tiny, 1e-5)[0, 0].item() == pytest.approx(1e-3 / math.sqrt(1e-6 + 1e-5), rel=1e-5)


def test_rope_tables_and_rotate_half():
    assert torch.equal(rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]))
    rope = RotaryEmbedding(dim=8, max_position_embeddings=5, base=10000.0)
    cos, sin = rope()
    assert cos.dtype == F32 and cos.shape == (5, 8)
    for pos in range(5):
        for j in range(8):
            angle = pos / (10000.0 ** ((2 * (j % 4)) / 8))
            assert cos[pos, j].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[pos, j].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert "cos_cached" not in rope.state_dict()


def test_rope_application_runs_in_fp32_for_bf16_inputs():
    torch.manual_seed(0)
    cos, sin = RotaryEmbedding(dim=8, max_position_embeddings=300, base=10000.0)()
    q, k = (torch.randn(2, 300, 2, 8).to(BF16) for _ in range(2))
    q_rot, k_rot = layers.apply_rotary_pos_emb(q, k, cos, sin)
    assert q_rot.dtype == BF16
    c, s_ = cos[:, None, :], sin[:, None, :]
    assert torch.equal(q_rot, (q.float() * c + rotate_half(q.float()) * s_).to(BF16))
    assert torch.equal(k_rot, (k.float() * c + rotate_half(k.float()) * s_).to(BF16))


def test_casted_linear_fuses_bias_with_one_rounding():
    torch.manual_seed(0)
    lin = CastedLinear(512, 2, bias=True)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([-5.0, 0.3]))
    x = torch.randn(256, 512).to(BF16)
    out = lin(x)
    assert out.dtype == BF16
    w, b = lin.weight.to(BF16).float(), lin.bias.to(BF16).float()
    single = (x.float() @ w.T + b).to(BF16)
    separate = ((x.float() @ w.T).to(BF16).float() + b).to(BF16)
    fused_mismatch = (out != single).float().mean().item()
    separate_mismatch = (separate != single).float().mean().item()
    assert fused_mismatch < 0.01
    assert separate_mismatch > 0.05  # the check above is able to tell the two apart


# --------------------------------------------------------------------------------------------- reference forward
# An independent float64 re-derivation of the forward from spec §2.4–§2.7 / §3, fed with the model's weights.


def _ref_norm(x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5)


def _ref_swiglu(x, gate_up, down):
    inter = gate_up.shape[0] // 2
    h = x @ gate_up.T
    gate, up = h[..., :inter], h[..., inter:]
    return (gate * torch.sigmoid(gate) * up) @ down.T


def _ref_attention(x, qkv_w, o_w, nh, rope):
    b, s, _ = x.shape
    hd = qkv_w.shape[0] // (3 * nh)
    qkv = (x @ qkv_w.T).view(b, s, 3 * nh, hd)
    q, k, v = qkv[:, :, :nh], qkv[:, :, nh : 2 * nh], qkv[:, :, 2 * nh :]
    if rope:
        pos = torch.arange(s, dtype=torch.float64)[:, None]
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.cat([pos * inv, pos * inv], dim=-1)[:, None, :]  # [S, 1, hd]

        def rot(t):
            t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
            return t * ang.cos() + torch.cat([-t2, t1], dim=-1) * ang.sin()

        q, k = rot(q), rot(k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, s, nh * hd)
    return out @ o_w.T


def _ref_level(sd, prefix, n_layers, h, inj, cfg):
    h = h + inj if inj is not None else h
    for i in range(n_layers):
        p = f"{prefix}.layers.{i}."
        if cfg.get("mlp_t"):
            t = h.transpose(1, 2)
            t = _ref_norm(t + _ref_swiglu(t, sd[p + "mlp_t.gate_up_proj.weight"], sd[p + "mlp_t.down_proj.weight"]))
            h = t.transpose(1, 2)
        else:
            h = _ref_norm(h + _ref_attention(h, sd[p + "self_attn.qkv_proj.weight"], sd[p + "self_attn.o_proj.weight"],
                                             cfg["num_heads"], cfg["pos_encodings"] == "rope"))
        h = _ref_norm(h + _ref_swiglu(h, sd[p + "mlp.gate_up_proj.weight"], sd[p + "mlp.down_proj.weight"]))
    return h


def _ref_embed(sd, batch, cfg, prefix_len):
    tok = sd["embed_tokens.embedding_weight"][batch["inputs"].long()]
    pe = sd["puzzle_emb.weights"][batch["puzzle_identifiers"].long()]
    prefix = torch.zeros(tok.shape[0], prefix_len, D, dtype=torch.float64)
    prefix[:, 0] = pe  # Dp == D: the whole puzzle embedding sits at prefix position 0
    emb = torch.cat([prefix, tok], dim=1)
    if cfg["pos_encodings"] == "learned":
        emb = 0.707106781 * (emb + sd["embed_pos.embedding_weight"])
    return math.sqrt(D) * emb


def _ref_trm(sd, cfg, x, z):
    n = cfg["L_layers"]
    z_H, z_L = z["z_H"], z["z_L"]
    for _ in range(cfg["H_cycles"]):
        for _ in range(cfg["L_cycles"]):
            z_L = _ref_level(sd, "L_level", n, z_L, z_H + x, cfg)
        z_H = _ref_level(sd, "L_level", n, z_H, z_L, cfg)
    return z_H


def _ref_singlez(sd, cfg, x, z):
    n = cfg["L_layers"]
    z_L = z["z_L"]
    for _ in range(cfg["H_cycles"]):
        for _ in range(cfg["L_cycles"]):
            z_L = _ref_level(sd, "L_level", n, z_L + x, None, cfg)
        z_L = _ref_level(sd, "L_level", n, z_L, None, cfg)
    return z_L


def _ref_hier6(sd, cfg, x, z):
    n = cfg["L_layers"]
    z_H, slots = z["z_H"], [z[f"z_L{k}"] for k in range(1, 7)]
    for _ in range(cfg["H_cycles"]):
        for l in range(cfg["L_cycles"]):
            slots[l] = _ref_level(sd, "L_level", n, sum(slots), z_H + x, cfg)
        z_H = _ref_level(sd, "L_level", n, z_H, sum(slots), cfg)
    return z_H


def _ref_hrm(sd, cfg, x, z):
    z_H, z_L = z["z_H"], z["z_L"]
    for _ in range(cfg["H_cycles"]):
        for _ in range(cfg["L_cycles"]):
            z_L = _ref_level(sd, "L_level", cfg["L_layers"], z_L, z_H + x, cfg)
        z_H = _ref_level(sd, "H_level", cfg["H_layers"], z_H, z_L, cfg)
    return z_H


def _ref_baseline(sd, cfg, x, z):
    return _ref_level(sd, "H_level", cfg["H_layers"], z["z_H"], x, cfg)


REFERENCE_CASES = {
    "trm_rope": (trm.TinyRecursiveReasoningModel_ACTV1, {}, _ref_trm, 16),
    "trm_learned": (trm.TinyRecursiveReasoningModel_ACTV1, {"pos_encodings": "learned"}, _ref_trm, 16),
    "trm_mlp_t": (trm.TinyRecursiveReasoningModel_ACTV1, {"mlp_t": True, "pos_encodings": "none"}, _ref_trm, 16),
    "trm_prefix_len_0": (trm.TinyRecursiveReasoningModel_ACTV1, {"puzzle_emb_len": 0}, _ref_trm, 1),
    "trm_singlez": (trm_singlez.TinyRecursiveReasoningModel_ACTV1, {}, _ref_singlez, 16),
    "trm_hier6": (trm_hier6.TinyRecursiveReasoningModel_ACTV1, {"L_cycles": 3}, _ref_hier6, 16),
    "hrm": (hrm.HierarchicalReasoningModel_ACTV1, {"H_cycles": 2, "L_cycles": 3, "H_layers": 1}, _ref_hrm, 1),
    "hrm_mlp_t": (hrm.HierarchicalReasoningModel_ACTV1, {"mlp_t": True, "pos_encodings": "learned"}, _ref_hrm, 1),
    "baseline": (transformers_baseline.Model_ACTV2, {"H_layers": 2}, _ref_baseline, 1),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_inner_forward_matches_independent_reference(case):
    cls, overrides, ref_fn, prefix_len = REFERENCE_CASES[case]
    cfg = tiny_config(**overrides)
    torch.manual_seed(1)
    model = cls(cfg)
    model.eval()
    inner = model.inner
    with torch.no_grad():  # non-trivial values everywhere the zero/-5 init would hide mistakes
        inner.q_head.weight.normal_(0, 0.3)
        inner.q_head.bias.normal_(0, 1)
        inner.puzzle_emb.weights.normal_(0, 0.3)

    batch = tiny_batch(seed=2)
    carry_cls = type(inner.empty_carry(1))
    fields = list(carry_cls.__dataclass_fields__)
    g = torch.Generator().manual_seed(3)
    z = {f: torch.randn(B, S + prefix_len, D, generator=g) for f in fields}

    with torch.no_grad():
        new_carry, logits, (q_halt, q_cont) = inner(carry_cls(**z), batch)

    sd = {k: v.double() for k, v in inner.state_dict().items()}
    x = _ref_embed(sd, batch, cfg, prefix_len)
    z_out = ref_fn(sd, cfg, x, {k: v.double() for k, v in z.items()})
    ref_logits = (z_out @ sd["lm_head.weight"].T)[:, prefix_len:]
    ref_q = z_out[:, 0] @ sd["q_head.weight"].T + sd["q_head.bias"]

    assert logits.shape == (B, S, V) and logits.dtype == F32 and q_halt.dtype == F32
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q_halt.double(), ref_q[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q_cont.double(), ref_q[:, 1], rtol=1e-4, atol=1e-4)
    out_state = getattr(new_carry, "z_H", None)
    if out_state is None:
        out_state = new_carry.z_L
    torch.testing.assert_close(out_state.double(), z_out, rtol=1e-4, atol=1e-4)
    assert not out_state.requires_grad


def test_input_embedding_prefix_layout():
    model = trm.TinyRecursiveReasoningModel_ACTV1(tiny_config(puzzle_emb_ndim=20))  # Dp=20 > D: spills into position 1
    model.eval()
    inner = model.inner
    with torch.no_grad():
        inner.puzzle_emb.weights.copy_(torch.arange(N_ID * 20, dtype=F32).view(N_ID, 20))
    batch = tiny_batch()
    x = inner._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    assert x.shape == (B, S + 16, D)
    pe = inner.puzzle_emb.weights[batch["puzzle_identifiers"].long()] * math.sqrt(D)
    torch.testing.assert_close(x[:, 0], pe[:, :16])
    torch.testing.assert_close(x[:, 1, :4], pe[:, 16:])
    assert torch.count_nonzero(x[:, 1, 4:]) == 0 and torch.count_nonzero(x[:, 2:16]) == 0
    tok = inner.embed_tokens.embedding_weight[batch["inputs"].long()] * math.sqrt(D)
    torch.testing.assert_close(x[:, 16:], tok)


def test_mlp_t_block_normalises_over_sequence_axis():
    cfg = trm.TinyRecursiveReasoningModel_ACTV1Config(**tiny_config(mlp_t=True))
    block = trm.TinyRecursiveReasoningModel_ACTV1Block(cfg)
    for p in block.parameters():
        nn.init.zeros_(p)  # both MLPs output 0: the block reduces to its two norms
    h = torch.randn(2, S + 16, D) * 3 + 1
    out = block(cos_sin=None, hidden_states=h)
    seq_first = _ref_norm(h.double().transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out.double(), _ref_norm(seq_first), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.double(), _ref_norm(h.double()), atol=1e-3)


# --------------------------------------------------------------------------------------------- gradients


def _fresh_copy(cls, cfg, state_dict):
    model = cls(cfg)
    model.load_state_dict(state_dict)
    return model


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["puzzle_emb.local_weights"] = model.inner.puzzle_emb.local_weights.grad.clone()
    return grads


@pytest.mark.parametrize("arch", ["trm", "hrm"])
def test_no_grad_cycles_contribute_no_gradient(arch):
    """Full model == (no-grad cycles run by hand) + a model with only the differentiable part; grads identical."""
    if arch == "trm":
        cls, cfg = trm.TinyRecursiveReasoningModel_ACTV1, tiny_config(H_cycles=3, L_cycles=2)
        short_cfg = dict(cfg, H_cycles=1)
    else:
        cls, cfg = hrm.HierarchicalReasoningModel_ACTV1, tiny_config(H_cycles=2, L_cycles=3, H_layers=1)
        short_cfg = dict(cfg, H_cycles=1, L_cycles=1)
    torch.manual_seed(0)
    full = cls(cfg)
    with torch.no_grad():
        full.inner.q_head.weight.normal_(0, 0.3)
    short = _fresh_copy(cls, short_cfg, full.state_dict())
    full.train()
    short.train()

    batch = tiny_batch()
    z_H = torch.randn(B, S + full.inner.puzzle_emb_len, D)
    z_L = torch.randn(B, S + full.inner.puzzle_emb_len, D)
    carry_cls = type(full.inner.empty_carry(1))

    _, logits, (q_halt, _) = full.inner(carry_cls(z_H=z_H, z_L=z_L), batch)
    (logits.square().sum() + q_halt.sum()).backward()

    inner = full.inner
    seq_info = dict(cos_sin=inner.rotary_emb())
    with torch.no_grad():
        x = inner._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        h, l = z_H, z_L
        if arch == "trm":
            for _ in range(cfg["H_cycles"] - 1):
                for _ in range(cfg["L_cycles"]):
                    l = inner.L_level(l, h + x, **seq_info)
                h = inner.L_level(h, l, **seq_info)
        else:
            for hs in range(cfg["H_cycles"]):
                for ls in range(cfg["L_cycles"]):
                    if not (hs == cfg["H_cycles"] - 1 and ls == cfg["L_cycles"] - 1):
                        l = inner.L_level(l, h + x, **seq_info)
                if hs != cfg["H_cycles"] - 1:
                    h = inner.H_level(h, l, **seq_info)
    _, logits_s, (q_halt_s, _) = short.inner(carry_cls(z_H=h, z_L=l), batch)
    (logits_s.square().sum() + q_halt_s.sum()).backward()

    torch.testing.assert_close(logits, logits_s, rtol=1e-5, atol=1e-5)
    g_full, g_short = _grads(full), _grads(short)
    assert g_full.keys() == g_short.keys()
    for name in g_full:
        torch.testing.assert_close(g_full[name], g_short[name], rtol=1e-4, atol=1e-6, msg=name)
    assert g_full["puzzle_emb.local_weights"].abs().sum() > 0


# --------------------------------------------------------------------------------------------- ACT wrapper


def _run_until_halted(head, batch, limit=50):
    carry = head.initial_carry(batch)
    for calls in range(1, limit + 1):
        carry, _, metrics, _, all_halted = head(carry=carry, batch=batch, return_keys=[])
        if all_halted:
            return calls, carry, metrics
    raise AssertionError("never halted")


@pytest.mark.parametrize("cls", [trm.TinyRecursiveReasoningModel_ACTV1, hrm.HierarchicalReasoningModel_ACTV1,
                                 trm_singlez.TinyRecursiveReasoningModel_ACTV1, trm_hier6.TinyRecursiveReasoningModel_ACTV1])
def test_eval_runs_exactly_halt_max_steps(cls):
    head = ACTLossHead(cls(tiny_config(halt_max_steps=3)), loss_type="stablemax_cross_entropy")
    with torch.no_grad():
        head.model.inner.q_head.bias.fill_(10.0)  # Q says "halt" everywhere; eval ignores it
    head.eval()
    with torch.inference_mode():
        calls, carry, metrics = _run_until_halted(head, tiny_batch())
    assert calls == 3
    assert carry.steps.tolist() == [3] * B
    assert metrics["count"].item() == B and metrics["steps"].item() == 3 * B


def test_training_halting_follows_q_halt_sign():
    batch = tiny_batch()
    for bias, expected_calls in [(1.0, 1), (0.0, 4), (-1.0, 4)]:  # strict q_halt > 0
        head = ACTLossHead(trm.TinyRecursiveReasoningModel_ACTV1(tiny_config()), loss_type="stablemax_cross_entropy")
        with torch.no_grad():
            head.model.inner.q_head.bias.fill_(bias)
        head.train()
        calls, _, _ = _run_until_halted(head, batch)
        assert calls == expected_calls

    # Row-dependent Q (random puzzle rows make position 0 differ per row): halted == (q_halt > 0), no exploration.
    torch.manual_seed(0)
    model = trm.TinyRecursiveReasoningModel_ACTV1(tiny_config(batch_size=16))
    with torch.no_grad():
        model.inner.q_head.weight.normal_(0, 1.0)
        model.inner.q_head.bias.zero_()
        model.inner.puzzle_emb.weights.normal_(0, 1.0)
    b = tiny_batch(batch_size=16)
    model.eval()
    q_sorted = model(model.initial_carry(b), b)[1]["q_halt_logits"].sort().values
    with torch.no_grad():  # centre q_halt so that about half of the rows are positive
        model.inner.q_head.bias[0] = -(q_sorted[7] + q_sorted[8]) / 2
    model.train()
    carry, outputs = model(model.initial_carry(b), b)
    expected = outputs["q_halt_logits"] > 0
    assert torch.equal(carry.halted, expected)
    assert 0 < int(expected.sum()) < 16
    assert "target_q_continue" not in outputs


def test_exploration_draws_rand_then_randint():
    cfg = tiny_config(halt_exploration_prob=0.5, halt_max_steps=5)
    model = trm.TinyRecursiveReasoningModel_ACTV1(dict(cfg, batch_size=64))
    with torch.no_grad():
        model.inner.q_head.bias.fill_(10.0)  # Q always says halt; only exploration delays it
    model.train()
    batch = tiny_batch(batch_size=64)
    carry = model.initial_carry(batch)
    torch.manual_seed(7)
    carry, _ = model(carry, batch)
    carry2, _ = model(carry, batch)

    torch.manual_seed(7)
    r1, k1 = torch.rand(64), torch.randint(2, 6, (64,), dtype=torch.int32)
    min_steps = (r1 < 0.5) * k1
    assert torch.equal(carry.halted, min_steps <= 1)  # step 1 halts only non-exploring rows (k >= 2)
    assert 0 < int(carry.halted.sum()) < 64
    r2, k2 = torch.rand(64), torch.randint(2, 6, (64,), dtype=torch.int32)
    steps2 = torch.where(carry.halted, 1, 2)
    assert torch.equal(carry2.steps, steps2)
    assert torch.equal(carry2.halted, steps2 >= (r2 < 0.5) * k2)


def test_halted_rows_take_new_batch_and_reset_state():
    model = trm.TinyRecursiveReasoningModel_ACTV1(tiny_config())
    model.train()  # q_halt = -5 < 0, no exploration: nothing halts before step 4
    first, second = tiny_batch(0), tiny_batch(1)
    carry, _ = model(model.initial_carry(first), first)
    assert not carry.halted.any()
    carry.halted[1] = True
    z_H_before = carry.inner_carry.z_H.clone()
    reset = model.inner.reset_carry(carry.halted, carry.inner_carry)
    assert torch.equal(reset.z_H[1], model.inner.H_init.to(F32).expand(S + 16, D))
    assert torch.equal(reset.z_L[1], model.inner.L_init.to(F32).expand(S + 16, D))
    assert torch.equal(reset.z_H[0], z_H_before[0])
    carry, _ = model(carry, second)
    for k in first:
        assert torch.equal(carry.current_data[k][0], first[k][0])
        assert torch.equal(carry.current_data[k][1], second[k][1])
        assert torch.equal(carry.current_data[k][2], first[k][2])
    assert carry.steps.tolist() == [2, 1, 2]


def test_hier6_reset_uses_each_slots_own_init():
    inner = trm_hier6.TinyRecursiveReasoningModel_ACTV1(tiny_config()).inner
    inits = [inner.H_init] + [getattr(inner, f"L{k}_init") for k in range(1, 7)]
    assert len({tuple(t.tolist()) for t in inits}) == 7
    fields = ["z_H"] + [f"z_L{k}" for k in range(1, 7)]
    old = trm_hier6.TinyRecursiveReasoningModel_ACTV1InnerCarry(**{f: torch.randn(2, S + 16, D) for f in fields})
    new = inner.reset_carry(torch.tensor([True, False]), old)
    for field, init in zip(fields, inits):
        assert torch.equal(getattr(new, field)[0], init.expand(S + 16, D)), field
        assert torch.equal(getattr(new, field)[1], getattr(old, field)[1]), field


@pytest.mark.parametrize("cls", [trm.TinyRecursiveReasoningModel_ACTV1, trm_singlez.TinyRecursiveReasoningModel_ACTV1,
                                 trm_hier6.TinyRecursiveReasoningModel_ACTV1, hrm.HierarchicalReasoningModel_ACTV1])
def test_target_q_continue_bootstraps_from_post_step_carry(cls):
    """TRM family with no_ACT_continue=False (the original crashes here) and HRM: halt on q_halt > q_continue."""
    torch.manual_seed(0)
    model = cls(tiny_config(no_ACT_continue=False, halt_max_steps=2, batch_size=16))
    with torch.no_grad():
        # q_continue = q_halt + 0.1 everywhere, q_halt of either sign: the halting rules "q_halt > q_continue"
        # (never) and "q_halt > 0" (some rows) disagree, and target Q takes max = q_continue unless last step.
        model.inner.q_head.weight.copy_(torch.randn(D).expand(2, D))
        model.inner.q_head.bias.copy_(torch.tensor([0.0, 0.1]))
        model.inner.puzzle_emb.weights.normal_(0, 1.0)
    model.train()
    batch = tiny_batch(batch_size=16)
    carry = model.initial_carry(batch)
    rules_differ = False
    for _ in range(2):
        carry, outputs = model(carry, batch)
        is_last = carry.steps >= 2
        q_halt, q_cont = outputs["q_halt_logits"], outputs["q_continue_logits"]
        assert torch.equal(carry.halted, is_last | (q_halt > q_cont))
        rules_differ |= bool(((q_halt > q_cont) != (q_halt > 0)).any())
        with torch.no_grad():
            _, _, (nh, nc) = model.inner(carry.inner_carry, carry.current_data)
        expected = torch.sigmoid(torch.where(is_last, nh, torch.maximum(nh, nc)))
        torch.testing.assert_close(outputs["target_q_continue"], expected)
        assert not outputs["target_q_continue"].requires_grad
    assert rules_differ  # the case tells "q_halt > q_continue" from "q_halt > 0"


def test_baseline_act_switches():
    cfg = tiny_config(H_layers=1)
    model = transformers_baseline.Model_ACTV2(cfg)
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([1.0, 0.0]))  # q_halt > q_continue everywhere
    batch = tiny_batch()
    model.eval()
    carry, outputs = model(model.initial_carry(batch), batch)
    assert not carry.halted.any() and "actual_steps" not in outputs
    model_inf = transformers_baseline.Model_ACTV2(dict(cfg, act_inference=True, halt_exploration_prob=1.0))
    model_inf.load_state_dict(model.state_dict())
    model_inf.eval()
    carry, outputs = model_inf(model_inf.initial_carry(batch), batch)
    assert carry.halted.all() and outputs["actual_steps"].dtype == F32  # no exploration in eval
    model.train()
    carry, outputs = model(model.initial_carry(batch), batch)
    assert carry.halted.all() and "target_q_continue" not in outputs
    _, outputs = model(model.initial_carry(batch), batch, compute_target_q=True)
    assert outputs["target_q_continue"].shape == (B,)


def test_bfloat16_default_runs_on_cpu():
    cfg = tiny_config()
    del cfg["forward_dtype"]
    head = ACTLossHead(trm.TinyRecursiveReasoningModel_ACTV1(cfg), loss_type="stablemax_cross_entropy")
    head.train()
    batch = tiny_batch()
    carry, loss, metrics, preds, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits", "preds"])
    loss.backward()
    assert carry.inner_carry.z_H.dtype == BF16 and preds["logits"].dtype == BF16
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert head.model.inner.embed_tokens.embedding_weight.grad.dtype == F32
    assert head.model.puzzle_emb.local_weights.grad.shape == (B, D)


# --------------------------------------------------------------------------------------------- loss head


class _FixedModel(nn.Module):
    """Stands in for the ACT model: returns a prepared carry and outputs."""

    def __init__(self, carry, outputs):
        super().__init__()
        self.carry, self.outputs = carry, outputs

    def forward(self, carry, batch):
        return self.carry, dict(self.outputs)


def _stablemax_logprob(logits, label):
    s_vals = [1 / (1 - x) if x < 0 else x + 1 for x in logits]
    return math.log(s_vals[label] / sum(s_vals))


def _bce(z, y):
    return max(z, 0) - z * y + math.log1p(math.exp(-abs(z)))


def test_loss_head_metrics_and_losses_on_hand_built_case():
    # Rows: 0 all correct & halted, q=0 (>= 0 counts as "predicts correct"); 1 half correct & halted, q=-1;
    #       2 no labels & halted (not counted); 3 all correct but not halted (loss only).
    logits = torch.tensor([
        [[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [-1.0, -2.0, 0.5], [1.0, 1.0, 0.0]],
        [[0.0, 1.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
        [[0.0, 0.0, 4.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ], requires_grad=True)
    labels = torch.tensor([[0, 1, 2, -100], [1, 1, -100, -100], [-100] * 4, [2, 1, -100, -100]], dtype=torch.int32)
    q_halt = torch.tensor([0.0, -1.0, 2.0, 0.5], requires_grad=True)
    q_cont = torch.tensor([0.3, -0.2, 0.0, 1.0], requires_grad=True)
    target = torch.tensor([0.9, 0.1, 0.5, 0.2])
    carry = trm.TinyRecursiveReasoningModel_ACTV1Carry(
        inner_carry=None, steps=torch.tensor([3, 5, 2, 1], dtype=torch.int32),
        halted=torch.tensor([True, True, True, False]),
        current_data={"labels": labels},
    )
    outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_cont, "target_q_continue": target}
    head = ACTLossHead(_FixedModel(carry, outputs), loss_type="stablemax_cross_entropy")
    wrong_batch_labels = torch.zeros(4, 4, dtype=torch.int32)  # the head must use the carry's labels
    _, total, metrics, detached, all_halted = head(
        carry=None, batch={"labels": wrong_batch_labels}, return_keys=["preds", "q_halt_logits", "not_there"])

    assert metrics["count"].item() == 2 and metrics["count"].dtype == torch.int64
    assert metrics["accuracy"].item() == pytest.approx(1.5) and metrics["accuracy"].dtype == F32
    assert metrics["exact_accuracy"].item() == 1
    assert metrics["q_halt_accuracy"].item() == 2
    assert metrics["steps"].item() == 8 and metrics["steps"].dtype == torch.int64
    assert not all_halted.item()
    assert sorted(detached) == ["preds", "q_halt_logits"]
    assert detached["preds"].tolist()[0][:3] == [0, 1, 2] and detached["preds"][0, 3].item() == 0  # tie -> first
    assert detached["preds"].dtype == torch.int64 and not detached["q_halt_logits"].requires_grad

    rows = [[(0, 0), (1, 1), (2, 2)], [(0, 1), (1, 1)], [], [(0, 2), (1, 1)]]
    lm = sum(-sum(_stablemax_logprob(logits[b, t].tolist(), y) for t, y in row) / max(len(row), 1)
             for b, row in enumerate(rows))
    seq_correct = [1.0, 0.0, 1.0, 0.0]
    q_halt_loss = sum(_bce(z, y) for z, y in zip(q_halt.tolist(), seq_correct))
    q_cont_loss = sum(_bce(z, y) for z, y in zip(q_cont.tolist(), target.tolist()))
    assert metrics["lm_loss"].dtype == torch.float64 and metrics["lm_loss"].item() == pytest.approx(lm, rel=1e-12)
    assert metrics["q_halt_loss"].item() == pytest.approx(q_halt_loss, rel=1e-6)
    assert metrics["q_continue_loss"].item() == pytest.approx(q_cont_loss, rel=1e-6)
    assert total.dtype == torch.float64
    assert total.item() == pytest.approx(lm + 0.5 * (q_halt_loss + q_cont_loss), rel=1e-6)
    total.backward()
    assert logits.grad[2].abs().sum() == 0 and logits.grad[3].abs().sum() > 0  # all rows train, ignored tokens don't


def test_softmax_cross_entropy_accepts_valid_mask():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE_LABEL_ID]], dtype=torch.int32)
    carry = trm.TinyRecursiveReasoningModel_ACTV1Carry(None, torch.ones(1, dtype=torch.int32),
                                                       torch.ones(1, dtype=torch.bool), {"labels": labels})
    outputs = {"logits": logits, "q_halt_logits": torch.zeros(1), "q_continue_logits": torch.zeros(1)}
    head = ACTLossHead(_FixedModel(carry, outputs), loss_type="softmax_cross_entropy")
    _, _, metrics, _, _ = head(carry=None, batch={}, return_keys=[])
    expected = -(2.0 - math.log(math.exp(2.0) + 1 + math.exp(-1.0)))
    assert metrics["lm_loss"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss_type"):
        ACTLossHead(_FixedModel(carry, outputs), loss_type="cross_entropy")


def test_stablemax_is_fp64_and_ignores_masked_tokens():
    logits = torch.tensor([[[-3.0, 0.0, 2.0], [0.0, 0.0, 0.0]]], dtype=BF16)
    labels = torch.tensor([[2, IGNORE_LABEL_ID]])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64
    assert loss[0, 0].item() == pytest.approx(-math.log(3 / (0.25 + 1 + 3)), rel=1e-12)
    assert loss[0, 1].item() == 0


# --------------------------------------------------------------------------------------------- sparse embedding


def _sparse_setup(ids, grads, lr=0.1, wd=0.5):
    emb = CastedSparseEmbedding(5, 3, batch_size=len(ids), init_std=0, cast_to=F32)
    with torch.no_grad():
        emb.weights.copy_(torch.arange(15, dtype=F32).view(5, 3) / 10)
    opt = CastedSparseEmbeddingSignSGD_Distributed(emb.buffers(), world_size=1, lr=lr, weight_decay=wd)
    emb.train()
    out = emb(torch.tensor(ids, dtype=torch.int32))
    (out * torch.tensor(grads)).sum().backward()
    return emb, opt


def test_sign_sgd_step_hand_computed():
    ids = [3, 1, 3, 0]
    grads = [[1.0, -2.0, 0.5], [0.0, 4.0, -1.0], [-3.0, 1.0, -0.5], [2.0, 2.0, 2.0]]
    emb, opt = _sparse_setup(ids, grads)
    before = emb.weights.clone()
    assert torch.equal(emb.local_ids, torch.tensor(ids, dtype=torch.int32))
    opt.step()
    opt.zero_grad()
    decay = 1 - 0.1 * 0.5
    expected = before.clone()
    expected[3] = before[3] * decay - 0.1 * torch.tensor([-1.0, -1.0, 0.0])  # id 3: summed grad [-2, -1, 0]
    expected[1] = before[1] * decay - 0.1 * torch.tensor([0.0, 1.0, -1.0])
    expected[0] = before[0] * decay - 0.1 * torch.tensor([1.0, 1.0, 1.0])
    torch.testing.assert_close(emb.weights, expected)  # rows 2 and 4 untouched (no decay)
    assert emb.local_weights.grad is None
    opt.step()  # no gradient => no change
    torch.testing.assert_close(emb.weights, expected)


def test_sparse_embedding_eval_and_batch_check():
    emb = CastedSparseEmbedding(5, 3, batch_size=2, init_std=0, cast_to=BF16)
    with torch.no_grad():
        emb.weights.copy_(torch.arange(15, dtype=F32).view(5, 3))
    emb.eval()
    out = emb(torch.tensor([4, 1, 1], dtype=torch.int32))  # eval: any batch size, straight from the table
    assert out.dtype == BF16 and torch.equal(out.float(), emb.weights[[4, 1, 1]])
    assert torch.count_nonzero(emb.local_weights) == 0
    emb.train()
    with pytest.raises(ValueError, match="batch_size=2"):
        emb(torch.tensor([0, 1, 2], dtype=torch.int32))


def _sign_sgd_rank(rank, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ids = [[2, 0], [2, 4]][rank]
    grads = [[[1.0, -1.0, 0.0], [1.0, 1.0, 1.0]], [[-3.0, 2.0, 0.0], [0.0, -1.0, 0.0]]][rank]
    emb = CastedSparseEmbedding(5, 3, batch_size=2, init_std=0, cast_to=F32)
    opt = CastedSparseEmbeddingSignSGD_Distributed(emb.buffers(), world_size=2, lr=1.0, weight_decay=0.0)
    emb.train()
    (emb(torch.tensor(ids, dtype=torch.int32)) * torch.tensor(grads)).sum().backward()
    opt.step()
    if rank == 1:
        torch.save(emb.weights, result_file)
    dist.barrier()  # neither rank tears the group down while the other still uses it
    dist.destroy_process_group()
    os._exit(0)  # no interpreter teardown: gloo's threads can abort a process there (SIGABRT) after the work is done


def test_sign_sgd_all_gathers_across_ranks():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "weights.pt"
        mp.spawn(_sign_sgd_rank, args=(str(Path(tmp) / "init"), str(result)), nprocs=2)
        weights = torch.load(result)
    expected = torch.zeros(5, 3)
    expected[2] = -torch.sign(torch.tensor([-2.0, 1.0, 0.0]))  # id 2 seen on both ranks: summed first
    expected[0] = -1.0
    expected[4] = torch.tensor([0.0, 1.0, 0.0])
    assert torch.equal(weights, expected)


# --------------------------------------------------------------------------------------------- EMA, utils, errors


def test_ema_update_and_copy():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    model.register_buffer("stat", torch.ones(2))
    ema = EMAHelper(mu=0.9)
    ema.register(model)
    assert sorted(ema.shadow) == ["0.bias", "0.weight", "1.weight"]
    old = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, p in model.named_parameters():
        if name in old:
            torch.testing.assert_close(ema.shadow[name], 0.1 * p.detach() + 0.9 * old[name])
    copy = ema.ema_copy(model)
    torch.testing.assert_close(copy[0].weight, ema.shadow["0.weight"])
    assert not torch.equal(model[0].weight, copy[0].weight)  # the live model is untouched
    assert torch.equal(copy[1].bias, model[1].bias)


def test_class_locators():
    assert load_model_class("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1") is trm.TinyRecursiveReasoningModel_ACTV1
    assert load_model_class("losses@ACTLossHead") is ACTLossHead
    assert load_model_class("recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1", prefix="legacy.models.") \
        is hrm.HierarchicalReasoningModel_ACTV1
    assert get_model_source_path("recursive_reasoning.trm@X") == trm.__file__
    with pytest.raises(ValueError, match="<module path>@<ClassName>"):
        load_model_class("recursive_reasoning.trm")
    with pytest.raises(ValueError, match="no 'Nope'"):
        load_model_class("recursive_reasoning.trm@Nope")
    with pytest.raises(ValueError, match="cannot import"):
        load_model_class("recursive_reasoning.nonexistent@X")


def test_configuration_errors():
    with pytest.raises(ValueError, match="L_cycles=7"):
        trm_hier6.TinyRecursiveReasoningModel_ACTV1(tiny_config(L_cycles=7))
    with pytest.raises(NotImplementedError, match="pos_encodings='none'"):
        transformers_baseline.Model_ACTV2(tiny_config(pos_encodings="none"))


def test_no_hard_coded_device():
    for module in (layers, trm, trm_singlez, trm_hier6, hrm, transformers_baseline):
        assert "cuda" not in Path(module.__file__).read_text()
